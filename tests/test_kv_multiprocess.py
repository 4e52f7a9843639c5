"""KV multiprocess mode with real processes: unrelated children and fork children."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_py, spawn

from mmapkit.errors import ModeConflictError
from mmapkit.kv import KV

INCREMENTS = """
import sys
from mmapkit.kv import KV, store
store._CHURN_NS = 0  # compact whenever full, however young the file: compactions under contention
with KV(sys.argv[1], multiprocess=True, capacity=4096) as kv:
    for _ in range(int(sys.argv[2])):
        kv.update_with("n", lambda v: (v or 0) + 1)
        kv.set("pad", b"x" * 50)   # grows the file and forces compactions under contention
print("done")
"""


def test_four_processes_exact_counter(tmp_path: Path) -> None:
    path = str(tmp_path / "count.kv")
    procs = [spawn(INCREMENTS, path, "2000") for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    with KV(path, multiprocess=True) as kv:
        assert kv["n"] == 8000
        assert kv.statistics().compactions > 0
    assert KV.check(path).ok


def test_reader_follows_writer_without_locking(tmp_path: Path) -> None:
    path = str(tmp_path / "follow.kv")
    with KV(path, multiprocess=True, capacity=4096) as kv:
        kv["start"] = 0
        # A child holds the write lock for a while: our gets must not wait for it.
        holder = spawn("""
            import sys, time
            from mmapkit.kv import KV
            with KV(sys.argv[1], multiprocess=True) as kv:
                with kv.lock():
                    kv["held"] = True
                    print("locked", flush=True)
                    time.sleep(3)
        """, path)
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        for _ in range(1000):
            kv.get("start")
        assert time.monotonic() - t0 < 1.5
        holder.communicate(timeout=30)
        # Another child appends and compacts many times; we see its final values.
        res = run_py("""
            import sys
            from mmapkit.kv import KV
            with KV(sys.argv[1], multiprocess=True, capacity=4096) as kv:
                for i in range(3000):
                    kv[f"k{i % 50}"] = [i, "x" * (i % 70)]
                kv.compact()
                kv["last"] = "written"
        """, path)
        assert res.returncode == 0, res.stderr
        assert kv["last"] == "written" and kv["held"] is True
        for j in range(50):
            last = max(i for i in range(3000) if i % 50 == j)
            assert kv[f"k{j}"] == [last, "x" * (last % 70)]
        assert len(kv) == 53


def test_fork_children_share_a_store(tmp_path: Path) -> None:
    path = tmp_path / "fork.kv"
    with KV(path, multiprocess=True) as kv:
        kv["parent"] = 1
        pids = []
        for c in range(3):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    for _ in range(300):
                        kv.update_with("n", lambda v: (v or 0) + 1)
                    kv[f"child{c}"] = kv["parent"]
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        assert kv["n"] == 900 and [kv[f"child{c}"] for c in range(3)] == [1, 1, 1]
    assert KV.check(path).ok


def test_mode_conflict_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "mode.kv")
    child = spawn("""
        import sys, time
        from mmapkit.kv import KV
        with KV(sys.argv[1]) as kv:
            kv["x"] = 1
            print("open", flush=True)
            time.sleep(3)
    """, path)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "open"
    with pytest.raises(ModeConflictError, match="single-process"):
        KV(path, multiprocess=True)
    with pytest.raises(ModeConflictError):
        KV(path, readonly=True)
    child.kill()
    child.communicate()
    with KV(path, multiprocess=True) as kv:
        assert kv["x"] == 1


def test_changed_notifies_other_processes_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "watch.kv")
    with KV(path, multiprocess=True, capacity=4096) as kv:
        kv["a"] = 0
        kv.watch()
        assert kv.changed(timeout=0.05) == set()
        child = spawn("""
            import sys, time
            from mmapkit.kv import KV
            with KV(sys.argv[1], multiprocess=True, capacity=4096) as kv:
                time.sleep(0.3)
                kv["a"] = 1
                time.sleep(0.3)
                with kv.batch():
                    kv["b"] = 2
                    kv["c"] = 3
                time.sleep(0.3)
                kv.compact()
                kv["d"] = 4
        """, path)
        t0 = time.monotonic()
        assert kv.changed(timeout=20) == {"a"}
        assert time.monotonic() - t0 < 10
        assert kv.changed(timeout=20) == {"b", "c"}
        seen: set[str] = set()
        while "d" not in seen:
            got = kv.changed(timeout=20)
            assert got, "no change noticed after the compaction"
            seen |= got
        assert seen == {"d"}
        child.communicate(timeout=30)
        kv.watch(keys=["zz"])
        assert kv.changed(timeout=0.05) == set()
    with KV(path) as kv, pytest.raises(ValueError, match="multiprocess"):
        kv.watch()


@pytest.mark.parametrize("readonly", [True, False], ids=["readonly", "multiprocess"])
def test_follower_survives_compactions(tmp_path: Path, readonly: bool) -> None:
    path = str(tmp_path / "ro.kv")
    with KV(path, multiprocess=True, capacity=4096) as kv:
        kv["v"] = -1
    with KV(path, readonly=readonly, multiprocess=not readonly) as ro:
        ro.watch(keys=["v"])
        child = spawn("""
            import sys
            from mmapkit.kv import KV
            with KV(sys.argv[1], multiprocess=True, capacity=4096) as kv:
                for i in range(4000):
                    kv["v"] = i
                    kv[f"pad{i % 20}"] = "x" * 100
        """, path)
        last = -1
        deadline = time.monotonic() + 60
        while last != 3999 and time.monotonic() < deadline:
            value = ro["v"]
            assert value >= last  # never goes back, even across compactions
            last = value
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert ro["v"] == 3999 and len(ro) == 21
        assert "v" in ro.changed(timeout=1)


def test_encrypted_multiprocess_store(tmp_path: Path) -> None:
    path = tmp_path / "enc.kv"
    key = bytes(range(32))
    with KV(path, multiprocess=True, key=key, capacity=4096) as kv:
        kv["n"] = 0
        pids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    with KV(path, multiprocess=True, key=key, capacity=4096) as mine:
                        for _ in range(200):
                            mine.update_with("n", lambda v: v + 1)
                            mine["pad"] = "secret" * 20
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        assert kv["n"] == 400 and kv["pad"] == "secret" * 20
    assert b"secret" not in path.read_bytes()
    assert KV.check(path, key=key).ok


CONTENDER = """
import sys, time
from mmapkit.kv import KV
kv = KV(sys.argv[1], multiprocess=True)
print("ready", flush=True)
go = float(sys.stdin.readline())
while time.time() < go:
    pass
n = 0
while time.time() < go + float(sys.argv[2]):
    kv.update_with("n", lambda v: (v or 0) + 1)
    n += 1
print(n, flush=True)
"""


def test_contended_writers_all_make_progress(tmp_path: Path) -> None:
    """The lock is handed over in turns (a quantum each): nobody starves."""
    path = str(tmp_path / "fair.kv")
    KV(path, multiprocess=True).close()
    procs = [spawn(CONTENDER, path, "1.5", stdin=subprocess.PIPE) for _ in range(3)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go = time.time() + 0.1
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(f"{go}\n")
        p.stdin.flush()
    counts = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        counts.append(int(out))
    with KV(path, multiprocess=True) as kv:
        assert kv["n"] == sum(counts)
    assert min(counts) > sum(counts) / 10, counts  # each got a fair share of turns


def test_waiter_takes_over_from_a_killed_holder_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "killed.kv")
    with KV(path, multiprocess=True) as kv:
        holder = spawn("""
            import sys, time
            from mmapkit.kv import KV
            kv = KV(sys.argv[1], multiprocess=True)
            with kv.lock():
                print("holding", flush=True)
                time.sleep(60)
        """, path)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        waiter = spawn("""
            import sys, time
            from mmapkit.kv import KV
            kv = KV(sys.argv[1], multiprocess=True, lock_timeout=30)
            print("waiting", flush=True)
            kv["w"] = 1
            print(time.time(), flush=True)
        """, path)
        assert waiter.stdout is not None and waiter.stdout.readline().strip() == "waiting"
        time.sleep(0.3)  # the waiter is asleep on the lock by now
        killed = time.time()
        holder.kill()
        holder.wait()
        out, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, err
        assert float(out) - killed < 0.5  # a slice at most, not the lock timeout
        assert kv["w"] == 1
    assert KV.check(path).ok
