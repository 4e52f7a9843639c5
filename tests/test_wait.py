"""Waiter: futex (and FIFO doorbell) wait/wake across fork and unrelated processes."""

from __future__ import annotations

import os
import time

import pytest
from conftest import spawn

from mmapkit import AlignmentError, OutOfRangeError, Region, Waiter, _platform
from mmapkit.wait import WAKE_ALL

BACKENDS = ["fifo"] + (["futex"] if _platform.HAVE_FUTEX else [])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("backend", BACKENDS)
def test_wait_returns_at_once_when_the_word_differs(backend):
    with Region.anonymous(4096) as r:
        w = Waiter(r, 0, backend=backend)
        w.store(5)
        t0 = time.monotonic()
        assert w.wait(4, timeout=5) is True
        assert time.monotonic() - t0 < 0.5
        w.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_wait_times_out(backend):
    with Region.anonymous(4096) as r:
        w = Waiter(r, 4, backend=backend)
        t0 = time.monotonic()
        assert w.wait(0, timeout=0.2) is False
        assert 0.15 < time.monotonic() - t0 < 3
        w.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fork_child_is_woken_by_parent(backend):
    with Region.anonymous(4096) as r:
        w = Waiter(r, 8, backend=backend)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                t0 = time.monotonic()
                while w.load() == 0:
                    w.wait(0, timeout=10)
                code = 0 if w.load() == 42 and time.monotonic() - t0 < 9 else 2
            finally:
                os._exit(code)
        time.sleep(0.2)
        w.store(42)
        w.wake()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        w.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sleeper_and_waker_are_one_sleep_and_one_wake(backend):
    """The bare calls for hot loops: ``sleeper`` sleeps once (False only at the timeout),
    ``waker`` wakes a fork child asleep in it and says how many it woke."""
    with Region.anonymous(4096) as r:
        w = Waiter(r, 8, backend=backend)
        sleep, wake = w.sleeper, w.waker
        t0 = time.monotonic()
        assert sleep(0, 0.2) is False
        assert 0.15 < time.monotonic() - t0 < 3
        w.store(1)
        assert sleep(0, 5) is True  # the word differs: no sleep
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                deadline = time.monotonic() + 10
                while w.load() == 1 and time.monotonic() < deadline:
                    sleep(1, 10)
                code = 0 if w.load() == 7 and time.monotonic() < deadline else 2
            finally:
                os._exit(code)
        time.sleep(0.2)
        w.store(7)
        assert wake(WAKE_ALL) >= (1 if backend == "futex" else 0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        w.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_unrelated_process_wakes_us_and_sleeper_burns_no_cpu(tmp_path, backend):
    path = tmp_path / "word"
    with Region.open(path, 4096, create=True) as r:
        w = Waiter(r, 12, backend=backend)
        child = spawn(f"""
            import time
            from mmapkit import Region, Waiter
            with Region.open({str(path)!r}) as r:
                w = Waiter(r, 12, backend={backend!r})
                w.store(1)   # "I am asleep soon"
                w.wake()
                t0 = time.monotonic()
                while w.load() == 1:
                    w.wait(1, timeout=30)
                print(w.load(), flush=True)
                w.close()
        """)
        while w.load() != 1:
            w.wait(0, timeout=30)
        time.sleep(0.5)  # the child now sleeps in wait()
        before = cpu_seconds(child.pid)
        time.sleep(1.0)
        idle_cpu = cpu_seconds(child.pid) - before
        assert idle_cpu < 0.2, f"a sleeping waiter used {idle_cpu:.2f} s of CPU in 1 s"
        w.store(7)
        w.wake()
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert out.strip() == "7"
        w.close()


@pytest.mark.skipif(not _platform.HAVE_FUTEX, reason="futex is Linux only")
def test_wake_counts_sleepers():
    with Region.anonymous(4096) as r:
        w = Waiter(r, 0)
        assert w.wake() == 0  # nobody sleeps
        pids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                try:
                    w.wait(0, timeout=20)
                finally:
                    os._exit(0)
            pids.append(pid)
        woken, deadline = 0, time.monotonic() + 20
        while woken < 3 and time.monotonic() < deadline:
            woken += w.wake(1)
            time.sleep(0.01)
        for pid in pids:
            os.waitpid(pid, 0)
        assert woken == 3
        w.close()


def test_bad_offsets_and_backend():
    with Region.anonymous(4096) as r:
        with pytest.raises(AlignmentError, match="4-byte aligned"):
            Waiter(r, 2)
        with pytest.raises(OutOfRangeError):
            Waiter(r, 4096)
        with pytest.raises(ValueError, match="unknown backend"):
            Waiter(r, 0, backend="spin")


def test_region_closes_only_after_the_waiter(tmp_path):
    r = Region.anonymous(4096)
    w = Waiter(r, 0)
    with pytest.raises(BufferError):
        r.close()
    w.close()
    r.close()
