"""Journal across processes: unrelated producers started together, followers in other
processes, and kill -9 of producers, readers and consumers at random moments (fork) and
at chosen protocol steps (pause points).  Every test ends with Journal.check()."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from conftest import JOURNAL_APPENDER, exit_code, fork_child, spawn, wait_reached

from mmapkit import Journal
from mmapkit.journal import _format as F

PRODUCER = """
import sys, time
from mmapkit import Journal
path, me, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
j = Journal(path)
while time.time() < go:
    time.sleep(0.0005)
for i in range(n):
    if i % 7 == 3:
        j.append_many([f"{me}:{i}".encode(), f"{me}:{i}b".encode()])
    else:
        j.append(f"{me}:{i}".encode(), key=me.encode())
print("ok", flush=True)
"""

FOLLOWER = """
import sys
from mmapkit import Journal
path, want = sys.argv[1], int(sys.argv[2])
j = Journal(path)
got = 0
last = -1
for r in j.reader("earliest", follow=True, timeout=20):
    assert r.offset == last + 1, (r.offset, last)
    last = r.offset
    got += 1
    if got == want:
        break
print("seen", got, flush=True)
"""


def test_producers_started_together_get_dense_offsets_exactly_once(tmp_path: Path) -> None:
    d = str(tmp_path / "j")
    Journal(d, create=True, segment_bytes=16384, index_interval=512).close()
    n, producers = 700, 4
    per = n + sum(1 for i in range(n) if i % 7 == 3)
    go = time.time() + 1.0
    procs = [spawn(PRODUCER, d, f"p{k}", str(n), str(go)) for k in range(producers)]
    follower = spawn(FOLLOWER, d, str(per * producers))
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok", err
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0 and out.split() == ["seen", str(per * producers)], err
    with Journal(d) as j:
        recs = list(j.reader())
    assert [r.offset for r in recs] == list(range(per * producers))  # dense, in order
    values = [r.value.decode() for r in recs]
    assert len(set(values)) == len(values)  # exactly once
    for k in range(producers):  # each producer's order kept
        mine = [v for v in values if v.startswith(f"p{k}:")]
        seq = [int(v.split(":")[1].rstrip("b")) for v in mine]
        assert seq == sorted(seq) and len(mine) == per
    report = Journal.check(d)
    assert report.ok and report.records == per * producers, report.problems


def _producer(d: str, tag: int, ack_path: str) -> None:
    j = Journal(d)
    fd = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rnd = random.Random(tag)
    for i in range(100000):
        value = f"{tag}:{i}:".encode() + b"x" * rnd.randrange(0, 200)
        if rnd.random() < 0.2:
            j.append_many([value, value + b"+"])
        else:
            j.append(value)
        os.write(fd, f"{tag}:{i}\n".encode())  # acknowledged


def _consumer(d: str, log_path: str) -> None:
    j = Journal(d)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    c = j.consumer("worker")
    os.write(fd, f"start {c.position}\n".encode())
    while True:
        for r in c.poll(max_records=50, timeout=0.05):
            os.write(fd, f"got {r.offset}\n".encode())  # processed
        os.write(fd, f"commit? {c.position}\n".encode())
        c.commit()
        os.write(fd, f"commit {c.position}\n".encode())


def _reader(d: str) -> None:
    j = Journal(d)
    last = -1
    for r in j.reader(follow=True, timeout=5):
        assert r.offset == last + 1
        last = r.offset


def _kill_rounds(tmp_path: Path, rounds: int, seed: int) -> None:
    # the consumers' KV is imported here, once: a fork child that imported it itself
    # would spend its life compiling it (PYTHONDONTWRITEBYTECODE) and be killed first
    import mmapkit.kv  # noqa: F401
    d = str(tmp_path / "j")
    Journal(d, create=True, segment_bytes=4096, index_interval=256,
            retention_ms=10**15).close()
    ack = str(tmp_path / "acks")
    clog = str(tmp_path / "consumer")
    rnd = random.Random(seed)
    for k in range(rounds):
        pids = [fork_child(lambda k=k: _producer(d, k, ack))]
        logged = os.path.getsize(clog) if os.path.exists(clog) else 0
        if k % 2 == 0:
            pids.append(fork_child(lambda: _consumer(d, clog)))
        if k % 5 == 0:
            pids.append(fork_child(lambda: _reader(d)))
        if k % 2 == 0:  # on a loaded machine a child may need a while to start: the kill
            deadline = time.monotonic() + 5  # lands at a random moment of its *work*
            while time.monotonic() < deadline and (
                    not os.path.exists(clog) or os.path.getsize(clog) == logged):
                time.sleep(0.001)
        time.sleep(rnd.uniform(0.002, 0.03))
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            assert exit_code(pid) == -signal.SIGKILL
    # A last consumer run drains everything (and must not fail on what the kills left).
    with Journal(d) as j:
        c = j.consumer("worker")
        start = c.position
        drained = []
        while True:
            got = c.poll(1000, timeout=0)
            if not got:
                break
            drained += [r.offset for r in got]
        c.commit()
        end = j.end_offset
        recs = list(j.reader())
    assert [r.offset for r in recs] == list(range(end))
    seen: dict[str, int] = {}
    for r in recs:
        tag, i = r.value.split(b":")[:2]
        key = f"{int(tag)}:{int(i)}"
        if r.value.endswith(b"+"):
            continue
        assert key not in seen, f"{key} appears twice"
        seen[key] = r.offset
    with open(ack) as f:
        acked = [line.strip() for line in f if line.strip()]
    missing = [a for a in acked if a not in seen]
    assert not missing, f"acknowledged records lost: {missing[:5]}"
    for tag in {a.split(":")[0] for a in acked}:  # per producer order
        offs = [o for key, o in seen.items() if key.split(":")[0] == tag]
        idx = [int(key.split(":")[1]) for key, o in seen.items() if key.split(":")[0] == tag]
        assert [i for _, i in sorted(zip(offs, idx, strict=True))] == sorted(idx)
    # Consumer: each run starts at its committed position (between the last finished
    # commit and the last attempted one), and reads on without gaps or repeats.
    committed_lo = committed_hi = 0
    runs = 0
    expect: int | None = None
    with open(clog) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 2:
                continue  # a line torn by the kill
            what, n = parts[0], int(parts[1])
            if what == "start":
                runs += 1
                assert committed_lo <= n <= committed_hi, (n, committed_lo, committed_hi)
                committed_lo = committed_hi = n
                expect = n
            elif what == "got":
                assert n == expect, (n, expect)
                expect = n + 1
            elif what == "commit?":
                committed_hi = n
            elif what == "commit":
                committed_lo = n
    assert runs > rounds // 4
    assert committed_lo <= start <= committed_hi
    assert drained == list(range(start, end))
    report = Journal.check(d)
    assert report.ok, report.problems
    assert report.records == end and report.segments > 3


def test_kill_9_of_producers_consumers_and_readers(tmp_path: Path) -> None:
    _kill_rounds(tmp_path, 200, seed=1)


@pytest.mark.slow
def test_kill_9_soak(tmp_path: Path) -> None:
    _kill_rounds(tmp_path, 2000, seed=2)


PAUSED_WRITER = """
import sys
from mmapkit import Journal
j = Journal(sys.argv[1])
for i in range(int(sys.argv[2])):
    j.append(b"paused-%d" % i + b"." * 40)
print("done", flush=True)
"""


@pytest.mark.parametrize("point", ["journal.append.grown", "journal.append.written",
                                   "journal.roll.created", "journal.retain.started"])
def test_kill_at_a_protocol_step(tmp_path: Path, point: str,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    d = str(tmp_path / "j")
    pauses = tmp_path / "pauses"
    pauses.mkdir()
    with Journal(d, create=True, segment_bytes=1024, retention_bytes=2048,
                 delete_delay_ms=0) as j:
        for i in range(30):
            j.append(b"before-%d" % i + b"." * 40)
        before = j.end_offset
        monkeypatch.setenv("MMAPKIT_PAUSE", point)
        monkeypatch.setenv("MMAPKIT_PAUSE_DIR", str(pauses))
        p = spawn(PAUSED_WRITER, d, "200")
        wait_reached(p, pauses, point)
        if point == "journal.append.grown":  # A5g: allocated past W, nothing stored yet
            active = os.path.join(d, max(n for n in os.listdir(d) if n.endswith(".log")))
            with open(active, "rb") as f:
                f.seek(24)
                w_pos = int.from_bytes(f.read(8), "little") & 0xFFFFFFFF
            assert os.path.getsize(active) > w_pos
            assert Journal.check(d).ok
        # Between the two steps: readers see only published records, all of them whole.
        seen = [r.offset for r in j.reader()]
        assert seen == list(range(j.start_offset, j.end_offset))
        end_at_pause = j.end_offset
        p.kill()
        p.communicate()
        assert p.returncode == -signal.SIGKILL
        # Another writer goes on: offsets stay dense from what was published.
        first = j.append(b"after")
        assert first == end_at_pause >= before
        assert [r.offset for r in j.reader()] == list(range(j.start_offset, first + 1))
    report = Journal.check(d)
    assert report.ok, report.problems


REOPEN = """
import sys, time
from mmapkit import Journal
t0 = time.perf_counter()
j = Journal(sys.argv[1])
off = j.append(b"after the crash")
print(time.perf_counter() - t0, off, flush=True)
j.close()
"""


@pytest.mark.parametrize("size", [16 << 20, pytest.param(1 << 30, marks=pytest.mark.slow)])
def test_reopen_after_kill_mid_append_costs_unpublished_bytes_only(
        tmp_path: Path, size: int) -> None:
    d = str(tmp_path / "j")
    chunk = [b"%07d" % i + b"v" * 65_529 for i in range(16)]  # 1 MiB batches
    with Journal(d, create=True) as j:
        while j.statistics().bytes < size:
            j.append_many(chunk)
    for _ in range(3 if size < 1 << 30 else 10):
        p = spawn(JOURNAL_APPENDER, d)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        acked = int(p.stdout.readline())
        time.sleep(random.uniform(0.01, 0.2))
        p.send_signal(signal.SIGKILL)  # mid-append, at a random moment
        rest, _ = p.communicate()
        assert p.returncode == -signal.SIGKILL
        acked = max([acked, *(int(x) for x in rest.split())])
        r = spawn(REOPEN, d)
        out, err = r.communicate(timeout=120)
        assert r.returncode == 0, err
        took, first = out.split()
        # ready in milliseconds however big the journal (a generous bound: shared CPU)
        assert float(took) < 0.5, (size, took)
        assert int(first) > acked  # every acknowledged record is below the new one
    with Journal(d) as j:
        tail = list(j.reader(max(0, j.end_offset - 200)))
        assert [r.offset for r in tail] == list(range(j.end_offset - 200, j.end_offset))
    report = Journal.check(d)
    assert report.ok, report.problems


SPUN_WRITER = """
import sys
from mmapkit import Journal
j = Journal(sys.argv[1])
for i in range(int(sys.argv[2])):
    j.append(b"spun-%d" % i)
    if i % 500 == 0:
        j.append_many([b"m1", b"m2"])
print("done", flush=True)
"""


def test_a_spinning_poll_sees_every_record_of_another_process(tmp_path: Path) -> None:
    """poll(timeout=0) answers from the notify word alone while it is unchanged: records
    another process publishes (through its lean appends, rolls included) are all seen,
    in order, none twice."""
    d = str(tmp_path / "j")
    Journal(d, create=True, segment_bytes=8192, index_interval=256).close()
    n = 3000
    want = n + 2 * len(range(0, n, 500))
    with Journal(d) as j, j.reader("earliest") as r:
        p = spawn(SPUN_WRITER, d, str(n))
        got: list[int] = []
        deadline = time.monotonic() + 60
        while len(got) < want and time.monotonic() < deadline:
            got.extend(x.offset for x in r.poll(500, timeout=0))
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and out.strip() == "done", err
        got.extend(x.offset for x in r.poll(500, timeout=0))
        assert got == list(range(want))
    report = Journal.check(d)
    assert report.ok, report.problems


ECHO_FOLLOWER = """
import sys
from mmapkit import Journal
with Journal(sys.argv[1]) as j, j.reader("latest", follow=True, timeout=30) as r:
    print("ready", flush=True)
    for rec in r:
        print(rec.value.decode(), flush=True)
        if rec.value == b"last":
            break
"""


def test_an_append_that_woke_a_follower_yields_the_cpu_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A7: an append (the general way, then the lean one) that woke a follower asleep in
    another process yields the CPU once, so a follower woken on this CPU runs now; an
    append that woke nobody makes no sched_yield call."""
    d = str(tmp_path / "j")
    yields: list[int] = []
    real_yield = os.sched_yield

    def counted() -> None:
        yields.append(1)
        real_yield()

    waiting = F.OFF_WAITERS // 4
    with Journal(d, create=True) as j:
        p = spawn(ECHO_FOLLOWER, d)
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        monkeypatch.setattr(os, "sched_yield", counted)
        for value in ("general", "lean"):
            deadline = time.monotonic() + 30
            while not j._meta.u32[waiting]:  # the follower is asleep (it set the word)
                assert time.monotonic() < deadline and p.poll() is None
                time.sleep(0.001)
            before = len(yields)
            j.append(value.encode())
            assert len(yields) - before == 1
            assert p.stdout.readline() == value + "\n"
        while not j._meta.u32[waiting]:
            time.sleep(0.001)
        j._meta.u32[waiting] = 0  # as if nobody slept: the append wakes nobody
        before = len(yields)
        j.append(b"unheard")
        assert len(yields) == before
        j.append(b"last")  # (the follower's slice ends; it reads both)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0 and out.split() == ["unheard", "last"], err
    report = Journal.check(d)
    assert report.ok, report.problems
