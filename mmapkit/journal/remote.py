"""Remote readers: ``serve(journal, address)`` and ``RemoteReader(address)``.

Design rules:

- The server sends whole batches exactly as they lie in the segment files, with
  ``mmapkit.send`` (sendfile to TCP, splice to Unix sockets): the bytes never enter Python.
  For FETCH it walks the batches, checking structure and offsets but not CRCs.  For
  FETCH_CHECKED (the client checks everything) it reads only the first batch's header
  and, from the offset index, where the span ends: the pages between are not even mapped
  in (walking a cold 8 MiB span cost more server CPU than splicing it).  Damage inside
  such a span is found by the client, which then asks again with FETCH: a walk that
  stops short of the damage tells damage on the server's disk (the good batches are
  used, the damage reported as CorruptFileError by the next fetch, as a local reader
  does) from damage on the wire (ProtocolError).
- The client verifies every batch (CRC, structure, offset continuity from the offset it
  asked for) before it returns a record, so damage on the wire, or on the server's disk,
  is :class:`ProtocolError`, never a wrong record.  After a ProtocolError the connection is
  closed (the framing can no longer be trusted); the next call reconnects.  It checks the
  batches of a reply as its bytes arrive (1 MiB at a time), so the checking overlaps the
  server's sending; the CRC is ISA-L's where the ``isal`` extra is installed
  (mmapkit._crc: zlib's values, 10x its speed).  Over a Unix socket these took a fetch
  from 0.31x to ~0.66x of a raw send of the same bytes.
- A FETCH_CHECKED reply names the offset after its last batch, and when the journal
  holds more the client sends the next request before it receives and checks this reply
  (one request ahead at most): the server's next span follows this one with no round
  trip between.  Unix sockets get buffers of a few MiB, so the server runs ahead while
  the client checks.
- At the end of the journal the server long-polls: it sleeps on the journal's notify word
  (futex) up to the wait the client asked for, in slices that notice a closing server.
- Nothing waits forever: the client bounds each reply by ``wait + io_timeout``, the server
  bounds each reply's send by ``io_timeout`` (the socket blocks so sendfile moves a span
  in one call; a janitor thread shuts down a connection whose send outlasts it) and an
  idle connection by ``idle_timeout``.  A killed
  peer is EOF or a reset, which ends only that connection.
- One thread per connection, each with its own Journal handle (a Journal's tail view is
  not shared between threads); a finished connection's handle is kept (up to 4) for the
  next one, since opening a handle was a third of a short connection's set-up.

Wire protocol, version 1 (little-endian; both frames carry a CRC32 of their other bytes):

    ==========  ===========================================================================
    frame       fields
    ==========  ===========================================================================
    request     ``<4sHHQIII`` (28 bytes): magic ``MKJQ``, version 1, kind, offset,
                max_bytes, wait_ms, crc32 of the first 24 bytes.  kind 1 = FETCH (batches
                from ``offset``), kind 2 = OFFSETS (only the start and end offsets),
                kind 3 = FETCH_CHECKED (as FETCH, for a client that checks every batch
                itself; servers say they take it in OFFSETS' aux).  A client may send a
                request before it has read the reply to the last (replies come in order)
    response    ``<4sHHIQQQI`` (40 bytes): magic ``MKJS``, version 1, status, payload
                length, start offset, end offset, aux, crc32 of the first 36 bytes; then
                ``length`` payload bytes
    ==========  ===========================================================================

    ===================  ===============  ==============================================
    situation            status / aux     payload; what happens next
    ===================  ===============  ==============================================
    FETCH, data there    0 OK / first     whole batches (at least one, even past
                         offset of the    max_bytes), all from one segment; the first
                         first batch      batch may start before ``offset`` (the client
                                          skips those records)
    FETCH at the end     0 OK / offset    empty, after waiting up to wait_ms for a
                                          record; the client asks again
    FETCH_CHECKED        0 OK / offset    as FETCH; the batches were not walked, only
                         after the last   the first one's header and the index entry
                         batch            naming the end were read
    OFFSETS              0 OK / features  empty; start and end in the header; aux bit 0:
                                          FETCH_CHECKED taken (0 from older servers)
    offset below start   1 OUT_OF_RANGE   empty; connection stays open; the client
    or past the end        / offset       raises OffsetOutOfRangeError(start, end)
    damaged batches on   4 DAMAGED /      UTF-8 message; connection stays open; the
    the server's disk      resume offset  client raises CorruptFileError and resumes at
                                          aux (as a local reader does)
    bad magic, CRC,      2 BAD_REQUEST /  UTF-8 message; the server closes (framing is
    kind or max_bytes      0              lost); the client raises ProtocolError
    other version        3 VERSION / 0    empty, header carries the server's version;
                                          the server closes; FormatVersionError
    server error         5 ERROR / 0      UTF-8 message; the server closes
    server closing       --               the server shuts the socket down: the client
                                          reads EOF -> BrokenError (also on kill -9)
    client gone          --               EOF/reset on the server: that connection's
                                          thread ends; others carry on
    ===================  ===============  ==============================================
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Union

from ..errors import (
    BrokenError,
    CorruptFileError,
    FormatVersionError,
    OffsetOutOfRangeError,
)
from ..transfer import send
from . import _format as F
from ._format import Record

if TYPE_CHECKING:
    from .journal import Journal
    from .reader import Reader

__all__ = ["JournalServer", "ProtocolError", "RemoteReader", "serve"]

PROTOCOL_VERSION = 1
REQUEST = struct.Struct("<4sHHQIII")
RESPONSE = struct.Struct("<4sHHIQQQI")
REQ_MAGIC = b"MKJQ"
RESP_MAGIC = b"MKJS"
FETCH, OFFSETS, FETCH_CHECKED = 1, 2, 3
FEATURE_CHECKED = 1  # OFFSETS reply's aux bit: this server takes FETCH_CHECKED
OK, OUT_OF_RANGE, BAD_REQUEST, VERSION, DAMAGED, ERROR = 0, 1, 2, 3, 4, 5
MAX_FETCH_BYTES = 64 << 20
MAX_WAIT_MS = 60_000
_SLICE = 0.1
_IDLE_HANDLES = 4  # Journal handles kept for the next connections
_MSG_MORE = getattr(socket, "MSG_MORE", 0)

Address = Union[str, tuple[str, int]]  # noqa: UP007


class ProtocolError(BrokenError):
    """The bytes from a journal server are not what the protocol allows (damaged on the
    wire, or a server of another kind); the connection was closed."""


def _crc(frame: bytes | bytearray | memoryview, n: int) -> int:
    return zlib.crc32(memoryview(frame)[:n])


def encode_request(kind: int, offset: int, max_bytes: int, wait_ms: int,
                   version: int = PROTOCOL_VERSION) -> bytes:
    raw = bytearray(REQUEST.pack(REQ_MAGIC, version, kind, offset, max_bytes, wait_ms, 0))
    struct.pack_into("<I", raw, 24, _crc(raw, 24))
    return bytes(raw)


def encode_response(status: int, length: int, start: int, end: int, aux: int,
                    version: int = PROTOCOL_VERSION) -> bytes:
    raw = bytearray(RESPONSE.pack(RESP_MAGIC, version, status, length, start, end, aux, 0))
    struct.pack_into("<I", raw, 36, _crc(raw, 36))
    return bytes(raw)


def _timeval(seconds: float) -> bytes:
    """A struct timeval for SO_RCVTIMEO / SO_SNDTIMEO (0 would mean "forever": at least
    1 us)."""
    usec = max(1, round(seconds * 1e6))
    return _TIMEVAL.pack(usec // 1_000_000, usec % 1_000_000)


def parse_address(address: Address) -> tuple[int, str | tuple[str, int]]:
    """(family, address): ``("host", port)`` or ``"host:port"`` is TCP; a path is Unix."""
    if isinstance(address, tuple):
        return socket.AF_INET, (address[0], int(address[1]))
    text = os.fspath(address)
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and "/" not in text:
        return socket.AF_INET, (host or "127.0.0.1", int(port))
    return socket.AF_UNIX, text


def _recv_exact(sock: socket.socket, n: int, into: bytearray | None = None) -> bytearray:
    buf = into if into is not None else bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:n])
        if k == 0:
            raise BrokenError(f"the peer closed the connection ({got} of {n} bytes of a "
                              "frame received)")
        got += k
    return buf


_MSG_WAITALL = getattr(socket, "MSG_WAITALL", 0)
_Q = struct.Struct("<Q")
_TIMEVAL = struct.Struct("@ll")


def _recv_all(sock: socket.socket, view: memoryview, n: int) -> None:
    """The client's receive: ``n`` bytes into ``view`` on a *blocking* socket whose
    SO_RCVTIMEO bounds each call (a socket with a Python timeout polls before every recv:
    two system calls per socket buffer).  MSG_WAITALL lets the kernel fill a whole reply
    in one call.  EOF is BrokenError; a call that timed out is TimeoutError."""
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:n], n - got, _MSG_WAITALL)
        except BlockingIOError:  # EAGAIN: SO_RCVTIMEO passed with nothing received
            raise TimeoutError("timed out") from None
        if k == 0:
            raise BrokenError(f"the peer closed the connection ({got} of {n} bytes of a "
                              "frame received)")
        got += k


_UNIX_BUFFER = 4 << 20


def _big_buffers(sock: socket.socket) -> None:
    """Socket buffers of a few MiB on a Unix socket (the kernel caps them at
    net.core.wmem_max / rmem_max): the default ~200 KiB makes a span's splice stop and
    wake the reader every 200 KiB (a context switch each way); with room for MiBs the
    sender runs ahead while the reader checks what it has."""
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, _UNIX_BUFFER)


_CHUNK = 1 << 20  # a fetch reply is received (and its batches checked) this much at a time


def _recv_some(sock: socket.socket, view: memoryview, got: int, n: int) -> int:
    """The next chunk of bytes ``got``..``n`` of a reply (less only when SO_RCVTIMEO
    passed with some received), as _recv_all: with MSG_WAITALL a chunk is one system
    call and one check of its batches, not one of each per socket buffer's worth (a
    third of the checks' Python steps, measured)."""
    try:
        k = sock.recv_into(view[got:n], min(n - got, _CHUNK), _MSG_WAITALL)
    except BlockingIOError:  # EAGAIN: SO_RCVTIMEO passed with nothing received
        raise TimeoutError("timed out") from None
    if k == 0:
        raise BrokenError(f"the peer closed the connection ({got} of {n} bytes of a frame "
                          "received)")
    return k


class _Verifier:
    """The client's check of a FETCH reply (``length`` bytes asked from ``offset``, the
    first batch at ``first``), fed the bytes as they arrive: every batch whole, in offset
    order from ``first``, its CRC right (_format.check_batches); the reply ends on a
    batch boundary past ``offset``.  BatchError otherwise.  ``next``: the offset after
    the last batch.  A FETCH_CHECKED reply names ``end``, the offset after its last batch,
    instead of ``first`` (None): ``first`` is then the first batch's own (outside its CRC,
    so the batches' continuity up to ``end`` is what vouches for it)."""

    __slots__ = ("end", "length", "next", "offset", "pos")

    def __init__(self, offset: int, first: int | None, length: int, end: int = -1) -> None:
        if first is not None and not first <= offset:
            raise F.BatchError(f"the reply starts at offset {first}, after the {offset} "
                               "asked for")
        self.offset, self.length, self.pos, self.end = offset, length, 0, end
        self.next = -1 if first is None else first

    def __call__(self, data: memoryview, got: int) -> None:
        """Check the batches wholly within ``data[:got]`` not checked yet."""
        if self.next < 0:
            if got < F.BATCH_HEADER:
                return  # (the first batch's header is not all here yet)
            (first,) = _Q.unpack_from(data, 8)
            if first > self.offset:
                raise F.BatchError(f"the reply starts at offset {first}, after the "
                                   f"{self.offset} asked for")
            self.next = first
        self.pos, self.next, problem = F.check_batches(data, self.pos, got, self.length,
                                                       self.next)
        if problem is not None:
            raise problem

    def done(self) -> None:
        if self.pos != self.length:
            raise F.BatchError(f"the reply ends inside a batch ({self.length - self.pos} "
                               "bytes left)")
        if self.next <= self.offset:
            raise F.BatchError(f"the reply ends at offset {self.next}, before the "
                               f"{self.offset} asked for")
        if self.end >= 0 and self.next != self.end:
            raise F.BatchError(f"the reply ends at offset {self.next}, its header says "
                               f"{self.end}")


# --- server --------------------------------------------------------------------------------


class JournalServer:
    """Serves one journal to RemoteReaders; see :func:`serve`.  Close it (or use it as a
    context manager) to stop: open connections are shut down, long polls end."""

    def __init__(self, journal: Journal, address: Address, *, io_timeout: float = 10.0,
                 idle_timeout: float | None = 600.0, backlog: int = 64) -> None:
        self._path = journal.path
        self.io_timeout = io_timeout
        self.idle_timeout = idle_timeout
        family, addr = parse_address(address)
        self._unix_path: str | None = None
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_UNIX:
                assert isinstance(addr, str)
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISSOCK(os.stat(addr).st_mode):
                        os.unlink(addr)  # a socket left by a server that died
                sock.bind(addr)
                self._unix_path = addr
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.address: str | tuple[str, int] = sock.getsockname()
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle: list[Journal] = []  # handles a finished connection left (_conns_lock)
        self._sending: dict[socket.socket, float] = {}  # connection -> send started
        self._accepter = threading.Thread(target=self._accept_loop, daemon=True,
                                          name="mmapkit-journal-accept")
        self._accepter.start()
        self._janitor = threading.Thread(target=self._janitor_loop, daemon=True,
                                         name="mmapkit-journal-janitor")
        self._janitor.start()

    def _janitor_loop(self) -> None:
        """Shut down a connection whose reply has been sending for longer than
        io_timeout (a client that stopped reading): its thread's send fails and ends."""
        while not self._stop.wait(min(0.5, self.io_timeout / 4)):
            now = time.monotonic()
            for conn, since in list(self._sending.items()):
                if now - since > self.io_timeout:
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)

    @property
    def address_text(self) -> str:
        if isinstance(self.address, tuple):
            return f"{self.address[0]}:{self.address[1]}"
        return str(self.address)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with self._conns_lock:
                if self._stop.is_set():
                    conn.close()
                    return
                self._conns.add(conn)
            t = threading.Thread(target=self._serve_conn, args=(conn,), daemon=True,
                                 name="mmapkit-journal-conn")
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
            t.start()

    def _serve_conn(self, conn: socket.socket) -> None:
        j: Journal | None = None
        reader: Reader | None = None
        try:
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                _big_buffers(conn)
            j = self._take_journal()
            while not self._stop.is_set():
                conn.settimeout(self.idle_timeout)
                try:
                    req = _recv_exact(conn, REQUEST.size)
                except (BrokenError, OSError):
                    return  # the client went away (or idled out)
                conn.settimeout(self.io_timeout)
                magic, version, kind, offset, max_bytes, wait_ms, crc = REQUEST.unpack(req)
                if magic != REQ_MAGIC or crc != _crc(req, 24):
                    self._refuse(conn, BAD_REQUEST, "not a journal request (bad magic or "
                                 "CRC)")
                    return
                if version != PROTOCOL_VERSION:
                    conn.sendall(encode_response(VERSION, 0, 0, 0, 0))
                    return
                if kind == OFFSETS:
                    conn.sendall(encode_response(OK, 0, j.start_offset, j.end_offset,
                                                 FEATURE_CHECKED))
                    continue
                if kind not in (FETCH, FETCH_CHECKED) or not 0 < max_bytes <= MAX_FETCH_BYTES or \
                        wait_ms > MAX_WAIT_MS:
                    self._refuse(conn, BAD_REQUEST, f"bad request: kind {kind}, max_bytes "
                                 f"{max_bytes} (1..{MAX_FETCH_BYTES}), wait_ms {wait_ms} "
                                 f"(<= {MAX_WAIT_MS})")
                    return
                reader = self._fetch(conn, j, reader, offset, max_bytes, wait_ms,
                                     kind == FETCH_CHECKED)
        except (BrokenError, OSError):
            return  # the client went away mid-reply, or stopped reading (timeout)
        except Exception as exc:  # report it to the client, then close
            with contextlib.suppress(OSError):
                self._refuse(conn, ERROR, f"server error: {type(exc).__name__}: {exc}")
            if j is not None:
                j.close()  # (not handed on: whatever failed may have been in it)
        finally:
            if reader is not None:
                reader.close()
            with self._conns_lock:
                self._conns.discard(conn)
                if j is not None and not j.closed:
                    if self._stop.is_set() or len(self._idle) >= _IDLE_HANDLES:
                        j.close()
                    else:
                        self._idle.append(j)
            conn.close()

    def _take_journal(self) -> Journal:
        """A handle a finished connection left, or a new one (opening one costs a few
        hundred us: a connection's set-up, most of a short one's round trip)."""
        from .journal import Journal

        with self._conns_lock:
            if self._idle:
                return self._idle.pop()
        return Journal(self._path)

    def _refuse(self, conn: socket.socket, status: int, message: str) -> None:
        body = message.encode()
        conn.sendall(encode_response(status, len(body), 0, 0, 0) + body)

    def _fetch(self, conn: socket.socket, j: Journal, reader: Reader | None, offset: int,
               max_bytes: int, wait_ms: int, checked: bool) -> Reader | None:
        if reader is None or reader.position != offset:
            if reader is not None:
                reader.close()
                reader = None
            try:
                reader = j.reader(offset)
            except OffsetOutOfRangeError as exc:
                conn.sendall(encode_response(OUT_OF_RANGE, 0, exc.start, exc.end, offset))
                return None
        deadline = time.monotonic() + wait_ms / 1000
        meta = j._check_open()
        waiter = j._get_waiter()
        while True:
            seen = waiter.load()
            try:
                span = reader.next_span(max_bytes, trust_index=checked)
            except OffsetOutOfRangeError as exc:
                conn.sendall(encode_response(OUT_OF_RANGE, 0, exc.start, exc.end, offset))
                reader.close()
                return None
            except CorruptFileError as exc:
                body = str(exc).encode()
                conn.sendall(encode_response(DAMAGED, len(body), j.start_offset,
                                             j.end_offset, reader.position) + body)
                return reader
            if span is not None:
                seg, pos, length, first = span
                head = encode_response(OK, length, j.start_offset, j.end_offset,
                                       reader.position if checked else first)
                # A blocking socket lets sendfile move the whole span in one call (a
                # socket timeout makes it non-blocking: a poll per socket buffer, half
                # the rate measured); the janitor bounds the send by io_timeout instead.
                conn.settimeout(None)
                self._sending[conn] = time.monotonic()
                try:
                    conn.sendall(head, _MSG_MORE)
                    send(conn, seg.fileno(), pos, length)
                finally:
                    self._sending.pop(conn, None)
                    conn.settimeout(self.io_timeout)
                return reader
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                conn.sendall(encode_response(OK, 0, j.start_offset, j.end_offset, offset))
                return reader
            meta.u32[F.OFF_WAITERS // 4] = 1
            if waiter.load() != seen:
                continue
            waiter.wait(seen, min(remaining, _SLICE))

    def close(self) -> None:
        """Stop accepting, shut every connection down, wait for the threads."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self._conns_lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
        self._accepter.join(5)
        self._janitor.join(5)
        for t in self._threads:
            t.join(5)
        with self._conns_lock:
            idle, self._idle = self._idle, []
        for j in idle:
            j.close()
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)

    def __enter__(self) -> JournalServer:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<JournalServer {self._path} on {self.address_text}>"


def serve(journal: Journal, address: Address, *, io_timeout: float = 10.0,
          idle_timeout: float | None = 600.0) -> JournalServer:
    """Serve ``journal`` to :class:`RemoteReader` clients at ``address`` (``"host:port"``,
    ``("host", port)`` -- port 0 picks a free one, see ``server.address`` -- or a Unix
    socket path) from background threads until the returned server is closed."""
    return JournalServer(journal, address, io_timeout=io_timeout, idle_timeout=idle_timeout)


# --- client --------------------------------------------------------------------------------


class RemoteReader:
    """Records of a served journal, fetched in whole verified batches.

    ``poll(max_records, timeout)`` returns what is there (waiting up to ``timeout``
    seconds for the first record at the end of the journal); iteration with
    ``follow=True`` tails.  ``io_timeout`` bounds how long a silent server may take
    beyond the long poll before TimeoutError.  A server gone (closed or killed) is
    BrokenError; damaged bytes are ProtocolError; an offset retention removed is
    OffsetOutOfRangeError (``seek`` and go on)."""

    def __init__(self, address: Address, from_offset: str | int = "earliest", *,
                 follow: bool = False, timeout: float | None = None,
                 io_timeout: float = 10.0, max_bytes: int = 1 << 20) -> None:
        if not 0 < max_bytes <= MAX_FETCH_BYTES:
            raise ValueError(f"max_bytes must be in (0, {MAX_FETCH_BYTES}], got {max_bytes}")
        self._family, self._addr = parse_address(address)
        self.follow = follow
        self.timeout = timeout
        self.io_timeout = io_timeout
        self.max_bytes = max_bytes
        self._sock: socket.socket | None = None
        self._buf = bytearray(max_bytes + F.BATCH_HEADER)
        self._head = bytearray(RESPONSE.size)
        self._rcvtimeo = -1.0  # the SO_RCVTIMEO set on the socket (-1: none yet)
        self._checked: bool | None = None  # the server takes FETCH_CHECKED (None: not
        #                                    known on this connection yet)
        self._got = 0  # bytes of the reply being received so far
        self._ahead = -1  # offset of a FETCH_CHECKED sent before its turn, reply unread
        self._records: list[Record] = []
        self._ri = 0
        self._next = 0
        self.start_offset = 0
        self.end_offset = 0
        self._closed = False
        self.seek(from_offset)

    # --- connection -------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        if self._closed:
            from ..errors import ClosedError
            raise ClosedError("the remote reader is closed")
        if self._sock is None:
            sock = socket.socket(self._family, socket.SOCK_STREAM)
            sock.settimeout(self.io_timeout)
            try:
                sock.connect(self._addr)
                if self._family != socket.AF_UNIX:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                else:
                    _big_buffers(sock)
            except OSError as exc:
                sock.close()
                raise BrokenError(f"cannot reach the journal server at {self._addr!r}: "
                                  f"{exc}") from exc
            # From here blocking, bounded by the kernel's SO_RCVTIMEO / SO_SNDTIMEO (set
            # per call by _timeout): one system call per receive, none to poll
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(self.io_timeout))
            self._rcvtimeo = -1.0
            self._checked = None
            self._sock = sock
        return self._sock

    def _timeout(self, sock: socket.socket, seconds: float) -> None:
        if seconds != self._rcvtimeo:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
            self._rcvtimeo = seconds

    def _disconnect(self) -> None:
        self._ahead = -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _ask_ahead(self, offset: int) -> None:
        """Send the FETCH_CHECKED of the reply after the one being received (no wait):
        the server sends it as soon as it has sent this one, so no round trip (request,
        wake-up, span lookup) separates two replies while the client checks batches."""
        assert self._sock is not None
        try:
            self._sock.sendall(encode_request(FETCH_CHECKED, offset, self.max_bytes, 0))
        except (BlockingIOError, OSError) as exc:
            self._disconnect()
            raise BrokenError(f"the journal server at {self._addr!r} closed the connection "
                              f"({exc}); it stopped or died; retry later") from exc
        self._ahead = offset

    def _skip_ahead(self) -> None:
        """Read and drop the reply to a request sent ahead."""
        if self._ahead >= 0:
            self._ahead = -1
            length = self._call(FETCH_CHECKED, 0, 0, sent=True)[1]
            if length:
                self._payload(length)

    def _call(self, kind: int, offset: int, wait_ms: int, *, sent: bool = False
              ) -> tuple[int, int, int, int, int]:
        """Send one request (unless ``sent`` ahead), read one response header: (status,
        length, start, end, aux)."""
        sock = self._connect()
        try:
            self._timeout(sock, self.io_timeout + wait_ms / 1000)
            if not sent:
                sock.sendall(encode_request(kind, offset, self.max_bytes, wait_ms))
            head = self._head
            _recv_all(sock, memoryview(head), RESPONSE.size)
        except (TimeoutError, BlockingIOError):  # (EAGAIN: SO_SNDTIMEO passed)
            self._disconnect()
            raise TimeoutError(f"the journal server at {self._addr!r} did not answer within "
                               f"{self.io_timeout + wait_ms / 1000:.1f} s") from None
        except (BrokenError, OSError) as exc:
            self._disconnect()
            raise BrokenError(f"the journal server at {self._addr!r} closed the connection "
                              f"({exc}); it stopped or died; retry later") from exc
        magic, version, status, length, start, end, aux, crc = RESPONSE.unpack(head)
        if magic != RESP_MAGIC or crc != _crc(head, 36):
            self._disconnect()
            raise ProtocolError(f"a damaged or foreign response from {self._addr!r} (bad "
                                "magic or header CRC)")
        if status == VERSION:
            self._disconnect()
            raise FormatVersionError(
                f"the journal server at {self._addr!r} speaks protocol version {version}, "
                f"this client {PROTOCOL_VERSION}; use matching mmapkit versions",
                found=version, supported=PROTOCOL_VERSION)
        if version != PROTOCOL_VERSION or status > ERROR or \
                length > self.max_bytes + MAX_FETCH_BYTES:
            self._disconnect()
            raise ProtocolError(f"a response from {self._addr!r} that protocol version "
                                f"{PROTOCOL_VERSION} does not allow (version {version}, "
                                f"status {status}, length {length})")
        self.start_offset, self.end_offset = start, end
        if kind == OFFSETS and status == OK:
            self._checked = bool(aux & FEATURE_CHECKED)  # (older servers: aux 0)
        return status, length, start, end, aux

    def _payload(self, length: int, check: Callable[[memoryview, int], None] | None = None
                 ) -> memoryview:
        """Receive a reply's ``length`` bytes.  ``check(view, got)``: called as bytes arrive
        (a chunk at a time, what the socket holds): the whole batches among them are
        verified while the server sends the rest, instead of after the last byte."""
        if length > len(self._buf):
            self._buf = bytearray(length)
        sock = self._sock
        assert sock is not None
        view = memoryview(self._buf)
        try:
            self._timeout(sock, self.io_timeout)
            if check is None:
                _recv_all(sock, view, length)
                self._got = length
            else:
                self._got = 0
                while self._got < length:
                    self._got += _recv_some(sock, view, self._got, length)
                    check(view, self._got)
        except TimeoutError:
            self._disconnect()
            raise TimeoutError(f"the journal server at {self._addr!r} stalled mid-reply") from None
        except (BrokenError, OSError) as exc:
            self._disconnect()
            raise BrokenError(f"the journal server at {self._addr!r} closed the connection "
                              f"mid-reply ({exc})") from exc
        return view[:length]

    # --- fetching ---------------------------------------------------------------------

    @property
    def position(self) -> int:
        """The offset of the next record this reader returns."""
        if self._ri < len(self._records):
            return self._records[self._ri].offset
        return self._next

    def seek(self, offset: str | int) -> None:
        """Go to ``"earliest"``, ``"latest"`` or an offset (checked at the next fetch)."""
        self._records, self._ri = [], 0
        if self._ahead >= 0:
            self._disconnect()  # (a reply asked for ahead is not wanted now)
        if offset in ("earliest", "latest"):
            self._call(OFFSETS, 0, 0)
            self._next = self.start_offset if offset == "earliest" else self.end_offset
        elif isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
            self._next = offset
        else:
            raise ValueError(f"from_offset must be 'earliest', 'latest' or an offset >= 0, "
                             f"got {offset!r}")

    def offsets(self) -> tuple[int, int]:
        """The server's (start offset, end offset) now."""
        self._skip_ahead()
        self._call(OFFSETS, 0, 0)
        return self.start_offset, self.end_offset

    def fetch_raw(self, wait: float = 0.0) -> memoryview:
        """One FETCH: the verified batch bytes (as in the segment file) from the position
        on, empty when nothing came within ``wait`` seconds.  Moves the position past
        them.  The view is valid until the next call."""
        offset = self._next
        wait_ms = max(0, min(MAX_WAIT_MS, int(wait * 1000)))
        if self._ahead >= 0 and self._ahead != offset:
            self._disconnect()  # (defensive: seek drops a request sent ahead)
        if self._checked is None:
            self._call(OFFSETS, 0, 0)  # (a new connection: what does the server take?)
        kind = FETCH_CHECKED if self._checked else FETCH
        damaged: tuple[int, F.BatchError] | None = None
        while True:
            if self._ahead == offset and kind == FETCH_CHECKED:
                self._ahead = -1
                status, length, start, end, aux = self._call(kind, offset, 0, sent=True)
                if status == OK and not length and wait_ms:
                    continue  # (nothing there after all: ask again, with the wait)
            else:
                status, length, start, end, aux = self._call(kind, offset, wait_ms)
            if status != OK:
                break
            if not length:
                return self._payload(0)
            if kind == FETCH_CHECKED:
                check = _Verifier(offset, None, length, aux)
                if aux < end:
                    self._ask_ahead(aux)
            else:
                check = _Verifier(offset, aux, length)
            self._got = 0
            try:
                data = self._payload(length, check)
                check.done()
            except F.BatchError as exc:
                if kind == FETCH_CHECKED:
                    # The server did not walk these batches: damage on its disk is told
                    # from damage on the wire by asking again with FETCH, whose walk
                    # stops before damaged batches (and reports them next time)
                    self._payload(length - self._got)  # (the rest, unused)
                    self._skip_ahead()
                    damaged = (check.pos, exc)
                    kind, wait_ms = FETCH, 0
                    continue
                exc = damaged[1] if damaged is not None else exc
                self._disconnect()
                raise ProtocolError(f"damaged bytes from the journal server at "
                                    f"{self._addr!r}: {exc}; nothing of this reply was "
                                    "used") from None
            if damaged is not None and length > damaged[0]:
                # the server's walk went past where the first reply was damaged: the
                # bytes were damaged on the wire
                self._disconnect()
                raise ProtocolError(f"damaged bytes from the journal server at "
                                    f"{self._addr!r}: {damaged[1]}; nothing of this reply "
                                    "was used")
            self._next = check.next
            return data
        body = bytes(self._payload(length)) if length else b""
        if status == OUT_OF_RANGE:
            why = "retention deleted it" if offset < start else "it is past the end"
            raise OffsetOutOfRangeError(
                f"offset {offset} is not on the journal server ({why}; records span "
                f"[{start}, {end})); seek to 'earliest' or 'latest'", offset=offset,
                start=start, end=end)
        if status == DAMAGED:
            self._next = aux
            raise CorruptFileError(f"the server's journal is damaged: {body.decode()}; the "
                                   f"reader goes on at offset {aux}", offset=offset,
                                   lost=aux - offset)
        self._disconnect()
        if status == BAD_REQUEST:
            raise ProtocolError(f"the journal server refused the request: {body.decode()}")
        raise BrokenError(f"the journal server failed: {body.decode()}")

    def _decode(self, data: memoryview, offset: int) -> list[Record]:
        out: list[Record] = []
        buf = bytes(data)  # slices of bytes are bytes: one copy here, none per record
        p, n = 0, len(buf)
        while p < n:
            info = F.read_batch_header(buf, p, n, verify=False)
            if info.first_offset + info.records > offset:
                recs = F.decode_records(buf, p, info)
                if info.first_offset < offset:
                    recs = recs[offset - info.first_offset :]
                out.extend(recs)
            p += info.length
        return out

    def poll(self, max_records: int = 500, timeout: float | None = 0.0) -> list[Record]:
        """Up to ``max_records`` records; waits up to ``timeout`` seconds (None: forever)
        for the first when the server has none past the position yet."""
        if max_records <= 0:
            raise ValueError(f"max_records must be positive, got {max_records}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._ri >= len(self._records):
            remaining = (MAX_WAIT_MS / 1000 if deadline is None
                         else max(0.0, deadline - time.monotonic()))
            offset = self._next
            data = self.fetch_raw(min(remaining, MAX_WAIT_MS / 1000))
            if data:
                self._records, self._ri = self._decode(data, offset), 0
                break
            if deadline is not None and time.monotonic() >= deadline:
                return []
        out = self._records[self._ri : self._ri + max_records]
        self._ri += len(out)
        return out

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        got = self.poll(1, self.timeout if self.follow else 0.0)
        if got:
            return got[0]
        raise StopIteration

    def close(self) -> None:
        self._disconnect()
        self._closed = True

    def __enter__(self) -> RemoteReader:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RemoteReader {self._addr!r} at offset {self._next}>"

