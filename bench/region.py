"""Foundation benchmarks: Region, Waiter and FileLock against what Python offers without us.

Cases:

- sequential read of a warm file in 1 MiB chunks: copying out of ``Region.view`` into a
  reused buffer vs ``os.preadv``, and as new ``bytes`` vs ``os.pread``;
- sequential overwrite in 1 MiB chunks: slice assignment into ``Region.view`` (with and
  without ``advise("populate")`` first) vs ``os.pwrite``.  Nothing is synced on either
  side: both measure the trip into the page cache;
- wake-up latency between two processes (fork), ping-pong, one way = round trip / 2:
  ``Waiter`` (futex on a shared word) vs a pipe pair vs ``multiprocessing.Event``;
- uncontended ``FileLock`` exclusive acquire + release vs ``fcntl.flock`` directly.

Every timed run opens and maps (or opens the descriptor) inside the timing, so page-table
set-up and faults are paid where they belong.
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable

from mmapkit.lock import FileLock
from mmapkit.region import Region
from mmapkit.wait import Waiter

from . import _harness

CHUNK = 1 << 20
_STOP = 0xFFFFFFFF
_TIMEOUT = 10.0


def _prepare(path: str, size: int) -> None:
    block = os.urandom(CHUNK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for off in range(0, size, CHUNK):
            os.pwrite(fd, block, off)
        os.fsync(fd)
        buf = bytearray(CHUNK)
        for off in range(0, size, CHUNK):  # warm: every case reads from the page cache
            os.preadv(fd, [buf], off)
    finally:
        os.close(fd)


# --- sequential read / write ------------------------------------------------------------


def _read_region_into(path: str, size: int) -> Callable[[], None]:
    dst = memoryview(bytearray(CHUNK))

    def run() -> None:
        with Region.open(path, readonly=True) as region:
            view = region.view
            for off in range(0, size, CHUNK):
                dst[:] = view[off : off + CHUNK]
            del view
    return run


def _read_region_bytes(path: str, size: int) -> Callable[[], None]:
    def run() -> None:
        with Region.open(path, readonly=True) as region:
            view = region.view
            for off in range(0, size, CHUNK):
                bytes(view[off : off + CHUNK])
            del view
    return run


def _read_preadv(path: str, size: int) -> Callable[[], None]:
    buf = bytearray(CHUNK)

    def run() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            for off in range(0, size, CHUNK):
                os.preadv(fd, [buf], off)
        finally:
            os.close(fd)
    return run


def _read_pread(path: str, size: int) -> Callable[[], None]:
    def run() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            for off in range(0, size, CHUNK):
                os.pread(fd, CHUNK, off)
        finally:
            os.close(fd)
    return run


def _write_region(path: str, size: int, populate: bool) -> Callable[[], None]:
    block = os.urandom(CHUNK)

    def run() -> None:
        with Region.open(path, size) as region:
            if populate:
                region.advise("populate")
            view = region.view
            for off in range(0, size, CHUNK):
                view[off : off + CHUNK] = block
            del view
    return run


def _write_pwrite(path: str, size: int) -> Callable[[], None]:
    block = os.urandom(CHUNK)

    def run() -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            for off in range(0, size, CHUNK):
                os.pwrite(fd, block, off)
        finally:
            os.close(fd)
    return run


def bench_sequential(report: _harness.Report, args: argparse.Namespace, path: str,
                     size: int) -> None:
    """One case per way of using the bytes, so every ratio pairs like with like."""
    mib = size >> 20
    # (case, ours, fn, peer, fn, floor); the populate case only informs (no floor): it
    # measures the kernel's prefaulting, which mmapkit cannot make cheaper.
    cases: list[tuple[str, str, Callable[[], None], str, Callable[[], None], float | None]] = [
        (f"sequential read {mib} MiB into a buffer", "mmapkit", _read_region_into(path, size),
         "os.preadv", _read_preadv(path, size), 0.5),
        (f"sequential read {mib} MiB as bytes", "mmapkit", _read_region_bytes(path, size),
         "os.pread", _read_pread(path, size), 0.5),
        (f"sequential overwrite {mib} MiB", "mmapkit", _write_region(path, size, False),
         "os.pwrite", _write_pwrite(path, size), 0.5),
        (f"sequential overwrite {mib} MiB, advise(populate)", "mmapkit",
         _write_region(path, size, True), "os.pwrite", _write_pwrite(path, size), None),
    ]
    for case, ours, ours_fn, peer, peer_fn, goal in cases:
        for impl, fn in ((ours, ours_fn), (peer, peer_fn)):
            if _harness.wanted(args, impl):
                rates = _harness.rate(fn, size, args.repeat)  # bytes/s
                report.add(case, impl, [r / 1e9 for r in rates], "GB/s")
        if goal is not None:
            report.target(case, peer, ">=", goal)


# --- wake-up latency --------------------------------------------------------------------


def ping_waiter(rounds: int, spin: float = 0.0) -> list[float]:
    """One-way wake-up latencies (s) of a futex Waiter ping-pong with a fork child."""
    region = Region.anonymous(4096)
    word = Waiter(region, 0)

    def echo() -> None:
        seen = 0
        while True:
            while word.load() == seen:
                if not word.wait(seen, _TIMEOUT, spin=spin):
                    raise TimeoutError("the parent stopped pinging")
            value = word.load()
            if value == _STOP:
                return
            seen = value + 1
            word.store(seen)
            word.wake()

    pid = _harness.fork_child(echo)
    out = []
    try:
        for i in range(rounds):
            ping = 2 * i + 1
            t0 = time.perf_counter()
            word.store(ping)
            word.wake()
            while word.load() == ping:
                if not word.wait(ping, _TIMEOUT, spin=spin):
                    raise TimeoutError("the child stopped answering")
            out.append((time.perf_counter() - t0) / 2)
    finally:
        word.store(_STOP)
        word.wake()
        _harness.reap(pid)
        word.close()
        region.close()
    return out


def ping_pipe(rounds: int) -> list[float]:
    """One-way latencies (s) of a one-byte ping-pong over two pipes with a fork child."""
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()

    def echo() -> None:
        os.close(to_child_w)
        os.close(to_parent_r)
        while os.read(to_child_r, 1):
            os.write(to_parent_w, b"!")

    pid = _harness.fork_child(echo)
    os.close(to_child_r)
    os.close(to_parent_w)
    out = []
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            os.write(to_child_w, b"?")
            if not os.read(to_parent_r, 1):
                raise RuntimeError("the pipe child went away")
            out.append((time.perf_counter() - t0) / 2)
    finally:
        os.close(to_child_w)
        _harness.reap(pid)
        os.close(to_parent_r)
    return out


def _event_echo(ping: multiprocessing.synchronize.Event, pong: multiprocessing.synchronize.Event,
                stop: multiprocessing.synchronize.Event) -> None:
    while ping.wait(_TIMEOUT):
        ping.clear()
        if stop.is_set():
            return
        pong.set()


def ping_event(rounds: int) -> list[float]:
    """One-way latencies (s) of a multiprocessing.Event ping-pong with a fork child."""
    ctx = multiprocessing.get_context("fork")
    ping, pong, stop = ctx.Event(), ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_event_echo, args=(ping, pong, stop), daemon=True)
    proc.start()
    out = []
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            pong.clear()
            ping.set()
            if not pong.wait(_TIMEOUT):
                raise TimeoutError("the Event child stopped answering")
            out.append((time.perf_counter() - t0) / 2)
    finally:
        stop.set()
        ping.set()
        proc.join(_TIMEOUT)
    return out


def bench_wakeup(report: _harness.Report, args: argparse.Namespace) -> None:
    rounds = 300 if args.quick else 2000
    warm = rounds // 10
    case = f"wake-up latency one way ({rounds} ping-pongs)"
    impls: list[tuple[str, Callable[[int], list[float]]]] = [
        ("mmapkit", ping_waiter), ("mmapkit spin 50µs", lambda n: ping_waiter(n, 50e-6)),
        ("pipe", ping_pipe), ("multiprocessing.Event", ping_event)]
    for impl, ping in impls:
        if _harness.wanted(args, impl):
            samples = ping(rounds + warm)[warm:]
            report.add(case, impl, [s * 1e6 for s in samples], "µs", higher_is_better=False)
    report.target(case, "pipe", "<=", 1.25)
    report.target(case, "multiprocessing.Event", "<=", 0.5)


# --- lock -------------------------------------------------------------------------------


def bench_lock(report: _harness.Report, args: argparse.Namespace, path: str) -> None:
    ops = 20_000 if args.quick else 200_000
    case = "uncontended exclusive lock + unlock"
    lock = FileLock(path)

    def ours() -> None:
        acquire, release = lock.acquire, lock.release
        for _ in range(ops):
            acquire()
            release()

    fd = os.open(path, os.O_RDWR)

    def flock() -> None:
        for _ in range(ops):
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)

    try:
        if _harness.wanted(args, "mmapkit"):
            report.add(case, "mmapkit", _harness.rate(ours, ops, args.repeat), "ops/s")
        if _harness.wanted(args, "fcntl.flock"):
            report.add(case, "fcntl.flock", _harness.rate(flock, ops, args.repeat), "ops/s")
    finally:
        lock.close()
        os.close(fd)
    report.target(case, "fcntl.flock", ">=", 0.2)


def run(report: _harness.Report, args: argparse.Namespace) -> None:
    size = (32 if args.quick else 256) << 20
    with tempfile.TemporaryDirectory(prefix="mmapkit-bench-region-") as tmp:
        path = os.path.join(tmp, "data")
        _prepare(path, size)
        bench_sequential(report, args, path, size)
        os.unlink(path)
        bench_wakeup(report, args)
        bench_lock(report, args, os.path.join(tmp, "lock"))


def main(argv: list[str] | None = None) -> int:
    return _harness.main_for("region", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
