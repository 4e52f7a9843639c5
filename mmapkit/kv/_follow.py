"""Reading a KV's file into the handle's index: the first load and every catch-up after
(steps O2-O4, R1-R2 and F2 of store.py's protocol table).  Functions of a ``KV`` bound
into the class as its methods; the decoding itself is _load.py's (pure).

Rules:

- Without the writer lock a handle reads only below one reading of the commit word, and
  writes nothing; anything that looks damaged is read again under the lock, on a fresh
  mapping, before damage is concluded (``load_locked``, the only place that reports,
  copies aside and compacts the salvage).
- Nothing published is wound back: the commit word only moves forward.
- ``read_appended`` returns False at anything unusual instead of concluding: its callers
  reload, under the lock when they hold it.
"""

from __future__ import annotations

import time
import warnings

from .. import _platform
from ..errors import CorruptFileError, DecryptionError, DiskFullError
from . import _files, _lazy, _load, codec
from ._load import Analysis, Lazy
from .codec import DATA_START, END_MASK, SUPERSEDED

# ``typing`` is for type checkers only (importing it costs milliseconds); type
# checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .store import KV

__all__ = [
    "UNSETTLED",
    "catch_up",
    "check_key",
    "install",
    "load",
    "load_locked",
    "poll",
    "read",
    "read_appended",
    "reload",
    "report_damage",
    "zero_tail",
]

# _seen while our file is marked superseded but the path still names it: never equal to a
# commit word, so every read looks at the path again until the mark settles.
UNSETTLED = -1


def load(self: KV, *, held: bool = False, eager: bool = False) -> bool:
    """Read the mapped file into a fresh index; False if it was replaced meanwhile.

    ``held``: this process holds the writer lock.  Without it (multiprocess and
    read-only handles) the file is read lock-free up to one reading of the commit word
    and nothing is written; what looks damaged is read again under the writer lock on
    a fresh mapping before anything is concluded (see the protocol table).
    ``eager``: decode every image part now (kv/_lazy.py: a part that did not decode).
    """
    if held or not self._shared:
        return self._load_locked(eager)
    found = self._read(committed_only=True, eager=eager)
    if found is not None:
        analysis, index, bad, lazy = found
        if not bad and not analysis.problems:
            self._install(analysis, index, lazy, seen=analysis.header.commit)
            return True
        if lazy is not None:
            lazy.release()
    self._take_own_lock()
    try:
        return self._load_locked(eager)
    finally:
        self._release_flock()


def read(self: KV, *, committed_only: bool, eager: bool = False
         ) -> tuple[Analysis, dict[str, Any], list[tuple[int, int]], Lazy | None] | None:
    """Scan and replay the mapped file: (analysis, index, ranges that do not verify, the
    image parts left encoded: kv/_lazy.py; none with ``eager``).

    ``committed_only`` (no lock held) reads nothing at or past the commit word's end
    (those bytes belong to the lock holder and may be mid-write); a committed end past
    the mapping is growth: map the file's current size and look again.  None: the
    header's end is still beyond the file (suspect; the caller re-reads under lock).
    """
    hdr = codec.parse_header(self._view, path=self._path)
    for _ in range(3):
        if hdr.end <= self._size or not committed_only:
            break
        self._remap()  # growth: the writer extended the file before committing past it
        hdr = codec.parse_header(self._view, path=self._path)
    if committed_only and hdr.end > self._size:
        return None
    self._check_key(hdr)
    self._seq_base = hdr.seq
    loaded = _load.read(self._view, hdr, committed_only=committed_only,
                        cipher=self._cipher, ser=self._ser, lazy_ok=not eager)
    self._nops = loaded.nops
    self._has_ttl = self._has_ttl or loaded.has_ttl
    return loaded.analysis, loaded.mapping, loaded.bad, loaded.lazy


def load_locked(self: KV, eager: bool = False) -> bool:
    """_load() for the writer-lock holder (or a single-process handle).

    Only here is damage concluded: it is reported, the file copied aside, and (when
    this handle may write) the salvaged data compacted into a new file that replaces
    the damaged one.  Nothing published is ever wound back: the commit word only
    moves forward (over whole records a killed writer left past it).
    """
    if self._shared:
        self._remap()  # the file may have grown since it was mapped
        if self._commit[0] & SUPERSEDED and not self._path_is_mine():
            return False  # replaced between our look and the lock
    found = self._read(committed_only=False, eager=eager)
    assert found is not None
    analysis, index, bad, lazy = found
    hdr = analysis.header
    problems = list(analysis.problems)
    if len(bad) > len(analysis.damaged):
        problems.append(f"{len(bad) - len(analysis.damaged)} record(s) verify but do not "
                        "decode or authenticate")
    damaged = bool(bad or problems)
    if damaged:
        self._report_damage(problems, bad, len(analysis.records))
    # An end word past the file (cut, or the word itself damaged) points at bytes
    # nobody can have read: appending continues after what verifies.
    end_ok = DATA_START <= hdr.end <= self._size and hdr.end % 8 == 0
    pos = max(analysis.pos, hdr.end) if end_ok else analysis.pos
    self._install(analysis, index, lazy, seen=hdr.commit)
    self._pos = pos
    if self._readonly:
        return True
    if analysis.dirty_tail and pos < self._size:
        self._zero_tail(pos)  # a torn, unacknowledged write: bytes only we may write
    if damaged:
        try:
            self._rewrite(self._image(self._cipher), self._cipher)
            return True  # the salvaged data now lives in a new, clean file
        except DiskFullError:
            pass  # keep working in this file; the damage is reported again next time
        if not hdr.crc_ok:
            fixed = codec.build_header(
                flags=hdr.flags, salt=hdr.salt, created_ns=hdr.created_ns,
                keycheck=hdr.keycheck, end=0, version=hdr.version)
            self._view[:64] = fixed[:64]
    commit = self._commit[0]
    if commit & SUPERSEDED:
        # We hold the lock and the path still names this file: its compactor died
        # between marking it and renaming the successor in.  It is still the store.
        commit &= END_MASK
    if commit != pos:
        commit = pos  # forward only (pos >= the committed end), or a damaged end word
    if self._commit[0] != commit:
        self._commit[0] = commit
    self._seen = commit
    return True


def install(self: KV, analysis: Analysis, index: dict[str, Any], lazy: Lazy | None, *,
            seen: int) -> None:
    """Make a loaded index (and the image parts it leaves encoded) current; ``seen`` is
    the commit word it reflects."""
    self._pos = analysis.pos
    # A file marked superseded with the path still naming it (a rename pending, or its
    # compactor died): look at the path again on every read until that settles.
    self._seen = UNSETTLED if seen & SUPERSEDED else seen
    # The index now holds every value: give the scanned pages back (RSS), they stay in
    # the page cache and the file.  Safe for shared file mappings.
    scanned = _platform.align_down(min(analysis.pos, self._size))
    if scanned:
        try:
            assert self._region is not None
            self._region.advise("dontneed", 0, scanned)
        except (OSError, ValueError):
            pass
    old = self._index
    self._index = index if lazy is None else _lazy.lazy_index(self, index, lazy)
    self._lazy = lazy
    if self._changes is not None:
        self._load_all()  # (a diff needs every key)
        self._note_diff(old, self._index)


def check_key(self: KV, hdr: codec.Header) -> None:
    if not hdr.crc_ok:
        # The flags may be the damaged bytes: let the key check and the records' own
        # flags decide (an encrypted record read without a key counts as damaged).
        if self._cipher is not None and not self._cipher.verify(hdr.keycheck, hdr.salt):
            raise DecryptionError(f"wrong key for {self._path} (or its header is "
                                  "damaged)", path=self._path)
        return
    if hdr.encrypted and self._cipher is None:
        raise DecryptionError(f"{self._path} is encrypted; open it with key=", path=self._path)
    if not hdr.encrypted and self._cipher is not None:
        raise DecryptionError(f"{self._path} is not encrypted but key= was given; open it "
                              "without key= and call rekey(key) to encrypt it",
                              path=self._path)
    if self._cipher is not None and not self._cipher.verify(hdr.keycheck, hdr.salt):
        raise DecryptionError(f"wrong key for {self._path}: the key check does not "
                              "authenticate", path=self._path)


def report_damage(self: KV, problems: list[str], bad: list[tuple[int, int]],
                   salvaged: int) -> None:
    lost = sum(b - a for a, b in bad)
    msg = f"{self._path} is damaged: " + "; ".join(problems)
    if not self._recover:
        raise CorruptFileError(msg + ". Open with recover=True to salvage the rest, or run "
                               "KV.repair(path)", path=self._path,
                               offset=bad[0][0] if bad else 0, salvaged=salvaged,
                               lost=len(bad))
    kept = ""
    if not self._readonly:
        kept = f"; the damaged file was copied to {_files.keep_damaged(self._path)}"
    warnings.warn(f"{msg}. Salvaged {salvaged} record(s), lost {lost} bytes{kept}",
                  RuntimeWarning, stacklevel=4)


def zero_tail(self: KV, pos: int) -> None:
    data = bytes(self._view[pos:])
    k = data.find(b"\0" * 64)
    stop = pos + (len(data) if k < 0 else k)
    self._view[pos:stop] = bytes(stop - pos)


def poll(self: KV) -> None:
    """Catch up with records other processes committed (no lock, no syscall if none)."""
    if self._commit[0] != self._seen:
        with self._tlock:
            # Inside lock()/batch() this thread holds the writer lock already.
            self._catch_up(held=self._depth > 0)


def catch_up(self: KV, *, held: bool) -> None:
    """Follow the commit word: read appended records, move to a replacement file."""
    w = self._commit[0]
    if w == self._seen:
        return
    if w & SUPERSEDED and not self._path_is_mine():
        self._reopen()  # compacted: the path names the new file (on failure: unchanged)
        return
    # (Marked with the path still ours: a rename pending or a dead compactor.  Either
    # way the file is whole, and _read_appended() keeps us looking at the path.)
    if not self._read_appended(w):
        self._reload(held)  # damage is only concluded under the lock, on a reload


def read_appended(self: KV, w: int) -> bool:
    """Replay the records appended up to commit word ``w`` (R2).  False when anything
    is unusual (the end went back or past the file, a record does not verify): the
    caller reloads instead, which re-verifies under the lock."""
    end = w & END_MASK
    if end > self._size:
        self._remap()  # growth: the writer extended the file before committing past it
    if end < self._pos or end > self._size:
        return False  # a commit word never goes back, a file never shrinks: damage?
    if end > self._pos and self._changes is None and self._cipher is None:
        lazy = self._lazy
        if lazy is not None:
            lazy.dirty = None  # (keys of any part may be written now)
        done = _load.replay_range(self._view, self._pos, end, self._index, self._ser, lazy)
        if done is not None:
            if lazy is not None:
                self._settle()
            self._nops += done[0]
            if done[1]:
                self._has_ttl = True
            self._pos = end
            self._seen = UNSETTLED if w & SUPERSEDED else w
            return True
    if end > self._pos:
        found = codec.scan(self._view, self._pos, end)
        for _ in range(3):
            # Where stores are not ordered (ARM64) the commit word can arrive before the
            # record bytes: look again before suspecting damage.
            if not (found.tail or found.damaged):
                break
            time.sleep(0.001)
            found = codec.scan(self._view, self._pos, end)
        if found.tail or found.damaged:
            return False
        index, changes, replay = self._index, self._changes, self._replay
        if self._lazy is not None:
            self._lazy.dirty = None  # (keys of any part may be written now)
        for rec in found.records:
            try:
                replay(rec, index, changes)
            except (CorruptFileError, DecryptionError):
                return False  # (what replayed is replayed again by the reload)
        if self._lazy is not None:
            self._settle()
    self._pos = end
    self._seen = UNSETTLED if w & SUPERSEDED else w
    return True


def reload(self: KV, held: bool, eager: bool = False) -> None:
    if not self._load(held=held, eager=eager):
        self._reopen()
