"""The real Mirror carrying a Journal into Kafka through KafkaSink, read back on the far
side with KafkaSource; two mirrors on one partition; the ``journal mirror`` command with a
kafka:// URL, SIGKILLed at random moments."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from _kafka_broker import Broker, running_broker
from conftest import child_env

import mmapkit
from mmapkit import Journal, Mirror
from mmapkit.errors import TargetOwnedError

pytestmark = pytest.mark.kafka

pytest.importorskip("confluent_kafka")
from mmapkit.mirror.kafka import OFFSET_HEADER, KafkaSink, KafkaSource  # noqa: E402


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    with running_broker() as b:
        yield b


def offsets_in(broker: Broker, topic: str) -> list[int]:
    return [int(dict(m.headers())[OFFSET_HEADER]) for m in broker.read(topic)]


def test_a_running_mirror_carries_a_growing_journal_to_the_far_side(broker, tmp_path):
    topic = broker.new_topic()
    j = Journal(tmp_path / "j", create=True)
    m = Mirror(j, mmapkit.mirror.KafkaSink(broker.bootstrap, topic), batch=200)
    assert m.statistics().target == f"kafka://{broker.bootstrap}/{topic}?partition=0"
    m.start()
    for i in range(1500):
        j.append(b"event %d" % i, key=b"user%d" % (i % 10))
        if i % 300 == 0:
            time.sleep(0.05)  # the mirror catches up between bursts: many transactions
    assert m.wait(timeout=60)
    stats = m.statistics()
    assert (stats.position, stats.sent, stats.state) == (1500, 1500, "running")
    m.stop()
    src = mmapkit.KafkaSource(broker.bootstrap, topic, **broker.group_config)
    with src.consumer("far-side") as c:
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < 1500 and time.monotonic() < deadline:
            got += c.poll(1500 - len(got), 0.5)
        c.commit()
    assert [r.journal_offset for r in got] == list(range(1500))
    assert all(r.value == b"event %d" % r.journal_offset for r in got)
    assert Journal.check(j.path).ok
    j.close()


def test_a_second_mirror_fences_the_first_which_stops_without_writing(broker, tmp_path):
    topic = broker.new_topic()
    j = Journal(tmp_path / "j", create=True)
    for i in range(100):
        j.append(b"%d" % i)
    first = Mirror(j, KafkaSink(broker.bootstrap, topic))
    first.start()
    assert first.wait(timeout=60)
    second = Mirror(j, KafkaSink(broker.bootstrap, topic), name="mirror")
    second.start()
    assert second.wait(timeout=60)  # it opened: the first one's producer is fenced now
    for i in range(100, 200):
        j.append(b"%d" % i)
    assert second.wait(timeout=60)
    deadline = time.monotonic() + 30
    while first.statistics().state != "failed" and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(TargetOwnedError, match="another mirror took over"):
        first.stop()
    second.stop()
    assert offsets_in(broker, topic) == list(range(200))
    j.close()


def _mirror_cmd(broker: Broker, topic: str, path: str, batch: int) -> list[str]:
    return [sys.executable, "-m", "mmapkit", "journal", path, "mirror",
            f"kafka://{broker.bootstrap}/{topic}", "--batch", str(batch), "--once",
            "--progress", "0"]


def test_the_journal_mirror_command_takes_a_kafka_url(broker, tmp_path):
    topic = broker.new_topic()
    j = Journal(tmp_path / "j", create=True)
    j.append_many([b"r%d" % i for i in range(300)])
    res = subprocess.run(_mirror_cmd(broker, topic, j.path, 64), env=child_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "sent 300" in res.stdout
    assert offsets_in(broker, topic) == list(range(300))
    j.close()


def mirror_kill_rounds(broker: Broker, tmp_path, rounds: int, per_round: int) -> None:
    """The ``journal mirror`` process SIGKILLed at random moments while the journal grows;
    in the end the partition holds 0..N-1 exactly once, in order."""
    rnd = random.Random()
    seed = rnd.randrange(1 << 30)
    rnd.seed(seed)
    topic = broker.new_topic()
    j = Journal(tmp_path / "j", create=True)
    total = mid_stream = 0
    for _ in range(rounds):
        j.append_many([(b"v%d" % i) * rnd.randint(1, 20) for i in range(total,
                                                                         total + per_round)])
        total += per_round
        before = j.consumer_offsets().get("mirror", 0)
        proc = subprocess.Popen(_mirror_cmd(broker, topic, j.path, rnd.randint(1, 100)),
                                env=child_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if rnd.random() < 0.25:
            time.sleep(rnd.uniform(0.0, 1.0))  # start-up, fencing, read-back
        else:  # once records move (the mirror commits its journal position), a bit later
            deadline = time.monotonic() + 30
            while (j.consumer_offsets().get("mirror", 0) == before
                   and proc.poll() is None and time.monotonic() < deadline):
                time.sleep(0.005)
            time.sleep(rnd.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), (err, seed)
        after = j.consumer_offsets().get("mirror", 0)
        if proc.returncode == -signal.SIGKILL and before < after < total:
            mid_stream += 1
    assert mid_stream >= rounds // 4, (mid_stream, rounds, seed)
    res = subprocess.run(_mirror_cmd(broker, topic, j.path, 500), env=child_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (res.stderr, seed)
    got = broker.read(topic)
    assert [int(dict(m.headers())[OFFSET_HEADER]) for m in got] == list(range(total)), seed
    for want, m in zip(j.reader(0), got, strict=True):
        assert m.value() == want.value, seed
    report = Journal.check(j.path)
    assert report.ok, report.problems
    j.close()


def test_sigkill_the_mirror_command_at_random_moments(broker, tmp_path):
    mirror_kill_rounds(broker, tmp_path, rounds=8, per_round=8000)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 100+ rounds of process start-up on a loaded machine
def test_sigkill_the_mirror_command_many_rounds(broker, tmp_path):
    mirror_kill_rounds(broker, tmp_path, rounds=110, per_round=8000)


def test_the_far_side_consumer_reads_what_a_mirror_wrote_as_journal_records(broker,
                                                                             tmp_path):
    topic = broker.new_topic()
    j = Journal(tmp_path / "j", create=True)
    j.append(b"a", key=b"k", headers=[("trace", b"1")], timestamp_ms=1_234_567)
    assert Mirror(j, KafkaSink(broker.bootstrap, topic)).run(until_caught_up=True) == 1
    c = KafkaSource(broker.bootstrap, topic, **broker.group_config).consumer("g")
    recs: list = []
    while not recs:
        recs = c.poll(10, 1.0)
    (r,) = recs
    (want,) = list(j.reader(0))
    assert (r.value, r.key, r.headers, r.timestamp_ms, r.journal_offset) == (
        want.value, want.key, want.headers, want.timestamp_ms, want.offset)
    c.close()
    j.close()
