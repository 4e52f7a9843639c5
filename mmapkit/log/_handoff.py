"""Handoff: how the log's flush thread gets the GIL from a writer that never blocks.

Why: a thread that waits for the GIL gets it only when the holder blocks or after the
interpreter's switch interval (5 ms).  A caller logging in a tight loop never blocks, so
each compress or write call of the flush thread would cost it 5 ms: it would fall behind
and the ring would fill.  Instead the flush thread leaves a *ticket* (a held lock) out
while it runs a call that releases the GIL, and a writer that completes a chunk waits on
that ticket: the flush thread gets the GIL at once, does its few lines of Python and
starts its next call, and the writer goes on while that call runs on the other core.

Rules (threads of one process; nothing here is shared between processes):

- ``away`` is ``(ticket, io)`` while the flush thread is in a GIL-releasing call (``io``:
  a file write, which may take long; else a compress call), None otherwise.  Only the
  flush thread sets it back to None (:meth:`returned`), releasing the ticket.
- No wait is unbounded: a writer waits at most ``timeout`` (MEET_TIMEOUT) per ticket,
  so a flush thread stuck in a slow write costs a writer 2 ms at a chunk mark, not more.
- ``idle`` is a hint read under the writer's own lock: a writer that sees it kicks the
  thread (and clears it, so that one kick is sent per nap).

    ======  =========================================  ==================================
    side    step                                       the other side may see meanwhile
    ======  =========================================  ==================================
    flush   sleep(): idle, wait for a kick or timer    a writer kicks: wake + ticket out
    flush   woken: returned() (the kick's ticket)      the kicking writer goes on
    flush   run(fn): ticket out, call, returned()      writers at a chunk mark wait on the
                                                       ticket (at most timeout each)
    writer  meet(kick): resume lock held; wait on      the flush thread, before its next
            each new ticket until one is a compress    call, waits (at most timeout) for a
            call already started, or none is out       writer it already stepped for
    ======  =========================================  ==================================
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["MEET_TIMEOUT", "Handoff"]

MEET_TIMEOUT = 0.002  # longest a writer waits at a chunk mark for the flush thread


class Handoff:
    """The GIL hand-off between one flush thread and the writers that feed it."""

    __slots__ = ("_event", "_resume", "_stepped", "away", "idle", "timeout")

    def __init__(self, timeout: float = MEET_TIMEOUT) -> None:
        self.timeout = timeout
        self.idle = False  # the flush thread waits for a kick (a hint, see the rules)
        self.away: tuple[threading.Lock, bool] | None = None
        self._event = threading.Event()
        self._resume: threading.Lock | None = None   # held while a writer is in a meet
        self._stepped: threading.Lock | None = None  # the meet we already ran a call for

    # --- the writers' side ------------------------------------------------------------

    def meet(self, kick: bool) -> None:
        """At a chunk mark: wake the idle flush thread (``kick``), or wait until the one
        that waits for the GIL has taken it and started its next call (at most
        ``timeout`` per wait)."""
        resumed = threading.Lock()
        resumed.acquire()
        self._resume = resumed
        try:
            if kick:
                ticket = threading.Lock()
                ticket.acquire()
                self.away = (ticket, True)
                self._event.set()
            seen = None
            while True:
                away = self.away
                if away is None or away is seen:
                    return
                ticket, io = away
                if seen is not None and not io:
                    return  # a compress call it just started: it runs without the GIL
                if not ticket.acquire(True, self.timeout):
                    return
                ticket.release()  # for other threads waiting on it
                seen = away
        finally:
            if self._resume is resumed:
                self._resume = None
            resumed.release()

    def wake(self) -> None:
        """Wake the flush thread without waiting for it (close, fork)."""
        self._event.set()

    # --- the flush thread's side ------------------------------------------------------

    def sleep(self, timeout: float | None) -> bool:
        """Nap until kicked (True) or ``timeout`` passes (False)."""
        self.idle = True
        kicked = self._event.wait(timeout)
        self.idle = False
        self.returned()
        self._event.clear()
        return kicked

    def returned(self) -> None:
        """The flush thread holds the GIL again: let a writer waiting for that go on."""
        away = self.away
        if away is not None:
            self.away = None
            away[0].release()

    def run(self, io: bool, fn: Callable[..., Any], *args: object) -> Any:
        """``fn(*args)``, a call that releases the GIL, with a ticket out (``io``: a
        write to a file, else a compress call)."""
        resume = self._resume
        if resume is not None:
            if self._stepped is resume:
                # We already started a call for this writer, and it has not got the GIL
                # back since (its thread waits for a CPU): let it run before our next step.
                self._stepped = None
                if self._ticket_out(False, resume.acquire, True, self.timeout):
                    resume.release()
            else:
                self._stepped = resume
        return self._ticket_out(io, fn, *args)

    def _ticket_out(self, io: bool, fn: Callable[..., Any], *args: object) -> Any:
        ticket = threading.Lock()
        ticket.acquire()
        self.away = (ticket, io)
        try:
            return fn(*args)
        finally:
            self.returned()
