"""The KV's whole-file writes: a new store, a compacted or backup image, a restore.

The image of a compaction or a backup (``image()``): the live keys whose value is an
int64, bytes or str (and whose key and value are strict UTF-8) go into image records
(codec.KIND_IMAGE), grouped by value form and cut into chunks of at most
codec.IMAGE_KEYS keys and about codec.IMAGE_BYTES bytes, so that one damaged chunk costs
a bounded share of the keys; every other live key (floats, bools, None, containers,
big ints, ttl values, custom-serialized values, odd keys) follows as an ordinary set
record.  An encrypted store writes ordinary records only.  A file with image records
carries format version 3 in its header, every other file version 1.  Grouping by form
means a compacted store lists its keys grouped by value form (then in insertion order).
The image keys are also cut into parts by a stable hash of the key (codec.image_part;
about codec.IMAGE_PART_KEYS keys a part, a power of two of them) and every image record
holds keys of one part (format version 3): an opener verifies every record but decodes a
part only when one of its keys is first used (kv/_lazy.py).

Each writes a complete file under a temporary name, fsyncs it, and only then makes the
path name it (link() for a new store, so a file made meanwhile is never replaced;
rename() for a compaction, a backup, a restore), then fsyncs the directory.  A crash at
any instant leaves the path naming either the old file or the whole new one.  The
mapped, append-only side of the store lives in store.py; the byte layout in codec.py.
"""

from __future__ import annotations

import os
import struct
import time
from bisect import bisect_right
from collections import deque
from itertools import accumulate, compress, repeat
from operator import add, is_, not_

from .. import _platform
from .._crc import crc32 as _fast_crc32
from .._fileio import atomic_file, raise_if_disk_full, write_all
from ..errors import DiskFullError
from . import _index, codec
from ._crypto import Cipher
from .codec import (
    DATA_START,
    FLAG_ENCRYPTED,
    IMAGE_BYTES,
    IMAGE_KEYS,
    KIND_IMAGE,
    OFF_COMMIT,
    SUPERSEDED,
    VERSION_PART,
    VERSION_PLAIN,
)

# ``typing`` is for type checkers only (importing it costs milliseconds); type
# checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, NamedTuple
else:
    from .._light_typing import NamedTuple

__all__ = [
    "Image",
    "create",
    "fd_path",
    "header",
    "image",
    "init_empty",
    "install_copy",
    "keep_damaged",
    "mark_superseded",
    "new_salt",
    "write_compacted",
    "write_parts",
    "write_store",
]

# zlib's CRC-32, or ISA-L's (the isal extra: the same values, faster; mmapkit._crc)
crc32 = _fast_crc32()

_COLUMNS = frozenset((int, bytes, str))  # value types an image record can hold
_JOIN_MAX = 8 << 20  # write_parts joins a batch of records up to this size
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_FULL = ("no space left to write {}; free some disk space and retry (nothing already written "
         "was lost)")


def fd_path(fd: int) -> str:
    """A path that opens the file behind ``fd`` again (a new open file description)."""
    return f"/proc/self/fd/{fd}" if _platform.IS_LINUX else f"/dev/fd/{fd}"


def new_salt() -> int:
    import random  # not at module import: reopening a KV needs no salt

    return random.getrandbits(64)


def header(cipher: Cipher | None, salt: int, *, end: int, seq: int = 0,
           compactions: int = 0, version: int = VERSION_PLAIN) -> bytes:
    """A fresh file header for data ending at ``end`` (``version`` 2: it holds images)."""
    return codec.build_header(
        flags=FLAG_ENCRYPTED if cipher else 0, salt=salt, created_ns=time.time_ns(),
        keycheck=cipher.keycheck(salt) if cipher else b"", end=end, seq=seq,
        compactions=compactions, version=version)


class Image(NamedTuple):
    """A compacted file's records laid out from DATA_START."""

    parts: list[bytes]  # framed records, to write back to back
    end: int  # where they end (the commit word's end)
    live: int  # live keys they hold
    version: int  # the header's format version (2 when image records are among them)


def image(index: dict[str, Any], cipher: Cipher | None) -> Image:
    """The records holding every live key of ``index`` (an encrypted store: ordinary
    records only; otherwise image records first, then ordinary records for the rest)."""
    if cipher is not None or not index:
        return Image(*_index.image(index, cipher), VERSION_PLAIN)
    keys = list(index)
    values = list(index.values())
    types = list(map(type, values))
    kinds = set(types)
    rest: dict[str, Any] = {}
    groups: list[tuple[list[str], list[Any]]] = []
    for t in (int, bytes, str):
        if t not in kinds:
            continue
        if len(kinds) == 1:
            groups.append((keys, values))
        else:
            picked = list(map(is_, types, repeat(t)))
            groups.append((list(compress(keys, picked)), list(compress(values, picked))))
    if kinds - _COLUMNS:
        rest = dict(compress(zip(keys, values, strict=True),
                             map(not_, map(_COLUMNS.__contains__, types))))
    parts: list[bytes] = []
    pos = DATA_START
    count = 0
    nparts = codec.image_parts(sum(len(g[0]) for g in groups))
    for gkeys, gvalues in groups:
        parted = _parts_of(gkeys, nparts)
        built, slow = _part_bodies(gvalues, nparts, parted)
        lists = {p: (k, v) for p, k, v in _partition(gkeys, gvalues, nparts, parted, slow)}
        for part in range(nparts):
            if part in built:
                whole, n = built[part]
                rec = codec.encode_record(KIND_IMAGE, whole, pos)
                parts.append(rec)
                pos += len(rec)
                count += n
                continue
            if part not in lists:
                continue
            pkeys, pvalues = lists[part]
            for a, b in _chunks(pkeys, pvalues):
                body, odd = _image_body(pkeys[a:b], pvalues[a:b], part, nparts)
                for k in odd:
                    rest[k] = index[k]
                if body is not None:
                    rec = codec.encode_record(KIND_IMAGE, body, pos)
                    parts.append(rec)
                    pos += len(rec)
                    count += b - a - len(odd)
    version = VERSION_PART if parts else VERSION_PLAIN
    if rest:
        more, pos, n = _index.image(rest, None, start=pos)
        parts += more
        count += n
    return Image(parts, pos, count, version)


def _parts_of(keys: list[str], nparts: int) -> tuple[list[bytes], list[int], bool] | None:
    """The keys encoded, the image part of each (codec.image_part), and whether every key
    is strict UTF-8 (what an image holds); None with one part."""
    if nparts == 1:
        return None
    strict = True
    try:
        raw = list(map(str.encode, keys))
    except UnicodeEncodeError:  # (lone surrogates: such keys stay ordinary records anyway)
        raw = [k.encode("utf-8", "surrogatepass") for k in keys]
        strict = False
    return raw, list(map((nparts - 1).__and__, map(crc32, raw))), strict


def _each(method: Any, targets: list[Any], of: list[int], items: Any) -> None:
    """``method(targets[of[i]], item_i)`` for every item, in order, by C-level maps."""
    deque(map(method, map(targets.__getitem__, of), items), maxlen=0)


def _partition(keys: list[str], values: list[Any], nparts: int,
               parted: tuple[list[bytes], list[int], bool] | None,
               only: set[int] | None = None
               ) -> list[tuple[int, list[str], list[Any]]]:
    """(part, keys, values) of each non-empty part (of those in ``only``, when given),
    keys in their order within a part."""
    if parted is None:
        return [(0, keys, values)]
    of = parted[1]
    if only is not None and not only:
        return []
    # Each key and value appended to its part's lists, in order, by C-level maps (a sort
    # by part and the cuts after it measured 4x this).
    out = []
    for column in (keys, values):
        lists: list[list[Any]] = [[] for _ in range(nparts)]
        _each(list.append, lists, of, column)
        out.append(lists)
    return [(p, k, v) for p, (k, v) in enumerate(zip(*out, strict=True))
            if k and (only is None or p in only)]


def _part_bodies(values: list[Any], nparts: int,
                 parted: tuple[list[bytes], list[int], bool] | None
                 ) -> tuple[dict[int, tuple[bytes, int]], set[int] | None]:
    """The image bodies of the parts of the keys ``parted`` names (their encoded forms and
    parts: _parts_of) set to ``values`` (of one type), their columns built
    in one pass over the keys in their own order: {part: (body, keys)}, and the parts
    left to _partition/_chunks/_image_body (None: all).

    Byte for byte what codec.encode_image makes of each part's keys in order (tested);
    the parts' own lists, walked part after part, touch the key and value objects out of
    their memory order: 3.6-4.5x slower compactions than one image, measured.  The
    columns are the codec's (image_key_column, image_value_column).  A part goes the
    general way when its columns pass IMAGE_BYTES or IMAGE_KEYS (chunks); a group whose
    values do not all encode (lone surrogates, ints past 64 bits) goes that way whole."""
    if parted is None or not parted[2]:
        return {}, None
    raw, of, _ = parted
    t = type(values[0])
    if t not in _COLUMNS:
        return {}, None
    # Each key and value appended to its part's list by C-level maps, in the keys' order,
    # then each part's columns joined (one call a key a column: two, with bytearrays, cost
    # more).
    klists: list[list[bytes]] = [[] for _ in range(nparts)]
    _each(list.append, klists, of, raw)
    vlists: list[list[Any]] = [[] for _ in range(nparts)]
    _each(list.append, vlists, of, values)
    built: dict[int, tuple[bytes, int]] = {}
    slow: set[int] = set()
    try:
        for part, (pkeys, pvalues) in enumerate(zip(klists, vlists, strict=True)):
            n = len(pkeys)
            if not n:
                continue
            kform, klens, kjoined = codec.image_key_column(pkeys)
            vform, vlens, vblob = codec.image_value_column(pvalues, t)
            klists[part] = vlists[part] = []  # (free as we go: a compaction's peak memory)
            if n > IMAGE_KEYS or len(kjoined) + len(vblob) > IMAGE_BYTES:
                slow.add(part)  # (bytes >= the characters _chunks counts: one chunk here
                continue  #       is one chunk there)
            built[part] = (codec.image_body(vform, kform, part, nparts, n, klens, kjoined,
                                            vlens, vblob), n)
    except (ValueError, TypeError):
        return {}, None  # (lone surrogates, ints past 64 bits: the general way)
    return built, slow


def _chunks(keys: Sequence[str], values: Sequence[Any]) -> list[tuple[int, int]]:
    """[a, b) ranges of at most IMAGE_KEYS keys and about IMAGE_BYTES bytes of keys and
    values (counted in characters: a bound on the damage one chunk costs, not a limit)."""
    sizes = map(len, values) if type(values[0]) is not int else repeat(8)
    ends = list(accumulate(map(add, map(len, keys), sizes)))
    out = []
    a, n = 0, len(keys)
    while a < n:
        base = ends[a - 1] if a else 0
        b = max(a + 1, bisect_right(ends, base + IMAGE_BYTES, a, min(n, a + IMAGE_KEYS)))
        out.append((a, b))
        a = b
    return out


def _image_body(keys: list[str], values: list[Any], part: int, nparts: int
                ) -> tuple[bytes | None, list[str]]:
    """An image body for the keys that can go into one, and the keys that cannot (lone
    surrogates in a key or str value, ints past 64 bits: ordinary records keep them)."""
    try:
        return codec.encode_image(keys, values, part, nparts), []
    except (ValueError, TypeError):
        pass
    good_k: list[str] = []
    good_v: list[Any] = []
    odd: list[str] = []
    for k, v in zip(keys, values, strict=True):
        try:
            codec.encode_image([k], [v])
        except (ValueError, TypeError):
            odd.append(k)
            continue
        good_k.append(k)
        good_v.append(v)
    return (codec.encode_image(good_k, good_v, part, nparts) if good_k else None), odd


def create(path: str, cipher: Cipher | None, capacity: int) -> None:
    """Make an empty store at ``path`` unless a file appears there first (then keep it)."""
    try:
        with atomic_file(path, overwrite=False) as fd:  # never replaces a file made meanwhile
            write_all(fd, header(cipher, new_salt(), end=DATA_START), 0)
            _platform.ensure_allocated(fd, capacity)
    except FileExistsError:
        pass  # another process created it first: that file is the store


def init_empty(fd: int, cipher: Cipher | None, capacity: int) -> None:
    """Make an empty (``touch``ed) file a store; the caller holds its lock."""
    if os.fstat(fd).st_size == 0:
        write_all(fd, header(cipher, new_salt(), end=DATA_START), 0)
        _platform.ensure_allocated(fd, capacity)


def write_compacted(tmp: str, head: bytes, parts: list[bytes], *, mode: int,
                    capacity: int, least: int) -> int:
    """Write a compacted image to the new file ``tmp`` (fsynced; room for ``capacity``
    bytes, or ``least`` on a nearly full disk); returns its open descriptor."""
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
    try:
        os.fchmod(fd, mode & 0o7777)
        _write_image(fd, head, parts, tmp)
        try:
            _platform.ensure_allocated(fd, capacity)
        except DiskFullError:  # tight disk: the data and what comes next, no headroom
            _platform.ensure_allocated(fd, least)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd


def _write_image(fd: int, head: bytes, parts: list[bytes], name: str) -> None:
    """A header and framed records from offset 0 (a full disk: DiskFullError)."""
    try:
        write_all(fd, head, 0)
        write_parts(fd, parts, DATA_START)
    except OSError as exc:
        raise_if_disk_full(exc, _FULL.format(name), name)
        raise


def write_store(dst: str, img: Image, cipher: Cipher | None, min_cap: int) -> None:
    """A compacted store holding ``img`` (from ``image()``) at ``dst`` (a backup),
    replacing it whole."""
    head = header(cipher, new_salt(), end=img.end, version=img.version)
    with atomic_file(dst) as fd:
        _write_image(fd, head, img.parts, dst)
        _platform.ensure_allocated(fd, max(min_cap, _platform.align_up(img.end)))


def install_copy(src: str, dst: str) -> None:
    """Replace ``dst`` by a copy of ``src``; processes mapping ``dst`` are told to move."""
    with open(src, "rb") as f, atomic_file(dst) as fd:
        while chunk := f.read(1 << 20):
            write_all(fd, chunk)
        if os.path.exists(dst):
            mark_superseded(dst)  # last: processes mapping dst move once the rename is in


def keep_damaged(path: str) -> str:
    """Copy a damaged store aside (``.damaged``, ``.damaged.1``...) once; the copy's path."""
    import filecmp
    import shutil

    copy = path + ".damaged"
    n = 1
    while os.path.exists(copy):
        if filecmp.cmp(copy, path, shallow=False):
            return copy  # already kept (another process of a multiprocess store was first)
        copy = f"{path}.damaged.{n}"
        n += 1
    shutil.copyfile(path, copy)
    return copy


def mark_superseded(path: str) -> None:
    """Tell processes mapping the file at ``path`` that it is being replaced."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        raw = os.pread(fd, 8, OFF_COMMIT)
        if len(raw) == 8:
            (w,) = struct.unpack("<Q", raw)
            os.pwrite(fd, struct.pack("<Q", w | SUPERSEDED), OFF_COMMIT)
    finally:
        os.close(fd)


def write_parts(fd: int, parts: list[bytes], offset: int) -> None:
    """Write the concatenation of ``parts`` at ``offset``.

    Joined a few thousand at a time: one copy of the whole would cost as much again in
    fresh memory, and pwritev of small buffers costs the kernel more than the join.  Image
    records (megabytes each) are written as they are: joining them would copy the whole.
    """
    step = 4096
    for i in range(0, len(parts), step):
        batch = parts[i : i + step]
        if sum(map(len, batch)) > _JOIN_MAX:
            for data in batch:
                write_all(fd, data, offset)
                offset += len(data)
            continue
        data = b"".join(batch)
        write_all(fd, data, offset)
        offset += len(data)
