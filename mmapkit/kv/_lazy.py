"""A KV's index while parts of a version 3 image are still encoded (issue 16).

Opening a compacted store of a million keys cannot build the whole ``dict`` in time (just
filling it from decoded columns costs most of the budget).  So the open verifies every
record (each image record's crc over its body, in place, and its head against its size:
damage is found and reported at open, exactly as before), replays the ordinary records
after the image, and leaves the image parts (codec.image_part: a stable hash of the key)
encoded: ``KV._lazy`` (a _load.Lazy) keeps where each part's records lie.

The invariant.  While ``_lazy`` is not None:

- a key present in ``_index`` has its current value there (anything written after the
  image: the ordinary records replayed at open or caught up from other processes, our
  own writes, or the key's part, loaded);
- a key absent from ``_index`` is absent only if its part is loaded, or the key is in
  ``_lazy.gone`` (deleted by a record replayed while its part was unloaded); otherwise
  its part must be loaded before the answer is known.

A part loads by inserting each of its keys *only if not present and not gone* (what is
present was written later; what is gone was deleted later).  A replayed set therefore
needs no load; a replayed delete adds the key to ``gone``; a replayed clear drops every
part.  Our own inline sets need none either (a set of a str, bytes, int, float or bool
outside a batch: the common write); any write into the index adds the key's part to
``dirty``, the parts that must merge key by key.  Our other operations load first, so
batch undo records and KeyErrors are exact:

    ======================================  =============================================
    operation (this process)                what it does first while ``_lazy`` is set
    ======================================  =============================================
    ``[]`` hit                              nothing: one dict lookup, as when loaded
    ``[]`` miss                             the index is a LazyIndex (a dict whose
                                            __missing__ loads the key's part, looks again)
    get / ``in``                            LazyIndex.get: dict.get, and on a miss as
                                            ``[]`` (a Python call while lazy; once loaded
                                            the index is an exact dict: main's paths)
    ``[]=`` and update_with of a plain      the inline paths: no load (update_with reads
    value, outside a batch                  the old value first: LazyIndex.get); the
                                            LazyIndex's __setitem__ marks the key's part
                                            in ``dirty``
    set() / set(ttl=) / delete / other      set() -> _write loads the key's part after
    values / a batch's writes               _enter_write (whose catch-up may have moved
                                            us to a new file)
    clear, len, iter, keys/items/values,    load every part (load_all), then as before
    compact, rekey, backup, export,
    statistics, repr, watch/changed
    catch-up of others' records (R2)        sets: into the index; deletes: pop and add
                                            to ``gone``; a clear: drop every part
    another process compacted (F1)          the new file's image is lazy again: a new
                                            index and ``_lazy`` replace both (reopen)
    last part loaded, or a clear            ``_lazy`` = None, the index a plain dict
                                            again (one copy): the hot paths are today's
    ======================================  =============================================

Loads run under the handle's thread lock (the hit path takes none: a reader racing a load
sees the key either absent, and then waits for the lock, or present).  The bytes of the
parts lie below the commit word of the file they came from: never rewritten, and kept
mapped by the Lazy's own view (a compaction by another process leaves that file whole).
A record that verified at open but does not decode (written by a bug or a hostile file:
a flipped byte fails the crc) is found when its part is first used: the handle then reads
its file again the eager way, which reports the record (warning, ``.damaged`` copy,
compacted salvage) exactly as an open of the file would have; inside a batch it raises
CorruptFileError instead (the batch is undone).
"""

from __future__ import annotations

import weakref

from ..errors import CorruptFileError

# ``typing`` is for type checkers only (importing it costs milliseconds); type
# checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._load import Lazy
    from .store import KV

__all__ = ["LazyIndex", "lazy_index", "load_all", "load_key", "settle"]

_MISSING: Any = object()


class LazyIndex(dict[str, "Any"]):
    """The index while image parts are unloaded: ``kv[key]`` is one dict lookup on a hit
    (as with the plain dict that replaces this one once every part is loaded); a miss
    loads the key's part and looks again, so KV.__getitem__ needs no lazy test."""

    __slots__ = ("lazy", "owner")
    owner: weakref.ref[KV]  # (no strong cycle: a dropped handle is freed at once)
    lazy: Lazy  # the parts this index waits for

    def __setitem__(self, key: str, value: Any) -> None:
        # A write need not load its key's part first (the inline sets do not): the part,
        # loaded later, never replaces a key present in the index.  But it must then be
        # merged key by key, not with one dict.update: say so in ``dirty`` (None already
        # means every part merges key by key).
        lazy = self.lazy
        dirty = lazy.dirty
        if dirty is not None:
            dirty.add(lazy.part(key))
        _setitem(self, key, value)

    def __missing__(self, key: str) -> Any:
        kv = self.owner()
        if kv is None or not kv._load_key(key):
            raise KeyError(key)
        # (kv._index: a plain dict now if that was the last part; dict.get either way)
        v = _get(kv._index, key, _MISSING)
        if v is _MISSING:
            raise KeyError(key)
        return v

    def get(self, key: str, default: Any = None) -> Any:
        """dict.get, but a miss loads the key's part and looks again (KV.get and ``in``
        call this: a Python call on every lookup while lazy, none once loaded)."""
        v = _get(self, key, _MISSING)
        if v is not _MISSING:
            return v
        kv = self.owner()
        if kv is None or not kv._load_key(key):
            return default
        return _get(kv._index, key, default)


_get = dict.get
_setitem = dict.__setitem__

def lazy_index(self: KV, index: dict[str, Any], lazy: Lazy) -> LazyIndex:
    """``index`` as the LazyIndex of this handle waiting for ``lazy``'s parts (a copy: the
    records after the image)."""
    out = LazyIndex(index)
    out.owner = weakref.ref(self)
    out.lazy = lazy
    return out


def load_key(self: KV, key: object) -> bool:
    """Load the part of ``key`` if it is not loaded: True if the caller should look in
    the index again (always, for a str key: another thread may have loaded the part
    while this one waited for the lock; its missing key is in the index now)."""
    if type(key) is not str:
        return False  # (no such key: ``5 in kv`` is False, as before)
    with self._tlock:
        lazy = self._lazy
        if lazy is None:
            return True
        part = lazy.part(key)
        if lazy.spans[part] is None:
            return True
        try:
            lazy.load(part, self._index)
        except CorruptFileError:
            _undecodable(self)
            return True
        settle(self)
        return True


def load_all(self: KV) -> None:
    """Load every part (a whole-store operation follows)."""
    with self._tlock:
        lazy = self._lazy
        if lazy is None:
            return
        # Into an exact dict from the start (the small index of the records after the
        # image is copied, not the whole store at the end).  Other threads' reads miss
        # on the old LazyIndex meanwhile, wait for the lock and look in this one.
        index = dict(self._index)
        try:
            for part in range(len(lazy.spans)):
                lazy.load(part, index)
        except CorruptFileError:
            self._index = lazy_index(self, index, lazy)  # (the parts loaded stay loaded)
            _undecodable(self)
            return
        self._index = index
        settle(self)


def settle(self: KV) -> None:
    """``_lazy`` = None once no part is left (the hot paths become today's)."""
    lazy = self._lazy
    if lazy is not None and not lazy.left:
        self._lazy = None
        lazy.release()
        if type(self._index) is LazyIndex:
            self._index = dict(self._index)  # (kv[key] on an exact dict: the fast path)


def _undecodable(self: KV) -> None:
    """A part's record verified at open but does not decode: read the file again the
    eager way (it reports the record as damage, as an open would have)."""
    if self._batch is not None:
        raise CorruptFileError(f"{self._path}: an image record verifies but does not decode; "
                               "the batch was undone. Run KV.repair(path)", path=self._path)
    lazy, self._lazy = self._lazy, None
    try:
        self._reload(self._depth > 0 or not self._shared, eager=True)
    except BaseException:
        # (recover=False: CorruptFileError.)  Nothing new was installed: the handle stays
        # as it was, that part still unloaded, so its keys raise again and no others do.
        if self._lazy is None and lazy is not None and lazy.left:
            self._lazy = lazy
        raise
