"""``agentconn derp``: starts, relays between two clients, stops cleanly on SIGINT."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import agentconn
from agentconn.cli.derp import load_or_create_key, parse_addr
from agentconn.coder.derp import DerpClient, DerpMap, PacketReceived
from agentconn.coder.keys import NodePrivate

# where agentconn is imported from (the installed wheel under scripts/test.sh, src/ otherwise)
SRC = str(Path(agentconn.__file__).resolve().parents[1])


def test_parse_addr_and_key_file(tmp_path: Path) -> None:
    assert parse_addr("127.0.0.1:3340") == ("127.0.0.1", 3340)
    assert parse_addr(":0") == ("0.0.0.0", 0)
    assert parse_addr("[::1]:80") == ("::1", 80)
    path = tmp_path / "derp.key"
    key = load_or_create_key(str(path))
    assert path.read_text().strip() == str(key) and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(str(path)) == key
    path.write_text(json.dumps({"PrivateKey": str(key)}))  # derper's config file
    assert load_or_create_key(str(path)) == key


async def test_cli_serves_a_pair_and_exits_on_sigint(tmp_path: Path) -> None:
    key_file = tmp_path / "derp.key"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentconn.cli", "derp", "--addr", "127.0.0.1:0",
        "--key-file", str(key_file), "--print-map",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
            map_line = (await proc.stdout.readline()).decode()
        match = re.match(r"DERP server listening on http://127\.0\.0\.1:(\d+)/derp \(key (\S+)\)",
                         line)
        assert match, line
        assert match.group(2) == str(NodePrivate.parse(key_file.read_text().strip()).public)
        derp_map = DerpMap.from_json(json.loads(map_line))
        assert derp_map.regions[1].nodes[0].derp_port == int(match.group(1))
        a = DerpClient(NodePrivate.generate(), derp_map.regions[1])
        b = DerpClient(NodePrivate.generate(), derp_map.regions[1], force_websockets=True)
        await a.connect()
        await b.connect()
        await a.send_packet(b.public_key, b"through the CLI relay")
        async with asyncio.timeout(10):
            while not isinstance(event := await b.next_event(), PacketReceived):
                pass
        assert event.data == b"through the CLI relay"
        await a.close()
        await b.close()
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err
        assert b"DERP server stopped" in out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
