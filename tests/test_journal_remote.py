"""Remote readers: a journal served over TCP (loopback) and Unix sockets, with real server
and client processes, killed peers, a closing server and damaged bytes on the wire."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import child_env, spawn

from mmapkit import Journal
from mmapkit.errors import BrokenError, CorruptFileError, FormatVersionError, OffsetOutOfRangeError
from mmapkit.journal import ProtocolError, RemoteReader
from mmapkit.journal import _format as F
from mmapkit.journal import remote as R

# These tests SIGKILL children (or servers) whose pipes and sockets the test leaves to
# the garbage collector: the one place an unclosed-resource warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")


@contextlib.contextmanager
def server_process(d: str, address: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``mmapkit journal DIR serve ADDRESS`` in its own process; yields (process, address)."""
    proc = subprocess.Popen([sys.executable, "-m", "mmapkit", "journal", d, "serve", address,
                             "--duration", "120"], env=child_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving "), proc.stderr.read() if proc.stderr else line
        yield proc, line.rsplit(" on ", 1)[1].strip()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


PRODUCER = """
import sys
from mmapkit import Journal
j = Journal(sys.argv[1])
for i in range(int(sys.argv[2])):
    if i % 10 == 0:
        j.append_many([b"m%d.%d" % (i, k) for k in range(5)])
    else:
        j.append(b"r%d" % i, key=b"k", headers={"h": b"x"})
print("ok", flush=True)
"""


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_remote_reader_gets_every_record_once_in_order(tmp_path: Path, kind: str) -> None:
    d = str(tmp_path / "j")
    Journal(d, create=True, segment_bytes=8192, index_interval=256).close()
    address = "127.0.0.1:0" if kind == "tcp" else str(tmp_path / "sock")
    n = 600
    expected = n + 4 * ((n + 9) // 10)
    with server_process(d, address) as (_, addr):
        with RemoteReader(addr, "earliest", max_bytes=3000) as r:
            assert r.poll(10, timeout=0.05) == []  # empty journal: the long poll ends
            producer = spawn(PRODUCER, d, str(n))
            got = []
            deadline = time.monotonic() + 60
            while len(got) < expected and time.monotonic() < deadline:
                got.extend(r.poll(97, timeout=5))
            _out, err = producer.communicate(timeout=60)
            assert producer.returncode == 0, err
            assert [x.offset for x in got] == list(range(expected))
            values = {x.value for x in got}
            assert b"m0.4" in values and b"r1" in values and len(values) == expected
            keyed = next(x for x in got if x.value == b"r1")
            assert keyed.key == b"k" and keyed.headers == (("h", b"x"),)
            assert r.offsets() == (0, expected)
        # a reader starting in the middle of a batch gets the rest of it, not the start
        with RemoteReader(addr, 2) as r2:
            assert [x.offset for x in r2.poll(3)] == [2, 3, 4]
        with RemoteReader(addr, "latest") as r3:
            assert r3.position == expected and r3.poll(5, timeout=0.05) == []


def test_long_poll_wakes_on_append_from_another_process(tmp_path: Path) -> None:
    d = str(tmp_path / "j")
    Journal(d, create=True).close()
    with server_process(d, "127.0.0.1:0") as (_, addr), RemoteReader(addr, "latest") as r:
        results: list[float] = []

        def wait() -> None:
            t0 = time.monotonic()
            got = r.poll(1, timeout=30)
            results.append(time.monotonic() - t0)
            assert [x.value for x in got] == [b"wake"]

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.3)
        out = subprocess.run([sys.executable, "-m", "mmapkit", "journal", d, "append",
                              "wake"], env=child_env(), capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        t.join(30)
        assert results and results[0] < 25  # woken by the append, not by the 30 s wait


def test_offset_removed_by_retention(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True, segment_bytes=1024, retention_bytes=2048,
                 delete_delay_ms=0) as j:
        for i in range(200):
            j.append(b"x" * 40 + str(i).encode())
        j.retain()
        start = j.start_offset
        assert start > 0
        with j.serve("127.0.0.1:0") as server, RemoteReader(server.address, 0) as r:
            with pytest.raises(OffsetOutOfRangeError) as info:
                r.poll(10)
            assert info.value.start == start and info.value.end == 200
            with pytest.raises(OffsetOutOfRangeError):
                r.seek(500)
                r.poll(1)
            r.seek("earliest")  # the same connection carries on
            assert r.poll(1)[0].offset == start


def test_bad_requests_are_refused_and_the_server_carries_on(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True) as j:
        j.append(b"one")
        with j.serve(str(tmp_path / "s")) as server:
            def raw(frame: bytes) -> tuple[tuple[object, ...], bytes]:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(10)
                    s.connect(str(tmp_path / "s"))
                    s.sendall(frame)
                    data = b""
                    while chunk := s.recv(4096):  # the server closes after refusing
                        data += chunk
                return R.RESPONSE.unpack_from(data), data[R.RESPONSE.size:]

            head, body = raw(b"GET / HTTP/1.0\r\n\r\n" + b"\0" * 10)
            assert head[2] == R.BAD_REQUEST and b"bad magic or CRC" in body
            head, _ = raw(R.encode_request(R.FETCH, 0, 1000, 0, version=9))
            assert head[2] == R.VERSION and head[1] == R.PROTOCOL_VERSION
            head, body = raw(R.encode_request(7, 0, 1000, 0))
            assert head[2] == R.BAD_REQUEST and b"kind 7" in body
            head, body = raw(R.encode_request(R.FETCH, 0, 0, 0))
            assert head[2] == R.BAD_REQUEST and b"max_bytes 0" in body
            with RemoteReader(server.address) as r:
                assert [x.value for x in r.poll()] == [b"one"]


def test_client_refuses_another_protocol_version(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as ls:
        ls.bind(path)
        ls.listen(1)

        def fake() -> None:
            conn, _ = ls.accept()
            with conn:
                conn.recv(R.REQUEST.size)
                conn.sendall(R.encode_response(R.VERSION, 0, 0, 0, 0, version=2))

        t = threading.Thread(target=fake)
        t.start()
        with pytest.raises(FormatVersionError, match="protocol version 2"):
            RemoteReader(path)
        t.join(10)


class FlippingProxy:
    """Forwards one connection to ``target``, flipping the byte at ``at`` of one
    direction's stream (``"down"``: server -> client)."""

    def __init__(self, target: object, direction: str, at: int) -> None:
        self.target, self.direction, self.at = target, direction, at
        self.listener = socket.socket(socket.AF_INET)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.address = self.listener.getsockname()
        threading.Thread(target=self._run, daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, flip: bool) -> None:
        seen = 0
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                if flip and seen <= self.at < seen + len(data):
                    buf = bytearray(data)
                    buf[self.at - seen] ^= 0x10
                    data = bytes(buf)
                seen += len(data)
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def _run(self) -> None:
        with self.listener:  # (one connection: every socket closed when its pipes end)
            client, _ = self.listener.accept()
        fam = socket.AF_UNIX if isinstance(self.target, str) else socket.AF_INET
        server = socket.create_connection(self.target) if fam == socket.AF_INET else None
        assert server is not None
        with client, server:
            down = threading.Thread(target=self._pipe, daemon=True,
                                    args=(server, client, self.direction == "down"))
            down.start()
            self._pipe(client, server, self.direction == "up")
            down.join()  # (the client's EOF, passed on, makes the server close its side)


def test_damaged_bytes_on_the_wire_are_detected(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True) as j:
        j.append_many([b"value %d" % i for i in range(20)])
        j.append(b"single", key=b"key")
        with j.serve("127.0.0.1:0") as server:
            with RemoteReader(server.address) as clean:
                assert len(clean.poll(100)) == 21
            # the client's first exchange is OFFSETS (a 40-byte header), then FETCH: its
            # header (40 bytes) and the batches.  Flip bytes across all of them.
            payload0 = 2 * R.RESPONSE.size
            spots = [3, 10, 20, 44, 60, 70, 79, payload0, payload0 + 5, payload0 + 9,
                     payload0 + 20, payload0 + 50, payload0 + 200, payload0 + 250]
            for at in spots:
                proxy = FlippingProxy(server.address, "down", at)
                with pytest.raises(ProtocolError), \
                        RemoteReader(proxy.address, io_timeout=5) as r:
                    got = r.poll(100)
                    raise AssertionError(f"flip at {at} went unnoticed: {len(got)} records")
            for at in (0, 5, 12, 16, 27):  # requests damaged on the way to the server
                proxy = FlippingProxy(server.address, "up", R.REQUEST.size + at)
                with pytest.raises(ProtocolError, match="refused"), \
                        RemoteReader(proxy.address, io_timeout=5) as r:
                    r.poll(100)


@pytest.mark.parametrize("crc", ["fastest", "zlib"])
def test_flips_are_caught_by_the_right_check(tmp_path: Path, crc: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if crc == "zlib":  # (the client without the isal extra)
        monkeypatch.setattr(F, "crc32", zlib.crc32)
    d = tmp_path / "j"
    with Journal(d, create=True) as j:
        j.append_many([b"v%d" % i for i in range(10)])
        with j.serve("127.0.0.1:0") as server:
            base = 2 * R.RESPONSE.size
            proxy = FlippingProxy(server.address, "down", base + 30)  # a value byte
            with RemoteReader(proxy.address, io_timeout=5) as r, \
                    pytest.raises(ProtocolError, match="checksum"):
                r.poll(100)
            proxy = FlippingProxy(server.address, "down", base + 9)  # batch first offset
            with RemoteReader(proxy.address, io_timeout=5) as r, \
                    pytest.raises(ProtocolError, match="offset"):
                r.poll(100)
            proxy = FlippingProxy(server.address, "down", R.RESPONSE.size + 5)  # header
            with RemoteReader(proxy.address, io_timeout=5) as r, \
                    pytest.raises(ProtocolError, match="header CRC"):
                r.poll(100)


def test_a_reply_of_many_chunks_is_checked_whole(tmp_path: Path) -> None:
    """A fetch reply larger than the client's receive chunk (R._CHUNK: its batches are
    checked chunk by chunk as they arrive, batches spanning two chunks included): clean,
    it ends at the journal's end; a byte flipped in a later chunk fails the whole reply,
    and the reader's position does not move."""
    d = tmp_path / "j"
    values = [bytes([i % 251]) * 1000 for i in range(100)]
    with Journal(d, create=True) as j:
        for _ in range(40):  # ~4 MB in batches of ~100 KB
            j.append_many(values)
        end = j.end_offset
        with j.serve("127.0.0.1:0") as server:
            with RemoteReader(server.address, max_bytes=8 << 20) as clean:
                got = clean.fetch_raw()
                assert len(got) > 2 * R._CHUNK and clean.position == end
            proxy = FlippingProxy(server.address, "down", 2 * R.RESPONSE.size + 3 * R._CHUNK
                                  + 12345)
            with RemoteReader(proxy.address, max_bytes=8 << 20, io_timeout=5) as r:
                with pytest.raises(ProtocolError, match="damaged bytes"):
                    r.fetch_raw()
                assert r.position == 0


def test_damage_on_the_servers_disk_is_reported_and_skipped(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True, index_interval=1) as j:
        for i in range(5):
            j.append(b"record %d" % i)
    seg = d / "00000000000000000000.log"
    raw = bytearray(seg.read_bytes())
    second = 64 + 40 + 20 + len(b"record 0")  # segment header, first batch
    assert raw[second + 20] == 1
    raw[second + 20] = 99  # the second batch's version byte: not a batch any more
    seg.write_bytes(bytes(raw))
    with Journal(d) as j, j.serve("127.0.0.1:0") as server, \
            RemoteReader(server.address) as r:
        assert [x.value for x in r.poll(1)] == [b"record 0"]
        with pytest.raises(CorruptFileError) as info:
            r.poll(10)
        assert info.value.offset == 1 and r.position == 2
        assert [x.value for x in r.poll(10)] == [b"record 2", b"record 3", b"record 4"]


def test_killed_or_stopped_server_never_wedges_the_client(tmp_path: Path) -> None:
    d = str(tmp_path / "j")
    with Journal(d, create=True) as j:
        j.append(b"x")
    with server_process(d, "127.0.0.1:0") as (proc, addr):
        r = RemoteReader(addr, "latest", io_timeout=0.5)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                r.poll(1, timeout=0.2)  # a frozen server: the reply deadline passes
            assert time.monotonic() - t0 < 20
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        r.io_timeout = 10
        errors: list[BaseException] = []

        def long_poll() -> None:
            try:
                r.poll(1, timeout=50)
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=long_poll)
        t.start()
        time.sleep(0.3)
        proc.kill()  # kill -9 in the middle of a long poll
        t.join(30)
        assert not t.is_alive() and len(errors) == 1
        assert isinstance(errors[0], BrokenError), errors
    with pytest.raises(BrokenError, match="cannot reach"):
        r.poll(1)  # nobody listens any more
    r.close()


CLIENT = """
import sys
from mmapkit.journal import RemoteReader
r = RemoteReader(sys.argv[1], "latest")
print("polling", flush=True)
r.poll(1, timeout=50)
"""


def test_killed_client_or_closing_server_never_wedges(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True) as j:
        j.append(b"x")
        server = j.serve("127.0.0.1:0")
        addr = f"{server.address[0]}:{server.address[1]}"
        clients = [spawn(CLIENT, addr) for _ in range(2)]
        for c in clients:
            assert c.stdout is not None and c.stdout.readline() == "polling\n"
        clients[0].kill()  # kill -9 mid long poll
        clients[0].wait(10)
        with RemoteReader(server.address) as r:  # the server serves others on
            assert [x.value for x in r.poll(5)] == [b"x"]
        # close() ends the remaining long poll at once: that client sees the server gone
        t0 = time.monotonic()
        server.close()
        assert time.monotonic() - t0 < 10
        _out, err = clients[1].communicate(timeout=30)
        assert clients[1].returncode != 0 and "BrokenError" in err, err


def test_a_client_that_stops_reading_is_cut_off_after_io_timeout(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True) as j:
        for _ in range(800):  # ~9 MB: far more than a Unix socket buffers
            j.append_many([b"x" * 100] * 100)
        path = str(tmp_path / "s")
        with j.serve(path, io_timeout=0.5) as server:
            stuck = socket.socket(socket.AF_UNIX)
            stuck.connect(path)
            stuck.sendall(R.encode_request(R.FETCH, 0, R.MAX_FETCH_BYTES, 0))
            # ...and never reads.  Meanwhile another client is served:
            with RemoteReader(path, "latest") as r:
                assert r.position == 80_000
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and server._conns:
                time.sleep(0.05)
            assert not server._conns  # the stuck connection's thread ended
            got = 0
            stuck.settimeout(10)
            with contextlib.suppress(OSError):
                while chunk := stuck.recv(1 << 20):
                    got += len(chunk)
            stuck.close()
            assert R.RESPONSE.size < got < 9_000_000  # cut off mid-reply: the end is EOF


def test_a_server_stalling_mid_reply_is_a_timeout(tmp_path: Path) -> None:
    """The client receives on a blocking socket bounded by SO_RCVTIMEO: a reply whose
    payload stops coming (a peer that sent the header and part of the bytes, then went
    silent) is TimeoutError after about io_timeout, and the next call reconnects."""
    ls = socket.socket(socket.AF_INET)
    ls.bind(("127.0.0.1", 0))
    ls.listen(2)
    port = ls.getsockname()[1]
    release = threading.Event()

    def stalling_server() -> None:
        conn, _ = ls.accept()
        with conn:
            req = R._recv_exact(conn, R.REQUEST.size)
            if R.REQUEST.unpack(req)[2] == R.OFFSETS:  # (what a new connection asks first)
                conn.sendall(R.encode_response(R.OK, 0, 0, 10, 0))
                R._recv_exact(conn, R.REQUEST.size)
            conn.sendall(R.encode_response(R.OK, 1000, 0, 10, 0) + b"\0" * 10)
            release.wait(30)

    t = threading.Thread(target=stalling_server, daemon=True)
    t.start()
    try:
        r = RemoteReader(f"127.0.0.1:{port}", 0, io_timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="mid-reply"):
            r.fetch_raw()
        assert 0.2 < time.monotonic() - t0 < 10
        assert r._sock is None  # the framing is lost: closed, the next call reconnects
        r.close()
    finally:
        release.set()
        t.join(10)
        ls.close()


# --- FETCH_CHECKED: spans found from the index, requests sent ahead ------------------------


def _batches(seg: Path, pos: int, end: int) -> list[tuple[int, int, int]]:
    """(position, first offset, length) of each batch of a segment file in [pos, end)."""
    raw = seg.read_bytes()
    out = []
    while pos < end:
        info = F.read_batch_header(raw, pos, end)
        out.append((pos, info.first_offset, info.length))
        pos += info.length
    return out


@pytest.mark.parametrize("interval", [1, 4096, 1 << 20])
def test_spans_from_the_index_end_on_batch_boundaries(tmp_path: Path, interval: int) -> None:
    """next_span(trust_index=True) ends where the index names a batch (or at W), within
    max_bytes, at the same boundaries a walk could have chosen; with an index too sparse
    for the span it walks."""
    d = tmp_path / "j"
    with Journal(d, create=True, index_interval=interval) as j:
        for i in range(300):
            j.append_many([b"%d.%d" % (i, k) * (1 + i % 7) for k in range(1 + i % 5)])
        end = j.end_offset
        r = j.reader(0)
        whole = r.next_span(1 << 30)
        assert whole is not None
        seg_path = Path(whole[0].path)
        starts = {p: off for p, off, _ in _batches(seg_path, whole[1], whole[1] + whole[2])}
        r.close()
        for max_bytes in (1, 700, 5000, 1 << 20):
            r = j.reader(0)
            nxt = 0
            while True:
                span = r.next_span(max_bytes, trust_index=True)
                if span is None:
                    break
                _, pos, length, first = span
                assert starts[pos] == first == nxt
                assert r.position == starts.get(pos + length, end)  # a boundary, or W
                assert length <= max_bytes or len(_batches(seg_path, pos, pos + length)) == 1
                nxt = r.position
            assert nxt == end
            r.close()


def test_a_garbage_index_makes_the_server_walk(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True, index_interval=64) as j:
        for i in range(200):
            j.append_many([b"v%d" % i] * 3)
        j.append(b"after")
    idx = d / "00000000000000000000.index"
    raw = bytearray(idx.read_bytes())
    size = F.IDX_ENTRY.size
    for i in range(F.INDEX_HEADER + size + 4, len(raw), size):  # (the first kept: the
        raw[i] ^= 0x01  # reader starts there) positions that name no batch start
    idx.write_bytes(bytes(raw))
    with Journal(d) as j, j.serve("127.0.0.1:0") as server, \
            RemoteReader(server.address, 0, max_bytes=1000) as r:
        got = []
        while len(got) < 601:
            more = r.poll(1000, timeout=5)
            assert more
            got.extend(more)
        assert [x.offset for x in got] == list(range(601))


def test_damage_inside_an_unwalked_span_is_reported_not_delivered(tmp_path: Path) -> None:
    """The server sends a FETCH_CHECKED span without reading the batches between its ends;
    a batch damaged on the server's disk in the middle of it is still never delivered:
    structural damage -> the batches before it, then CorruptFileError and the rest;
    a flipped value byte (only its CRC tells) -> ProtocolError, the position unmoved."""
    d = tmp_path / "j"
    with Journal(d, create=True, index_interval=200) as j:  # (an entry per ~3 batches)
        for i in range(50):
            j.append(b"record %d" % i)
    seg = d / "00000000000000000000.log"
    batches = _batches(seg, F.SEGMENT_HEADER, _w_end(d))
    pos20 = batches[20][0]
    raw = bytearray(seg.read_bytes())
    raw[pos20 + 20] = 99  # batch 20's version byte: not a batch any more
    seg.write_bytes(bytes(raw))
    with Journal(d) as j, j.serve("127.0.0.1:0") as server, \
            RemoteReader(server.address, max_bytes=1 << 20) as r:
        assert [x.offset for x in r.poll(100)] == list(range(20))
        with pytest.raises(CorruptFileError) as info:
            r.poll(100)
        resume = r.position  # (the next indexed batch, as for a local reader)
        assert info.value.offset == 20 and 21 <= resume <= 24
        assert [x.offset for x in r.poll(100)] == list(range(resume, 50))
    raw[pos20 + 20] = 1
    pos30 = batches[30][0]
    raw[pos30 + F.BATCH_HEADER + 12] ^= 0x20  # a byte of record 30's value
    seg.write_bytes(bytes(raw))
    with Journal(d) as j, j.serve("127.0.0.1:0") as server, \
            RemoteReader(server.address, max_bytes=1 << 20) as r:
        for _ in range(2):  # (each time: the reply is refused whole)
            with pytest.raises(ProtocolError, match="checksum"):
                r.poll(100)
            assert r.position == 0


def _w_end(d: Path) -> int:
    with Journal(d) as j:
        r = j.reader(0)
        span = r.next_span(1 << 30)
        r.close()
    assert span is not None
    return span[1] + span[2]


def test_requests_sent_ahead_survive_seek_and_offsets(tmp_path: Path) -> None:
    """A FETCH_CHECKED reply with more after it makes the client ask for the next one
    before it checks this one; seek, offsets and damage handling cope with the reply
    already on its way."""
    d = tmp_path / "j"
    with Journal(d, create=True) as j:
        for i in range(100):
            j.append_many([b"%d.%d" % (i, k) for k in range(10)])
        with j.serve(str(tmp_path / "sock")) as server, \
                RemoteReader(server.address, 0, max_bytes=2000) as r:
            assert len(r.fetch_raw()) and r._ahead == r.position
            assert r.offsets() == (0, 1000) and r._ahead < 0  # (its reply was read)
            r.seek(5)
            assert [x.offset for x in r.poll(3)] == [5, 6, 7]
            got = []
            while r.position < 1000:
                got.extend(r.poll(1000))
            assert [x.offset for x in got][-1] == 999 and len(got) == 1000 - 8
            assert r.poll(10, timeout=0.05) == []


def test_a_server_without_fetch_checked_is_asked_with_fetch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older server answers OFFSETS with aux 0 and refuses kind 3: the client then asks
    with FETCH (kind 1), which this server still answers as before (aux: the first
    batch's offset)."""
    d = tmp_path / "j"
    with Journal(d, create=True) as j:
        j.append_many([b"a", b"b", b"c"])
        j.append(b"d")
        with j.serve("127.0.0.1:0") as server:
            with socket.create_connection(server.address) as s:  # an older client
                s.sendall(R.encode_request(R.FETCH, 1, 1 << 20, 0))
                head = R._recv_exact(s, R.RESPONSE.size)
                _, _, status, length, _, end, aux, _ = R.RESPONSE.unpack(head)
                assert (status, end, aux) == (R.OK, 4, 0)  # from the batch holding 1
                assert len(R._recv_exact(s, length)) == length
            monkeypatch.setattr(R, "FEATURE_CHECKED", 0)
            kinds: list[int] = []
            call = R.RemoteReader._call

            def spy(self: R.RemoteReader, kind: int, *a: object, **k: object) -> object:
                kinds.append(kind)
                return call(self, kind, *a, **k)  # type: ignore[arg-type]

            monkeypatch.setattr(R.RemoteReader, "_call", spy)
            with RemoteReader(server.address, 1) as r:
                assert [x.value for x in r.poll(10)] == [b"b", b"c", b"d"]
            assert R.FETCH_CHECKED not in kinds and R.FETCH in kinds


def test_the_server_hands_a_finished_connections_journal_handle_on(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True) as j:
        j.append(b"x")
        server = j.serve(str(tmp_path / "sock"))
        with server:
            with RemoteReader(server.address, 0) as r:
                assert r.poll(1)[0].value == b"x"
            deadline = time.monotonic() + 10
            while not server._idle and time.monotonic() < deadline:
                time.sleep(0.01)  # (the connection's thread ends after the client's EOF)
            assert len(server._idle) == 1
            kept = server._idle[0]
            with RemoteReader(server.address, 0) as r:
                assert r.poll(1)[0].value == b"x"
                assert not server._idle  # taken by this connection, not a new one
            while not server._idle and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server._idle == [kept] and not kept.closed
        assert kept.closed and not server._idle  # close() closes the handles kept
