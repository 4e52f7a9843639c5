"""Crash-safe, multi-process key-value store over a memory-mapped file (MMKV class).

``KV`` is the store (store.py: the mapped file and the multiprocess protocol); ``codec``
holds the file format as pure functions.  Beside them: _index.py (the format as the hot
paths spell it inline, the in-memory value forms), _load.py (a mapped file in, an index
out), _lazy.py (a compacted file's image parts decoded on first use, and the invariant
that keeps the index exact meanwhile), _files.py (whole-file writes: create, compact,
backup, restore), _writelock.py (the
multiprocess writer lock: turns and holds), _check.py (the offline report), _reports.py
(the report types), _crypto.py (AES-GCM records).
"""

from __future__ import annotations

from .store import KV

# ``typing`` is for type checkers only (importing it costs milliseconds); type
# checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._reports import CheckReport, KVStatistics

__all__ = ["KV", "CheckReport", "KVStatistics"]


def __getattr__(name: str) -> Any:
    # The report types load on first use (they need dataclasses; opening a store does not).
    if name in ("CheckReport", "KVStatistics"):
        from . import _reports

        return getattr(_reports, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
