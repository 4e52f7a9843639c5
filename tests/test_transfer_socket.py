"""send() and asend(): TCP loopback and Unix sockets, blocking, non-blocking, partial sends."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmapkit import _platform, transfer
from mmapkit.transfer import asend, send

SIZE = 3 * (1 << 20) + 123


@pytest.fixture(scope="module")
def data() -> bytes:
    return random.Random(11).randbytes(SIZE)


@pytest.fixture
def src(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "src"
    path.write_bytes(data)
    return path


@contextlib.contextmanager
def connected(family: str) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(sender, receiver): a Unix socketpair or a real TCP loopback connection."""
    if family == "unix":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        with socket.socket(socket.AF_INET) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            a = socket.create_connection(listener.getsockname())
            b, _ = listener.accept()
    with a, b:
        yield a, b


class Drain(threading.Thread):
    """Reads everything from ``sock`` in small pieces, optionally after a delay."""

    def __init__(self, sock: socket.socket, delay: float = 0.0, piece: int = 65536) -> None:
        super().__init__(daemon=True)
        self.sock, self.delay, self.piece = sock, delay, piece
        self.got = bytearray()
        self.start()

    def run(self) -> None:
        time.sleep(self.delay)
        while part := self.sock.recv(self.piece):
            self.got += part

    def result(self, sender: socket.socket) -> bytes:
        sender.shutdown(socket.SHUT_WR)
        self.join(30)
        assert not self.is_alive()
        return bytes(self.got)


@pytest.mark.parametrize("mode", ["blocking", "nonblocking", "timeout"])
@pytest.mark.parametrize("method", [None, "splice", "sendfile", "readwrite", "mmap"])
@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_send_whole_file(src: Path, data: bytes, family: str, method: str | None,
                         mode: str) -> None:
    with connected(family) as (a, b):
        if mode == "nonblocking":
            a.setblocking(False)
        elif mode == "timeout":
            a.settimeout(10)
        drain = Drain(b, delay=0.05)
        assert send(a, src, method=method) == SIZE
        assert drain.result(a) == data


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_default_method_is_the_measured_one(family: str, src: Path) -> None:
    with connected(family) as (a, _):
        fd = src.open("rb")
        with fd:
            _, how = transfer._send_plan(a, fd.fileno(), 0, None)
    expected = "splice" if family == "unix" and _platform.HAVE_SPLICE else "sendfile"
    assert how == expected


@pytest.mark.parametrize("method", ["splice", "sendfile", "readwrite", "mmap"])
def test_offset_count_file_object_and_fd(src: Path, data: bytes, method: str) -> None:
    with connected("unix") as (a, b):
        drain = Drain(b)
        with open(src, "rb") as f:
            assert send(a, f, 1000, 5000, method=method) == 5000
            assert send(a, f.fileno(), SIZE - 10, method=method) == 10
            assert send(a, str(src), SIZE, method=method) == 0
        assert drain.result(a) == data[1000:6000] + data[-10:]


@pytest.mark.parametrize("method", ["splice", "sendfile", "readwrite", "mmap"])
def test_partial_sends_are_continued(src: Path, data: bytes, method: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kernel call moves at most a few hundred bytes: the loop must stitch them."""
    real_sendfile, real_splice = _platform.sendfile, _platform.splice
    calls = [0]

    def small_sendfile(out: int, fd: int, off: int, n: int) -> int:
        calls[0] += 1
        return real_sendfile(out, fd, off, min(n, 777))

    def small_splice(fd_in: int, fd_out: int, n: int, **kw: int | None) -> int:
        calls[0] += 1
        return real_splice(fd_in, fd_out, min(n, 501), **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_platform, "sendfile", small_sendfile)
    monkeypatch.setattr(_platform, "splice", small_splice)
    monkeypatch.setattr(transfer, "CHUNK", 1000)  # mmap: socket.send of 1000 at most
    monkeypatch.setattr(transfer, "_RW_BUFFER", 999)  # readwrite: pread of 999 at most
    with connected("tcp") as (a, b):
        drain = Drain(b)
        assert send(a, src, 12345, 200_000, method=method) == 200_000
        assert drain.result(a) == data[12345:212345]
    if method in ("splice", "sendfile"):
        assert calls[0] >= 200_000 // 777


@pytest.mark.skipif(not _platform.HAVE_SPLICE, reason="splice is Linux only")
def test_splice_refused_before_a_byte_falls_back_to_sendfile(
        src: Path, data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that cannot splice (EINVAL at the first call): send() moves on to
    sendfile from the same offset."""
    def refuse(*args: object, **kw: object) -> int:
        raise OSError(errno.EINVAL, "splice refused")

    monkeypatch.setattr(_platform, "splice", refuse)
    with connected("unix") as (a, b):
        drain = Drain(b)
        assert send(a, src, 100, method="splice") == SIZE - 100
        assert drain.result(a) == data[100:]


@pytest.mark.skipif(not _platform.HAVE_SPLICE, reason="splice is Linux only")
def test_splice_failing_midway_raises_instead_of_sending_twice(
        src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once bytes reached the peer, a fallback would send them again: the error stands."""
    real_splice = _platform.splice
    calls = [0]

    def fail_later(fd_in: int, fd_out: int, n: int, **kw: int | None) -> int:
        calls[0] += 1
        if calls[0] > 4:
            raise OSError(errno.EINVAL, "splice refused")
        return real_splice(fd_in, fd_out, n, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_platform, "splice", fail_later)
    with connected("unix") as (a, b):
        drain = Drain(b)
        with pytest.raises(OSError) as err:
            send(a, src, method="splice")
        assert err.value.errno == errno.EINVAL
        assert 0 < len(drain.result(a)) < SIZE


@pytest.mark.parametrize("method", [None, "sendfile", "readwrite", "mmap"])
def test_nonblocking_socket_waits_for_a_slow_reader(src: Path, data: bytes,
                                                    method: str | None) -> None:
    with connected("unix") as (a, b):
        a.setblocking(False)
        drain = Drain(b, delay=0.4, piece=4096)
        t0 = time.monotonic()
        assert send(a, src, method=method) == SIZE  # EAGAIN many times, then completes
        assert time.monotonic() - t0 >= 0.3
        assert drain.result(a) == data


@pytest.mark.parametrize("method", [None, "sendfile", "readwrite", "mmap"])
def test_socket_timeout_bounds_the_wait(src: Path, method: str | None) -> None:
    with connected("unix") as (a, _b):
        a.settimeout(0.3)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            send(a, src, method=method)  # nobody reads
        assert time.monotonic() - t0 < 10


def test_bad_arguments(src: Path, tmp_path: Path) -> None:
    with connected("unix") as (a, _):
        with pytest.raises(ValueError, match="past the end"):
            send(a, src, SIZE + 1)
        with pytest.raises(ValueError, match="count=None"):
            send(a, src, 10, SIZE)
        with pytest.raises(ValueError, match="offset must be"):
            send(a, src, -1)
        with pytest.raises(ValueError, match="count must be"):
            send(a, src, 0, -5)
        with pytest.raises(TypeError, match="path, a file object"):
            send(a, 3.5)
        with pytest.raises(ValueError, match="unknown send method"):
            send(a, src, method="pigeon")
        with pytest.raises(ValueError, match="regular files"):
            send(a, "/dev/null")
        with pytest.raises(FileNotFoundError):
            send(a, tmp_path / "missing")
    d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with d1, d2, pytest.raises(ValueError, match="stream socket"):
        send(d1, src)


@pytest.mark.parametrize("family", ["unix", "tcp"])
@pytest.mark.parametrize("method", [None, "sendfile", "readwrite", "mmap"])
def test_asend_alongside_an_asyncio_reader(src: Path, data: bytes, family: str,
                                           method: str | None) -> None:
    async def main() -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        with connected(family) as (a, b):
            b.setblocking(False)

            async def reader() -> bytes:
                got = bytearray()
                while part := await loop.sock_recv(b, 32768):
                    got += part
                    await asyncio.sleep(0)
                return bytes(got)

            task = asyncio.create_task(reader())
            n = await asend(None, a, src, 7, method=method)
            a.shutdown(socket.SHUT_WR)
            return n, await asyncio.wait_for(task, 30)

    n, got = asyncio.run(main())
    assert n == SIZE - 7
    assert got == data[7:]


def test_asend_with_an_explicit_loop(src: Path, data: bytes) -> None:
    loop = asyncio.new_event_loop()
    try:
        with connected("tcp") as (a, b):
            drain = Drain(b, delay=0.1)
            assert loop.run_until_complete(asend(loop, a, src)) == SIZE
            assert drain.result(a) == data
    finally:
        loop.close()
