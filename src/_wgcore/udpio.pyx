# cython: language_level=3
"""The UDP socket side of the data path: batched reads and writes straight into PacketBatches.

Linux (``BACKEND == "linux"``): ``recvmmsg`` with UDP_GRO (one read returns many coalesced
datagrams, split here by the segment size in the cmsg) and ``sendmmsg`` with UDP_SEGMENT/GSO
(consecutive same-size datagrams to one destination leave as one super-buffer), as
wireguard-go's conn/bind_std.go and gso_linux.go do (wireguard.md §13). Where the kernel lacks
GRO or GSO, the same calls run with one datagram per message. Other POSIX systems (macOS, the
BSDs), and Linux builds made with ``AGENTCONN_PORTABLE=1`` (``BACKEND == "portable"``), loop
over plain POSIX ``recvmsg``/``sendmsg`` with GRO and GSO off: the same batches and the same
contract, one syscall per datagram. The socket stays owned by Python (the event loop watches
it); this class only borrows its file descriptor.
"""
cimport cython
from cpython.mem cimport PyMem_Malloc, PyMem_Free, PyMem_Calloc, PyMem_Realloc
from libc.errno cimport errno, EAGAIN, EINTR, EIO   # EWOULDBLOCK == EAGAIN on Linux
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset, memcmp

from _wgcore.datapath cimport PacketBatch
from _wgcore.state cimport (PacketDesc, Endpoint, ENDPOINT_MAX, RES_EMPTY, RES_SEALED, RES_RAW,
                            DROP_TRUNCATED, DROP_SEND, DROP_REASONS)

# The one platform seam of the package (issue 17): everything Linux-only is chosen here, by the C
# preprocessor, at compile time. On Linux the real recvmmsg/sendmmsg and UDP_GRO/UDP_SEGMENT are
# used. Elsewhere (macOS, the BSDs, any POSIX system), or on Linux when the build defines
# AGENTCONN_PORTABLE (`AGENTCONN_PORTABLE=1 pip install .`, see setup.py), recvmmsg/sendmmsg are
# loops of plain POSIX recvmsg/sendmsg calls with the same contract (the number of messages
# done, -1 and errno only when the first fails), GRO and GSO are off, and the FORCE buffer
# options are absent. The batching above the syscalls (one Python call per wake-up, no Python
# object per datagram) is the same on both paths; only the number of syscalls differs.
cdef extern from *:
    """
    #include <sys/types.h>
    #include <sys/socket.h>
    #include <sys/uio.h>
    #include <netinet/in.h>
    #include <errno.h>
    #if defined(__linux__) && !defined(AGENTCONN_PORTABLE)
    #define AGENTCONN_UDPIO_LINUX 1
    #define AGENTCONN_UDPIO_BACKEND "linux"
    typedef struct mmsghdr agentconn_mmsghdr;
    #define agentconn_recvmmsg(fd, m, n, fl) recvmmsg((fd), (m), (n), (fl), NULL)
    #define agentconn_sendmmsg(fd, m, n, fl) sendmmsg((fd), (m), (n), (fl))
    #else
    #define AGENTCONN_UDPIO_LINUX 0
    #define AGENTCONN_UDPIO_BACKEND "portable"
    typedef struct { struct msghdr msg_hdr; unsigned int msg_len; } agentconn_mmsghdr;
    static int agentconn_recvmmsg(int fd, agentconn_mmsghdr* m, unsigned int n, int flags) {
        unsigned int i = 0;
        while (i < n) {
            ssize_t r = recvmsg(fd, &m[i].msg_hdr, flags);
            if (r < 0) {
                if (errno == EINTR) continue;
                return i ? (int)i : -1;
            }
            m[i].msg_len = (unsigned int)r;
            i++;
        }
        return (int)n;
    }
    static int agentconn_sendmmsg(int fd, agentconn_mmsghdr* m, unsigned int n, int flags) {
        unsigned int i = 0;
        while (i < n) {
            ssize_t r = sendmsg(fd, &m[i].msg_hdr, flags);
            if (r < 0) {
                if (errno == EINTR) continue;
                return i ? (int)i : -1;
            }
            m[i].msg_len = (unsigned int)r;
            i++;
        }
        return (int)n;
    }
    #endif
    #ifndef SO_RCVBUFFORCE
    #define SO_RCVBUFFORCE (-1)
    #endif
    #ifndef SO_SNDBUFFORCE
    #define SO_SNDBUFFORCE (-1)
    #endif
    """
    const bint UDPIO_LINUX "AGENTCONN_UDPIO_LINUX"
    const char* UDPIO_BACKEND "AGENTCONN_UDPIO_BACKEND"

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr* CMSG_FIRSTHDR(msghdr*)
    cmsghdr* CMSG_NXTHDR(msghdr*, cmsghdr*)
    unsigned char* CMSG_DATA(cmsghdr*)
    size_t CMSG_SPACE(size_t)
    size_t CMSG_LEN(size_t)
    int MSG_DONTWAIT
    int MSG_TRUNC
    int SOL_SOCKET
    int SO_RCVBUF
    int SO_SNDBUF
    int SO_RCVBUFFORCE            # -1 where the platform has none (see the block above)
    int SO_SNDBUFFORCE
    int setsockopt(int fd, int level, int name, const void* value, socklen_t length)
    int getsockopt(int fd, int level, int name, void* value, socklen_t* length)

cdef extern from * nogil:
    ctypedef struct mmsghdr "agentconn_mmsghdr":
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg "agentconn_recvmmsg" (int fd, mmsghdr* msgs, unsigned int vlen, int flags)
    int sendmmsg "agentconn_sendmmsg" (int fd, mmsghdr* msgs, unsigned int vlen, int flags)

#: Which I/O path this build compiled in: ``"linux"`` (recvmmsg/sendmmsg, UDP_GRO/UDP_SEGMENT)
#: or ``"portable"`` (POSIX recvmsg/sendmsg loops; GRO and GSO always off).
BACKEND = UDPIO_BACKEND.decode()

cdef enum:
    SOL_UDP = 17
    UDP_SEGMENT = 103            # wireguard.md §13: u16 segment size, cmsg on send
    UDP_GRO = 104                # int segment size, cmsg on receive
    MAX_GSO_SEGMENTS = 64        # UDP_MAX_SEGMENTS
    MAX_GSO_BYTES = 65000        # below 65535 - 40 - 8 for both families
    NAME_SPACE = 32              # >= sizeof(sockaddr_in6), aligned
    CTRL_SPACE = 64              # >= CMSG_SPACE(sizeof(int))
    SOCKET_BUFFER = 7 * 1024 * 1024   # wireguard-go's socket buffer size
    MAX_SENDMMSG = 1024          # UIO_MAXIOV


@cython.final
cdef class UdpIO:
    """Batched I/O on a non-blocking UDP socket's file descriptor.

    ``recv(batch)`` fills `batch` with what is waiting (returns the number of datagrams, 0 when
    nothing is); ``send(batch)`` sends every sealed/raw descriptor (returns datagrams handed to
    the kernel). Neither raises for per-datagram problems: those are counted in ``counters()``.
    """
    cdef object _sock
    cdef int fd
    cdef readonly bint gro
    cdef readonly bint gso
    cdef mmsghdr* rmsgs
    cdef iovec* riov
    cdef uint8_t* rnames
    cdef uint8_t* rctrl
    cdef uint32_t rcap
    cdef mmsghdr* smsgs
    cdef iovec* siov
    cdef uint32_t* siov_desc       # descriptor index of each iovec (to mark refused datagrams)
    cdef PacketDesc* sdesc         # the batch being sent (valid during _send only)
    cdef uint8_t* sctrl
    cdef uint32_t scap
    cdef uint64_t recv_calls, send_calls, rx_datagrams, tx_datagrams, gso_messages
    cdef uint64_t gro_buffers, truncated, send_errors, send_eagain, desc_overflow
    cdef public int last_send_errno
    cdef readonly bint blocked        # the last send stopped on EAGAIN (socket buffer full)
    cdef readonly uint32_t resume_at  # ...and this descriptor is the first it did not send

    def __cinit__(self, sock, bint gro=True, bint gso=True, int buffer_size=SOCKET_BUFFER):
        self._sock = sock
        self.fd = sock.fileno()
        self.rmsgs = NULL
        self.riov = NULL
        self.rnames = NULL
        self.rctrl = NULL
        self.rcap = 0
        self.smsgs = NULL
        self.siov = NULL
        self.siov_desc = NULL
        self.sdesc = NULL
        self.sctrl = NULL
        self.scap = 0
        self.last_send_errno = 0
        cdef int value = buffer_size
        # Big socket buffers absorb bursts (DATAPATH.md); FORCE needs CAP_NET_ADMIN.
        self._size_buffer(SO_RCVBUFFORCE, SO_RCVBUF, value)
        self._size_buffer(SO_SNDBUFFORCE, SO_SNDBUF, value)
        value = 1
        self.gro = (UDPIO_LINUX and gro
                    and setsockopt(self.fd, SOL_UDP, UDP_GRO, &value, sizeof(int)) == 0)
        cdef socklen_t vlen = sizeof(int)
        self.gso = (UDPIO_LINUX and gso
                    and getsockopt(self.fd, SOL_UDP, UDP_SEGMENT, &value, &vlen) == 0)

    cdef void _size_buffer(self, int force_name, int name, int value) noexcept:
        # Linux: FORCE (CAP_NET_ADMIN) ignores rmem_max/wmem_max, the plain option clamps to them.
        # The BSDs and macOS have no FORCE and refuse (ENOBUFS) a size above kern.ipc.maxsockbuf
        # instead of clamping, so halve until one is accepted.
        if force_name >= 0 and setsockopt(self.fd, SOL_SOCKET, force_name, &value,
                                          sizeof(int)) == 0:
            return
        while setsockopt(self.fd, SOL_SOCKET, name, &value, sizeof(int)) != 0 and value > 65536:
            value //= 2

    def __dealloc__(self):
        PyMem_Free(self.rmsgs)
        PyMem_Free(self.riov)
        PyMem_Free(self.rnames)
        PyMem_Free(self.rctrl)
        PyMem_Free(self.smsgs)
        PyMem_Free(self.siov)
        PyMem_Free(self.siov_desc)
        PyMem_Free(self.sctrl)

    cdef int _reserve_recv(self, uint32_t n) except -1:
        if n <= self.rcap:
            return 0
        PyMem_Free(self.rmsgs); PyMem_Free(self.riov); PyMem_Free(self.rnames); PyMem_Free(self.rctrl)
        self.rmsgs = <mmsghdr*>PyMem_Calloc(n, sizeof(mmsghdr))
        self.riov = <iovec*>PyMem_Calloc(n, sizeof(iovec))
        self.rnames = <uint8_t*>PyMem_Calloc(n, NAME_SPACE)
        self.rctrl = <uint8_t*>PyMem_Calloc(n, CTRL_SPACE)
        if not (self.rmsgs and self.riov and self.rnames and self.rctrl):
            self.rcap = 0
            raise MemoryError()
        self.rcap = n
        return 0

    cdef int _reserve_send(self, uint32_t n) except -1:
        if n <= self.scap:
            return 0
        PyMem_Free(self.smsgs); PyMem_Free(self.siov); PyMem_Free(self.sctrl)
        PyMem_Free(self.siov_desc)
        self.smsgs = <mmsghdr*>PyMem_Calloc(n, sizeof(mmsghdr))
        self.siov = <iovec*>PyMem_Calloc(n, sizeof(iovec))
        self.siov_desc = <uint32_t*>PyMem_Calloc(n, sizeof(uint32_t))
        self.sctrl = <uint8_t*>PyMem_Calloc(n, CTRL_SPACE)
        if not (self.smsgs and self.siov and self.sctrl and self.siov_desc):
            self.scap = 0
            raise MemoryError()
        self.scap = n
        return 0

    def recv(self, PacketBatch batch not None) -> int:
        """Read up to ``batch.slots`` messages; split GRO buffers into datagram descriptors.

        Returns the number of messages read (0 if the socket had nothing). The batch's previous
        contents are discarded.
        """
        cdef uint32_t n = batch.slots
        self._reserve_recv(n)
        cdef int got, err = 0
        cdef uint32_t i
        cdef msghdr* h
        batch.count = 0
        for i in range(n):
            self.riov[i].iov_base = batch.arena + <size_t>i * batch.slot_size
            self.riov[i].iov_len = batch.slot_size
            h = &self.rmsgs[i].msg_hdr
            h.msg_name = self.rnames + <size_t>i * NAME_SPACE
            h.msg_namelen = NAME_SPACE
            h.msg_iov = &self.riov[i]
            h.msg_iovlen = 1
            h.msg_control = self.rctrl + <size_t>i * CTRL_SPACE
            h.msg_controllen = CTRL_SPACE
            h.msg_flags = 0
        with nogil:
            while True:
                got = recvmmsg(self.fd, self.rmsgs, n, MSG_DONTWAIT)
                if got < 0:
                    err = errno
                    if err == EINTR:
                        continue
                break
        self.recv_calls += 1
        if got < 0:
            if err == EAGAIN:
                return 0
            raise OSError(err, f"recvmmsg failed on fd {self.fd}")
        with nogil:
            self._split(batch, got)
        return got

    cdef void _split(self, PacketBatch batch, int got) noexcept nogil:
        cdef int i
        cdef uint32_t length, seg, off, name_len, base
        cdef msghdr* h
        cdef cmsghdr* c
        cdef int gro_size
        cdef PacketDesc* d
        for i in range(got):
            h = &self.rmsgs[i].msg_hdr
            length = self.rmsgs[i].msg_len
            base = <uint32_t>i * batch.slot_size
            name_len = h.msg_namelen if h.msg_namelen <= ENDPOINT_MAX else ENDPOINT_MAX
            seg = 0
            c = CMSG_FIRSTHDR(h)
            while c != NULL:
                if c.cmsg_level == SOL_UDP and c.cmsg_type == UDP_GRO:
                    memcpy(&gro_size, CMSG_DATA(c), sizeof(int))
                    if gro_size > 0:
                        seg = <uint32_t>gro_size
                c = CMSG_NXTHDR(h, c)
            if seg == 0 or seg >= length:
                seg = length if length > 0 else 1
            else:
                self.gro_buffers += 1
            off = 0
            while True:
                if batch.count >= batch.capacity:
                    # No descriptor left for the rest of this buffer: count what is lost.
                    self.desc_overflow += (length - off + seg - 1) // seg
                    break
                d = &batch.desc[batch.count]
                batch.count += 1
                memset(d, 0, sizeof(PacketDesc))
                d.off = base + off
                d.len = seg if off + seg <= length else length - off
                d.msg_index = i
                memcpy(d.addr.addr, h.msg_name, name_len)
                d.addr.len = name_len
                if h.msg_flags & MSG_TRUNC:
                    d.result = DROP_TRUNCATED
                    self.truncated += 1
                else:
                    d.result = RES_EMPTY
                self.rx_datagrams += 1
                off += seg
                if off >= length:
                    break

    def send(self, PacketBatch batch not None, uint32_t start=0) -> int:
        """Send every RES_SEALED/RES_RAW descriptor from index `start` on, coalescing runs for
        GSO. Descriptors addressed to a relay path (an AF_UNSPEC sockaddr) are left alone: the
        caller hands those to the relay.

        Returns the number of datagrams the kernel accepted. Datagrams it refused (unreachable,
        invalid) are marked DROP_SEND and counted. When the socket buffer is full (EAGAIN) the
        send stops there instead: ``blocked`` becomes true and ``resume_at`` names the first
        descriptor not sent, so the caller can wait for writability and call
        ``send(batch, resume_at)`` — backpressure rather than loss.
        """
        self._reserve_send(batch.count + 1)
        cdef int sent
        self.blocked = False
        self.resume_at = batch.count
        with nogil:
            sent = self._send(batch, start)
        return sent

    cdef int _send(self, PacketBatch batch, uint32_t start) noexcept nogil:
        cdef uint32_t i, nmsg = 0, niov = 0, seg_size = 0, seg_count = 0, group_bytes = 0
        cdef uint32_t first_desc = 0
        cdef PacketDesc* d
        cdef PacketDesc* head = NULL
        cdef msghdr* h
        cdef cmsghdr* c
        cdef uint16_t seg16
        cdef bint join
        cdef int sent_datagrams = 0
        # Map each message back to its first descriptor and count, to mark failures.
        for i in range(start, batch.count):
            d = &batch.desc[i]
            if d.result != RES_SEALED and d.result != RES_RAW:
                continue
            if d.addr.len >= 2 and d.addr.addr[0] == 0 and d.addr.addr[1] == 0:
                continue        # AF_UNSPEC: a relay path (wg.endpoint.relay_sockaddr), not ours
            join = False
            if head != NULL and self.gso and seg_count < MAX_GSO_SEGMENTS \
                    and group_bytes + d.len <= MAX_GSO_BYTES and d.len <= seg_size \
                    and d.addr.len == head.addr.len \
                    and memcmp(d.addr.addr, head.addr.addr, d.addr.len) == 0:
                # wireguard.md §13: equal sizes join; a shorter one joins and ends the run.
                join = True
            if join:
                self.siov[niov].iov_base = batch.arena + d.off
                self.siov[niov].iov_len = d.len
                self.siov_desc[niov] = i
                niov += 1
                seg_count += 1
                group_bytes += d.len
                self.smsgs[nmsg - 1].msg_hdr.msg_iovlen += 1
                if d.len < seg_size:
                    head = NULL          # a short datagram closes the run
                continue
            # Start a new message.
            h = &self.smsgs[nmsg].msg_hdr
            memset(h, 0, sizeof(msghdr))
            self.smsgs[nmsg].msg_len = 0
            h.msg_name = d.addr.addr
            h.msg_namelen = d.addr.len
            self.siov[niov].iov_base = batch.arena + d.off
            self.siov[niov].iov_len = d.len
            self.siov_desc[niov] = i
            h.msg_iov = &self.siov[niov]
            h.msg_iovlen = 1
            niov += 1
            nmsg += 1
            head = d
            seg_size = d.len
            seg_count = 1
            group_bytes = d.len
        # Attach UDP_SEGMENT to every message that carries more than one datagram.
        for i in range(nmsg):
            h = &self.smsgs[i].msg_hdr
            if h.msg_iovlen > 1:
                h.msg_control = self.sctrl + <size_t>i * CTRL_SPACE
                h.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
                c = CMSG_FIRSTHDR(h)
                c.cmsg_level = SOL_UDP
                c.cmsg_type = UDP_SEGMENT
                c.cmsg_len = CMSG_LEN(sizeof(uint16_t))
                seg16 = <uint16_t>h.msg_iov[0].iov_len
                memcpy(CMSG_DATA(c), &seg16, sizeof(uint16_t))
                self.gso_messages += 1
        self.sdesc = batch.desc
        sent_datagrams = self._sendmmsg_all(nmsg)
        self.sdesc = NULL
        self.tx_datagrams += sent_datagrams
        return sent_datagrams

    cdef int _sendmmsg_all(self, uint32_t nmsg) noexcept nogil:
        cdef uint32_t done = 0, chunk, j, k
        cdef int r, err
        cdef int datagrams = 0
        cdef msghdr* h
        while done < nmsg:
            chunk = nmsg - done
            if chunk > MAX_SENDMMSG:
                chunk = MAX_SENDMMSG
            r = sendmmsg(self.fd, &self.smsgs[done], chunk, MSG_DONTWAIT)
            self.send_calls += 1
            if r > 0:
                for j in range(<uint32_t>r):
                    datagrams += self.smsgs[done + j].msg_hdr.msg_iovlen
                done += <uint32_t>r
                continue
            err = errno
            if err == EINTR:
                continue
            h = &self.smsgs[done].msg_hdr
            self.last_send_errno = err
            if err == EIO and h.msg_iovlen > 1 and self.gso:
                # wireguard.md §13: EIO means no GSO on this path; resend one by one, GSO off.
                self.gso = False
                datagrams += self._send_split(h)
                done += 1
                continue
            if err == EAGAIN:
                self.send_eagain += 1
                self.blocked = True
                self.resume_at = self.siov_desc[<size_t>(h.msg_iov - self.siov)]
                break
            self.send_errors += 1
            self._mark_refused(h, 0, h.msg_iovlen)
            # Skip the message the kernel refused (UDP is lossy; the tunnel above recovers).
            done += 1
        return datagrams

    cdef int _send_split(self, msghdr* h) noexcept nogil:
        cdef msghdr one
        cdef size_t k
        cdef int datagrams = 0
        cdef mmsghdr m
        for k in range(h.msg_iovlen):
            memset(&m, 0, sizeof(mmsghdr))
            m.msg_hdr.msg_name = h.msg_name
            m.msg_hdr.msg_namelen = h.msg_namelen
            m.msg_hdr.msg_iov = &h.msg_iov[k]
            m.msg_hdr.msg_iovlen = 1
            if sendmmsg(self.fd, &m, 1, MSG_DONTWAIT) == 1:
                datagrams += 1
            else:
                self.send_errors += 1
                self._mark_refused(h, k, 1)
        return datagrams

    cdef void _mark_refused(self, msghdr* h, size_t first, size_t count) noexcept nogil:
        # The datagrams of message `h` the kernel refused: DROP_SEND on their descriptors.
        cdef size_t base = <size_t>(h.msg_iov - self.siov)
        cdef size_t k
        for k in range(first, first + count):
            self.sdesc[self.siov_desc[base + k]].result = DROP_SEND

    def counters(self) -> dict:
        return {
            "recv_calls": self.recv_calls, "send_calls": self.send_calls,
            "rx_datagrams": self.rx_datagrams, "tx_datagrams": self.tx_datagrams,
            "gso_messages": self.gso_messages, "gro_buffers": self.gro_buffers,
            "truncated": self.truncated, "send_errors": self.send_errors,
            "send_eagain": self.send_eagain, "desc_overflow": self.desc_overflow, "gro": bool(self.gro), "gso": bool(self.gso),
        }
