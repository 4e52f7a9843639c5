"""The journal's writer lock held between appends (journal.py, steps H1-H6 and K of the
lock-hold table), with real processes: a holder paused after its append, killed, idle,
forked; a waiter that announces itself; a process that only knows the plain flock.
Every test ends with Journal.check()."""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import run_py, spawn, wait_reached

from mmapkit import Journal

# Appends once holding the lock for up to `hold` seconds, says so, then idles (or forks a
# child that lives on, then idles).
HOLDER = """
import os, sys, time
from mmapkit import Journal
path, hold, fork = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "fork"
j = Journal(path, lock_hold=hold)
off = j.append(b"held-0")
if fork:
    child = os.fork()
    if child == 0:  # (off the test's pipes: it waits for their end, not for us)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        time.sleep(60)
        os._exit(0)
    print("child", child, flush=True)
print("appended", off, flush=True)
line = sys.stdin.readline()
if line.strip() == "append":
    print("appended", j.append(b"held-1"), flush=True)
    sys.stdin.readline()
"""


def _flock_free(meta: str) -> bool:
    """Whether a plain exclusive flock on journal.meta can be taken now (then dropped)."""
    fd = os.open(meta, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # (closing the only descriptor of the description drops the flock)
    return True


def _line(p: object, word: str) -> list[str]:
    import subprocess
    assert isinstance(p, subprocess.Popen)
    line = p.stdout.readline()
    assert line.startswith(word), (line, p.poll() is None or p.communicate())
    return line.split()


def _journal(tmp_path: Path) -> tuple[str, str]:
    d = str(tmp_path / "j")
    with Journal(d, create=True, lock_hold=0) as j:
        j.append(b"first")
    return d, os.path.join(d, "journal.meta")


def test_h1_holder_keeps_the_lock_and_k_its_kill_drops_it(tmp_path: Path) -> None:
    d, meta = _journal(tmp_path)
    p = spawn(HOLDER, d, "30", "-", stdin=-1)
    assert _line(p, "appended")[1] == "1"
    # H1: appended and returned, still holding; a plain flock cannot be had
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        assert not _flock_free(meta)
        time.sleep(0.02)
    # ... but the append is acknowledged: a reader sees it (readers take no lock)
    with Journal(d) as j:
        assert [r.value for r in j.reader()] == [b"first", b"held-0"]
    p.kill()
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    # K: the kernel dropped the flock with the process
    assert _flock_free(meta)
    with Journal(d) as j:
        assert j.append(b"after") == 2
        assert [r.value for r in j.reader()] == [b"first", b"held-0", b"after"]
    report = Journal.check(d)
    assert report.ok, report.problems


def test_l2_h4_a_waiting_writer_gets_the_held_lock_at_once(tmp_path: Path) -> None:
    d, meta = _journal(tmp_path)
    p = spawn(HOLDER, d, "30", "-", stdin=-1)
    assert _line(p, "appended")[1] == "1"
    assert not _flock_free(meta)
    with Journal(d, lock_hold=30) as j:
        t0 = time.monotonic()
        off = j.append(b"waiter")  # L2 wakes the holder's releaser (H4): not 30 s
        took = time.monotonic() - t0
        assert off == 2
        assert took < 5.0, took
        # now this handle holds; the first holder's next append is handed over (H3/H4)
        p.stdin.write("append\n")
        p.stdin.flush()
        assert _line(p, "appended")[1] == "3"
        assert [r.value for r in j.reader()] == [b"first", b"held-0", b"waiter", b"held-1"]
    p.stdin.write("end\n")
    p.stdin.flush()
    p.communicate(timeout=30)
    assert p.returncode == 0
    report = Journal.check(d)
    assert report.ok, report.problems


def test_h4_an_idle_holder_lets_a_plain_flock_in(tmp_path: Path) -> None:
    """A process that never sets "wanted" (plain flock, as an older mmapkit) waits only
    for the holder's idle interval."""
    d, meta = _journal(tmp_path)
    p = spawn(HOLDER, d, "0.05", "-", stdin=-1)
    assert _line(p, "appended")[1] == "1"
    deadline = time.monotonic() + 5
    while not _flock_free(meta):
        assert time.monotonic() < deadline, "an idle holder kept the lock"
        time.sleep(0.005)
    p.stdin.write("append\n")
    p.stdin.flush()
    assert _line(p, "appended")[1] == "2"
    p.stdin.write("end\n")
    p.stdin.flush()
    p.communicate(timeout=30)
    report = Journal.check(d)
    assert report.ok, report.problems


def test_h5_a_fork_child_does_not_keep_a_killed_parents_lock(tmp_path: Path) -> None:
    d, meta = _journal(tmp_path)
    p = spawn(HOLDER, d, "30", "fork", stdin=-1)
    child = int(_line(p, "child")[1])
    try:
        assert _line(p, "appended")[1] == "1"
        assert not _flock_free(meta)  # the parent holds
        p.kill()
        p.communicate()
        os.kill(child, 0)  # the child lives on, its copy of the descriptor open
        assert _flock_free(meta)  # ... but not the parent's flock (H5)
        with Journal(d) as j:
            assert j.append(b"after") == 2
    finally:
        os.kill(child, signal.SIGKILL)
    report = Journal.check(d)
    assert report.ok, report.problems


def test_h5_a_fork_child_appends_while_its_parent_holds(tmp_path: Path) -> None:
    d, _ = _journal(tmp_path)
    with Journal(d, lock_hold=30) as j:
        j.append(b"parent")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its own lock, handed over by the holding parent
            code = 1
            try:
                os.close(r)
                off = j.append(b"child")
                os.write(w, b"%d" % off)
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        t0 = time.monotonic()
        got = b""
        while True:  # the parent stays idle in the holding state meanwhile
            chunk = os.read(r, 32)
            if not chunk:
                break
            got += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert got == b"2"
        assert time.monotonic() - t0 < 5.0
        assert j.append(b"parent again") == 3
        assert [x.value for x in j.reader()] == [b"first", b"parent", b"child",
                                                 b"parent again"]
    report = Journal.check(d)
    assert report.ok, report.problems


def test_h6_close_lets_go_at_once(tmp_path: Path) -> None:
    d, meta = _journal(tmp_path)
    j = Journal(d, lock_hold=30)
    j.append(b"x")
    assert not _flock_free(meta)
    j.close()
    assert _flock_free(meta)
    report = Journal.check(d)
    assert report.ok, report.problems


def test_lock_hold_is_checked() -> None:
    with pytest.raises(ValueError, match="lock_hold"):
        Journal("/nonexistent-never-opened", lock_hold=-1)


DROPPER = """
import gc, sys, time
from mmapkit import Journal
j = Journal(sys.argv[1], lock_hold=0.05)
j.append(b"dropped")
del j  # never closed
gc.collect()
print("dropped", flush=True)
time.sleep(60)
"""


def test_a_handle_dropped_unclosed_still_lets_go(tmp_path: Path) -> None:
    d, meta = _journal(tmp_path)
    p = spawn(DROPPER, d)
    try:
        _line(p, "dropped")
        deadline = time.monotonic() + 5
        while not _flock_free(meta):
            assert time.monotonic() < deadline, "a dropped handle kept the writer lock"
            time.sleep(0.005)
        with Journal(d) as j:
            assert j.append(b"after") == 2
    finally:
        p.kill()
        p.communicate()
    report = Journal.check(d)
    assert report.ok, report.problems


PAUSED_HOLDER = """
import sys
from mmapkit import Journal
j = Journal(sys.argv[1], lock_hold=30)
for i in range(3):
    j.append(b"paused-%d" % i)
print("done", flush=True)
"""


def test_a_writer_paused_after_publishing_hands_the_held_lock_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paused at journal.append.published (A6 done, the lock held: H1) with a 30 s hold:
    another process's append gets the lock from the paused writer's releaser thread (L2,
    H4), sees the published record, and the paused writer appends on after it (dense)."""
    d, meta = _journal(tmp_path)
    pauses = tmp_path / "pauses"
    pauses.mkdir()
    monkeypatch.setenv("MMAPKIT_PAUSE", "journal.append.published")
    monkeypatch.setenv("MMAPKIT_PAUSE_DIR", str(pauses))
    p = spawn(PAUSED_HOLDER, d)
    wait_reached(p, pauses, "journal.append.published")
    monkeypatch.delenv("MMAPKIT_PAUSE")
    assert not _flock_free(meta)  # H1: held across the pause
    with Journal(d) as j:
        t0 = time.monotonic()
        assert j.append(b"between") == 2
        assert time.monotonic() - t0 < 5.0
        (pauses / "journal.append.published.go").touch()
        assert p.communicate(timeout=30)[0].strip() == "done"
        assert [r.value for r in j.reader()] == [b"first", b"paused-0", b"between",
                                                 b"paused-1", b"paused-2"]
    report = Journal.check(d)
    assert report.ok, report.problems


def test_b1_b3_a_reader_registering_its_doorbell_does_not_keep_the_lock(
        tmp_path: Path) -> None:
    """fileno() (B1) and a doorbell reader's close() (B3) take L to write the meta page's
    slots; a reader is not a writer whose next append reuses a hold: L goes at once, even
    with a long lock_hold."""
    d, meta = _journal(tmp_path)
    with Journal(d, lock_hold=60.0) as j:
        r = j.reader(follow=True)
        assert r.fileno() >= 0
        assert _flock_free(meta), "B1 left the writer lock held"
        r.close()
        assert _flock_free(meta), "B3 left the writer lock held"
        j.append(b"second")  # a write still holds (H1)
        assert not _flock_free(meta)


def test_threads_of_one_handle_append_each_record_once(tmp_path: Path) -> None:
    """The lean append reads W, the room and the index position under the handle's
    thread lock: threads sharing one handle (with short switch intervals, so they
    interleave between the look and the lock) never store two records at one place."""
    import sys
    import threading

    d, _ = _journal(tmp_path)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with Journal(d, lock_hold=30, segment_bytes=1 << 16) as j:
            offsets: list[list[int]] = [[] for _ in range(4)]

            def run(k: int) -> None:
                for i in range(3000):
                    offsets[k].append(j.append(b"t%d-%d" % (k, i)))

            threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            got = sorted(o for per in offsets for o in per)
            assert got == list(range(1, 1 + 4 * 3000))  # (offset 0: _journal's record)
            values = {r.offset: r.value for r in j.reader(1)}
            for k in range(4):
                assert [values[o] for o in offsets[k]] == [b"t%d-%d" % (k, i)
                                                           for i in range(3000)]
    finally:
        sys.setswitchinterval(old)
    report = Journal.check(d)
    assert report.ok, report.problems


def test_lean_appends_of_many_value_lengths_store_each_batch_whole(tmp_path: Path) -> None:
    """The lean append writes a batch with one pack_into of a Struct per batch length,
    kept for the last 64 lengths: values of 300 lengths in a shuffled order (the cache
    emptied and refilled, each length met again after that) are stored whole, and a
    reader in another process reads each one back exactly."""
    import random

    d, _ = _journal(tmp_path)
    lengths = list(range(300)) * 2
    random.Random(12).shuffle(lengths)
    values = [bytes([n % 251]) * n for n in lengths]
    with Journal(d, lock_hold=30) as j:
        j.append(b"first")  # the general way: the lean path is set up from here on
        assert j._lock._hot is not None
        for v in values:
            j.append(v)
        assert j._lock._hot is not None, "the appends did not stay on the lean path"
    reader = spawn("""
import sys
from mmapkit import Journal
with Journal(sys.argv[1]) as j:
    for r in j.reader(2):
        sys.stdout.write(r.value.hex() + "\\n")
""", d)
    out, _ = reader.communicate(timeout=60)
    assert reader.returncode == 0
    assert [bytes.fromhex(line) for line in out.splitlines()] == values
    report = Journal.check(d)
    assert report.ok, report.problems


def test_lean_appends_write_the_index_entries_the_general_way_writes(tmp_path: Path) -> None:
    """The lean append writes an index entry when one is due (A5), as the general append
    does: a run of lean appends (lock held) across many index intervals leaves the same
    offset index, slot for slot, as the same appends made the general way (lock_hold=0:
    the flock goes after each append), a time index whose entries name increasing
    records, and positions that a reader in another process finds records at."""
    from mmapkit.journal import _format as F
    from mmapkit.journal.index import SparseIndex, index_paths

    values = [bytes([i % 251]) * (40 + i % 90) for i in range(3000)]
    dirs = {}
    for name, hold in (("lean", 30.0), ("general", 0.0)):
        d = dirs[name] = str(tmp_path / name)
        with Journal(d, create=True, lock_hold=hold, index_interval=1024) as j:
            j.append(b"first")
            for v in values:
                j.append(v)
            if hold:
                assert j._lock._hot is not None, "the appends left the lean path"
        report = Journal.check(d)
        assert report.ok and not report.stale_indexes, (report.problems,
                                                       report.stale_indexes)

    def entries(d: str, kind: str) -> list[tuple[int, int]]:
        log = os.path.join(d, F.segment_name(0))
        path = index_paths(log)[0 if kind == "offset" else 1]
        idx = SparseIndex(path, kind, 0, writable=False)
        try:
            n = idx.count(len(values) + 1, 1 << 40)
            return [idx.entry(i) for i in range(n)]
        finally:
            idx.close()

    lean = entries(dirs["lean"], "offset")
    assert len(lean) > 100  # (~190 entries: one per 1 KiB of ~150-byte batches)
    assert lean == entries(dirs["general"], "offset")
    times = entries(dirs["lean"], "time")
    assert len(times) == len(lean)
    assert [rel for _, rel in times] == sorted({rel for _, rel in times})
    reader = spawn("""
import sys
from mmapkit import Journal
with Journal(sys.argv[1]) as j:
    for off in map(int, sys.argv[2:]):
        r = j.reader(off)
        print(next(r).value.hex())
""", dirs["lean"], *[str(rel) for rel, _ in lean[::20]])
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert out.split() == [values[rel - 1].hex() for rel, _ in lean[::20]]
    for d in dirs.values():
        report = Journal.check(d)
        assert report.ok, report.problems


PREPARE = """
import sys
from mmapkit import Journal
j = Journal(sys.argv[1], lock_hold=float(sys.argv[2]))
before = j._lock._lock_waiter is not None
j.append(b"x")
print(before, j._lock._lock_waiter is not None)
j.close()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="futex: Linux only")
def test_a_holding_writer_prepares_the_hand_over_before_it_takes_the_lock(
        tmp_path: Path) -> None:
    """The first futex call of a process imports ctypes and sets the syscall up (5-10 ms):
    a writer that will hold the lock between appends pays it before its first flock, not
    at its first hand-over, made holding the lock the other producers wait for.  A writer
    that never holds (lock_hold=0) does not pay it."""
    d, _ = _journal(tmp_path)
    seen = {}
    for hold in ("0.05", "0"):
        res = run_py(PREPARE, d, hold)
        assert res.returncode == 0, res.stderr
        seen[hold] = res.stdout.split()
    assert seen == {"0.05": ["False", "True"], "0": ["False", "False"]}
