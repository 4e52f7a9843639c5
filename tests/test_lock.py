"""FileLock: shared/exclusive across real processes, timeouts, re-entrancy, threads, death."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from conftest import spawn

from mmapkit import ClosedError, FileLock, LockTimeout

HOLD = """
import sys, time
from mmapkit import FileLock
lock = FileLock(sys.argv[1])
lock.acquire(shared=sys.argv[2] == "shared")
print("held", flush=True)
time.sleep(60)
"""


def hold_in_child(path, mode="exclusive"):
    child = spawn(HOLD, str(path), mode)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    return child


def test_lock_timeout_is_a_timeout_error_with_advice(tmp_path):
    path = tmp_path / "l"
    child = hold_in_child(path)
    try:
        lock = FileLock(path)
        t0 = time.monotonic()
        with pytest.raises(LockTimeout, match=r"within 0\.2 s") as info:
            lock.acquire(timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 5
        assert isinstance(info.value, TimeoutError)
        assert not lock.try_exclusive()
        with pytest.raises(LockTimeout):
            lock.acquire(shared=True, timeout=0.05)
    finally:
        child.kill()
        child.wait()


def test_shared_locks_coexist_and_exclude_writers(tmp_path):
    path = tmp_path / "l"
    child = hold_in_child(path, "shared")
    try:
        lock = FileLock(path)
        with lock.shared(timeout=1):
            assert lock.held == "shared"
        with pytest.raises(LockTimeout):
            lock.acquire(timeout=0.1)
    finally:
        child.kill()
        child.wait()


def test_killed_holder_releases_within_a_second(tmp_path):
    path = tmp_path / "l"
    child = hold_in_child(path)
    lock = FileLock(path)
    assert not lock.try_exclusive()
    os.kill(child.pid, signal.SIGKILL)
    t0 = time.monotonic()
    lock.acquire(timeout=1.0)
    assert time.monotonic() - t0 < 1.0
    assert lock.held == "exclusive"
    lock.release()
    child.wait()


def test_reentrant_within_a_thread(tmp_path):
    lock = FileLock(tmp_path / "l")
    with lock:
        with lock.exclusive(timeout=0):
            with lock.shared(timeout=0):
                assert lock.held == "exclusive" and lock.held_by_me() == "exclusive"
        assert lock.held == "exclusive"
    assert lock.held is None
    with lock.shared():
        with lock.shared():
            assert lock.held == "shared"
        with lock.exclusive(timeout=1):  # upgrade by the only holder
            assert lock.held == "exclusive"
        assert lock.held == "shared"  # downgraded back, not dropped
    assert lock.held is None
    with pytest.raises(RuntimeError, match="does not hold"):
        lock.release()


def test_other_threads_are_excluded(tmp_path):
    lock = FileLock(tmp_path / "l")
    counter = [0]
    inside = []

    def work():
        for _ in range(200):
            with lock.exclusive(timeout=10):
                inside.append(1)
                assert len(inside) == 1, "two threads inside the exclusive lock"
                counter[0] += 1
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter[0] == 800

    lock.acquire()
    got = []
    t = threading.Thread(target=lambda: got.append(lock.try_exclusive()))
    t.start()
    t.join()
    assert got == [False]
    lock.release()


def test_exclusive_counter_across_processes(tmp_path):
    path, counter = tmp_path / "l", tmp_path / "n"
    counter.write_text("0")
    code = """
import sys
from mmapkit import FileLock
lock = FileLock(sys.argv[1])
for _ in range(100):
    with lock.exclusive(timeout=30):
        with open(sys.argv[2], "r+") as f:
            n = int(f.read())
            f.seek(0)
            f.write(str(n + 1))
            f.truncate()
"""
    children = [spawn(code, str(path), str(counter)) for _ in range(3)]
    for c in children:
        _, err = c.communicate(timeout=120)
        assert c.returncode == 0, err
    assert counter.read_text() == "300"


def test_fork_child_gets_its_own_lock(tmp_path):
    lock = FileLock(tmp_path / "l")
    lock.acquire()
    pid = os.fork()
    if pid == 0:
        # The inherited descriptor would share the parent's lock; ours reopens instead,
        # so the child must wait for the parent like any other process.
        ok = False
        try:
            try:
                lock.acquire(timeout=0.2)
            except LockTimeout:
                ok = True
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    lock.release()


def test_lock_on_a_descriptor_and_close(tmp_path):
    fd = os.open(tmp_path / "l", os.O_RDWR | os.O_CREAT)
    lock = FileLock(fd)
    with lock:
        assert lock.fileno == fd
    lock.close()
    os.fstat(fd)  # a descriptor we did not open stays open
    os.close(fd)
    with pytest.raises(ClosedError):
        lock.acquire()
    named = FileLock(tmp_path / "m")
    named.acquire()
    named.close()  # closing releases what it held
    other = FileLock(tmp_path / "m")
    assert other.try_exclusive()
