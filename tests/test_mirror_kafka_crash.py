"""SIGKILL the process mirroring a journal into Kafka at random moments, many rounds; the
partition must end with journal offsets 0..N-1 exactly once and in order.

Each round the journal grows (as a live one does) and a fresh, unrelated mirroring
process is started and killed after a random delay: during start-up, during open()
(fencing, read-back), between transactions or inside one.  The next round's process
fences the dead one's producer and resumes from what the partition holds.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from _kafka_broker import running_broker
from conftest import spawn

from mmapkit import Journal

pytestmark = pytest.mark.kafka

pytest.importorskip("confluent_kafka")
from mmapkit.mirror.kafka import OFFSET_HEADER, SOURCE_HEADER  # noqa: E402

# The mirroring process: the Sink contract driven the way the Mirror drives it (open,
# then batches in journal order, each returning once the broker committed it).
MIRROR = """
import random, sys
from mmapkit import Journal
from mmapkit.mirror.kafka import KafkaSink
bootstrap, topic, path, seed = sys.argv[1:5]
rnd = random.Random(int(seed))
j = Journal(path)
sink = KafkaSink(bootstrap, topic, timeout=20)
start = sink.open("crash-test")
print("open", start, flush=True)
reader = j.reader(start)
while True:
    recs = reader.poll(rnd.randint(1, 120), 0)
    if not recs:
        break
    sink.send(recs)
    print("sent", recs[-1].offset + 1, flush=True)
sink.close()
print("done", flush=True)
"""


def _append(j: Journal, first: int, n: int, rnd: random.Random) -> None:
    # Journal batches of 1..500 records (a batch per record would make the final
    # Journal.check() slow: its time-index pass is quadratic in batches per segment).
    i, end = first, first + n
    while i < end:
        k = min(end - i, rnd.randint(1, 500))
        j.append_many([(b"record %d " % o + b"x" * rnd.randint(0, 200), b"k%d" % (o % 13),
                        [("n", b"%d" % o)] if o % 5 == 0 else None) for o in range(i, i + k)])
        i += k


def kill_rounds(tmp_path: Path, rounds: int, per_round: int, max_delay: float) -> None:
    rnd = random.Random()
    seed = rnd.randrange(1 << 30)
    rnd.seed(seed)
    with running_broker() as broker:
        topic = broker.new_topic()
        j = Journal(tmp_path / "j", create=True)
        total = 0
        mid_stream = 0
        for r in range(rounds):
            _append(j, total, per_round, rnd)
            total += per_round
            proc = spawn(MIRROR, broker.bootstrap, topic, j.path, str(rnd.randrange(1 << 30)))
            head = ""
            if rnd.random() < 0.25:
                time.sleep(rnd.uniform(0.0, 1.0))  # start-up, fencing, read-back
            else:  # records moving: kill at a random point of the stream
                assert proc.stdout is not None
                head = proc.stdout.readline()
                assert head.startswith("open"), (head, proc.stderr)
                time.sleep(rnd.uniform(0.0, max_delay))
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
            lines = (head + out).splitlines()
            if proc.returncode != -signal.SIGKILL:
                assert "done" in lines, f"round {r} (seed {seed}): {err}"
            elif any(line.startswith("sent") for line in lines):
                mid_stream += 1
        # A kill that never lands while records move would make this test say nothing.
        assert mid_stream >= rounds // 4, (mid_stream, rounds, seed)
        proc = spawn(MIRROR, broker.bootstrap, topic, j.path, "1")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.splitlines()[-1] == "done", (err, seed)

        got = broker.read(topic)
        offsets = []
        for m in got:
            headers = dict(m.headers())
            offsets.append(int(headers[OFFSET_HEADER]))
            assert headers[SOURCE_HEADER] == b"crash-test"
        assert offsets == list(range(total)), f"seed {seed}: not 0..{total - 1} exactly once"
        for want, m in zip(j.reader(0), got, strict=True):
            assert (m.value(), m.key()) == (want.value, want.key), seed
        report = Journal.check(j.path)
        assert report.ok, report.problems
        j.close()


# The default suite kills the real ``journal mirror`` command instead
# (test_mirror_kafka_mirror.py); this one drives the sink alone, so a fault in the Mirror
# cannot hide one in the sink or the other way round.
@pytest.mark.slow
@pytest.mark.timeout(1200)  # 100+ rounds of process start-up on a loaded machine
def test_sigkill_the_mirroring_process_many_rounds(tmp_path):
    kill_rounds(tmp_path, rounds=120, per_round=6000, max_delay=0.4)
