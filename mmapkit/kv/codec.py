"""The KV file format as pure functions over bytes-like objects (no mmap, no I/O).

Design rules:

- A KV file is a 128-byte header followed by an append-only run of framed records.  The
  store (``store.py``) maps the file and calls these functions; nothing here knows about
  files, locks or processes, so every decoder is tested whole, byte by byte, cut at every
  offset and fuzzed.
- Every record carries its own CRC-32, seeded with the record's file offset, kind, flags
  and length: a record copied to another offset, a torn record, or a record header with a
  flipped length never verifies.  One damaged record costs that record only: ``scan``
  resynchronises on the next 8-byte boundary where a valid record starts.
- Values keep their Python type through a small tagged encoding (never pickle unless the
  caller passes ``serializer=``).  Decoding garbage raises :class:`CorruptFileError`,
  never ``struct.error``/``IndexError``/``UnicodeDecodeError``/``RecursionError``.
- A compaction or backup writes most live keys as a few *image* records (kind 6, format
  version 2): each holds up to ``IMAGE_KEYS`` keys of one value form as columns (a
  NUL-joined key blob, an int64 column, a fixed-width or length-prefixed bytes column, a
  NUL-joined or length-prefixed str column), so opening a store builds its index with a
  handful of C-level calls per chunk instead of one Python step per key.  An image record
  is framed and checksummed like every record: a damaged one costs its own chunk only.
  Files holding images carry version 2 or 3, which older readers refuse
  (FormatVersionError); files without them stay version 1.
- Version 3 (``VERSION_PART``) partitions the image by a stable hash of the key
  (``image_part``: CRC-32 of its UTF-8, masked to a power-of-two count of parts); each
  image record's head names its part, so an opener can verify every record and leave
  each part encoded until a key of it is first used (kv/_lazy.py).  Version 2 images
  (one part) are still read, and decoded at open as before.
- All integers little-endian.  The layout is documented byte by byte in docs/formats.md.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from itertools import accumulate

from ..errors import CorruptFileError, ForeignFileError, FormatVersionError

# ``typing`` is for type checkers only: with re, enum and contextlib it was 40% of what
# ``import mmapkit; mmapkit.KV(path)`` ran (mmapkit/_light_typing.py).  Type checkers
# take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import Any, NamedTuple, Protocol
else:
    from .._light_typing import NamedTuple, Protocol

__all__ = [
    "DATA_START",
    "END_MASK",
    "FLAG_ENCRYPTED",
    "HEADER_SIZE",
    "IMAGE_BYTES",
    "IMAGE_KEYS",
    "IMAGE_PART_KEYS",
    "IM_BYTES",
    "IM_BYTES_FIXED",
    "IM_INT",
    "IM_STR",
    "IM_STR_NUL",
    "KEY_MAX",
    "KIND_BATCH",
    "KIND_CLEAR",
    "KIND_DEL",
    "KIND_IMAGE",
    "KIND_SET",
    "KIND_SET_TTL",
    "LOCK_CLAIMED",
    "LOCK_READY",
    "MAGIC",
    "OFF_COMMIT",
    "OFF_COMPACTIONS",
    "OFF_CREATED",
    "OFF_LOCK_READY",
    "OFF_LOCK_SEQ",
    "OFF_LOCK_WANT",
    "OFF_SEQ",
    "OFF_WAITERS",
    "PART_BITS_MAX",
    "REC_FLAG_ENCRYPTED",
    "REC_HEADER",
    "REC_MAGIC",
    "SCALAR_TAGS",
    "SUPERSEDED",
    "T_BIGINT",
    "T_BYTES",
    "T_CUSTOM",
    "T_DICT",
    "T_FALSE",
    "T_FLOAT",
    "T_INT",
    "T_LIST",
    "T_NONE",
    "T_STR",
    "T_TRUE",
    "T_TUPLE",
    "VERSION",
    "VERSION_IMAGE",
    "VERSION_PART",
    "VERSION_PLAIN",
    "Header",
    "Record",
    "Scan",
    "Serializer",
    "build_header",
    "decode_image",
    "decode_value",
    "encode_image",
    "encode_key",
    "encode_record",
    "encode_value",
    "from_json_value",
    "image_body",
    "image_head",
    "image_key_column",
    "image_part",
    "image_parts",
    "image_value_column",
    "iter_ops",
    "parse_header",
    "record_size",
    "scan",
    "to_json_value",
]

# --- file header (128 bytes) ------------------------------------------------------------
MAGIC = b"MMKITKV\x00"
VERSION_PLAIN = 1  # records of kinds 1..5 only
VERSION_IMAGE = 2  # may also hold image records (kind 6), one part
VERSION_PART = 3  # image records partitioned by key hash (their head's part field)
VERSION = VERSION_PART  # the newest this code reads
HEADER_SIZE = 128
DATA_START = HEADER_SIZE
FLAG_ENCRYPTED = 1
_FIXED = struct.Struct("<8sHHIQQ32s")  # magic, version, flags, crc, salt, created_ns, keycheck
OFF_CREATED = 24  # u64: when this file was made (ns since the epoch; in the fixed part)
OFF_COMMIT = 64  # u64: end of committed records (bits 0..47), bit 63 = superseded
OFF_SEQ = 72  # u64: commits made to this file
OFF_COMPACTIONS = 80  # u32: compactions behind this file
OFF_WAITERS = 84  # u32: non-zero while some process sleeps in changed()
OFF_LOCK_WANT = 88  # u32: non-zero while some process waits for the writer lock
OFF_LOCK_SEQ = 92  # u32: bumped by a writer that releases the lock to a waiter (futex word)
OFF_LOCK_READY = 96  # u32: non-zero while a woken waiter has the next turn (values below)
LOCK_READY = 1    # the ready word's values: a woken waiter spinning on the flock,
LOCK_CLAIMED = 2  # or catching up first (kv/_writelock.py, L3)
END_MASK = (1 << 48) - 1
SUPERSEDED = 1 << 63

# --- records ------------------------------------------------------------------------------
REC_MAGIC = 0x4B56  # b"VK" little-endian
_REC = struct.Struct("<HBBII")  # magic, kind, flags, body length, crc32
REC_HEADER = _REC.size  # 12
REC_FLAG_ENCRYPTED = 1
KIND_SET = 1  # u16 key length, key, value
KIND_SET_TTL = 2  # f64 expiry (unix time), u16 key length, key, value
KIND_DEL = 3  # u16 key length, key
KIND_CLEAR = 4  # empty body
KIND_BATCH = 5  # entries: u8 kind, u32 length, body (kinds 1..4)
KIND_IMAGE = 6  # columns of up to IMAGE_KEYS plain sets (see encode_image); version 2 files
_KINDS = frozenset((KIND_SET, KIND_SET_TTL, KIND_DEL, KIND_CLEAR, KIND_BATCH, KIND_IMAGE))
_BATCHED = frozenset((KIND_SET, KIND_SET_TTL, KIND_DEL, KIND_CLEAR))
KEY_MAX = 1024  # bytes of UTF-8
BODY_MAX = (1 << 32) - 1

_U16 = struct.Struct("<H")
_F64 = struct.Struct("<d")
_TTL = struct.Struct("<dH")
_ENTRY = struct.Struct("<BI")


class Serializer(Protocol):
    """What ``serializer=`` must offer (the ``pickle`` module fits)."""

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


def _seed(offset: int, kind: int, flags: int, length: int) -> int:
    return ((offset * 0x9E3779B1) ^ (length << 16) ^ (flags << 8) ^ kind) & 0xFFFFFFFF


def record_size(body_len: int) -> int:
    """Bytes a record with a body of ``body_len`` bytes takes in the file (8-aligned)."""
    return (REC_HEADER + body_len + 7) & ~7


def encode_record(kind: int, body: bytes, offset: int, flags: int = 0) -> bytes:
    """The framed, padded record that will sit at file ``offset``."""
    n = len(body)
    if n > BODY_MAX:
        raise ValueError(f"a record body of {n} bytes exceeds the 4 GiB format limit")
    crc = zlib.crc32(body, _seed(offset, kind, flags, n))
    pad = (-(REC_HEADER + n)) & 7
    return _REC.pack(REC_MAGIC, kind, flags, n, crc) + body + b"\0" * pad


class Record(NamedTuple):
    offset: int
    kind: int
    flags: int
    body: bytes

    @property
    def size(self) -> int:
        return record_size(len(self.body))


class Scan(NamedTuple):
    """What :func:`scan` found between ``start`` and ``end``.

    ``next`` is just past the last good record (where an appender continues), ``damaged``
    lists ``(start, stop)`` byte ranges skipped because a later record verified again, and
    ``tail`` counts the bytes from ``next`` to ``end`` that hold no verifiable record (zeros
    of free space, or a torn write).
    """

    records: tuple[Record, ...]
    next: int
    damaged: tuple[tuple[int, int], ...]
    tail: int

    @property
    def damaged_bytes(self) -> int:
        return sum(b - a for a, b in self.damaged)


def _record_at(buf: Any, pos: int, end: int) -> Record | None:
    if pos + REC_HEADER > end:
        return None
    magic, kind, flags, n, crc = _REC.unpack_from(buf, pos)
    if magic != REC_MAGIC or kind not in _KINDS or flags > 1:
        return None
    stop = pos + REC_HEADER + n
    if pos + ((REC_HEADER + n + 7) & ~7) > end:  # the padding belongs to the record too
        return None
    body = bytes(buf[pos + REC_HEADER : stop])
    if zlib.crc32(body, _seed(pos, kind, flags, n)) != crc:
        return None
    return Record(pos, kind, flags, body)


def scan(buf: Any, start: int, end: int | None = None, *, resync: bool = True) -> Scan:
    """Verify and collect the records of ``buf[start:end]`` (offsets are file offsets).

    With ``resync`` a record that does not verify is skipped: the scan looks for the next
    8-byte boundary where a record verifies and reports the bytes in between as damaged.
    Without ``resync`` it stops at the first record that does not verify.
    """
    view = memoryview(buf)
    try:
        if end is None or end > view.nbytes:
            end = view.nbytes
        records: list[Record] = []
        damaged: list[tuple[int, int]] = []
        pos = start
        good_end = start
        unpack, kinds, append = _REC.unpack_from, _KINDS, records.append
        while pos < end:
            # _record_at() inlined: opening a store runs this once per record.
            if pos + REC_HEADER <= end:
                magic, kind, flags, n, crc = unpack(view, pos)
                nxt = pos + ((REC_HEADER + n + 7) & ~7)
                if magic == REC_MAGIC and kind in kinds and flags <= 1 and nxt <= end:
                    body = view[pos + REC_HEADER : pos + REC_HEADER + n].tobytes()
                    seed = ((pos * 0x9E3779B1) ^ (n << 16) ^ (flags << 8) ^ kind) & 0xFFFFFFFF
                    if zlib.crc32(body, seed) == crc:
                        append(Record(pos, kind, flags, body))
                        pos = good_end = nxt
                        continue
            if not resync:
                break
            q = _resync(view, pos + 8, end)
            if q is None:
                break
            damaged.append((pos, q))
            pos = q
        return Scan(tuple(records), good_end, tuple(damaged), max(end - good_end, 0))
    finally:
        view.release()


def _resync(view: memoryview, pos: int, end: int) -> int | None:
    marker = _U16.pack(REC_MAGIC)
    raw = view.obj if isinstance(view.obj, (bytes, bytearray)) else view
    while pos + REC_HEADER <= end:
        hit = _find(raw, marker, pos, end)
        if hit < 0:
            return None
        if hit % 8:
            pos = hit + (8 - hit % 8)
            continue
        if _record_at(view, hit, end) is not None:
            return hit
        pos = hit + 8
    return None


def _find(raw: Any, marker: bytes, pos: int, end: int) -> int:
    if isinstance(raw, (bytes, bytearray)):
        return raw.find(marker, pos, end)
    # memoryviews have no find(): search a copied window (only on damaged files).
    chunk = bytes(raw[pos:end])
    i = chunk.find(marker)
    return -1 if i < 0 else pos + i


# --- record bodies ------------------------------------------------------------------------


def encode_key(key: str) -> bytes:
    """UTF-8 of ``key`` with its u16 length in front; TypeError/ValueError for bad keys."""
    if not isinstance(key, str):
        raise TypeError(f"KV keys are str, not {type(key).__name__}")
    kb = key.encode("utf-8", "surrogatepass")
    if len(kb) > KEY_MAX:
        raise ValueError(f"key of {len(kb)} UTF-8 bytes exceeds the {KEY_MAX}-byte limit; "
                         "use a shorter key (e.g. a hash of it)")
    return _U16.pack(len(kb)) + kb


def _key_at(body: bytes, pos: int) -> tuple[str, int]:
    (n,) = _U16.unpack_from(body, pos)
    end = pos + 2 + n
    if end > len(body):
        raise ValueError("key runs past the record")
    return body[pos + 2 : end].decode("utf-8", "surrogatepass"), end


Op = tuple[int, str, bytes, float]  # kind, key, encoded value (b"" for del/clear), expiry


def iter_ops(kind: int, body: bytes) -> Iterator[Op]:
    """The operations of one verified record body, in order.

    Raises :class:`CorruptFileError` when the body does not parse (a record written by a
    bug or a hostile file: its CRC verified but its contents are not ours).
    """
    try:
        if kind == KIND_BATCH:
            pos = 0
            n = len(body)
            ops: list[Op] = []
            while pos < n:
                sub, length = _ENTRY.unpack_from(body, pos)
                pos += _ENTRY.size
                if sub not in _BATCHED or pos + length > n:
                    raise ValueError("bad batch entry")
                ops.append(_one_op(sub, body[pos : pos + length]))
                pos += length
            yield from ops
        elif kind == KIND_IMAGE:
            keys, values = decode_image(body)
            sets = [(KIND_SET, k, encode_value(v), 0.0) for k, v in zip(keys, values, strict=True)]
            yield from sets
        else:
            yield _one_op(kind, body)
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"record body does not parse: {exc}") from None


def _one_op(kind: int, body: bytes) -> Op:
    if kind == KIND_SET:
        key, pos = _key_at(body, 0)
        return (kind, key, body[pos:], 0.0)
    if kind == KIND_SET_TTL:
        (expiry,) = _F64.unpack_from(body, 0)
        key, pos = _key_at(body, 8)
        return (kind, key, body[pos:], expiry)
    if kind == KIND_DEL:
        key, pos = _key_at(body, 0)
        if pos != len(body):
            raise ValueError("trailing bytes after a deleted key")
        return (kind, key, b"", 0.0)
    if kind == KIND_CLEAR:
        if body:
            raise ValueError("clear record with a body")
        return (kind, "", b"", 0.0)
    raise ValueError(f"unknown record kind {kind}")


def set_body(kb: bytes, vb: bytes, expiry: float | None = None) -> tuple[int, bytes]:
    """(kind, body) of a set; ``kb`` from :func:`encode_key`, ``vb`` from encode_value."""
    if expiry is None:
        return KIND_SET, kb + vb
    return KIND_SET_TTL, _F64.pack(expiry) + kb + vb


def batch_body(entries: list[tuple[int, bytes]]) -> bytes:
    return b"".join(_ENTRY.pack(kind, len(body)) + body for kind, body in entries)


# --- image records (kind 6): columns of plain sets ----------------------------------------
# Body: a 16-byte head, then the columns back to back (no padding, no alignment needed: the
# readers copy or cast without assuming any).
#
#   value form (u8), key form (u8), part (u16), count n (u32, >= 1),
#   key bytes K (u32), value bytes V (u32),
#   [n x u32 key lengths, key form 1], K bytes of keys,
#   [n x u32 value lengths, value forms 3 and 5], V bytes of values.
#
# Keys are strict UTF-8 (no lone surrogates: such keys stay ordinary records); key form 0
# joins them with NUL (no key holds one), form 1 gives their lengths.  Value forms: 1 int64
# column (V = 8n); 2 bytes of one width (V = width * n); 3 bytes with lengths; 4 str (strict
# UTF-8) joined with NUL (none holds one); 5 str with lengths.  Every value is a plain set:
# the index form is the value itself.
#
# The part field (version 3 files; 0 in version 2 files, meaning one part): bits 12..15
# are b, the file's image has 2**b parts (b <= PART_BITS_MAX, the same in every image
# record of a file), bits 0..11 the part p < 2**b that holds every key of this record:
# p = crc32(key's UTF-8) & (2**b - 1) (image_part).  Python's hash() is randomised per
# process: never used for this.
IMAGE_KEYS = 1 << 16  # keys per image record at most (what one damaged chunk can cost)
IMAGE_BYTES = 1 << 22  # a writer closes a chunk once its columns pass this many bytes
IM_INT, IM_BYTES_FIXED, IM_BYTES, IM_STR_NUL, IM_STR = 1, 2, 3, 4, 5
IMAGE_PART_KEYS = 1 << 14  # a compaction aims at about this many image keys per part
PART_BITS_MAX = 12  # at most 4096 parts (bigger stores: bigger parts)


def image_parts(nkeys: int) -> int:
    """How many parts (a power of two) an image of ``nkeys`` keys is cut into."""
    b = 0
    while (IMAGE_PART_KEYS << b) < nkeys and b < PART_BITS_MAX:
        b += 1
    return 1 << b


def image_part(key: str, nparts: int) -> int:
    """The part of a key in an image of ``nparts`` parts (stable across processes)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) & (nparts - 1)


_IMAGE_HEAD = struct.Struct("<BBHIII")
_LITTLE = sys.byteorder == "little"
assert array("q").itemsize == 8 and array("I").itemsize == 4


def _u32s(values: Sequence[int]) -> bytes:
    """An image column of lengths (u32, little-endian)."""
    a = array("I", values)
    if not _LITTLE:
        a.byteswap()
    return a.tobytes()


def encode_image(keys: Sequence[str], values: Sequence[Any], part: int = 0,
                 nparts: int = 1) -> bytes:
    """The body of an image record setting ``keys[i]`` to ``values[i]``, all of them of
    part ``part`` of ``nparts`` (a power of two; 1: a version 2 image).

    All values share one type: int (each in the int64 range), bytes or str; keys and str
    values must encode as strict UTF-8.  ValueError/TypeError otherwise (the caller keeps
    such keys as ordinary records).
    """
    n = len(keys)
    if n == 0 or n != len(values) or n > IMAGE_KEYS:
        raise ValueError(f"an image holds 1..{IMAGE_KEYS} keys with one value each")
    types = {*map(type, values)}
    if len(types) != 1:
        raise TypeError("an image holds values of one type")
    try:
        kform, klens, kjoined = image_key_column(list(map(str.encode, keys)))
    except UnicodeEncodeError as exc:
        raise ValueError(f"not an image key: {exc}") from None
    vform, vlens, vblob = image_value_column(values, types.pop())
    return image_body(vform, kform, part, nparts, n, klens, kjoined, vlens, vblob)


def image_key_column(raw_keys: Sequence[bytes]) -> tuple[int, bytes, bytes]:
    """An image's key column from the keys as UTF-8: (form, lengths, bytes): form 0, the
    keys NUL-joined, or form 1 (a key holds a NUL), u32 lengths and the keys joined."""
    joined = b"\0".join(raw_keys)
    if joined.count(0) == len(raw_keys) - 1:
        return 0, b"", joined
    return 1, _u32s(list(map(len, raw_keys))), b"".join(raw_keys)


def image_value_column(values: Sequence[Any], t: type) -> tuple[int, bytes, bytes]:
    """An image's value column of ``values``, all of type ``t`` (int in the int64 range,
    bytes, or str of strict UTF-8): (IM_* form, u32 lengths where it has them, bytes).
    ValueError/TypeError otherwise."""
    try:
        if t is int:
            a = array("q", values)  # OverflowError past 64 bits
            if not _LITTLE:
                a.byteswap()
            return IM_INT, b"", a.tobytes()
        if t is bytes:
            lens = list(map(len, values))
            if min(lens) == max(lens):
                return IM_BYTES_FIXED, b"", b"".join(values)
            return IM_BYTES, _u32s(lens), b"".join(values)
        if t is str:
            blob = "\0".join(values).encode()
            if blob.count(0) == len(values) - 1:
                return IM_STR_NUL, b"", blob
            raws = [v.encode() for v in values]
            return IM_STR, _u32s(list(map(len, raws))), b"".join(raws)
    except (UnicodeEncodeError, OverflowError) as exc:
        raise ValueError(f"not an image value: {exc}") from None
    raise TypeError(f"an image cannot hold {t.__name__} values")


def image_body(vform: int, kform: int, part: int, nparts: int, n: int, klens: Any,
               kjoined: Any, vlens: Any, vblob: Any) -> bytes:
    """An image record's body from its columns, already encoded (encode_image's last
    step; a compaction that builds the columns of every part in one pass calls it
    directly): ``kform`` 0 with NUL-joined keys, or 1 with ``klens`` (u32 lengths);
    ``vform`` one of the IM_* forms, with ``vlens`` where it has lengths."""
    if len(kjoined) > BODY_MAX or len(vblob) > BODY_MAX:
        raise ValueError("image columns exceed the 4 GiB format limit")
    bits = nparts.bit_length() - 1
    if nparts != 1 << bits or bits > PART_BITS_MAX or not 0 <= part < nparts:
        raise ValueError(f"no part {part} of {nparts}")
    head = _IMAGE_HEAD.pack(vform, kform, bits << 12 | part, n, len(kjoined), len(vblob))
    return b"".join((head, klens, kjoined, vlens, vblob))


def _lengths(view: memoryview) -> list[int]:
    if _LITTLE:
        return view.cast("I").tolist()
    a = array("I", bytes(view))
    a.byteswap()
    return a.tolist()


def _cut(blob: bytes, lengths: list[int]) -> list[bytes]:
    ends = list(accumulate(lengths))
    if ends[-1] != len(blob):
        raise ValueError("column lengths do not add up")
    return list(map(blob.__getitem__, map(slice, [0, *ends[:-1]], ends)))


def _split(blob: memoryview, n: int) -> list[str]:
    parts = str(blob, "utf-8").split("\0")
    if len(parts) != n:
        raise ValueError("column holds a different number of items")
    return parts


def _fixed(blob: memoryview, width: int, n: int) -> list[bytes]:
    """``n`` values of ``width`` bytes: a Struct of 256 fields at a time (2.5x faster
    than iter_unpack, which makes a tuple per value)."""
    many = struct.Struct(f"{width}s" * 256)
    step = many.size
    whole = n // 256 * step
    out: list[bytes] = []
    more, unpack = out.extend, many.unpack_from
    for pos in range(0, whole, step):
        more(unpack(blob, pos))
    if n % 256:
        more(struct.unpack_from(f"{width}s" * (n % 256), blob, whole))
    return out


def image_head(body: Any, pos: int = 0, size: int | None = None) -> tuple[int, int, int]:
    """(parts, part, count) of the image record body at ``body[pos:pos + size]``, its head
    checked against the body's size; CorruptFileError if it does not fit."""
    try:
        vform, kform, bits, n, nk, nv = _IMAGE_HEAD.unpack_from(body, pos)
        if size is None:
            size = memoryview(body).nbytes - pos
        if n == 0 or kform > 1 or not IM_INT <= vform <= IM_STR or \
                bits >> 12 > PART_BITS_MAX or (bits & 0xFFF) >> (bits >> 12):
            raise ValueError("unknown image head")
        vlen = vform in (IM_BYTES, IM_STR)
        if size != 16 + 4 * n * (kform + vlen) + nk + nv:
            raise ValueError("image columns do not fill the body")
    except (struct.error, ValueError, TypeError) as exc:
        raise CorruptFileError(f"image record does not decode: {exc}") from None
    return 1 << (bits >> 12), bits & 0xFFF, n


def decode_image(body: Any) -> tuple[list[str], list[Any]]:
    """(keys, values) of an image record body (bytes-like); CorruptFileError if bad."""
    view = memoryview(body)
    image_head(view)
    try:
        vform, kform, _bits, n, nk, nv = _IMAGE_HEAD.unpack_from(view, 0)
        vlen = vform in (IM_BYTES, IM_STR)
        pos = 16 + 4 * n * kform
        kblob = view[pos : pos + nk]
        if kform:
            keys = list(map(bytes.decode, _cut(bytes(kblob), _lengths(view[16:pos]))))
        else:
            keys = _split(kblob, n)
        pos += nk
        if vlen:
            lens = _lengths(view[pos : pos + 4 * n])
            pos += 4 * n
        vblob = view[pos:]
        values: list[Any]
        if vform == IM_INT:
            if nv != 8 * n:
                raise ValueError("int column of the wrong size")
            if _LITTLE:
                values = vblob.cast("q").tolist()
            else:
                a = array("q", bytes(vblob))
                a.byteswap()
                values = a.tolist()
        elif vform == IM_BYTES_FIXED:
            width, rest = divmod(nv, n)
            if rest:
                raise ValueError("fixed-width column of the wrong size")
            values = _fixed(vblob, width, n) if width else [b""] * n
        elif vform == IM_STR_NUL:
            values = _split(vblob, n)
        else:
            values = _cut(bytes(vblob), lens)
            if vform == IM_STR:
                values = list(map(bytes.decode, values))
    except (struct.error, ValueError, UnicodeDecodeError, TypeError) as exc:
        raise CorruptFileError(f"image record does not decode: {exc}") from None
    return keys, values


# --- values -------------------------------------------------------------------------------
T_NONE, T_FALSE, T_TRUE, T_INT, T_BIGINT, T_FLOAT = 0, 1, 2, 3, 4, 5
T_STR, T_BYTES, T_LIST, T_TUPLE, T_DICT, T_CUSTOM = 6, 7, 8, 9, 10, 11
_TI = struct.Struct("<Bq")
_TF = struct.Struct("<Bd")
_TL = struct.Struct("<BI")
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
MAX_DEPTH = 100
SCALAR_TAGS = frozenset((T_NONE, T_FALSE, T_TRUE, T_INT, T_BIGINT, T_FLOAT, T_STR, T_BYTES))


def encode_value(value: Any, serializer: Serializer | None = None) -> bytes:
    """Tagged bytes for ``value`` (see docs/formats.md); TypeError for unsupported types."""
    t = type(value)
    if t is int:
        if _I64_MIN <= value <= _I64_MAX:
            return _TI.pack(T_INT, value)
    elif t is str:
        b: bytes = value.encode("utf-8", "surrogatepass")
        return _TL.pack(T_STR, len(b)) + b
    elif t is bytes:
        raw: bytes = value
        return _TL.pack(T_BYTES, len(raw)) + raw
    elif t is float:
        return _TF.pack(T_FLOAT, value)
    elif value is None:
        return b"\x00"
    elif t is bool:
        return b"\x02" if value else b"\x01"
    out: list[bytes] = []
    _encode_into(value, out, serializer, 0, set())
    return b"".join(out)


def _encode_into(value: Any, out: list[bytes], ser: Serializer | None, depth: int,
                 active: set[int]) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"value nests deeper than {MAX_DEPTH} levels")
    if value is None:
        out.append(b"\x00")
    elif value is True:
        out.append(b"\x02")
    elif value is False:
        out.append(b"\x01")
    elif isinstance(value, int):
        v = int(value)
        if _I64_MIN <= v <= _I64_MAX:
            out.append(_TI.pack(T_INT, v))
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            out.append(_TL.pack(T_BIGINT, len(raw)) + raw)
    elif isinstance(value, float):
        out.append(_TF.pack(T_FLOAT, float(value)))
    elif isinstance(value, str):
        b = str(value).encode("utf-8", "surrogatepass")
        out.append(_TL.pack(T_STR, len(b)) + b)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        out.append(_TL.pack(T_BYTES, len(b)) + b)
    elif isinstance(value, (list, tuple, dict)):
        if id(value) in active:
            raise ValueError("cannot store a value that contains itself")
        active.add(id(value))
        if isinstance(value, dict):
            out.append(_TL.pack(T_DICT, len(value)))
            for k, v in value.items():
                if isinstance(k, (list, dict)):
                    raise TypeError("dict keys must be hashable scalars or tuples")
                _encode_into(k, out, ser, depth + 1, active)
                _encode_into(v, out, ser, depth + 1, active)
        else:
            out.append(_TL.pack(T_TUPLE if isinstance(value, tuple) else T_LIST, len(value)))
            for item in value:
                _encode_into(item, out, ser, depth + 1, active)
        active.discard(id(value))
    elif ser is not None:
        b = ser.dumps(value)
        out.append(_TL.pack(T_CUSTOM, len(b)) + b)
    else:
        raise TypeError(
            f"KV cannot store a {type(value).__name__} safely; store None/bool/int/float/str/"
            "bytes or list/tuple/dict of them, or open the KV with serializer= (e.g. pickle) "
            "to store other objects")


def decode_value(data: Any, serializer: Serializer | None = None) -> Any:
    """The value encoded in ``data`` (exactly, no trailing bytes); CorruptFileError if bad."""
    buf = bytes(data)
    try:
        value, pos = _decode_at(buf, 0, serializer, 0)
    except (struct.error, ValueError, UnicodeDecodeError, IndexError, TypeError,
            OverflowError, RecursionError) as exc:
        raise CorruptFileError(f"value does not decode: {exc}") from None
    if pos != len(buf):
        raise CorruptFileError(f"value has {len(buf) - pos} trailing bytes")
    return value


def _decode_at(buf: bytes, pos: int, ser: Serializer | None, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise ValueError(f"value nests deeper than {MAX_DEPTH} levels")
    tag = buf[pos]
    if tag == T_INT:
        return _TI.unpack_from(buf, pos)[1], pos + 9
    if tag == T_NONE:
        return None, pos + 1
    if tag == T_TRUE:
        return True, pos + 1
    if tag == T_FALSE:
        return False, pos + 1
    if tag == T_FLOAT:
        return _TF.unpack_from(buf, pos)[1], pos + 9
    _, n = _TL.unpack_from(buf, pos)
    pos += 5
    if tag in (T_STR, T_BYTES, T_BIGINT, T_CUSTOM):
        end = pos + n
        if end > len(buf):
            raise ValueError("value runs past its record")
        raw = buf[pos:end]
        if tag == T_STR:
            return raw.decode("utf-8", "surrogatepass"), end
        if tag == T_BYTES:
            return raw, end
        if tag == T_BIGINT:
            return int.from_bytes(raw, "little", signed=True), end
        if ser is None:
            raise ValueError("value was stored with serializer=; open the KV with the same "
                             "serializer to read it")
        return ser.loads(raw), end
    if n > len(buf) - pos:  # every item takes at least one byte
        raise ValueError("container count runs past its record")
    if tag in (T_LIST, T_TUPLE):
        items = []
        for _ in range(n):
            item, pos = _decode_at(buf, pos, ser, depth + 1)
            items.append(item)
        return (tuple(items) if tag == T_TUPLE else items), pos
    if tag == T_DICT:
        d: dict[Any, Any] = {}
        for _ in range(n):
            k, pos = _decode_at(buf, pos, ser, depth + 1)
            v, pos = _decode_at(buf, pos, ser, depth + 1)
            d[k] = v  # an unhashable key raises TypeError: reported as corrupt
        return d, pos
    raise ValueError(f"unknown value tag {tag}")


# --- header -------------------------------------------------------------------------------


class Header(NamedTuple):
    version: int
    flags: int
    salt: int
    created_ns: int
    keycheck: bytes
    commit: int
    seq: int
    compactions: int
    crc_ok: bool

    @property
    def end(self) -> int:
        return self.commit & END_MASK

    @property
    def superseded(self) -> bool:
        return bool(self.commit & SUPERSEDED)

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)


def _header_crc(fixed: bytes) -> int:
    return zlib.crc32(fixed[16:64], zlib.crc32(fixed[:12]))


def build_header(*, flags: int, salt: int, created_ns: int, keycheck: bytes, end: int,
                 seq: int = 0, compactions: int = 0, version: int = VERSION_PLAIN) -> bytes:
    """A header; ``version`` 2 or 3 (VERSION_IMAGE, VERSION_PART) only for a file that
    holds image records, so that older readers refuse it and every other file stays
    readable by them."""
    if not VERSION_PLAIN <= version <= VERSION:
        raise ValueError(f"no KV format version {version}")
    fixed = bytearray(_FIXED.pack(MAGIC, version, flags, 0, salt, created_ns,
                                  keycheck.ljust(32, b"\0")))
    struct.pack_into("<I", fixed, 12, _header_crc(bytes(fixed)))
    tail = struct.pack("<QQII", end, seq, compactions, 0)
    return bytes(fixed) + tail + b"\0" * (HEADER_SIZE - len(fixed) - len(tail))


def parse_header(data: Any, *, path: str | None = None) -> Header:
    """Decode the 128-byte header; Foreign/FormatVersion/CorruptFileError when it is not ours.

    A fixed part that fails its CRC is still returned (``crc_ok=False``) when magic and
    version are intact, so the records behind it can be salvaged.
    """
    raw = bytes(data[:HEADER_SIZE])
    if len(raw) < HEADER_SIZE:
        if raw[:8] != MAGIC[: len(raw[:8])]:
            raise ForeignFileError(f"{path} is not a mmapkit KV file (wrong magic)", path=path)
        raise CorruptFileError(
            f"{path} is only {len(raw)} bytes, shorter than the {HEADER_SIZE}-byte KV header; "
            "it was truncated and nothing in it can be salvaged", path=path, offset=len(raw))
    magic, version, flags, crc, salt, created, keycheck = _FIXED.unpack_from(raw, 0)
    if magic != MAGIC:
        raise ForeignFileError(f"{path} is not a mmapkit KV file (wrong magic {magic!r}); "
                               "check the path", path=path)
    if not VERSION_PLAIN <= version <= VERSION:
        raise FormatVersionError(
            f"{path} uses KV format version {version}; this mmapkit reads versions "
            f"{VERSION_PLAIN} to {VERSION}. "
            "Upgrade mmapkit to open it", path=path, found=version, supported=VERSION)
    commit, seq, compactions, _waiters = struct.unpack_from("<QQII", raw, OFF_COMMIT)
    return Header(version, flags, salt, created, keycheck, commit, seq, compactions,
                  crc == _header_crc(raw[:64]))


# --- JSON export --------------------------------------------------------------------------


def to_json_value(value: Any) -> Any:
    """A JSON-able form of a KV value that :func:`from_json_value` turns back exactly."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    # math and base64 are imported here, for exports only: opening a KV need not load them
    if isinstance(value, float):
        import math

        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, bytes):
        import base64

        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return {"$tuple": [to_json_value(v) for v in value]}
    if isinstance(value, list):
        return [to_json_value(v) for v in value]
    if isinstance(value, dict):
        if all(type(k) is str and not k.startswith("$") for k in value):
            return {k: to_json_value(v) for k, v in value.items()}
        return {"$dict": [[to_json_value(k), to_json_value(v)] for k, v in value.items()]}
    raise TypeError(f"{type(value).__name__} values cannot be exported to JSON")


def from_json_value(obj: Any) -> Any:
    if isinstance(obj, list):
        return [from_json_value(v) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            ((tag, inner),) = obj.items()
            if tag == "$bytes":
                import base64

                return base64.b64decode(inner)
            if tag == "$tuple":
                return tuple(from_json_value(v) for v in inner)
            if tag == "$float":
                return float(inner)
            if tag == "$dict":
                return {_hashable(from_json_value(k)): from_json_value(v) for k, v in inner}
        return {k: from_json_value(v) for k, v in obj.items()}
    return obj


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        raise ValueError("a dict key in the JSON export is not hashable")
    return value
