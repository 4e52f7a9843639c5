"""Loading a KV: a mapped file in, an index (key -> value) out.  Pure: no I/O, no locks.

``read()`` replays the records of a memoryview of the file into a fresh dict.  The common
case (a clean, unencrypted run of records) goes through ``replay_range``, one pass that
verifies and decodes plain sets inline and turns each image record (a compacted file's
columns of up to 64k keys, codec.decode_image) into one ``index.update(zip(keys,
values))`` straight from the mapping, without copying its body; anything unusual
(damage, encryption, odd values) falls back to ``analyse`` (codec.scan, which
resynchronises past damage: a damaged image record costs its own keys only) and the
general ``replay``.  Both give the same index: tests/test_kv_fastpath.py compares them.
Where the bytes may be read from (the commit word, growth, damage confirmed under the
writer lock) is store.py's protocol, not this module's.
"""

from __future__ import annotations

import gc
import struct
import zlib
from itertools import repeat

from .._crc import crc32 as _fast_crc32
from ..errors import CorruptFileError, DecryptionError
from . import codec
from ._crypto import Cipher
from ._index import REC_UNPACK, Expiring, Packed, fast_set
from .codec import (
    DATA_START,
    KIND_CLEAR,
    KIND_DEL,
    KIND_IMAGE,
    KIND_SET,
    KIND_SET_TTL,
    REC_FLAG_ENCRYPTED,
    Record,
    Serializer,
    decode_image,
)

# ``typing`` is for type checkers only (importing it costs milliseconds); type
# checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple
else:
    from .._light_typing import NamedTuple

__all__ = [
    "Analysis",
    "Lazy",
    "Loaded",
    "analyse",
    "image_prefix",
    "read",
    "replay",
    "replay_range",
    "stored",
]

# zlib's CRC-32, or ISA-L's (the isal extra: the same values, faster; mmapkit._crc)
crc32 = _fast_crc32()
# Small bodies (a counter, a short string) one call each: zlib's call costs a third of
# ISA-L's (whose argument parsing outweighs its speed below some 64 bytes; callgrind).
_small_crc32 = zlib.crc32
_SMALL_BODY = 64

_Keys = set[str]


class Analysis(NamedTuple):
    header: codec.Header
    records: tuple[Record, ...]
    pos: int  # where appending continues
    damaged: tuple[tuple[int, int], ...]  # committed byte ranges that did not verify
    problems: tuple[str, ...]
    dirty_tail: bool  # non-zero bytes after pos (a torn, unacknowledged write)


class Loaded(NamedTuple):
    analysis: Analysis
    mapping: dict[str, Any]  # the index: key -> value (index form)
    bad: list[tuple[int, int]]  # byte ranges that do not verify, decode or authenticate
    nops: int  # operations replayed (with len(index): the live share of the file)
    has_ttl: bool  # some value was set with a ttl
    lazy: Lazy | None  # image parts left encoded (a clean version 3 file)


def analyse(buf: memoryview, hdr: codec.Header, *, committed_only: bool = False) -> Analysis:
    """Which records of a mapped file are valid and where appending continues.

    ``committed_only``: stop at the commit word's end (a reader without the writer lock:
    the bytes past it are the lock holder's and may be mid-write).
    """
    size = buf.nbytes
    end = hdr.end
    problems: list[str] = []
    damaged: list[tuple[int, int]] = []
    if not hdr.crc_ok:
        problems.append("the header's fixed part fails its checksum")
    if end >= DATA_START and end % 8 == 0 and end <= size:
        s1 = codec.scan(buf, DATA_START, end)
        damaged += s1.damaged
        if s1.tail:
            damaged.append((s1.next, end))
        if committed_only:
            return Analysis(hdr, s1.records, end, tuple(damaged), tuple(problems), False)
        s2 = codec.scan(buf, end, size, resync=False)
        records = s1.records + s2.records
        pos = s2.next
    elif end >= DATA_START and end % 8 == 0:
        s1 = codec.scan(buf, DATA_START, size)
        damaged += s1.damaged
        damaged.append((s1.next, end))
        problems.append(f"the file was cut: it has {size} bytes but {end} were committed")
        records, pos = s1.records, s1.next
    else:
        problems.append(f"the header's end word ({end}) is damaged; scanned the whole file")
        s1 = codec.scan(buf, DATA_START, size)
        damaged += s1.damaged
        records, pos = s1.records, s1.next
    dirty = pos < size and any(buf[pos : min(size, pos + 16)])
    if damaged:
        lost = sum(b - a for a, b in damaged)
        problems.append(f"{lost} committed bytes in {len(damaged)} range(s) do not verify: "
                        + ", ".join(f"[{a}, {b})" for a, b in damaged[:8]))
    return Analysis(hdr, records, pos, tuple(damaged), tuple(problems), dirty)


def stored(vb: bytes, ser: Serializer | None) -> Any:
    """The index form of an encoded value (containers and custom values stay encoded)."""
    tag = vb[0]
    if tag in codec.SCALAR_TAGS:
        return codec.decode_value(vb)
    if tag == codec.T_CUSTOM and ser is None:
        return Packed(vb)  # readable once a serializer is given; not damage
    codec.decode_value(vb, ser)  # verify now: damage shows at open, not at get
    return Packed(vb)


def replay(rec: Record, index: dict[str, Any], changes: _Keys | None,
           cipher: Cipher | None, ser: Serializer | None, lazy: Lazy | None = None
           ) -> tuple[int, bool]:
    """Apply one verified record to ``index`` (and note changed keys): (operations, ttl
    seen).  CorruptFileError/DecryptionError when it does not decode or authenticate.
    ``lazy``: the image parts not loaded yet (a delete keeps the key out of its part, a
    clear drops them all; a set needs nothing: a part never replaces a present key)."""
    body = rec.body
    if rec.kind == KIND_IMAGE:
        if rec.flags:
            raise CorruptFileError("an image record is never encrypted")
        keys, values = codec.decode_image(body)
        index.update(zip(keys, values, strict=True))
        if changes is not None:
            changes.update(keys)
        return len(keys), False
    if rec.kind == KIND_SET and not rec.flags and changes is None:
        fast = fast_set(body)
        if fast is not None:
            index[fast[0]] = fast[1]
            return 1, False
    if rec.flags & REC_FLAG_ENCRYPTED:
        if cipher is None:
            raise DecryptionError("encrypted record in a file opened without key=")
        body = cipher.decrypt(body, rec.offset, rec.kind)
    ops = [(k, key, stored(vb, ser) if vb else None, exp)
           for k, key, vb, exp in codec.iter_ops(rec.kind, body)]
    ttl = False
    for kind, key, value, expiry in ops:
        if kind == KIND_SET:
            index[key] = value
        elif kind == KIND_SET_TTL:
            index[key] = Expiring(value, expiry)
            ttl = True
        elif kind == KIND_DEL:
            index.pop(key, None)
            if lazy is not None:
                lazy.gone.add(key)
        else:
            if changes is not None:
                changes.update(index)
            index.clear()
            if lazy is not None:
                lazy.drop()
        if changes is not None and kind != KIND_CLEAR:
            changes.add(key)
    return len(ops), ttl


# A run of plain sets of one record size (fixed-size keys and values: counters, ids,
# hashes) is decoded a window at a time by struct.iter_unpack and C-level maps instead
# of one Python step per record (about half the instructions per record).  A window
# opens after _RUN_MIN such records in a row and grows while the run lasts.  A window
# that sets one key throughout (a counter under contention) checks each record against
# the first and decodes only the last (_one_key_sets: half the instructions again).
_RUN_MIN = 16
_GC_PAUSE_BYTES = 1 << 20
_WINDOW_MIN, _WINDOW_MAX = 32, 1 << 15


def _agree(column: tuple[Any, ...], value: Any, j: int) -> int:
    """How many of the first ``j`` items of ``column`` equal ``value`` before one does not."""
    if column[:j].count(value) == j:
        return j
    return next(i for i, x in enumerate(column) if x != value)


def _one_key_sets(view: memoryview, pos: int, n: int, sz: int, k: int,
                  index: dict[str, Any], structs: dict[Any, Any]) -> int:
    """``_bulk_sets`` for a window of ``k`` records that all set one key (a counter, a
    status: what contended update_with() writes): each record's head and crc are
    verified as one at a time, each body is checked to start with the same key, value
    tag (and, for bytes or str, value length), and only the last value is decoded.  k,
    or 0 when the window is not such a run (the caller goes the general way).

    A catch-up under contention is mostly this (every hand-over of the writer lock
    replays the others' runs of update_with): a replay costs half the instructions of the
    general bulk path (callgrind, a counter's records: 6.7k -> 3.2k each)."""
    chunk = view[pos : pos + k * sz]
    # heads: the first 8 bytes of each record (magic, kind, flags, length), one strided
    # copy compared at once; crcs: the u32 after them
    head = structs.get(("head", n))
    if head is None:
        head = structs[("head", n)] = (struct.pack("<HBBI", 0x4B56, KIND_SET, 0, n),
                                       struct.Struct(f"<12x{n}s{sz - 12 - n}x"))
    if chunk.cast("Q")[:: sz // 8].tobytes() != head[0] * k:
        return 0
    bodies = [b for (b,) in head[1].iter_unpack(chunk)]  # (4x zip(*...)'s speed)
    first = bodies[0]
    v = 2 + (first[0] | first[1] << 8)
    tag = first[v] if v < n else 0
    if tag == 3 and n == v + 9:
        prefix = first[: v + 1]
    elif (tag == 6 or tag == 7) and n >= v + 5 and \
            int.from_bytes(first[v + 1 : v + 5], "little") == n - v - 5:
        prefix = first[: v + 5]
    else:
        return 0
    if not all(map(bytes.startswith, bodies, repeat(prefix))):
        return 0
    m = 0x9E3779B1
    seeds = map(((n << 16) ^ KIND_SET).__xor__, range(pos * m, (pos + k * sz) * m, sz * m))
    if list(map(_small_crc32, bodies, seeds)) != chunk.cast("I")[2 :: sz // 4].tolist():
        return 0  # (the general way finds the verified prefix)
    last = bodies[-1]
    try:
        key = first[2:v].decode()  # strict UTF-8 equals surrogatepass
        index[key] = (int.from_bytes(last[v + 1 :], "little", signed=True) if tag == 3
                      else last[v + 5 :] if tag == 7 else last[v + 5 :].decode())
    except UnicodeDecodeError:
        return 0  # (lone surrogates: one at a time)
    return k


def _bulk_sets(view: memoryview, pos: int, end: int, n: int, limit: int,
               index: dict[str, Any], structs: dict[Any, struct.Struct]) -> int:
    """Replay up to ``limit`` records from ``pos`` that are plain sets with ``n``-byte
    bodies, of one key length and one value form, in bulk: how many (0: none could be;
    the caller goes on one record at a time).  Each record is verified (magic, kind,
    flags, length, crc) exactly as one at a time; only a verified prefix is applied."""
    sz = (19 + n) & ~7
    k = min((end - pos) // sz, limit)
    if k < 2:
        return 0
    if n <= _SMALL_BODY:
        done = _one_key_sets(view, pos, n, sz, k, index, structs)
        if done:
            return done
    frame = structs.get(n)
    if frame is None:
        frame = structs[n] = struct.Struct(f"<HBBII{n}s{sz - 12 - n}x")
    magic, kind, flags, length, crc, bodies = zip(*frame.iter_unpack(view[pos : pos + k * sz]),
                                                  strict=True)
    j = _agree(length, n, _agree(flags, 0, _agree(kind, KIND_SET, _agree(magic, 0x4B56, k))))
    if j < 2:
        return 0
    # crc seeds (codec's _seed, masked by crc32): pos * M is an arithmetic progression
    m = 0x9E3779B1
    seeds = map(((n << 16) ^ KIND_SET).__xor__, range(pos * m, (pos + j * sz) * m, sz * m))
    sums = list(map(crc32 if n > _SMALL_BODY else _small_crc32, bodies[:j], seeds))
    if sums != list(crc[:j]):
        j = next(i for i in range(j) if sums[i] != crc[i])
        if j < 2:
            return 0
    first = bodies[0]
    v = 2 + (first[0] | first[1] << 8)
    tag = first[v] if v < n else 0
    if tag == 3 and n == v + 9:
        shape: Any = (v, 3)
    elif (tag == 6 or tag == 7) and n >= v + 5:
        shape = (v, tag, n - v - 5)
    else:
        return 0
    body = structs.get(shape)
    if body is None:
        body = structs[shape] = struct.Struct(
            f"<H{v - 2}sBq" if tag == 3 else f"<H{v - 2}sBI{n - v - 5}s")
    fields = tuple(zip(*body.iter_unpack(b"".join(bodies[:j])), strict=True))
    j = _agree(fields[0], v - 2, _agree(fields[2], tag, j))
    if tag != 3:
        j = _agree(fields[3], n - v - 5, j)
    if j < 2:
        return 0
    try:
        keys = list(map(bytes.decode, fields[1][:j]))  # strict UTF-8 equals surrogatepass
        values = fields[3][:j] if tag == 3 else fields[4][:j] if tag == 7 else \
            list(map(bytes.decode, fields[4][:j]))
    except UnicodeDecodeError:
        return 0  # (lone surrogates: one at a time)
    index.update(zip(keys, values, strict=True))
    return j


def replay_range(view: memoryview, pos: int, end: int, index: dict[str, Any],
                 ser: Serializer | None, lazy: Lazy | None = None
                 ) -> tuple[int, bool] | None:
    """Replay the clean, unencrypted records of ``[pos, end)`` into ``index`` in one pass:
    (operations, ttl seen), or None at anything unusual (damage, odd values): the caller
    then takes the careful path over the same range (replaying a range again is
    harmless: every record sets, deletes or clears)."""
    unpack = REC_UNPACK
    nops = 0
    ttl = False
    from_bytes = int.from_bytes
    run_n = run = 0  # the body length of the current run of plain sets, and its length
    window = _WINDOW_MIN
    structs: dict[Any, struct.Struct] = {}
    try:
        while pos < end:
            magic, kind, flags, n, crc = unpack(view, pos)
            nxt = pos + ((19 + n) & ~7)
            if magic != 0x4B56 or flags or nxt > end:
                return None
            if kind == KIND_IMAGE:
                # Checked and decoded in place (a body of megabytes is not copied first).
                part = view[pos + 12 : pos + 12 + n]
                if crc32(part, (pos * 0x9E3779B1) ^ (n << 16) ^ kind) != crc:
                    return None
                keys, values = decode_image(part)
                del part
                index.update(zip(keys, values, strict=True))
                nops += len(keys)
                pos = nxt
                run_n = run = 0
                continue
            body = view[pos + 12 : pos + 12 + n].tobytes()
            if crc32(body, (pos * 0x9E3779B1) ^ (n << 16) ^ kind) != crc:  # (seed masked)
                return None
            # fast_set() inlined (the same three cases: an int, bytes or str value right
            # after the key); anything else, or what does not decode, is replayed by the
            # general path.
            if kind == KIND_SET and n > 2:
                v = 2 + (body[0] | body[1] << 8)
                tag = body[v] if v < n else 0
                if (tag == 3 and n == v + 9) or ((tag == 7 or tag == 6) and n == v + 5
                                                 + from_bytes(body[v + 1 : v + 5], "little")):
                    try:
                        index[body[2:v].decode("utf-8", "surrogatepass")] = (
                            body[v + 5 :] if tag == 7 else
                            from_bytes(body[v + 1 :], "little", signed=True) if tag == 3
                            else body[v + 5 :].decode("utf-8", "surrogatepass"))
                        nops += 1
                        pos = nxt
                        if n != run_n:
                            run_n, run = n, 1
                        else:
                            run += 1
                            if run >= _RUN_MIN and pos < end:
                                done = _bulk_sets(view, pos, end, n, window, index, structs)
                                pos += done * ((19 + n) & ~7)
                                nops += done
                                if done < window:
                                    run = 0  # the run ended: wait for another
                                window = min(_WINDOW_MAX, max(_WINDOW_MIN, 2 * done))
                        continue
                    except UnicodeDecodeError:
                        pass
            ops, t = replay(Record(pos, kind, flags, body), index, None, None, ser, lazy)
            nops += ops
            ttl = ttl or t
            pos = nxt
    except (CorruptFileError, DecryptionError, struct.error):
        return None
    return nops, ttl


def image_prefix(view: memoryview, pos: int, end: int) -> tuple[Lazy | None, int, int] | None:
    """Verify the image records at the start of a version 3 file without decoding them:
    (their parts, where the records after them start, keys they hold), or None at
    anything unusual (the caller reads the file the careful, eager way).  Each record's
    crc is checked over its body in place, and its head against its size (codec.image_head).
    """
    unpack = REC_UNPACK
    spans: list[list[tuple[int, int]]] = []
    counts: list[int] = []
    nops = 0
    start = pos
    try:
        while pos + 12 <= end:
            magic, kind, flags, n, crc = unpack(view, pos)
            if kind != KIND_IMAGE:
                break
            nxt = pos + ((19 + n) & ~7)
            if magic != 0x4B56 or flags or nxt > end:
                return None
            body = view[pos + 12 : pos + 12 + n]
            ok = crc32(body, (pos * 0x9E3779B1) ^ (n << 16) ^ kind) == crc
            del body
            if not ok:
                return None
            nparts, part, count = codec.image_head(view, pos + 12, n)
            if not spans:
                spans = [[] for _ in range(nparts)]
                counts = [0] * nparts
            elif len(spans) != nparts:
                return None  # (a file's image has one count of parts)
            spans[part].append((pos + 12, n))
            counts[part] += count
            nops += count
            pos = nxt
    except (CorruptFileError, struct.error):
        return None
    if pos == start:
        return None, pos, 0
    return Lazy(view[:pos], spans, counts), pos, nops


class Lazy:
    """The parts of a version 3 image not decoded yet (kv/_lazy.py has the rules).

    ``spans[p]``: (offset, length) of the bodies of part p's image records, None once p
    is loaded (or dropped by a clear).  ``gone``: keys deleted since the image was
    written, which a part loaded later must not bring back.  A part never replaces a key
    present in the index: what is there was written after the image.
    """

    __slots__ = ("counts", "dirty", "gone", "left", "mask", "spans", "view")

    def __init__(self, view: memoryview, spans: list[list[tuple[int, int]]],
                 counts: list[int]) -> None:
        self.view = view  # a slice of our own: keeps the mapping while parts are unread
        self.mask = len(spans) - 1
        self.spans: list[list[tuple[int, int]] | None] = [s or None for s in spans]
        self.counts = counts
        self.left = sum(s is not None for s in self.spans)
        self.gone: set[str] = set()
        # The parts some key of which may be in the index already (or gone): only those
        # must be merged key by key; None: any part may (see note()).
        self.dirty: set[int] | None = None

    def note(self, index: dict[str, Any]) -> None:
        """Name the parts of the keys written so far (``index`` and ``gone``); a part
        outside them loads with one dict.update.  Replays after this must set ``dirty``
        to None (kv/_follow.py's catch-up does)."""
        part = self.part
        self.dirty = {*map(part, index), *map(part, self.gone)}

    @property
    def pending(self) -> int:
        """Keys in the parts not loaded (an estimate: some may be overwritten or gone)."""
        return sum(c for c, s in zip(self.counts, self.spans, strict=True) if s is not None)

    def part(self, key: str) -> int:
        return codec.image_part(key, self.mask + 1)

    def load(self, part: int, index: dict[str, Any]) -> int:
        """Decode part ``part`` into ``index`` (keys present or gone stay as they are):
        how many keys it held.  CorruptFileError when a record does not decode (nothing
        is inserted then, and the part stays unloaded)."""
        spans = self.spans[part]
        if spans is None:
            return 0
        view = self.view
        cols = [decode_image(view[off : off + n]) for off, n in spans]
        self.spans[part] = None
        self.left -= 1
        total = 0
        gone = self.gone
        clean = self.dirty is not None and part not in self.dirty
        for keys, values in cols:
            total += len(keys)
            if clean:  # (no key of this part was written since the image)
                index.update(zip(keys, values, strict=True))
                continue
            clash = index.keys() & keys
            if gone:
                clash |= gone.intersection(keys)
            if not clash:
                index.update(zip(keys, values, strict=True))
            else:
                index.update((k, v) for k, v in zip(keys, values, strict=True)
                             if k not in clash)
        if not self.left:
            self.release()
        return total

    def drop(self) -> None:
        """A clear: every part's keys are gone."""
        self.spans = [None] * len(self.spans)
        self.left = 0
        self.gone = set()
        self.release()

    def release(self) -> None:
        self.view.release()


def read(view: memoryview, hdr: codec.Header, *, committed_only: bool,
         cipher: Cipher | None, ser: Serializer | None, lazy_ok: bool = True) -> Loaded:
    """Scan and replay a mapped file (``hdr`` parsed from it) into a fresh index.

    ``committed_only``: read nothing at or past the commit word's end (those bytes belong
    to the writer-lock holder and may be mid-write).  ``lazy_ok``: a clean version 3
    file's image parts are verified but left encoded (Loaded.lazy); without it, or on a
    file that does not verify, everything is decoded now.
    """
    nops = 0
    has_ttl = False
    fast = None
    lazy = None
    end = hdr.end
    if not hdr.encrypted and hdr.crc_ok and DATA_START <= end <= view.nbytes and not end % 8:
        index: dict[str, Any] = {}
        # The bulk decoder makes many short-lived tuples: the cyclic collector would walk
        # the whole heap over and over for nothing (a load makes no cycles).
        pause_gc = end - DATA_START > _GC_PAUSE_BYTES and gc.isenabled()
        if pause_gc:
            gc.disable()
        try:
            start, image_ops = DATA_START, 0
            if lazy_ok and hdr.version >= codec.VERSION_PART:
                found = image_prefix(view, DATA_START, end)
                if found is not None:
                    lazy, start, image_ops = found
            fast = replay_range(view, start, end, index, ser, lazy)
            if fast is not None:
                fast = (fast[0] + image_ops, fast[1])
            elif lazy is not None:
                lazy.release()
                lazy = None
        finally:
            if pause_gc:
                gc.enable()
    if fast is not None:
        # Clean committed region: only what lies beyond it is left to look at.
        nops, has_ttl = fast
        if committed_only:
            analysis = Analysis(hdr, (), end, (), (), False)
        else:
            extra = codec.scan(view, end, view.nbytes, resync=False)
            size = view.nbytes
            dirty = extra.next < size and any(view[extra.next : min(size, extra.next + 16)])
            analysis = Analysis(hdr, extra.records, extra.next, (), (), dirty)
    else:
        analysis = analyse(view, hdr, committed_only=committed_only)
        index = {}
    bad: list[tuple[int, int]] = list(analysis.damaged)
    plain = 0
    for rec in analysis.records:
        if rec.kind == KIND_SET and not rec.flags:
            item = fast_set(rec.body)
            if item is not None:
                index[item[0]] = item[1]
                plain += 1
                continue
        try:
            ops, t = replay(rec, index, None, cipher, ser, lazy)
        except (CorruptFileError, DecryptionError):
            bad.append((rec.offset, rec.offset + rec.size))
            continue
        nops += ops
        has_ttl = has_ttl or t
    if lazy is not None and not lazy.left:
        lazy = None  # (a clear after the image dropped every part)
    elif lazy is not None:
        lazy.note(index)
    return Loaded(analysis, index, bad, nops + plain, has_ttl, lazy)
