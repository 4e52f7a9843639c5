"""Each step of the KV multiprocess protocol (the table in kv/store.py), made to race.

A child process is held at a named pause point (mmapkit._testhooks) between two steps
while this process grows, compacts, writes, reads or kills; then the child is released.
Nothing acknowledged may be lost, nothing may be reported as damaged, no ``.damaged``
copy may appear, and KV.check must be clean.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import child_env, exit_code, fork_child

from mmapkit.errors import LockTimeout
from mmapkit.kv import KV
from mmapkit.kv.codec import OFF_COMMIT, SUPERSEDED


class Paused:
    """A child process stopped at a pause point until release()."""

    def __init__(self, tmp: Path, point: str, code: str, *args: str) -> None:
        self.dir = tmp / f"pause-{point}"
        self.dir.mkdir()
        self.point = point
        env = child_env()
        env.update(MMAPKIT_PAUSE=point, MMAPKIT_PAUSE_DIR=str(self.dir))
        self.proc = subprocess.Popen(
            [sys.executable, "-W", "error", "-c", textwrap.dedent(code), *args], env=env,
            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        reached = self.dir / f"{point}.reached"
        deadline = time.monotonic() + 60
        while not reached.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"the child ended before {point}: "
                                     f"{self.proc.communicate()}")
            assert time.monotonic() < deadline, f"the child never reached {point}"
            time.sleep(0.002)

    def release(self) -> str:
        (self.dir / f"{self.point}.go").touch()
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return out

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=60)


@contextlib.contextmanager
def no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def settled(path: Path) -> None:
    """The store verifies and nobody concluded damage."""
    assert glob.glob(str(path) + ".damaged*") == []
    report = KV.check(path)
    assert report.ok, report


OPEN_AND_READ = """
    import sys
    from mmapkit.kv import KV
    path, n, ro = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "ro"
    with (KV(path, readonly=True) if ro else KV(path, multiprocess=True)) as kv:
        for i in range(n):
            assert kv[f"k{i}"] == [i, "v" * 200], i
        print(len(kv))
"""


@pytest.mark.parametrize("mode", ["mp", "ro"])
def test_o1_growth_between_map_and_read(tmp_path: Path, mode: str) -> None:
    """The reported race: mapped at the old size, the store then grew a lot."""
    path = tmp_path / "grow.kv"
    with KV(path, multiprocess=True) as kv, no_warnings():
        kv["k0"] = [0, "v" * 200]
        child = Paused(tmp_path, "kv.attach.mapped", OPEN_AND_READ, str(path), "3000", mode)
        size0 = path.stat().st_size
        for i in range(1, 3000):
            kv[f"k{i}"] = [i, "v" * 200]
        assert path.stat().st_size > 8 * size0  # grown many times past the child's mapping
        assert child.release().strip() == "3000"
    settled(path)


@pytest.mark.parametrize("mode", ["mp", "ro"])
def test_o1_compaction_between_map_and_read(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "sup.kv"
    with KV(path, multiprocess=True, capacity=4096) as kv, no_warnings():
        for i in range(100):
            kv[f"k{i}"] = [-1, "old"]
        child = Paused(tmp_path, "kv.attach.mapped", OPEN_AND_READ, str(path), "100", mode)
        for i in range(100):
            kv[f"k{i}"] = [i, "v" * 200]
        kv.compact()
        kv.compact()
        assert child.release().strip() == "100"
    settled(path)


COMPACT = """
    import sys
    from mmapkit.kv import KV
    with KV(sys.argv[1], multiprocess=True) as kv:
        kv.compact()
        kv["after"] = "compaction"
"""


def _fill(kv: KV, n: int = 200) -> None:
    for i in range(n):
        kv[f"k{i}"] = [i, "v" * 50]


def _readable(kv: KV, n: int = 200) -> None:
    for i in range(n):
        assert kv[f"k{i}"] == [i, "v" * 50]


def test_c2_marked_rename_pending(tmp_path: Path) -> None:
    """Between the mark and the rename readers serve the old file, writers wait."""
    path = tmp_path / "c2.kv"
    with KV(path, multiprocess=True) as reader, \
            KV(path, multiprocess=True, lock_timeout=0.3) as writer, no_warnings():
        _fill(writer)
        child = Paused(tmp_path, "kv.compact.marked", COMPACT, str(path))
        assert reader._commit[0] & SUPERSEDED
        t0 = time.monotonic()
        for _ in range(50):
            _readable(reader)
        assert time.monotonic() - t0 < 5  # lock-free: never waits for the compactor
        with pytest.raises(LockTimeout):
            writer["blocked"] = 1  # the compactor holds the writer lock
        _readable(writer)  # still usable after the timeout
        child.release()
        _readable(reader)
        assert reader["after"] == "compaction"
        writer["blocked"] = 2
        assert reader["blocked"] == 2
    settled(path)


def test_c2_compactor_killed_after_marking(tmp_path: Path) -> None:
    """K at C2: the mark stays with the path naming the file; the next writer clears it."""
    path = tmp_path / "k2.kv"
    with KV(path, multiprocess=True) as reader, no_warnings():
        reader.watch()
        with KV(path, multiprocess=True) as w:
            _fill(w)
        child = Paused(tmp_path, "kv.compact.marked", COMPACT, str(path))
        child.kill()
        assert reader._commit[0] & SUPERSEDED
        _readable(reader)
        assert reader.changed(timeout=0.3) == {f"k{i}" for i in range(200)}
        t0 = time.monotonic()
        assert reader.changed(timeout=0.3) == set()  # sleeps: no commit will come
        assert 0.25 < time.monotonic() - t0 < 2
        assert KV.check(path).superseded
        with KV(path, multiprocess=True) as w:
            w["later"] = 1  # W2: clears the dead compactor's mark
        assert not KV.check(path).superseded
        assert reader["later"] == 1
        _readable(reader)
    settled(path)


def test_c3_renamed_old_lock_still_held(tmp_path: Path) -> None:
    path = tmp_path / "c3.kv"
    with KV(path, multiprocess=True) as reader, \
            KV(path, multiprocess=True, lock_timeout=0.3) as writer, no_warnings():
        _fill(writer)
        child = Paused(tmp_path, "kv.compact.renamed", COMPACT, str(path))
        _readable(reader)  # F1: follows the path to the compacted file
        assert KV.check(path).records == 200
        with pytest.raises(LockTimeout):
            writer["x"] = 1  # its old file's lock is still the compactor's
        _readable(writer)
        child.release()
        writer["x"] = 2
        assert reader["x"] == 2 and reader["after"] == "compaction"
    settled(path)


def test_c1_compactor_killed_before_marking(tmp_path: Path) -> None:
    path = tmp_path / "c1.kv"
    with KV(path, multiprocess=True) as kv, no_warnings():
        _fill(kv)
        child = Paused(tmp_path, "kv.compact.written", COMPACT, str(path))
        child.kill()
        kv["y"] = 1  # the temp file is the dead compactor's; the store is untouched
        _readable(kv)
        kv.compact()
        _readable(kv)
    settled(path)


def test_f1_follow_fails_handle_stays_usable_and_closes(tmp_path: Path) -> None:
    """A failed reopen (the path is gone) leaves the handle as it was: the error says why,
    it works again once the path is back, and close() releases every lock."""
    path = tmp_path / "gone.kv"
    with KV(path, multiprocess=True) as w:
        _fill(w)
    reader = KV(path, multiprocess=True)
    _readable(reader)
    with KV(path, multiprocess=True) as w:
        w.compact()
        w["new"] = 1
    os.rename(path, str(path) + ".away")
    for _ in range(2):
        with pytest.raises(FileNotFoundError, match="no KV file"):
            reader.get("k1")
    assert not reader.closed
    os.rename(str(path) + ".away", path)
    _readable(reader)
    assert reader["new"] == 1
    os.rename(path, str(path) + ".away")
    with KV(str(path) + ".away", multiprocess=True) as w:
        w.compact()
    with pytest.raises(FileNotFoundError):
        reader.get("k1")
    reader.close()
    reader.close()
    os.rename(str(path) + ".away", path)
    # Every lock was released: single-process mode can open the path now.
    with KV(path) as single:
        single["fresh"] = 1
    settled(path)


HOLD = """
    import sys, time
    from mmapkit.kv import KV
    with KV(sys.argv[1], multiprocess=True) as kv:
        kv.compact()
        with kv.lock():
            print("holding", flush=True)
            time.sleep(float(sys.argv[2]))
        kv["released"] = True
"""


def test_w1_lock_timeout_during_hand_over(tmp_path: Path) -> None:
    """A writer that follows a compaction and then times out on the new file's lock."""
    path = tmp_path / "hand.kv"
    with KV(path, multiprocess=True, lock_timeout=0.3) as kv, no_warnings():
        _fill(kv)
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD), str(path),
                                   "2"], env=child_env(), text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(LockTimeout):
            kv["w"] = 1
        _readable(kv)  # usable: it moved to the new file, whose data it reads
        _, err = holder.communicate(timeout=60)
        assert holder.returncode == 0, err
        kv["w"] = 2
        assert kv["released"] is True and kv["w"] == 2
    settled(path)


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


OPEN_DAMAGED = """
    import sys, time, warnings
    from mmapkit.kv import KV
    path, go, ro = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "ro"
    while time.time() < go:
        pass
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with (KV(path, readonly=True) if ro else KV(path, multiprocess=True)) as kv:
            n = len(kv)
    print(n, sum("damaged" in str(w.message) for w in seen))
"""


def test_o4_damage_concluded_once_under_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "dmg.kv"
    with KV(path, multiprocess=True) as kv:
        _fill(kv)
    _flip(path, 4096)  # inside a committed record
    go = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(OPEN_DAMAGED), str(path),
                               str(go), mode], env=child_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for mode in ("mp", "mp", "mp", "ro")]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append([int(x) for x in out.split()])
    assert all(n == 199 for n, _ in results)  # one record lost, the rest salvaged
    assert sum(w for _, w in results[:3]) == 1  # one writer concluded it, once
    assert len(glob.glob(str(path) + ".damaged*")) == 1
    assert KV.check(path).ok  # the salvage was compacted into a clean file


def test_readonly_follower_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "ro.kv"
    with KV(path, multiprocess=True) as kv:
        _fill(kv)
    _flip(path, 4096)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.warns(RuntimeWarning, match="damaged"), KV(path, readonly=True) as ro:
        assert len(ro) == 199
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert glob.glob(str(path) + ".damaged*") == []


def test_fork_child_has_its_own_writer_lock(tmp_path: Path) -> None:
    """flock belongs to an open file description, which fork shares: a child must not
    slip into its parent's lock (nor release it)."""
    path = tmp_path / "fork.kv"
    with KV(path, multiprocess=True, lock_timeout=0.3) as kv:
        kv["n"] = 0

        def child() -> None:
            try:
                kv["child"] = 1
            except LockTimeout:
                return
            raise AssertionError("the child wrote inside its parent's lock")

        with kv.lock():
            pid = fork_child(child)
            assert exit_code(pid) == 0
            kv["n"] = 1  # the parent still holds its lock
        pid = fork_child(lambda: kv.__setitem__("child", 2))
        assert exit_code(pid) == 0
        assert kv["child"] == 2


def test_commit_word_never_moves_back(tmp_path: Path) -> None:
    """A reader that loads while a writer appends leaves the commit word alone."""
    path = tmp_path / "mono.kv"
    with KV(path, multiprocess=True, capacity=4096) as w:
        _fill(w, 50)
        for i in range(200):
            ident = path.stat().st_ino
            before = int.from_bytes(path.read_bytes()[OFF_COMMIT : OFF_COMMIT + 8], "little")
            with KV(path, readonly=True) as r, KV(path, multiprocess=True) as m:
                assert r["k0"] == m["k0"] == [0, "v" * 50]
            assert int.from_bytes(path.read_bytes()[OFF_COMMIT : OFF_COMMIT + 8],
                                  "little") == before  # the readers wrote nothing
            w[f"x{i}"] = i
            after = int.from_bytes(path.read_bytes()[OFF_COMMIT : OFF_COMMIT + 8], "little")
            assert path.stat().st_ino != ident or after > before
    settled(path)


def test_threads_read_while_the_handle_grows_compacts_and_follows(tmp_path: Path) -> None:
    """get() takes no lock: other threads of the same handle must never see a view of
    the handle half-swapped (AttributeError, a released view) while it grows, compacts
    or follows another process's compaction."""
    import threading

    path = tmp_path / "threads.kv"
    stop = threading.Event()
    errors: list[BaseException] = []
    with KV(path, multiprocess=True, capacity=4096) as kv:
        kv["k"] = 0

        def reader() -> None:
            try:
                last = 0
                while not stop.is_set():
                    v = kv.get("k", 0)
                    assert v >= last
                    last = v
                    kv.get("missing")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        other = subprocess.Popen([sys.executable, "-c", textwrap.dedent(COMPACT), str(path)],
                                 env=child_env())
        try:
            for i in range(1, 20_000):
                kv["k"] = i
                if i % 3000 == 0:
                    kv.compact()
                    kv[f"pad{i}"] = b"x" * 5000  # growth
        finally:
            stop.set()
            for t in threads:
                t.join()
            other.wait(timeout=60)
        assert not errors, errors
        assert kv["k"] == 19_999
    assert KV.check(path).ok
