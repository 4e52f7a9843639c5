"""Pause points for tests of cross-process protocols (inert unless the environment asks).

One module for every component (kv, journal, ipc, lock): the names are ``component.step``.

A test starts a process with ``MMAPKIT_PAUSE=<point>[,<point>...]`` and
``MMAPKIT_PAUSE_DIR=<dir>``.  When that process reaches a named step it creates
``<dir>/<point>.reached`` and waits until ``<dir>/<point>.go`` exists, so the test can
make another process act between two steps of a protocol, deterministically.

Read once at import: with the variable unset ``PAUSES`` is empty and call sites test it
(``if PAUSES: pause(...)``) before calling, so normal runs pay one global load per
protocol step and nothing on hot paths (no hot path has a pause point).
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["PAUSES", "pause"]

PAUSES = frozenset(p for p in os.environ.get("MMAPKIT_PAUSE", "").split(",") if p)
_DIR = os.environ.get("MMAPKIT_PAUSE_DIR", "")
_LIMIT = 120.0  # a test that never releases a pause must not leave the process behind


def pause(point: str) -> None:
    """Stop at ``point`` until the test releases it (no-op unless ``point`` was asked for)."""
    if point not in PAUSES or not _DIR:
        return
    go = os.path.join(_DIR, point + ".go")
    if os.path.exists(go):
        return  # released already: later passes do not stop
    with open(os.path.join(_DIR, point + ".reached"), "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + _LIMIT
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            print(f"mmapkit: pause point {point!r} was never released", file=sys.stderr)
            return
        time.sleep(0.001)
