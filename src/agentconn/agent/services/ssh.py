"""The agent's SSH server on tailnet TCP ports 1 and 22 (agent-api.md §6, §2.2; tailnet.md §2).

asyncssh does the SSH-2 protocol; this module adds what makes it the agent's server:

- **Transport.** ``asyncssh.listen(tunnel=...)`` accepts any object with
  ``create_server(session_factory, host, port)``. :class:`_TunnelListener` maps that onto
  :meth:`Tunnel.create_server`, so every SSH connection is an ``SSHServerConnection`` protocol
  running directly on one of our tunnel's asyncio ``TcpTransport``\\ s (no socket, no copy).
- **Authentication.** "none" is accepted for any user name: tailnet membership is the
  authentication. Every session runs as the agent's OS user, whatever name the client sent.
- **Sessions** (:class:`_Session`): shell (``$SHELL -l``) or exec (``$SHELL -c COMMAND``) in the
  agent's working directory, with the agent environment plus every ``env`` request of the
  client. Without a PTY the child gets three pipes (stderr as SSH extended data); with one it
  gets a fresh pseudo-terminal as its controlling terminal, sized and moded as requested
  (RFC 4254 §6.2, §8), and ``window-change`` resizes it. Exit status or exit signal is
  reported (§6.10). The child leads its own process group; when the channel goes away before
  it exits, the group gets SIGHUP and, :data:`KILL_GRACE` seconds later, SIGKILL.
- **Subsystem "sftp"**: asyncssh's SFTP server over the real file system, relative paths
  resolved against the agent's home.
- **Port forwarding**: ``direct-tcpip`` to any host:port the agent can reach (normally the
  workspace's loopback) and ``tcpip-forward`` listeners on the agent host, as Coder allows both.
- **Host key**: ed25519, generated once and kept at ``host_key_path`` (mode 0600; by default
  in the agent's own ``log_dir``) so clients see the same key across restarts; created
  atomically, never overwritten (:func:`load_host_key`).
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import subprocess
import tempfile
import termios
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import asyncssh
from asyncssh.stream import SSHServerStreamSession

from agentconn.agent.children import (
    PIPE,
    Child,
    Login,
    Terminal,
    read_terminal,
    set_window_size,
    write_terminal,
)
from agentconn.agent.options import AgentOptions
from agentconn.proto.ports import SSH_PORTS

if TYPE_CHECKING:
    from agentconn.aio.streams import TunnelServer
    from agentconn.aio.tunnel import Tunnel

__all__ = ["HOST_KEY_FILENAME", "SshServer", "load_host_key"]

_log = logging.getLogger("agentconn.agent.ssh")

HOST_KEY_FILENAME = "ssh_host_ed25519_key"  #: default file name under ``options.log_dir``
HOST_KEY_ALGORITHM = "ssh-ed25519"
KILL_GRACE = 2.0          #: seconds between SIGHUP and SIGKILL for an orphaned session child
EXIT_UNKNOWN = 255        #: exit status reported when the child's could not be collected
LOGIN_TIMEOUT = 60.0      #: seconds a client may take from TCP accept to finished auth
READ_SIZE = 65536         #: bytes read from a child's pipe at a time
STDIN_HIGH_WATER = 1 << 20  #: bytes queued for a child's stdin before the channel stops reading
SFTP_VERSION = 3
CLOSE_TIMEOUT = 5.0       #: seconds close() waits for connections and children to go


def load_host_key(path: str) -> asyncssh.SSHKey:
    """The host key at ``path``; if there is no file, a new ed25519 key written there first.

    Creation is atomic and never overwrites: the key is written and fsynced to a private temp
    file beside ``path`` (``O_EXCL``, mode 0600), then hard-linked to ``path``, which fails if
    the name exists. So two agents starting at once (same process or not) never read a
    half-written key, and the one that loses the race drops its own key and loads the
    winner's: both end up with the key on disk. The directory is created with 0700 if
    missing. Raises ``asyncssh.KeyImportError`` for a file that is not a private key, and
    OSError when it cannot be read or written.
    """
    try:
        return asyncssh.read_private_key(path)
    except FileNotFoundError:
        pass
    key = asyncssh.generate_private_key(HOST_KEY_ALGORITHM)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if _publish_exclusive(path, key.export_private_key()):
        _log.info("generated SSH host key %s at %s", key.get_fingerprint(), path)
        return key
    return asyncssh.read_private_key(path)       # another starter's key, complete on disk


def _publish_exclusive(path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` (mode 0600) all at once, unless it exists: False
    then, and the existing file is left alone."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.",
                               dir=os.path.dirname(os.path.abspath(path)))  # O_EXCL, 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)                   # atomic, and refuses an existing name
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                                 errno.EMLINK):
                raise
            # no hard links on this file system: create the name exclusively and write it
            # (a reader racing this write may see a short file; there is no better primitive)
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return False
            with os.fdopen(out, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


class _TunnelListener:
    """What ``asyncssh.listen(tunnel=...)`` needs: listen on a port of our userspace tunnel.

    asyncssh calls ``session_factory(orig_host, orig_port)`` for every accepted connection and
    gets its ``SSHServerConnection`` (an asyncio Protocol) back; we hand that factory to
    :meth:`Tunnel.create_server`, which attaches it to a ``TcpTransport``.
    """

    def __init__(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel

    async def create_server(self, session_factory: Callable[[str, int], Any],
                            listen_host: str, listen_port: int) -> TunnelServer:
        def factory() -> asyncio.BaseProtocol:
            protocol: asyncio.BaseProtocol = session_factory(listen_host, listen_port)
            return protocol

        return await self._tunnel.create_server(factory, listen_port, listen_host or None)

    def close(self) -> None:
        """Nothing to close: the tunnel belongs to the agent."""

    async def wait_closed(self) -> None:
        """Nothing to wait for (see :meth:`close`)."""


class _Sftp(asyncssh.SFTPServer):
    """asyncssh's SFTP server with relative paths taken from the agent's home (as sshd's
    sftp-server starts in the user's home) instead of this process's working directory."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], home: bytes) -> None:
        super().__init__(chan)
        self._home = home

    def map_path(self, path: bytes) -> bytes:
        return path if path.startswith(b"/") else os.path.join(self._home, path)


class _ConnectionHandler(asyncssh.SSHServer):
    """Per-connection policy: "none" auth for everyone, sessions, both kinds of forwarding."""

    def __init__(self, server: SshServer) -> None:
        self._server = server
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._server._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._server._connections.discard(self._conn)
        if exc is not None:
            _log.debug("SSH connection lost: %s", exc)

    def begin_auth(self, username: str) -> bool:
        # agent-api.md §6: accept "none" authentication; the tailnet authenticated the peer.
        return False

    def session_requested(self) -> _Session:
        assert self._conn is not None
        return _Session(self._server, self._conn)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> bool:
        # direct-tcpip: asyncssh dials dest_host:dest_port from the agent and relays.
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        # tcpip-forward: asyncssh listens on the agent host and forwards back to the client.
        return True


class SshServer:
    """The agent's built-in SSH server.

    ``SshServer(options).start(tunnel)`` listens on tunnel TCP ``ports`` (1 and 22) of every
    tunnel address; :meth:`close` stops listening, disconnects every client and ends every
    session's child process. ``host_key_path`` defaults to ``<options.log_dir>/``
    :data:`HOST_KEY_FILENAME`; the key there is created on the first start and reused after.
    """

    def __init__(self, options: AgentOptions, *, host_key_path: str | None = None,
                 ports: tuple[int, ...] = SSH_PORTS,
                 login_timeout: float = LOGIN_TIMEOUT) -> None:
        self.options = options
        self.host_key_path = host_key_path or os.path.join(options.data_dir(), HOST_KEY_FILENAME)
        self.ports = tuple(ports)
        self.login_timeout = login_timeout
        self._host_key: asyncssh.SSHKey | None = None
        self._acceptors: list[asyncssh.SSHAcceptor] = []
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._sessions: set[_Session] = set()
        self._closed = False

    @property
    def host_key(self) -> asyncssh.SSHKey:
        """The server's private host key (loaded by :meth:`start`)."""
        if self._host_key is None:
            raise RuntimeError("SSH server not started: no host key loaded yet")
        return self._host_key

    async def start(self, tunnel: Tunnel) -> None:
        """Load (or create) the host key and listen on every port in ``ports``.

        Raises OSError if a port is taken or the key file cannot be read or written, and
        ``asyncssh.KeyImportError`` if the key file is not a private key.
        """
        if self._acceptors:
            raise RuntimeError("SSH server already started")
        self._closed = False
        loop = asyncio.get_running_loop()
        self._host_key = await loop.run_in_executor(None, load_host_key, self.host_key_path)
        listener = _TunnelListener(tunnel)
        try:
            for port in self.ports:
                acceptor = await asyncssh.listen(
                    port=port, tunnel=listener,
                    server_factory=lambda: _ConnectionHandler(self),
                    server_host_keys=[self._host_key], config=None,
                    encoding=None, line_editor=False, allow_pty=True,
                    agent_forwarding=False, x11_forwarding=False,
                    login_timeout=self.login_timeout, keepalive_interval=0)
                self._acceptors.append(acceptor)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening, end every session (SIGHUP, then SIGKILL) and disconnect every
        client; returns when the children are reaped and the connections are gone."""
        self._closed = True
        acceptors, self._acceptors = self._acceptors, []
        for acceptor in acceptors:
            acceptor.close()
        sessions = list(self._sessions)
        for session in sessions:
            session.terminate()
        connections = list(self._connections)
        for conn in connections:
            conn.close()
        waits = [conn.wait_closed() for conn in connections]
        waits += [session.wait_done() for session in sessions]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True),
                                       CLOSE_TIMEOUT)
        for acceptor in acceptors:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(acceptor.wait_closed(), CLOSE_TIMEOUT)

    @property
    def session_count(self) -> int:
        """Sessions (shell, exec or subsystem channels) currently open."""
        return len(self._sessions)


# -- sessions ---------------------------------------------------------------------------------

# RFC 4254 §8 encoded terminal modes → termios: control characters (cc index) and flags
# (attribute index 0 iflag, 1 oflag, 3 lflag). Modes this platform lacks are skipped.
_PTY_CC: dict[int, str] = {
    1: "VINTR", 2: "VQUIT", 3: "VERASE", 4: "VKILL", 5: "VEOF", 6: "VEOL", 7: "VEOL2",
    8: "VSTART", 9: "VSTOP", 10: "VSUSP", 12: "VREPRINT", 13: "VWERASE", 14: "VLNEXT",
    18: "VDISCARD",
}
_PTY_FLAGS: dict[int, tuple[int, str]] = {
    30: (0, "IGNPAR"), 31: (0, "PARMRK"), 32: (0, "INPCK"), 33: (0, "ISTRIP"),
    34: (0, "INLCR"), 35: (0, "IGNCR"), 36: (0, "ICRNL"), 37: (0, "IUCLC"), 38: (0, "IXON"),
    39: (0, "IXANY"), 40: (0, "IXOFF"), 41: (0, "IMAXBEL"), 42: (0, "IUTF8"),
    50: (3, "ISIG"), 51: (3, "ICANON"), 52: (3, "XCASE"), 53: (3, "ECHO"), 54: (3, "ECHOE"),
    55: (3, "ECHOK"), 56: (3, "ECHONL"), 57: (3, "NOFLSH"), 58: (3, "TOSTOP"),
    59: (3, "IEXTEN"), 60: (3, "ECHOCTL"), 61: (3, "ECHOKE"), 62: (3, "PENDIN"),
    70: (1, "OPOST"), 71: (1, "OLCUC"), 72: (1, "ONLCR"), 73: (1, "OCRNL"), 74: (1, "ONOCR"),
    75: (1, "ONLRET"),
}


def _apply_term_modes(fd: int, modes: Mapping[int, int]) -> None:
    """Set the RFC 4254 §8 ``modes`` a client sent on the terminal ``fd``."""
    if not modes:
        return
    attrs = termios.tcgetattr(fd)
    cc = attrs[6]
    for opcode, value in modes.items():
        if opcode in _PTY_CC:
            index = getattr(termios, _PTY_CC[opcode], None)
            if index is not None and index < len(cc):
                cc[index] = bytes([value & 0xFF]) if isinstance(cc[index], bytes) else value
        elif opcode in _PTY_FLAGS:
            slot, name = _PTY_FLAGS[opcode]
            bit = getattr(termios, name, None)
            if bit is not None:
                attrs[slot] = attrs[slot] | bit if value else attrs[slot] & ~bit
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _write_eof(stdin: asyncio.StreamWriter) -> None:
    """EOF on a child's stdin pipe, unless the transport is already closed: the child exited
    (or closed its stdin), which the loop may notice before the client's EOF arrives. uvloop's
    pipe transport then raises RuntimeError instead of ignoring the call as asyncio's does."""
    if stdin.transport.is_closing():
        return
    with contextlib.suppress(OSError, RuntimeError):
        stdin.write_eof()


class _Session(asyncssh.SSHServerSession[bytes]):
    """One ``session`` channel: a shell, an exec'd command, or the SFTP subsystem.

    States: *requested* (pty-req, env, …) → *running* (child spawned, or SFTP delegated) →
    *done* (exit reported, channel closed). For SFTP every callback goes to an asyncssh
    ``SSHServerStreamSession`` that runs the SFTP server; otherwise this object relays bytes
    between the channel and the child's PTY master or pipes.
    """

    def __init__(self, server: SshServer, conn: asyncssh.SSHServerConnection) -> None:
        self._server = server
        self._conn = conn
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._sftp: SSHServerStreamSession[bytes] | None = None  # once "sftp" started
        self._command: str | None = None
        self._term: tuple[str, tuple[int, int, int, int], Mapping[int, int]] | None = None
        self._child: Child | None = None
        self._task: asyncio.Task[None] | None = None
        self._master: int | None = None
        self._stdin: asyncio.StreamWriter | None = None
        self._stdin_buffer = bytearray()   # input not yet taken by the PTY master (or the child)
        self._stdin_eof = False
        self._drain: asyncio.Future[None] | None = None  # waiting for the child to read stdin
        self._pumps: asyncio.Future[tuple[None, None]] | None = None  # stdout/stderr → channel
        self._reading_stopped = False      # we asked the channel to stop reading
        self._output_paused = False        # the channel asked us to stop writing
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._done = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        server._sessions.add(self)

    # -- asyncssh callbacks: setup --------------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: Mapping[int, int]) -> bool:
        self._term = (term_type, term_size, dict(term_modes))
        return True

    def shell_requested(self) -> bool:
        return not self._server._closed

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return not self._server._closed

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != "sftp" or self._server._closed or self._chan is None:
            return False
        home = os.fsencode(self._server.options.home)
        chan = self._chan

        def sftp_factory(_chan: Any) -> _Sftp:
            return _Sftp(chan, home)

        # SFTP version 3: what OpenSSH speaks, and asyncssh's default for servers.
        self._sftp = SSHServerStreamSession(None, sftp_factory, SFTP_VERSION)
        self._sftp.connection_made(chan)
        return True

    def session_started(self) -> None:
        if self._sftp is not None:
            self._sftp.session_started()
            return
        self._task = asyncio.ensure_future(self._run())

    # -- asyncssh callbacks: running ------------------------------------------------------

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._sftp is not None:
            self._sftp.data_received(data, datatype)
            return
        if self._stdin_eof:
            return
        if self._master is not None:
            self._stdin_buffer += data
            self._write_master()
        elif self._stdin is not None:
            self._write_stdin(data)
        elif self._child is None:  # not spawned yet: keep it for the child
            self._stdin_buffer += data
            if len(self._stdin_buffer) > STDIN_HIGH_WATER:
                self._stop_reading()

    def eof_received(self) -> bool:
        if self._sftp is not None:
            result: bool = self._sftp.eof_received()
            return result
        self._stdin_eof = True
        # With a PTY there is no half-close: EOF from the client means nothing to the child
        # (OpenSSH's sshd does the same); with pipes the child sees EOF on stdin.
        if self._stdin is not None:
            _write_eof(self._stdin)
        return True  # keep sending output until the child exits

    def pause_writing(self) -> None:
        if self._sftp is not None:
            self._sftp.pause_writing()
            return
        self._output_paused = True
        self._resumed.clear()
        if self._master is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._master)

    def resume_writing(self) -> None:
        if self._sftp is not None:
            self._sftp.resume_writing()
            return
        self._output_paused = False
        self._resumed.set()
        if self._master is not None:
            self._loop.add_reader(self._master, self._on_master_readable)

    def terminal_size_changed(self, width: int, height: int, pixwidth: int,
                              pixheight: int) -> None:
        if self._master is not None:
            with contextlib.suppress(OSError):
                set_window_size(self._master, height, width, pixwidth, pixheight)

    def signal_received(self, signal_name: str) -> None:
        signum = getattr(signal, "SIG" + signal_name, None)
        if self._child is not None and signum is not None:
            self._child.send_signal(signum)

    def break_received(self, msec: int) -> bool:
        if self._master is None:
            return False
        with contextlib.suppress(termios.error):
            termios.tcsendbreak(self._master, 0)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sftp is not None:
            self._sftp.connection_lost(exc)
            self._finish()
            return
        self._chan = None          # output has nowhere to go now
        self._resumed.set()        # so pumps waiting for the window see that and stop
        self.terminate()
        if self._pumps is not None and self._child is not None and not self._child.running:
            self._pumps.cancel()   # the child is gone; what holds its pipes does not matter
        if self._task is None:
            self._finish()

    # -- child process --------------------------------------------------------------------

    def _login(self) -> Login:
        options = self._server.options
        return Login.of(options, fallback_shell=options.environ.get("SHELL"))

    def _environment(self, login: Login, tty: str | None) -> dict[str, str]:
        env = login.environ
        assert self._chan is not None
        env.update(self._chan.get_environment())
        peer = self._conn.get_extra_info("peername") or ("", 0)
        local = self._conn.get_extra_info("sockname") or ("", 0)
        env["SSH_CLIENT"] = f"{peer[0]} {peer[1]} {local[1]}"
        env["SSH_CONNECTION"] = f"{peer[0]} {peer[1]} {local[0]} {local[1]}"
        if self._term is not None:
            env["TERM"] = self._term[0] or "xterm-256color"
            if tty:
                env["SSH_TTY"] = tty
        if self._command is not None:
            env["SSH_ORIGINAL_COMMAND"] = self._command
        return env

    async def _run(self) -> None:
        chan = self._chan
        assert chan is not None
        try:
            status = await (self._run_pty() if self._term is not None else self._run_pipes())
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            # spawn failed: tell the client as sshd does (a message, exit status 127)
            _log.warning("SSH session could not start %r: %s", self._command or "shell", exc)
            with contextlib.suppress(Exception):
                chan.write_stderr(f"agentconn ssh: {exc}\r\n".encode())
                chan.exit(127)
            return
        except Exception:  # noqa: BLE001 - logged; the client gets an exit status
            # A bug of ours must not leave the client waiting for an exit status forever.
            _log.exception("SSH session %r failed", self._command or "shell")
            self.terminate()
            with contextlib.suppress(Exception):
                chan.exit(EXIT_UNKNOWN)
            return
        finally:
            self._finish()
        with contextlib.suppress(Exception):
            if status is None:
                chan.exit(EXIT_UNKNOWN)
            elif status >= 0:
                chan.exit(status)
            else:
                name = signal.Signals(-status).name.removeprefix("SIG")
                chan.exit_with_signal(name)

    async def _run_pipes(self) -> int | None:
        login = self._login()
        child = Child.spawn(
            login.argv(self._command), cwd=login.directory, env=self._environment(login, None),
            stdin=PIPE, stdout=PIPE, stderr=PIPE)
        try:
            stdin, stdout, stderr = await child.open_streams()
        except BaseException:
            child.hang_up(KILL_GRACE, leftovers=True)
            raise
        self._child = child
        assert stdin is not None and stdout is not None and stderr is not None
        self._stdin = stdin
        if self._chan is None:  # the channel went away while we were spawning
            self.terminate()
        if self._stdin_buffer:  # what arrived while we were spawning
            pending = bytes(self._stdin_buffer)
            self._stdin_buffer.clear()
            self._write_stdin(pending)
        if self._stdin_eof:
            _write_eof(stdin)
        # Like sshd, the exit status goes out after stdout and stderr reached EOF, which a
        # background process may delay; once the channel is gone we stop waiting for that.
        pumps = self._pumps = asyncio.gather(
            self._pump(stdout, None), self._pump(stderr, asyncssh.EXTENDED_DATA_STDERR))
        try:
            status = await child.wait()
            if self._chan is None:
                pumps.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumps
        finally:
            self._stdin = None
            stdin.close()
        return status

    async def _pump(self, stream: asyncio.StreamReader, datatype: int | None) -> None:
        while True:
            await self._resumed.wait()
            data = await stream.read(READ_SIZE)
            if not data:
                return
            if not self._write_channel(data, datatype):
                return

    async def _run_pty(self) -> int | None:
        assert self._term is not None
        _, (columns, rows, xpixels, ypixels), modes = self._term
        login = self._login()
        with Terminal(rows, columns, xpixels, ypixels) as terminal:
            try:
                _apply_term_modes(terminal.slave, modes)
            except termios.error as exc:
                _log.debug("could not apply terminal modes %s: %s", modes, exc)
            child = self._child = Child.spawn(
                login.argv(self._command), cwd=login.directory,
                env=self._environment(login, terminal.name), terminal=terminal)
        master = child.master
        assert master is not None
        self._master = master
        if self._chan is None:
            self.terminate()
        if not self._output_paused:
            self._loop.add_reader(master, self._on_master_readable)
        self._write_master()
        try:
            status = await child.wait()
            # Everything the child wrote is in the PTY now; a non-blocking read flushes the
            # line discipline first, and EIO means no process holds the slave any more.
            self._drain_master()
            return status
        finally:
            self._master = None
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(master)
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(master)
            child.close()  # hangs up the terminal: SIGHUP to what is left in its session

    def _on_master_readable(self) -> None:
        master = self._master
        if master is None:
            return
        data = read_terminal(master)
        if data is None:
            return
        # b"": every slave descriptor is closed
        if not data or not self._write_channel(data, None):
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(master)

    def _drain_master(self) -> None:
        if self._master is None:
            return
        # None: someone else still holds the slave; b"": all gone
        while data := read_terminal(self._master):
            if not self._write_channel(data, None):
                return

    def _write_master(self) -> None:
        master = self._master
        if master is None:
            return
        write_terminal(master, self._stdin_buffer)
        if self._stdin_buffer:
            self._loop.add_writer(master, self._write_master)
            if len(self._stdin_buffer) > STDIN_HIGH_WATER:
                self._stop_reading()
        else:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(master)
            self._start_reading()

    def _write_stdin(self, data: bytes) -> None:
        stdin = self._stdin
        if stdin is None or stdin.is_closing():
            return
        stdin.write(data)
        if stdin.transport.get_write_buffer_size() > STDIN_HIGH_WATER:
            self._stop_reading()
            if self._drain is None:
                self._drain = asyncio.ensure_future(self._drain_stdin())
        elif self._drain is None:
            self._start_reading()

    async def _drain_stdin(self) -> None:
        try:
            if self._stdin is not None:
                with contextlib.suppress(ConnectionError, OSError):
                    await self._stdin.drain()
        finally:
            self._drain = None
        self._start_reading()

    def _stop_reading(self) -> None:
        if not self._reading_stopped and self._chan is not None:
            self._reading_stopped = True
            self._chan.pause_reading()

    def _start_reading(self) -> None:
        if self._reading_stopped and self._chan is not None:
            self._reading_stopped = False
            self._chan.resume_reading()

    def _write_channel(self, data: bytes, datatype: int | None) -> bool:
        """Send child output to the client; False once the channel cannot take it."""
        chan = self._chan
        if chan is None:
            return False
        try:
            chan.write(data, datatype)
        except (OSError, asyncssh.Error):
            return False
        return True

    # -- ending ---------------------------------------------------------------------------

    def terminate(self) -> None:
        """End the child and whatever it left in its process group (background jobs that
        still hold its pipes): SIGHUP now, SIGKILL after KILL_GRACE seconds."""
        if self._child is not None and not self._done.is_set():
            self._child.hang_up(KILL_GRACE, leftovers=True)

    def _finish(self) -> None:
        self._server._sessions.discard(self)
        self._done.set()

    async def wait_done(self) -> None:
        """Wait until the child has been reaped (or the SFTP session ended)."""
        await self._done.wait()
