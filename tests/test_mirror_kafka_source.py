"""KafkaSource: the far side of a Kafka mirror read with the Journal consumer API
(poll / commit / committed / position / lag / seek / close), read_committed, at least
once across a consumer killed before its commit."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from _kafka_broker import Broker, free_port, running_broker
from conftest import spawn

from mmapkit import Journal
from mmapkit.errors import ClosedError, MirrorError, SinkUnavailableError

pytestmark = pytest.mark.kafka

confluent_kafka = pytest.importorskip("confluent_kafka")
from mmapkit.mirror.kafka import (  # noqa: E402
    OFFSET_HEADER,
    SOURCE_HEADER,
    KafkaConsumer,
    KafkaRecord,
    KafkaSink,
    KafkaSource,
    split_headers,
)


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    with running_broker() as b:
        yield b


def mirrored(broker: Broker, tmp_path, n: int, batch: int = 25) -> tuple[str, Journal]:
    topic = broker.new_topic()
    j = Journal(tmp_path / "j", create=True)
    for i in range(n):
        j.append(b"v%d" % i, key=b"k%d" % i if i % 2 else None,
                 headers=[("h", b"%d" % i)] if i % 3 == 0 else None,
                 timestamp_ms=1_600_000_000_000 + i)
    with KafkaSink(broker.bootstrap, topic) as sink:
        start = sink.open("src")
        r = j.reader(start)
        while recs := r.poll(batch, 0):
            sink.send(recs)
        r.close()
    return topic, j


def drain(c: KafkaConsumer, want: int, timeout: float = 30) -> list[KafkaRecord]:
    """Exactly ``want`` records (poll never asked for more)."""
    out: list[KafkaRecord] = []
    deadline = time.monotonic() + timeout
    while len(out) < want:
        assert time.monotonic() < deadline, f"got {len(out)} of {want} records"
        out += c.poll(want - len(out), 0.5)
    return out


def test_records_come_back_as_the_journal_wrote_them(broker, tmp_path):
    topic, j = mirrored(broker, tmp_path, 100)
    with KafkaSource(broker.bootstrap, topic, **broker.group_config).consumer("g1") as c:
        got = drain(c, 100)
        assert c.poll(10, 0.2) == []
    assert [r.journal_offset for r in got] == list(range(100))
    for want, r in zip(j.reader(0), got, strict=True):
        assert isinstance(r, KafkaRecord)
        assert (r.value, r.key, r.headers, r.timestamp_ms) == (
            want.value, want.key, want.headers, want.timestamp_ms)
        assert r.partition == 0
    # Kafka offsets ascend; transaction markers take offsets too, so they are not dense
    kafka_offsets = [r.offset for r in got]
    assert kafka_offsets == sorted(set(kafka_offsets))
    j.close()


def test_journal_headers_named_like_ours_travel_untouched(broker, tmp_path):
    """The mirror's headers are the last two; a record may carry its own of the same
    names (a journal fed from another mirror's far side)."""
    topic = broker.new_topic()
    j = Journal(tmp_path / "j", create=True)
    theirs = ((OFFSET_HEADER, b"999"), (SOURCE_HEADER, b"elsewhere"), ("x", b""))
    for i in range(3):
        j.append(b"v%d" % i, headers=list(theirs))
    for _ in range(2):  # the second open must resume from our header, not theirs
        with KafkaSink(broker.bootstrap, topic) as sink:
            start = sink.open("src")
            sink.send(list(j.reader(start)))
    assert start == 3
    c = KafkaSource(broker.bootstrap, topic, **broker.group_config).consumer("hdr")
    got = drain(c, 3)
    c.close()
    assert [(r.journal_offset, r.headers) for r in got] == [(i, theirs) for i in range(3)]
    j.close()


def test_split_headers_is_a_pure_function():
    assert split_headers(None) == ((), None, None)
    assert split_headers([("a", None)]) == ((("a", b""),), None, None)
    assert split_headers([("a", b"1"), (OFFSET_HEADER, b"12"), (SOURCE_HEADER, b"s")]) == (
        (("a", b"1"),), 12, b"s")
    assert split_headers([(OFFSET_HEADER, b"-3"), (SOURCE_HEADER, b"s")]) == ((), -1, b"s")
    assert split_headers([(SOURCE_HEADER, b"s"), (OFFSET_HEADER, b"1")])[1] is None


def test_commit_after_processing_and_a_new_member_resumes_there(broker, tmp_path):
    topic, j = mirrored(broker, tmp_path, 60)
    src = KafkaSource(broker.bootstrap, topic, **broker.group_config)
    c = src.consumer("g2")
    assert c.committed is None
    first = drain(c, 20)
    assert c.position == first[-1].offset + 1
    c.commit()
    assert c.committed == first[-1].offset + 1
    c.close()
    c.close()  # idempotent
    with pytest.raises(ClosedError):
        c.poll()
    again = src.consumer("g2")
    rest = drain(again, 40)
    assert [r.journal_offset for r in rest] == list(range(20, 60))
    assert again.lag == 1  # the marker of the last transaction, as Kafka's tools count
    again.close()
    j.close()


@pytest.mark.parametrize("assignor", [
    "range", pytest.param("cooperative-sticky", marks=pytest.mark.slow)])
def test_seek_commit_offset_position_and_lag(broker, tmp_path, assignor):
    topic, j = mirrored(broker, tmp_path, 30, batch=30)  # one transaction: dense offsets
    c = KafkaSource(broker.bootstrap, topic, **broker.group_config,
                    **{"partition.assignment.strategy": assignor}).consumer(f"g3-{assignor}")
    assert c.position == 0
    assert c.lag == 31  # 30 records and the transaction's commit marker
    c.seek(10)  # before the group assigned the partition: applied on assignment
    got = drain(c, 20)
    assert got[0].journal_offset == 10 and got[0].offset == 10
    assert c.position == 30 and c.lag == 1
    c.seek("earliest")
    assert c.position == 0
    assert drain(c, 1)[0].journal_offset == 0
    c.seek("latest")
    assert c.position == 31 and c.lag == 0
    assert c.poll(10, 0.5) == []
    c.commit()
    assert c.committed == 31
    c.commit(7)
    assert c.committed == 7
    with pytest.raises(ValueError, match="offset >= 0"):
        c.commit(-1)
    with pytest.raises(ValueError, match="seek"):
        c.seek("middle")
    with pytest.raises(ValueError, match="max_records"):
        c.poll(0)
    c.close()
    j.close()


def test_an_open_transaction_is_not_delivered_until_it_commits(broker, tmp_path):
    topic = broker.new_topic()
    p = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap,
                                  "transactional.id": f"{topic}-writer"})
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(topic, b"pending", partition=0,
              headers=[(OFFSET_HEADER, b"0"), (SOURCE_HEADER, b"s")])
    p.flush(30)
    c = KafkaSource(broker.bootstrap, topic, **broker.group_config).consumer("g4")
    assert c.poll(10, 1.5) == []
    p.commit_transaction(30)
    (rec,) = drain(c, 1)
    assert (rec.value, rec.journal_offset) == (b"pending", 0)
    c.close()


def test_an_aborted_transaction_is_never_delivered(broker, request):
    if broker.pid is not None:
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="Tansu 0.6 hands aborted records to read_committed readers"))
    topic = broker.new_topic()
    p = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap,
                                  "transactional.id": f"{topic}-writer"})
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(topic, b"aborted", partition=0)
    p.flush(30)
    p.abort_transaction(30)
    p.begin_transaction()
    p.produce(topic, b"committed", partition=0)
    p.commit_transaction(30)
    c = KafkaSource(broker.bootstrap, topic, **broker.group_config).consumer("g5")
    assert [r.value for r in drain(c, 1)] == [b"committed"]
    assert c.poll(10, 0.5) == []
    c.close()


CONSUMER = """
import sys, time
from mmapkit.mirror.kafka import KafkaSource
bootstrap, topic, session = sys.argv[1:4]
c = KafkaSource(bootstrap, topic, **{"session.timeout.ms": int(session),
                                     "heartbeat.interval.ms": int(session) // 5}
                ).consumer("workers")
done = []
while len(done) < 20:
    done += c.poll(20 - len(done), 1.0)
c.commit()                     # the first 20 are processed and committed
print("committed", done[-1].journal_offset, flush=True)
batch = []
while len(batch) < 15:
    batch += c.poll(15 - len(batch), 1.0)
print("processing", batch[0].journal_offset, batch[-1].journal_offset, flush=True)
time.sleep(60)                 # killed here: processing, not committed
"""


def test_a_member_killed_before_its_commit_leaves_its_records_to_the_group(broker,
                                                                          tmp_path):
    topic, j = mirrored(broker, tmp_path, 50)
    proc = spawn(CONSUMER, broker.bootstrap, topic,
                 str(broker.group_config["session.timeout.ms"]))
    assert proc.stdout is not None
    assert proc.stdout.readline().split() == ["committed", "19"]
    assert proc.stdout.readline().split() == ["processing", "20", "34"]
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    # The group gives the partition to the next member once the dead one's session
    # expires; it starts at the dead one's last commit, so 20..34 come again.
    c = KafkaSource(broker.bootstrap, topic, **broker.group_config).consumer("workers")
    got = drain(c, 30, timeout=60)
    assert [r.journal_offset for r in got] == list(range(20, 50))
    c.commit()
    c.close()
    assert Journal.check(j.path).ok
    j.close()


def test_brokers_gone_poll_returns_nothing_and_the_rest_is_sink_unavailable(tmp_path):
    with running_broker(own=True) as b:
        topic = b.new_topic()
        p = confluent_kafka.Producer({"bootstrap.servers": b.bootstrap})
        p.produce(topic, b"x", partition=0)
        assert p.flush(30) == 0
        del p  # gone before the broker: it would log connection failures to stderr
        c = KafkaSource(b.bootstrap, topic, timeout=1, **b.group_config).consumer("g")
        assert len(drain(c, 1)) == 1
        b.stop()
        assert c.poll(10, 0.5) == []
        with pytest.raises(SinkUnavailableError):
            c.committed  # noqa: B018 - the property asks the broker
        with pytest.raises(SinkUnavailableError):
            c.commit()
        c.close()


def test_bad_arguments_and_unknown_topic(broker):
    src = KafkaSource(broker.bootstrap, broker.new_topic())
    with pytest.raises(ValueError, match="group"):
        src.consumer("")
    with pytest.raises(ValueError, match="reset"):
        src.consumer("g", reset="sometime")
    with pytest.raises(MirrorError, match="does not exist"):
        KafkaSource(broker.bootstrap, "mmk-no-such-topic").consumer("g")
    with pytest.raises(ValueError, match="not a legal Kafka topic"):
        KafkaSource(broker.bootstrap, "no such")


def test_refused_connection_is_sink_unavailable():
    src = KafkaSource(f"127.0.0.1:{free_port()}", "t", timeout=1)
    with pytest.raises(SinkUnavailableError, match="refused"):
        src.consumer("g")
