"""What bench/mirror.py (Redis) and bench/mirror_kafka.py (Kafka) both do; each keeps only
its server, its sink and its peers' loops.

Rules:

- The journal of a throughput case is written once per size and kept for the repeats.
- The lag case runs three processes, as in production: the producer (this one), the
  mirror (``mmapkit journal mirror``, its own process) and a reader.  The first record is
  a warm-up that waits for the mirror to start and is not counted; the producer starts
  once the reader has seen it, then appends at a steady rate, each value stamped with
  ``time.time_ns()`` in its first 8 bytes.
- Per-record latencies are reported as their 0th..100th percentiles, so the JSON stays
  small; median and p99 of those are the median and p99 of all records.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from typing import Any, Protocol

from . import _harness

RECORD = 100  # bytes per record
STAMP = struct.Struct("<q")  # time.time_ns() at append, the first 8 bytes of a lag record


def free_port() -> int:
    """A loopback TCP port nobody listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(argv: list[str], port: int, what: str,
          cwd: str | None = None) -> subprocess.Popen[bytes]:
    """Start server ``argv`` and return once it accepts on 127.0.0.1:``port`` (15 s)."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                stop(proc)
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.02)


def stop(proc: subprocess.Popen[Any]) -> None:
    """Kill a server we started (by its pid) and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def filled_journal(tmp: str, n: int) -> str:
    """The directory of a journal of ``n`` records of RECORD bytes (written once)."""
    from mmapkit import Journal
    d = os.path.join(tmp, f"j{n}")
    if not os.path.exists(d):
        with Journal(d, create=True) as j:
            pad = b"x" * RECORD
            for i in range(0, n, 1000):
                j.append_many([pad] * min(1000, n - i))
    return d


def mirror_rate(report: _harness.Report, case: str, d: str, n: int, repeat: int,
                sink: Callable[[], Any]) -> None:
    """Records per second of ``Mirror(d, sink()).run(until_caught_up=True)``, a fresh
    target each repeat."""
    from mmapkit.mirror import Mirror

    def ours() -> None:
        sent = Mirror(d, sink(), batch=1000).run(until_caught_up=True)
        assert sent == n

    report.add(case, _harness.OURS, _harness.rate(ours, n, repeat), "rec/s")


class LagReader(Protocol):
    """The far side of the lag case: reads the target until it has ``total`` records."""

    def wait_first(self) -> None:
        """Return once the first (warm-up) record is readable in the target."""

    def latencies(self) -> list[float]:
        """Milliseconds from append to readable, per record after the first; waits for
        the last one."""

    def close(self) -> None:
        """Stop reading (idempotent)."""


def lag(d: str, url: str, total: int, rate: int,
        reader: Callable[[int], LagReader]) -> list[float]:
    """Append ``total`` stamped records at ``rate`` per second to a new journal ``d``,
    mirrored to ``url`` by a ``mmapkit journal mirror`` process; ``reader(total + 1)``
    reads them back.  The per-record latencies (ms)."""
    from mmapkit import Journal
    with Journal(d, create=True) as j:
        j.append(STAMP.pack(time.time_ns()) + b"w" * (RECORD - 8))  # the warm-up record
        mirror = _harness.spawn("-m", "mmapkit", "journal", d, "mirror", url,
                                "--progress", "0", stdin=None, stderr=subprocess.PIPE)
        far: LagReader | None = None
        try:
            far = reader(total + 1)
            far.wait_first()
            pad = b"p" * (RECORD - 8)
            start = time.perf_counter()
            for i in range(total):
                ahead = start + i / rate - time.perf_counter()
                if ahead > 0.0002:
                    time.sleep(ahead)
                j.append(STAMP.pack(time.time_ns()) + pad)
            return far.latencies()
        finally:
            if far is not None:
                far.close()
            if mirror.poll() is None:
                mirror.terminate()
            mirror.communicate(timeout=30)


def add_lag(report: _harness.Report, case: str, lat: list[float], total: int) -> None:
    """Report per-record latencies ``lat`` (ms) of ``total`` appended, as percentiles."""
    summary = [_harness.percentile(lat, q) for q in range(101)] if lat else []
    report.add(case, _harness.OURS, summary, "ms", higher_is_better=False,
               note=f"p50 {_harness.percentile(lat, 50):.2f} ms, "
               f"p99 {_harness.percentile(lat, 99):.2f} ms, {len(lat)} of {total} records; "
               f"samples are the 0th-100th percentiles")

