"""KafkaSink against a real Kafka-protocol broker: the Sink contract, fencing between two
mirrors (in this process and across processes, at each step of the writer protocol),
resume by reading the target back, and the errors for bad input and unreachable brokers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _kafka_broker import Broker, free_port, running_broker
from conftest import run_py, spawn

import mmapkit
from mmapkit import Journal
from mmapkit.errors import (
    ClosedError,
    MirrorError,
    SinkUnavailableError,
    TargetMismatchError,
    TargetOwnedError,
)

pytestmark = pytest.mark.kafka

confluent_kafka = pytest.importorskip("confluent_kafka")
from mmapkit.mirror.kafka import OFFSET_HEADER, SOURCE_HEADER, KafkaSink  # noqa: E402


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    with running_broker() as b:
        yield b


def fill(path: Path, n: int) -> Journal:
    j = Journal(path, create=True)
    for i in range(n):
        j.append(b"value-%d" % i, key=b"k%d" % (i % 7) if i % 3 else None,
                 headers=[("h", b"%d" % i)] if i % 2 else None, timestamp_ms=1_700_000_000_000 + i)
    return j


def mirror_all(sink: KafkaSink, j: Journal, source: str, batch: int = 100) -> int:
    """What the Mirror does, reduced to the contract: open, then send batches in order."""
    start = sink.open(source)
    r = j.reader(start)
    try:
        while True:
            recs = r.poll(batch, 0)
            if not recs:
                return start
            sink.send(recs)
    finally:
        r.close()


def journal_offsets(broker: Broker, topic: str) -> list[int]:
    out = []
    for m in broker.read(topic):
        (value,) = [v for k, v in m.headers() if k == OFFSET_HEADER]
        out.append(int(value))
    return out


def test_records_arrive_once_in_order_with_key_timestamp_and_headers(broker, tmp_path):
    topic = broker.new_topic()
    j = fill(tmp_path / "j", 250)
    with KafkaSink(broker.bootstrap, topic) as sink:
        assert mirror_all(sink, j, "src-a", batch=64) == 0
    got = broker.read(topic)
    assert len(got) == 250
    for want, m in zip(j.reader(0), got, strict=True):
        headers = m.headers() or []
        assert m.value() == want.value
        assert m.key() == want.key
        assert m.timestamp()[1] == want.timestamp_ms
        assert headers[:-2] == list(want.headers)
        assert headers[-2:] == [(OFFSET_HEADER, b"%d" % want.offset), (SOURCE_HEADER, b"src-a")]
    assert Journal.check(j.path).ok
    j.close()


def test_open_resumes_after_what_the_target_holds(broker, tmp_path):
    topic = broker.new_topic()
    j = fill(tmp_path / "j", 120)
    sink = KafkaSink(broker.bootstrap, topic)
    assert sink.open("s") == 0
    sink.send(list(j.reader(0))[:50])
    sink.close()
    sink.close()  # idempotent
    again = KafkaSink(broker.bootstrap, topic)
    assert mirror_all(again, j, "s") == 50
    assert again.open("s") == 120
    again.close()
    assert journal_offsets(broker, topic) == list(range(120))
    assert Journal.check(j.path).ok
    j.close()


def test_resending_what_the_target_holds_is_refused(broker, tmp_path):
    topic = broker.new_topic()
    j = fill(tmp_path / "j", 10)
    recs = list(j.reader(0))
    with KafkaSink(broker.bootstrap, topic) as sink:
        sink.open("s")
        sink.send(recs)
        with pytest.raises(ValueError, match="already holds offsets up to 9"):
            sink.send(recs[5:])
        with pytest.raises(ValueError, match="ascending"):
            sink.send([recs[9]._replace(offset=20), recs[9]._replace(offset=15)])
        sink.send([])  # nothing to do
    with pytest.raises(ClosedError):
        sink.send(recs)
    assert journal_offsets(broker, topic) == list(range(10))
    j.close()


def test_a_record_too_large_for_kafka_stops_the_mirror_with_a_clear_error(broker,
                                                                          tmp_path):
    """Not SinkUnavailableError: a reconnecting Mirror would send it again forever."""
    topic = broker.new_topic()
    j = Journal(tmp_path / "j", create=True)
    j.append(b"small")
    j.append(b"x" * (2 << 20))  # over librdkafka's default message.max.bytes (1 MB)
    recs = list(j.reader(0))
    with KafkaSink(broker.bootstrap, topic) as sink:
        sink.open("s")
        with pytest.raises(MirrorError, match="larger than the broker or client accepts") as e:
            sink.send(recs)
        assert not isinstance(e.value, SinkUnavailableError)
        assert sink.open("s") == 0  # the batch was all or nothing
        sink.send(recs[:1])
    assert journal_offsets(broker, topic) == [0]
    j.close()


def test_send_before_open_says_what_to_do(broker, tmp_path):
    sink = KafkaSink(broker.bootstrap, broker.new_topic())
    with pytest.raises(MirrorError, match=r"before open\(\)"):
        sink.send([])


def test_second_sink_fences_the_first_without_duplicates(broker, tmp_path):
    topic = broker.new_topic()
    j = fill(tmp_path / "j", 300)
    recs = list(j.reader(0))
    first = KafkaSink(broker.bootstrap, topic)
    assert first.open("s") == 0
    first.send(recs[:100])
    second = KafkaSink(broker.bootstrap, topic)
    assert second.open("s") == 100
    with pytest.raises(TargetOwnedError, match="another mirror took over"):
        first.send(recs[100:200])
    with pytest.raises(MirrorError, match="open"):
        first.send(recs[100:200])  # it stays stopped until someone calls open() again
    second.send(recs[100:])
    second.close()
    first.close()
    assert journal_offsets(broker, topic) == list(range(300))
    j.close()


# --- the writer protocol across processes, one test per step (pause points) ----------

CHILD = """
import sys, time
from mmapkit import Journal
from mmapkit.errors import SinkUnavailableError, TargetOwnedError
from mmapkit.mirror.kafka import KafkaSink
bootstrap, topic, path, first, last = sys.argv[1:6]
j = Journal(path)
sink = KafkaSink(bootstrap, topic, timeout=2)
start = sink.open("s")
print("open", start, flush=True)
recs = [r for r in j.reader(max(start, int(first))) if r.offset < int(last)]
try:
    sink.send(recs)
    print("sent", flush=True)
except TargetOwnedError as exc:
    print("fenced", exc, flush=True)
except SinkUnavailableError as exc:
    print("unavailable", exc, flush=True)
sink.close()
"""


def _await(path: Path, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child ended before {path.name}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"{path.name} never reached"
        time.sleep(0.01)


def _paused_child(broker, topic, j, tmp_path, point, first, last):
    pdir = tmp_path / "pause"
    pdir.mkdir(exist_ok=True)
    env_before = dict(os.environ)
    os.environ["MMAPKIT_PAUSE"] = point
    os.environ["MMAPKIT_PAUSE_DIR"] = str(pdir)
    try:
        proc = spawn(CHILD, broker.bootstrap, topic, j.path, str(first), str(last))
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    _await(pdir / f"{point}.reached", proc)
    return proc, pdir / f"{point}.go"


def test_s2_a_sink_fenced_after_producing_never_commits_a_duplicate(broker, tmp_path):
    """Child at S2 (records produced and flushed, not committed); a second sink opens (O2
    fences the child, O3 reads back); the child's commit fails; the target is exact."""
    topic = broker.new_topic()
    j = fill(tmp_path / "j", 200)
    seed = KafkaSink(broker.bootstrap, topic)
    seed.open("s")
    seed.send(list(j.reader(0))[:50])
    seed.close()
    proc, go = _paused_child(broker, topic, j, tmp_path, "kafka.sink.produced", 50, 150)
    other = KafkaSink(broker.bootstrap, topic)
    resume = other.open("s")
    # Apache Kafka aborts the child's open transaction (resume 50); Tansu 0.6 leaves the
    # produced records readable (resume 150).  Either way nothing is sent twice.
    assert resume in (50, 150)
    go.touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    # Apache Kafka answers the fenced commit with PRODUCER_FENCED (TargetOwnedError);
    # Tansu 0.6 drops the connection instead, so the child sees a timeout.  Either way it
    # did not commit.
    assert "fenced" in out or "unavailable" in out
    assert "sent" not in out
    other.send([r for r in j.reader(resume)])
    other.close()
    assert journal_offsets(broker, topic) == list(range(200))
    assert Journal.check(j.path).ok
    j.close()


def test_o2_a_new_sink_fences_the_running_one_before_reading_back(broker, tmp_path):
    """Child paused between O2 (fenced the old sink) and O3: the old sink can no longer
    commit, so what the child reads back when released is final."""
    topic = broker.new_topic()
    j = fill(tmp_path / "j", 100)
    recs = list(j.reader(0))
    old = KafkaSink(broker.bootstrap, topic)
    old.open("s")
    old.send(recs[:30])
    proc, go = _paused_child(broker, topic, j, tmp_path, "kafka.sink.initialized", 0, 100)
    with pytest.raises(TargetOwnedError):
        old.send(recs[30:60])
    old.close()
    go.touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.splitlines()[0] == "open 30"
    assert "sent" in out
    assert journal_offsets(broker, topic) == list(range(100))
    j.close()


def test_s3_a_committed_batch_is_what_the_next_sink_resumes_after(broker, tmp_path):
    topic = broker.new_topic()
    j = fill(tmp_path / "j", 80)
    proc = spawn(CHILD, broker.bootstrap, topic, j.path, "0", "80")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.splitlines() == ["open 0", "sent"]
    with KafkaSink(broker.bootstrap, topic) as sink:
        assert sink.open("s") == 80
    assert journal_offsets(broker, topic) == list(range(80))
    j.close()


# --- what the target holds decides; foreign content is refused -----------------------


def test_records_without_our_header_are_a_mismatch(broker, tmp_path):
    topic = broker.new_topic()
    p = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
    p.produce(topic, b"someone else's", partition=0)
    assert p.flush(30) == 0
    with pytest.raises(TargetMismatchError, match="not written by an mmapkit mirror"):
        KafkaSink(broker.bootstrap, topic).open("s")


def test_records_of_another_journal_are_a_mismatch(broker, tmp_path):
    topic = broker.new_topic()
    j = fill(tmp_path / "j", 5)
    with KafkaSink(broker.bootstrap, topic) as sink:
        mirror_all(sink, j, "journal-one")
    with pytest.raises(TargetMismatchError, match="another source"):
        KafkaSink(broker.bootstrap, topic).open("journal-two")
    j.close()


def test_a_mangled_offset_header_is_a_mismatch(broker, tmp_path):
    topic = broker.new_topic()
    p = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
    p.produce(topic, b"x", partition=0, headers=[(OFFSET_HEADER, b"12z"),
                                                 (SOURCE_HEADER, b"s")])
    assert p.flush(30) == 0
    with pytest.raises(TargetMismatchError, match="valid 'mmapkit-offset'"):
        KafkaSink(broker.bootstrap, topic).open("s")


def test_tail_of_aborted_transactions_reads_back_the_last_committed(broker, tmp_path):
    """A long run of aborted records after the last commit: the read-back widens its
    window until it finds a committed record (Kafka hides aborted ones; Tansu 0.6 shows
    them, and then they were never produced: librdkafka purges unsent records)."""
    topic = broker.new_topic()
    j = fill(tmp_path / "j", 10)
    with KafkaSink(broker.bootstrap, topic) as sink:
        mirror_all(sink, j, "s")
    p = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap,
                                  "transactional.id": "mmk-other-writer"})
    p.init_transactions(30)
    for _ in range(3):
        p.begin_transaction()
        for i in range(150):
            p.produce(topic, b"aborted %d" % i, partition=0,
                      headers=[(OFFSET_HEADER, b"999"), (SOURCE_HEADER, b"s")])
        p.abort_transaction(30)
    with KafkaSink(broker.bootstrap, topic) as sink:
        assert sink.open("s") == 10
    j.close()


# --- bad input, unreachable brokers ---------------------------------------------------


@pytest.mark.parametrize("args, exc, match", [
    ((b"127.0.0.1:9092", "t"), TypeError, "bootstrap must be a str"),
    (("", "t"), ValueError, "host:port"),
    (("a:1,,b:2", "t"), ValueError, "host:port"),
    (("a:1", ""), ValueError, "not a legal Kafka topic"),
    (("a:1", "bad topic"), ValueError, "not a legal Kafka topic"),
    (("a:1", "x" * 250), ValueError, "not a legal Kafka topic"),
    (("a:1", 7), TypeError, "topic must be a str"),
    (("a:1", "t", -1), ValueError, "partition must be an int >= 0"),
    (("a:1", "t", True), ValueError, "partition must be an int >= 0"),
])
def test_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        KafkaSink(*args)


def test_bad_timeout_and_source_id(broker):
    with pytest.raises(ValueError, match="timeout"):
        KafkaSink(broker.bootstrap, "t", timeout=0)
    with pytest.raises(ValueError, match="source_id"):
        KafkaSink(broker.bootstrap, "t").open("")


def test_bad_librdkafka_setting_is_a_value_error(broker):
    with pytest.raises(ValueError, match="bad Kafka producer settings"):
        KafkaSink(broker.bootstrap, broker.new_topic(), **{"no.such.setting": 1}).open("s")


def test_refused_connection_is_sink_unavailable_and_says_so():
    sink = KafkaSink(f"127.0.0.1:{free_port()}", "t", timeout=1)
    t0 = time.monotonic()
    with pytest.raises(SinkUnavailableError, match=r"(?i)cannot reach.*refused"):
        sink.open("s")
    assert time.monotonic() - t0 < 15


def test_unresolvable_host_is_sink_unavailable():
    with pytest.raises(SinkUnavailableError, match="cannot reach"):
        KafkaSink("no-such-host.invalid:9092", "t", timeout=1).open("s")


def test_unknown_topic_and_partition(broker):
    with pytest.raises(MirrorError, match=r"does not exist.*create it first"):
        KafkaSink(broker.bootstrap, "mmk-never-created").open("s")
    topic = broker.new_topic()
    with pytest.raises(MirrorError, match=r"has 1 partition.*partition 3 does not exist"):
        KafkaSink(broker.bootstrap, topic, partition=3).open("s")


def test_broker_killed_mid_stream_is_sink_unavailable(tmp_path):
    with running_broker(own=True) as b:
        topic = b.new_topic()
        j = fill(tmp_path / "j", 40)
        recs = list(j.reader(0))
        sink = KafkaSink(b.bootstrap, topic, timeout=1)
        sink.open("s")
        sink.send(recs[:20])
        b.stop()
        with pytest.raises(SinkUnavailableError, match="open\\(\\) again"):
            sink.send(recs[20:])
        with pytest.raises(SinkUnavailableError):
            sink.open("s")
        sink.close()
        assert Journal.check(j.path).ok
        j.close()


def test_missing_client_library_names_the_extra():
    res = run_py("""
        import sys
        sys.modules["confluent_kafka"] = None  # as if the kafka extra were not installed
        import mmapkit
        from mmapkit.mirror.kafka import KafkaSink, KafkaSource
        for cls in (KafkaSink, KafkaSource):
            try:
                cls("127.0.0.1:9092", "t")
            except mmapkit.MissingExtraError as exc:
                assert isinstance(exc, ImportError)
                print(exc)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("pip install 'mmapkit[kafka]'") == 2


def test_importing_the_kafka_module_does_not_load_the_client():
    res = run_py("""
        import sys
        import mmapkit, mmapkit.mirror.kafka
        print("confluent_kafka" in sys.modules)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
    assert mmapkit.MissingExtraError
