"""The KV's report types (frozen dataclasses), apart from store.py so that opening a store
does not import ``dataclasses`` (and the ``inspect``/``ast`` it pulls in): they load when
statistics() or check() first runs."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CheckReport", "KVStatistics"]


@dataclass(frozen=True)
class KVStatistics:
    path: str
    keys: int
    live_bytes: int  # bytes the live records would take after a compaction
    committed_bytes: int  # bytes of records appended so far (header included)
    file_bytes: int
    sequence: int  # operations written to the store since it was created
    compactions: int
    multiprocess: bool
    encrypted: bool


@dataclass(frozen=True)
class CheckReport:
    """What :meth:`KV.check` found.  ``ok`` is True when nothing committed is damaged."""

    path: str
    ok: bool
    version: int
    encrypted: bool
    header_ok: bool
    superseded: bool
    records: int
    keys: int
    committed_bytes: int
    file_bytes: int
    damaged: tuple[tuple[int, int], ...]
    lost_bytes: int
    uncommitted_tail_bytes: int
    problems: tuple[str, ...]
