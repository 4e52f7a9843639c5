"""Test-only pause points for the cross-process protocols of ipc/ and lock.py.

A test starts a process with ``MMAPKIT_TEST_PAUSE=step[,step...]`` and
``MMAPKIT_TEST_PAUSE_DIR=<dir>``; when that process reaches one of the named steps it
creates ``<dir>/<step>.paused`` and waits until ``<dir>/<step>.go`` exists (at most
``_HOLD`` seconds, then it carries on and says so on stderr).  Meanwhile the test acts
from another process: the race is made to happen every time instead of once in a while.

The variables are read once, at import, into ``PAUSES``.  Call sites are on cold paths
(open, attach, fork, check) and test ``if PAUSES:`` first, so a normal run pays one
global lookup there and nothing on send()/recv().
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["PAUSES", "pause"]

PAUSES = frozenset(filter(None, os.environ.get("MMAPKIT_TEST_PAUSE", "").split(",")))
_DIR = os.environ.get("MMAPKIT_TEST_PAUSE_DIR", "")
_HOLD = 60.0


def pause(step: str) -> None:
    """Hold this process at ``step`` if the test asked for it (see the module comment)."""
    if step not in PAUSES or not _DIR:
        return
    go = os.path.join(_DIR, step + ".go")
    if os.path.exists(go):
        return
    with open(os.path.join(_DIR, step + ".paused"), "w"):
        pass
    deadline = time.monotonic() + _HOLD
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            print(f"mmapkit: pause point {step!r} was never released", file=sys.stderr)
            return
        time.sleep(0.002)
