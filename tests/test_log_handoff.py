"""The log flush thread's GIL hand-off (mmapkit/log/_handoff.py) on its own: real threads,
each step of its table.  (Its effect on throughput is measured by bench/log.py, not timed
here.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from mmapkit.log._handoff import Handoff


def _thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    return t, out


def _until(cond: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "condition never came true"
        time.sleep(0.001)


def test_sleep_times_out_without_a_kick() -> None:
    h = Handoff()
    t0 = time.monotonic()
    assert h.sleep(0.05) is False
    assert time.monotonic() - t0 >= 0.04
    assert not h.idle and h.away is None


def test_a_kick_wakes_the_sleeping_thread_and_the_kicker_goes_on() -> None:
    h = Handoff(timeout=5.0)
    t, out = _thread(lambda: h.sleep(30))
    _until(lambda: h.idle)
    t0 = time.monotonic()
    h.meet(kick=True)  # returns once the woken thread took its ticket back
    t.join(10)
    assert out == [True]
    assert time.monotonic() - t0 < 5.0  # not the timeout: the wake-up released it
    assert h.away is None and not h.idle


def test_wake_without_a_meet() -> None:
    h = Handoff()
    t, out = _thread(lambda: h.sleep(30))
    _until(lambda: h.idle)
    h.wake()
    t.join(10)
    assert out == [True] and h.away is None


def test_meet_with_nobody_away_returns_at_once() -> None:
    h = Handoff(timeout=5.0)
    t0 = time.monotonic()
    h.meet(kick=False)
    assert time.monotonic() - t0 < 1.0
    assert h._resume is None  # no meet is left announced


def test_run_returns_the_result_and_takes_the_ticket_back() -> None:
    h = Handoff()
    seen: list[Any] = []
    assert h.run(False, lambda a, b: (seen.append(h.away), a + b)[1], 2, 3) == 5
    ticket, io = seen[0]
    assert io is False
    assert ticket.acquire(False)  # released by the time run() returned
    assert h.away is None
    with pytest.raises(ZeroDivisionError):
        h.run(True, lambda: 1 / 0)
    assert h.away is None  # the ticket comes back on an error too


def test_meet_waits_for_a_call_in_progress_until_it_returns() -> None:
    h = Handoff(timeout=5.0)
    release = threading.Event()
    flusher, _ = _thread(lambda: h.run(True, release.wait, 30))
    _until(lambda: h.away is not None)
    writer, done = _thread(lambda: (h.meet(kick=False), time.monotonic())[1])
    time.sleep(0.1)
    assert not done  # still waiting on the ticket of the write in progress
    t_release = time.monotonic()
    release.set()
    writer.join(10)
    flusher.join(10)
    assert done and done[0] - t_release < 4.0  # woken by the return, not the timeout


def test_meet_waits_at_most_the_timeout_for_a_stuck_call() -> None:
    h = Handoff(timeout=0.05)
    stuck = threading.Event()
    flusher, _ = _thread(lambda: h.run(True, stuck.wait, 30))
    _until(lambda: h.away is not None)
    t0 = time.monotonic()
    h.meet(kick=False)
    waited = time.monotonic() - t0
    stuck.set()
    flusher.join(10)
    assert 0.04 <= waited < 3.0, waited


def test_meet_does_not_wait_for_a_compress_call_already_started() -> None:
    # away = (ticket, io=False) first seen after one wait: a compress call runs without
    # the GIL, so the writer goes on at once instead of waiting for it to end.
    h = Handoff(timeout=5.0)
    first = threading.Event()
    second = threading.Event()

    def flush() -> None:
        h.run(True, first.wait, 30)   # a write; then at once a compress that blocks
        h.run(False, second.wait, 30)

    flusher, _ = _thread(flush)
    _until(lambda: h.away is not None)
    writer, done = _thread(lambda: h.meet(kick=False) or True)
    time.sleep(0.05)
    first.set()
    writer.join(10)
    assert done == [True]  # returned while the compress call still runs
    assert h.away is not None and h.away[1] is False
    second.set()
    flusher.join(10)
