"""FileLock hand-overs: fork children never keep or release the parent's lock, a timed-out
upgrade keeps the shared lock, and a thread blocked in the kernel holds up neither the
timeouts of other threads nor close()."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import child_env, exit_code, fork_child, spawn

from mmapkit import ClosedError, FileLock, LockTimeout

# These tests SIGKILL children (or servers) whose pipes and sockets the test leaves to
# the garbage collector: the one place an unclosed-resource warning is expected.
pytestmark = [pytest.mark.timeout(120),
              pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")]

HOLD = """
import sys, time
from mmapkit import FileLock
lock = FileLock(sys.argv[1])
lock.acquire(shared=sys.argv[2] == "shared")
print("held", flush=True)
time.sleep(60)
"""

TRY = """
import sys
from mmapkit import FileLock
print(FileLock(sys.argv[1]).try_exclusive())
"""


def hold_in_child(path: Path, mode: str = "exclusive") -> subprocess.Popen[str]:
    child = spawn(HOLD, str(path), mode)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    return child


def free_for_another_process(path: Path) -> bool:
    res = subprocess.run([sys.executable, "-c", TRY, str(path)], env=child_env(),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip() == "True"


def test_fork_child_of_a_descriptor_lock_neither_shares_nor_releases_it(tmp_path: Path) -> None:
    """FileLock(fd): the child used to lock through the inherited description (so it
    "got" the parent's lock at once) and its release() dropped the parent's lock."""
    path = tmp_path / "l"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    lock = FileLock(fd)
    lock.acquire()

    def child() -> None:
        assert lock.held is None
        with pytest.raises(LockTimeout):
            lock.acquire(timeout=0.2)
        with pytest.raises(RuntimeError, match="does not hold"):
            lock.release()
        lock.close()
        os.fstat(fd)  # the caller's descriptor stays open in the child too

    assert exit_code(fork_child(child)) == 0
    assert lock.held == "exclusive"
    assert not free_for_another_process(path)
    lock.release()
    assert free_for_another_process(path)
    lock.close()
    os.close(fd)


def test_fork_child_close_and_release_leave_the_parents_lock(tmp_path: Path) -> None:
    path = tmp_path / "l"
    lock = FileLock(path)
    lock.acquire(shared=True)

    def child() -> None:
        with pytest.raises(RuntimeError):
            lock.release()
        lock.close()

    assert exit_code(fork_child(child)) == 0
    assert not free_for_another_process(path)
    lock.release()
    lock.close()


def test_a_fork_child_does_not_keep_a_killed_parents_lock(tmp_path: Path) -> None:
    """The parent dies holding the lock while its fork child (which never touched the lock)
    lives on: the lock must be free, not kept alive by the child's inherited descriptor."""
    path = tmp_path / "l"
    code = """
        import os, sys, time
        from mmapkit import FileLock
        lock = FileLock(sys.argv[1])
        lock.acquire()
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        print(pid, flush=True)
        time.sleep(60)
    """
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(path)],
                              env=child_env(), text=True, stdout=subprocess.PIPE)
    assert parent.stdout is not None
    grandchild = int(parent.stdout.readline())
    try:
        assert not free_for_another_process(path)
        parent.kill()
        parent.wait()
        lock = FileLock(path)
        lock.acquire(timeout=5)  # LockTimeout before the fix: the grandchild kept it
        lock.release()
        lock.close()
    finally:
        os.kill(grandchild, signal.SIGKILL)


def test_a_timed_out_upgrade_keeps_the_shared_lock(tmp_path: Path) -> None:
    """flock drops the shared lock before trying the exclusive one; a timed-out
    non-blocking upgrade used to leave the process holding nothing while it believed it
    held the shared lock."""
    path = tmp_path / "l"
    other = hold_in_child(path, "shared")
    lock = FileLock(path)
    try:
        lock.acquire(shared=True)
        with pytest.raises(LockTimeout):
            lock.acquire(timeout=0.2)
        assert lock.held == "shared"
    finally:
        other.kill()
        other.wait()
    assert not free_for_another_process(path)  # we still hold it shared
    lock.release()
    assert free_for_another_process(path)
    lock.close()


def test_other_threads_keep_their_timeouts_while_one_waits_in_the_kernel(
        tmp_path: Path) -> None:
    path = tmp_path / "l"
    other = hold_in_child(path)
    lock = FileLock(path)
    got: list[str] = []
    t = threading.Thread(target=lambda: (lock.acquire(), got.append("got")))
    try:
        t.start()
        time.sleep(0.2)  # t now blocks in flock(LOCK_EX)
        t0 = time.monotonic()
        with pytest.raises(LockTimeout):
            lock.acquire(timeout=0.3)
        assert time.monotonic() - t0 < 5
        assert lock.held is None  # answered at once, not after t's wait
    finally:
        other.kill()
        other.wait()
    t.join(10)
    assert got == ["got"]
    assert lock.held == "exclusive"
    with pytest.raises(LockTimeout):  # another thread: excluded while t holds it
        lock.acquire(timeout=0.1)
    lock.close()  # t never released: close releases it
    assert free_for_another_process(path)


def test_close_while_another_thread_waits_in_the_kernel(tmp_path: Path) -> None:
    path = tmp_path / "l"
    other = hold_in_child(path)
    lock = FileLock(path)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            lock.acquire()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    lock.close()  # returns at once; the waiting thread finishes the close
    assert time.monotonic() - t0 < 2
    other.kill()
    other.wait()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], ClosedError)
    assert free_for_another_process(path)  # nothing left held
    with pytest.raises(ClosedError):
        lock.acquire(timeout=0)


def test_release_after_close_is_quiet_and_waiters_get_closed_error(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "l")
    lock.acquire()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            lock.acquire(timeout=10)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.1)
    lock.close()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], ClosedError)
    lock.release()  # the with-block's release after a close() inside it: nothing to do
    assert free_for_another_process(tmp_path / "l")
