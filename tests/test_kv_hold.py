"""The multiprocess KV keeps its writer lock between writes (steps H1-H5 of kv/store.py's
protocol table): a run of writes takes the flock once, and the lock goes back when the
handle is idle, when another process asks for it, when it closes, and never to a fork
child by inheritance.  Each transition is tested with unrelated processes.
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Child, child_env, exit_code, fork_child, run_py, spawn, wait_reached

from mmapkit.kv import KV

# Try the store's writer lock (an exclusive flock on the store file itself) from another
# process, without waiting: prints "free" or "taken".
PROBE = """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("free")
    except BlockingIOError:
        print("taken")
"""

WRITE_ONE = """
    import sys, time
    from mmapkit.kv import KV
    with KV(sys.argv[1], multiprocess=True) as kv:
        t = time.monotonic()
        kv[sys.argv[2]] = 1
        print(time.monotonic() - t)
"""


def probe(path: Path) -> str:
    res = run_py(PROBE, str(path))
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_h1_h4_a_writer_keeps_the_lock_then_an_idle_handle_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "h.kv"
    with KV(path, multiprocess=True, lock_hold=2.0) as kv:
        kv["a"] = 1
        assert probe(path) == "taken"  # H1: held between writes
        kv["b"] = 2  # H2: no flock call, the write goes on
        assert kv["a"] == 1 and kv["b"] == 2
    assert probe(path) == "free"  # H5: close() lets go
    with KV(path, multiprocess=True, lock_hold=0.02) as kv:
        kv["c"] = 3
        deadline = time.monotonic() + 10
        while probe(path) == "taken":  # H4: idle for lock_hold: the releaser lets go
            assert time.monotonic() < deadline, "an idle handle kept the writer lock"
        kv["d"] = 4  # and takes it again
        assert dict(kv) == {"a": 1, "b": 2, "c": 3, "d": 4}


def test_lock_hold_zero_releases_after_every_write(tmp_path: Path) -> None:
    path = tmp_path / "z.kv"
    with KV(path, multiprocess=True, lock_hold=0) as kv:
        kv["a"] = 1
        assert probe(path) == "free"
        kv.set("b", [1, 2])  # the general path too
        assert probe(path) == "free"
        with kv.lock():
            assert probe(path) == "taken"
        assert probe(path) == "free"
    with pytest.raises(ValueError, match="lock_hold"):
        KV(path, multiprocess=True, lock_hold=-1)


def test_h4_an_idle_holder_is_asked_and_lets_go_at_once(tmp_path: Path) -> None:
    """A holder with a very long hold, idle (asleep): another process's write must not
    wait for the hold to run out -- its L2 wakes the holder's releaser thread."""
    path = tmp_path / "ask.kv"
    with KV(path, multiprocess=True, lock_hold=60.0) as kv:
        kv["mine"] = 1
        res = run_py(WRITE_ONE, str(path), "theirs", timeout=60)
        assert res.returncode == 0, res.stderr
        assert float(res.stdout) < 5.0  # (60 s without the wake; well under 1 s here)
        assert kv["theirs"] == 1 and kv["mine"] == 1
        kv["mine"] = 2  # we take it back
    assert probe(path) == "free"


@pytest.mark.parametrize("op", ["set", "update_with"])
def test_h3_a_busy_holder_hands_over_after_its_quantum(tmp_path: Path, op: str) -> None:
    """A holder writing without pause never goes idle: it must hand over to a waiter at a
    write's end once its quantum has passed, not hold until it stops.  update_with() has
    its own multiprocess hot path (W1-W3 and H1-H3 folded in): a loop of it must hand
    over as a loop of sets does, and lose no increment."""
    path = tmp_path / "busy.kv"
    stop = threading.Event()
    done = [0]
    with KV(path, multiprocess=True, lock_hold=60.0) as kv:
        kv["n"] = 0

        def spin() -> None:
            while not stop.is_set():
                if op == "set":
                    kv["n"] = done[0] + 1
                else:
                    kv.update_with("n", lambda v: v + 1)
                done[0] += 1

        t = threading.Thread(target=spin)
        t.start()
        try:
            res = run_py(WRITE_ONE, str(path), "theirs", timeout=60)
        finally:
            stop.set()
            t.join()
        assert res.returncode == 0, res.stderr
        assert float(res.stdout) < 5.0
        assert kv["theirs"] == 1 and kv["n"] == done[0] > 0
    assert KV.check(path).ok


def test_update_with_fast_path_failures_and_odd_values(tmp_path: Path) -> None:
    """fn raising leaves the value and the lock as they were (held, then handed to another
    process that asks); a value the inline set cannot write goes the general way inside
    the same turn; other processes' appends are read before fn sees the old value."""
    path = tmp_path / "odd.kv"
    with KV(path, multiprocess=True, lock_hold=60.0) as kv:
        kv["n"] = 1

        def boom(v: int) -> int:
            raise RuntimeError("no")

        with pytest.raises(RuntimeError):
            kv.update_with("n", boom)
        assert kv["n"] == 1
        res = run_py(WRITE_ONE, str(path), "n", timeout=60)  # sets n = 1 from another process
        assert res.returncode == 0, res.stderr
        assert float(res.stdout) < 5.0  # the failed call left the lock held, not stuck
        res = run_py(WRITE_ONE, str(path), "m", timeout=60)
        assert res.returncode == 0, res.stderr
        assert kv.update_with("m", lambda v: v + 41) == 42  # read their append first
        assert kv.update_with("c", lambda v: [v, {"x": b"y"}], default=7) == [7, {"x": b"y"}]
        assert kv.update_with("big", lambda v: 1 << 80, default=0) == 1 << 80
        assert kv.update_with("u", lambda v: "\ud800", default="") == "\ud800"
    with KV(path, multiprocess=True) as kv:
        assert dict(kv) == {"n": 1, "m": 42, "c": [7, {"x": b"y"}], "big": 1 << 80,
                            "u": "\ud800"}
    assert KV.check(path).ok


WAIT_THEN_INC = """
    import sys
    from mmapkit.kv import KV
    with KV(sys.argv[1], multiprocess=True) as kv:
        print("ready", flush=True)
        sys.stdin.readline()
        n = kv.update_with("n", lambda v: v + 1)
        print(n, len(kv), kv["k19999"] == b"v" * 200, flush=True)
"""


def test_l3_a_waiter_follows_the_holders_writes_and_growth_while_it_waits(
        tmp_path: Path) -> None:
    """A waiter woken (or at the end of its slice) replays committed records lock-free
    before it says it is ready (L3): while the holder writes 20k records and grows the
    file several times under lock(), the waiter's replay remaps beside it; once it has
    the lock its increment counts every write, and nothing is lost."""
    path = tmp_path / "follow.kv"
    with KV(path, multiprocess=True, lock_hold=60.0) as kv:
        kv["n"] = 0
        child = spawn(WAIT_THEN_INC, str(path), stdin=subprocess.PIPE)
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        size0 = path.stat().st_size
        with kv.lock():
            child.stdin.write("go\n")
            child.stdin.flush()
            time.sleep(0.2)  # the child is waiting for the lock (L2/L3)
            for i in range(20000):
                kv[f"k{i}"] = b"v" * 200
                if i % 4000 == 0:
                    time.sleep(0.02)  # slices end meanwhile: the child replays (L3)
        assert path.stat().st_size > 2 * size0  # it grew while the child waited
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert out.split() == ["1", "20001", "True"]
        assert kv["n"] == 1 and len(kv) == 20001
    assert KV.check(path).ok


def test_a_handle_dropped_unclosed_while_holding_lets_go(tmp_path: Path) -> None:
    """A handle dropped right after a write (no close()): its releaser thread may find it
    gone before its first watch; the descriptor, and so the held flock, must still go."""
    path = tmp_path / "dropped.kv"
    for i in range(5):
        kv = KV(path, multiprocess=True, lock_hold=0.05)
        kv["a"] = i
        del kv
        gc.collect()
        time.sleep(0.2)
        assert probe(path) == "free", f"round {i}: a dropped handle kept the writer lock"
    with KV(path, multiprocess=True) as kv:
        assert kv["a"] == 4


HOLD_THEN_EXIT = """
    import mmap, sys
    from mmapkit.kv import KV, codec
    sys.setswitchinterval(60)  # the releaser thread gets no turn: only the exit lets go
    kv = KV(sys.argv[1], multiprocess=True, lock_hold=60.0)
    kv["a"] = 1  # held from here (H1)
    print("held", flush=True)
    with open(sys.argv[1], "rb") as f:
        words = mmap.mmap(f.fileno(), 4096, access=mmap.ACCESS_READ)
    at = codec.OFF_LOCK_WANT
    while not words[at]:  # (no blocking call: the GIL stays with this thread)
        pass
    words.close()
    sys.exit(0)  # an ordinary exit, the handle open and the lock held
"""

WAIT_AND_WRITE = """
    import sys
    from mmapkit.kv import KV
    kv = KV(sys.argv[1], multiprocess=True, lock_hold=0)
    print("waiting", flush=True)
    kv["b"] = 2
    kv.close()
"""


def lock_words(path: Path) -> tuple[int, int]:
    """(wanted, hand-overs): the header words of the writer lock's turns (L2, H3)."""
    from mmapkit.kv import codec

    with open(path, "rb") as f:
        head = f.read(codec.OFF_LOCK_SEQ + 4)
    return (int.from_bytes(head[codec.OFF_LOCK_WANT : codec.OFF_LOCK_WANT + 4], "little"),
            int.from_bytes(head[codec.OFF_LOCK_SEQ : codec.OFF_LOCK_SEQ + 4], "little"))


def test_h6_a_process_exiting_while_holding_wakes_the_waiter(tmp_path: Path) -> None:
    """A process exits normally with the lock held between writes while its releaser
    thread gets no turn: the kernel drops the flock but wakes nobody, so a sleeping waiter
    slept out its slice.  The exit lets go with a hand-over: the count moves."""
    path = tmp_path / "exit.kv"
    KV(path, multiprocess=True).close()
    holder = spawn(HOLD_THEN_EXIT, str(path))
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    before = lock_words(path)[1]
    waiter = spawn(WAIT_AND_WRITE, str(path))
    assert waiter.stdout is not None
    assert waiter.stdout.readline().strip() == "waiting"
    # L2: the waiter says it wants the lock and sleeps; the holder sees it and exits
    assert holder.wait(timeout=60) == 0
    assert waiter.wait(timeout=60) == 0, waiter.communicate()
    assert lock_words(path)[1] != before  # handed over at exit, not just dropped
    with KV(path, multiprocess=True) as kv:
        assert dict(kv) == {"a": 1, "b": 2}
    assert KV.check(path).ok


HOLD_THEN_CLOSE = """
    import sys
    from mmapkit.kv import KV
    kv = KV(sys.argv[1], multiprocess=True, lock_hold=60.0)
    kv["a"] = 1  # held from here (H1)
    print("held", flush=True)
    sys.stdin.readline()
    kv.close()  # H6: lets go with a hand-over, "wanted" being set
"""


class LockWords:
    """The lock words of a store's mapped header (codec.OFF_LOCK_*), read and written as
    another process would: "wanted", the hand-over count, the ready word."""

    def __init__(self, head: mmap.mmap) -> None:
        from mmapkit.kv import codec

        self.head = head
        self.at = {"want": codec.OFF_LOCK_WANT, "seq": codec.OFF_LOCK_SEQ,
                   "ready": codec.OFF_LOCK_READY}

    def __getitem__(self, word: str) -> int:
        at = self.at[word]
        return int.from_bytes(self.head[at : at + 4], "little")

    def __setitem__(self, word: str, value: int) -> None:
        at = self.at[word]
        self.head[at : at + 4] = value.to_bytes(4, "little")


@contextlib.contextmanager
def holder_then_close(path: Path, **env: str) -> Iterator[tuple[Child, LockWords]]:
    """A process holding the store's writer lock between writes (H1), which closes the
    handle (H6) when told ``close()``; and the store's lock words, mapped."""
    KV(path, multiprocess=True).close()
    holder = Child([sys.executable, "-c", textwrap.dedent(HOLD_THEN_CLOSE), str(path)],
                   env={**child_env(), **env}, text=True, stdin=subprocess.PIPE,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        with open(path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as head:
            yield holder, LockWords(head)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate()


def close(holder: Child) -> None:
    assert holder.stdin is not None
    holder.stdin.write("close\n")
    holder.stdin.flush()


def test_a_waiter_asking_during_a_hand_over_stays_wanted(tmp_path: Path) -> None:
    """A waiter that reads the moved hand-over count while the holder's wake-up is under
    way (and so is not asleep yet: the wake-up finds nobody) sets "wanted" for the next
    hand-over.  The holder must not clear it after its wake-up: that waiter would sleep
    out its slice while the next holder, seeing nobody wanted the lock, wrote on."""
    path = tmp_path / "want.kv"
    with holder_then_close(path, MMAPKIT_PAUSE="kv.handover.counted",
                           MMAPKIT_PAUSE_DIR=str(tmp_path)) as (holder, words):
        words["want"] = 1  # a first waiter asked (L2)
        before = words["seq"]
        close(holder)
        wait_reached(holder, tmp_path, "kv.handover.counted")
        assert words["seq"] != before  # the count moved; the wake-up comes next
        # Another waiter reads the new count and says it wants the lock (L2); it is not
        # asleep yet, so the wake-up finds nobody.
        words["want"] = 1
        (tmp_path / "kv.handover.counted.go").touch()
        assert holder.wait(timeout=60) == 0, holder.communicate()
        assert words["want"] == 1
    assert KV.check(path).ok


def test_letting_go_leaves_a_claimed_turn_to_its_claimer(tmp_path: Path) -> None:
    """A holder that lets go (idle, closing, exiting) while a woken waiter has claimed
    the next turn (L3: replaying, then it tries the flock) wakes nobody and leaves the
    claim: clearing it to wake another sleeper made two processes replay for one turn."""
    from mmapkit.kv import codec

    path = tmp_path / "claim.kv"
    with holder_then_close(path) as (holder, words):
        words["want"] = 1  # others sleep for the lock (L2) ...
        words["ready"] = codec.LOCK_CLAIMED  # ... and one of them was woken
        before = words["seq"]
        close(holder)
        assert holder.wait(timeout=60) == 0, holder.communicate()
        assert words["seq"] == before  # nobody else woken
        assert words["ready"] == codec.LOCK_CLAIMED
    assert probe(path) == "free"
    assert KV.check(path).ok


def test_a_second_handle_in_the_same_process_gets_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "two.kv"
    with KV(path, multiprocess=True, lock_hold=60.0) as one, \
            KV(path, multiprocess=True, lock_hold=60.0) as two:
        one["a"] = 1  # one holds
        t = time.monotonic()
        two["b"] = 2  # two asks; one's releaser thread lets go
        assert time.monotonic() - t < 5.0
        one["c"] = 3
        assert dict(one) == dict(two) == {"a": 1, "b": 2, "c": 3}


def test_h5_a_fork_child_does_not_inherit_the_hold(tmp_path: Path) -> None:
    """The child shares the parent's descriptor, so the parent's flock: it must not write
    as if it held it, and it gets the lock once the parent lets go."""
    path = tmp_path / "fork.kv"
    kv = KV(path, multiprocess=True, lock_hold=0.05)
    try:
        kv["parent"] = 1  # held now

        def child() -> None:
            kv["child"] = 2  # takes its own lock (waits for the parent's to go)
            assert kv["parent"] == 1

        pid = fork_child(child)
        assert exit_code(pid) == 0
        kv["parent"] = 3
        assert kv["child"] == 2 and kv["parent"] == 3
    finally:
        kv.close()
    assert probe(path) == "free"
    assert KV.check(path).ok


def test_a_killed_holder_lets_the_others_write(tmp_path: Path) -> None:
    """SIGKILL while holding between writes: the kernel drops the flock (K)."""
    path = tmp_path / "kill.kv"
    holder = spawn("""
        import sys, time
        from mmapkit.kv import KV
        kv = KV(sys.argv[1], multiprocess=True, lock_hold=600.0)
        kv["held"] = 1
        print("holding", flush=True)
        time.sleep(600)
    """, str(path))
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        assert probe(path) == "taken"
        holder.kill()
        holder.wait()
        with KV(path, multiprocess=True, lock_timeout=10) as kv:
            kv["after"] = 2
            assert kv["held"] == 1 and kv["after"] == 2
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert KV.check(path).ok


def test_the_releaser_thread_ends_with_its_handle(tmp_path: Path) -> None:
    def releasers() -> set[threading.Thread]:
        return {t for t in threading.enumerate()
                if t.name.startswith("mmapkit KV lock releaser")}

    before = releasers()  # (other tests' may still be ending)
    kv = KV(tmp_path / "t.kv", multiprocess=True)
    kv["a"] = 1
    mine = releasers() - before
    assert len(mine) == 1
    kv.close()
    (thread,) = mine
    thread.join(10)
    assert not thread.is_alive(), "the releaser thread outlived close()"
    # single-process handles never start one
    with KV(tmp_path / "s.kv") as single:
        single["a"] = 1
        assert not releasers() - before - mine


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="futex: Linux only")
def test_a_writable_multiprocess_open_prepares_the_hand_over_not_the_first_hand_over(
        tmp_path: Path) -> None:
    """The first futex call of a process imports ctypes and sets the syscall up (5-10 ms):
    a writable multiprocess open pays it, so the first hand-over, made holding the lock
    others wait for, does not.  Single-process and read-only opens do not pay it."""
    path = tmp_path / "w.kv"
    KV(path).close()
    probe = """
        import sys
        from mmapkit.kv import KV
        kv = KV(sys.argv[1], **{sys.argv[2]: True})
        print("ctypes" in sys.modules)
    """
    seen = {}
    for mode in ("multiprocess", "readonly", "recover"):  # (recover=True: the default mode)
        res = run_py(probe, str(path), mode)
        assert res.returncode == 0, res.stderr
        seen[mode] = res.stdout.strip()
    assert seen == {"multiprocess": "True", "readonly": "False", "recover": "False"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="futex: Linux only")
def test_a_waiting_handle_starts_its_releaser_thread_while_it_waits(tmp_path: Path) -> None:
    """Starting a thread takes a few hundred microseconds: a handle that has to wait for
    the lock starts its releaser while it waits, not once it holds what others wait for
    (traced: 0.35-0.45 ms under the lock per process when it started later)."""
    def releasers() -> set[threading.Thread]:
        return {t for t in threading.enumerate()
                if t.name.startswith("mmapkit KV lock releaser")}

    path = tmp_path / "w.kv"
    before = releasers()
    with KV(path, multiprocess=True, lock_hold=30) as a, \
            KV(path, multiprocess=True, lock_hold=30) as b:
        with a.lock():
            a["held"] = 1
            started = releasers() - before
            writer = threading.Thread(target=b.__setitem__, args=("waited", 2))
            writer.start()
            deadline = time.monotonic() + 10
            while len(releasers() - before) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert writer.is_alive(), "b did not wait for a's lock"
            assert len(releasers() - before - started) == 1, \
                "b waits without its releaser thread"
        writer.join(10)
        assert b["waited"] == 2 and b["held"] == 1


def test_the_releaser_thread_starts_before_the_first_flock(tmp_path: Path) -> None:
    """A handle that finds the lock free starts its releaser thread before it takes the
    flock, not after (a thread start, 0.3-2 ms on two busy cores, would otherwise be
    spent holding what other writers wait for)."""
    path = tmp_path / "w.kv"
    KV(path, multiprocess=True).close()
    probe = """
        import fcntl, os, sys, threading
        from mmapkit.kv import KV
        kv = KV(sys.argv[1], multiprocess=True, lock_hold=30)
        seen = []
        start = threading.Thread.start
        def watched(thread):
            if thread.name.startswith("mmapkit KV lock releaser"):
                fd = os.open(sys.argv[1], os.O_RDWR)  # (another open file description)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    seen.append("free")
                except BlockingIOError:
                    seen.append("held")
                finally:
                    os.close(fd)
            start(thread)
        threading.Thread.start = watched
        kv["k"] = 1
        kv["k"] = 2
        print(*seen)
        kv.close()
    """
    res = run_py(probe, str(path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["free"]


# A writer whose sleeps for the lock last ``slice`` seconds (the default is 10 ms; long
# slices make a missed wake-up show as a long wait); prints how long its write took.
SLOW_SLICE_WRITER = """
    import sys, time
    from mmapkit.kv import _writelock
    _writelock._LOCK_SLICE = float(sys.argv[3])
    from mmapkit.kv import KV
    kv = KV(sys.argv[1], multiprocess=True, lock_hold=0)
    t = time.monotonic()
    kv[sys.argv[2]] = 1
    print(time.monotonic() - t, flush=True)
    kv.close()
"""


def _wanted(words: LockWords, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while words["want"] != 1:
        assert time.monotonic() < deadline, "the writers never asked for the lock"
        time.sleep(0.01)
    time.sleep(0.2)  # (asleep in their slices by now)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="futex: Linux only")
def test_c4_l5_a_compaction_wakes_every_sleeper_on_the_old_file(tmp_path: Path) -> None:
    """A holder that compacts wakes every writer asleep on the replaced file: each takes
    its lock only to look (L5), sees it retired and moves to the new file.  (One hand-over
    woke one; the others slept out their slices on a file nobody wrote any more: 10 ms
    each, traced in the 4-process increments.)"""
    path = tmp_path / "compact.kv"
    KV(path, multiprocess=True).close()
    holder = spawn("""
        import sys
        from mmapkit.kv import KV
        kv = KV(sys.argv[1], multiprocess=True, lock_hold=60.0)
        with kv.lock():
            kv["a"] = 1
            print("locked", flush=True)
            sys.stdin.readline()
            kv.compact()
        print("compacted", flush=True)
        sys.stdin.readline()
    """, str(path), stdin=subprocess.PIPE)
    writers: list[Child] = []
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        writers = [spawn(SLOW_SLICE_WRITER, str(path), name, "60") for name in ("b", "c")]
        with open(path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as head:
            _wanted(LockWords(head))
        holder.stdin.write("compact\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "compacted"
        for w in writers:
            out, err = w.communicate(timeout=30)  # (a stranded one sleeps 60 s)
            assert w.returncode == 0, err
            assert float(out) < 30
        holder.stdin.write("done\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
    finally:
        for p in (holder, *writers):
            if p.poll() is None:
                p.kill()
            p.communicate()
    with KV(path) as kv:
        assert dict(kv) == {"a": 1, "b": 1, "c": 1}
    assert KV.check(path).ok


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="futex: Linux only")
def test_l2b_a_sleeper_leaves_a_claimed_turn_then_clears_a_dead_claim(tmp_path: Path) -> None:
    """A sleeper whose slice ends with the lock free while a woken waiter has claimed the
    next turn leaves the lock to it (taking it there put the sleeper's whole catch-up
    under the lock: 4 ms, traced); a claim still there, with no hand-over, at its next
    slice's end is a dead claimer's: it takes the lock and clears the claim."""
    import fcntl

    from mmapkit.kv import codec

    path = tmp_path / "claimed.kv"
    KV(path, multiprocess=True).close()
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a holder that knows nothing of the words
    writer = spawn(SLOW_SLICE_WRITER, str(path), "w", "0.5")
    try:
        with open(path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as head:
            words = LockWords(head)
            _wanted(words)
            words["ready"] = codec.LOCK_CLAIMED  # woken, claimed, then killed
            let_go = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_UN)
            _, err = writer.communicate(timeout=60)
            waited = time.monotonic() - let_go
            assert writer.returncode == 0, err
            assert words["ready"] == 0  # the dead claim is gone
        # Its first slice ended 0.3 s after the unlock and left the lock to the claim;
        # the second, 0.5 s later, took it.
        assert waited > 0.6, waited
    finally:
        os.close(fd)
        if writer.poll() is None:
            writer.kill()
    with KV(path) as kv:
        assert kv["w"] == 1
    assert KV.check(path).ok
