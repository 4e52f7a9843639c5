"""Journal on-disk format: pure codecs over bytes-like objects (no I/O, no state).

Everything is little-endian; docs/formats.md ("Journal") describes the same bytes.

- ``journal.meta`` (one page, mapped by every handle): magic, version, settings, the
  *active base* (base offset of the newest published segment), the *start offset* (lowest
  offset retention kept), the notify word (futex), the waiters word, the boot stamp and the
  recovery point (the last position known to be on the storage device).
- ``<20-digit base>.log``: a 64-byte header whose *commit word* W publishes the segment's
  end (high 32 bits: records in the segment; low 32 bits: end position in bytes), then
  batches.
- A batch: 40-byte header (crc32, length, first offset, count, version, flags, first and
  max timestamp) and its records; the CRC covers everything from the record count on (the
  first offset is assigned under the writer lock, as in Kafka; readers check it by
  continuity).
- A record: ``<qiiI`` (timestamp_ms, key length or -1 for None, value length, headers
  length), then key, value, headers (``<H`` name length, UTF-8 name, ``<I`` value length,
  value; repeated).
- ``.index`` / ``.timeindex``: 24-byte header, then sparse entries (``<II`` relative offset
  and position; ``<qI`` timestamp and relative offset); never checksummed: validated
  against the log on use and rebuilt when they disagree.
"""

from __future__ import annotations

import functools
import mmap
import struct
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress, repeat, starmap
from itertools import count as _naturals
from operator import ne
from typing import Any, NamedTuple

from .._crc import crc32 as _checker

__all__ = [
    "BATCH_HEAD",
    "BATCH_HEADER",
    "META_SIZE",
    "SEGMENT_HEADER",
    "BatchError",
    "BatchInfo",
    "Record",
    "batch_prefix",
    "bell_name",
    "check_batches",
    "decode_batch",
    "decode_records",
    "encode_batch",
    "encode_batch_tail",
    "encode_one_tail",
    "encode_values_tail",
    "read_batch_header",
    "segment_name",
    "set_first_offset",
]

# zlib's CRC-32, or ISA-L's (the isal extra: the same values, 4-7x faster on a record or a
# batch; mmapkit._crc)
crc32 = _checker()

VERSION = 1

# --- meta page -------------------------------------------------------------------------
META_MAGIC = b"MMKJMETA"
META_SIZE = 4096
META = struct.Struct("<8sHHIqqqqqI4x")  # magic, version, flags, size, created_ms,
#                                         segment_bytes, segment_ms, retention_ms,
#                                         retention_bytes, index_interval
OFF_SEGMENT_BYTES = 24
OFF_SEGMENT_MS = 32
OFF_RETENTION_MS = 40
OFF_RETENTION_BYTES = 48
OFF_INDEX_INTERVAL = 56
OFF_ACTIVE = 64      # u64: base offset of the newest published segment
OFF_START = 72       # u64: lowest offset retention kept
OFF_NOTIFY = 80      # u32: bumped after every publish (futex word)
OFF_WAITERS = 84     # u32: set by a follower before it sleeps; cleared by the waker
OFF_BOOT = 88        # 16 bytes: boot id of the machine that last opened for writing
OFF_RECOVERY = 104   # u64 segment base, u64 commit word: known on the storage device
OFF_DELETE_DELAY = 120  # i64 ms: how long retention keeps renamed (.deleted) files
OFF_BELLS = 128      # u32: how many bell slots are in use (0: appends ring nothing)
OFF_LOCK_WANT = 132  # u32: non-zero while some process waits for the writer lock
OFF_LOCK_SEQ = 136   # u32: bumped by a writer that hands the lock over (futex word)
OFF_LOCK_READY = 140  # u32: non-zero while a woken waiter is awake and trying for the lock
OFF_BELL_SLOTS = 256  # BELL_SLOTS u64 slots: (pid << 32) | token of a reader's doorbell FIFO
BELL_SLOTS = 64
NONE_I64 = -1        # "unlimited" for retention_ms / retention_bytes

# --- segment ---------------------------------------------------------------------------
SEG_MAGIC = b"MMKJSEG\0"
SEGMENT_HEADER = 64
SEG_HEAD = struct.Struct("<8sHHIQ")  # magic, version, flags, header size, base offset
OFF_COMMIT = 24      # u64 commit word: (records << 32) | end position
OFF_SEG_CREATED = 32  # i64 ms
OFF_SEG_CRC = 40     # u32 crc32 of bytes [0, 24) + [32, 40)
POS_MASK = 0x7FFFFFFF
MAX_SEGMENT_BYTES = POS_MASK
MAX_RECORDS_PER_SEGMENT = 0xFFFFFFFF

# --- batch and record ------------------------------------------------------------------
BATCH = struct.Struct("<IIQIBBHqq")  # crc, length, first offset, count, version, flags,
#                                      reserved, first timestamp, max timestamp
BATCH_HEADER = BATCH.size  # 40
# The fields a walk over batches needs (crc, length, first offset, count, version): the
# head of BATCH, for the loops that check many batches without building a BatchInfo.
BATCH_HEAD = struct.Struct(BATCH.format[:6])
assert BATCH_HEAD.format == "<IIQIB" and BATCH.format.startswith(BATCH_HEAD.format)
CRC_FROM = 16  # the CRC covers [16, length): not the crc, length or first offset fields
BATCH_VERSION = 1
REC = struct.Struct("<qiiI")  # timestamp_ms, key length (-1: None), value length, headers len
HNAME = struct.Struct("<H")
HVAL = struct.Struct("<I")

# --- indexes ---------------------------------------------------------------------------
IDX_MAGIC = b"MMKJIDX\0"
TIDX_MAGIC = b"MMKJTIX\0"
INDEX_HEADER = 24
IDX_HEAD = struct.Struct("<8sHH4xQ")  # magic, version, entry size, (reserved), base offset
IDX_ENTRY = struct.Struct("<II")    # relative offset, position (0: empty slot)
TIDX_ENTRY = struct.Struct("<qI")   # max timestamp before the batch, relative offset (+1)

_U64 = struct.Struct("<Q")


class Record(NamedTuple):
    """One journal record as a reader sees it."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


class BatchInfo(NamedTuple):
    """A verified batch header: where it is and what it holds."""

    first_offset: int
    records: int
    length: int
    first_timestamp: int
    max_timestamp: int


class BatchError(Exception):
    """Internal: the bytes at a position are not a whole, valid batch (``why`` says how)."""


Headers = Sequence[tuple[str, bytes]]


def bell_name(slot: int) -> str:
    """The doorbell FIFO of the reader registered as ``slot`` ((pid << 32) | token)."""
    return f"journal.bell-{slot >> 32}-{slot & 0xFFFFFFFF:08x}"


def segment_name(base: int) -> str:
    return f"{base:020d}.log"


def pack_commit(records: int, pos: int) -> int:
    return (records << 32) | pos


def unpack_commit(word: int) -> tuple[int, int]:
    return word >> 32, word & 0xFFFFFFFF


def encode_meta(*, created_ms: int, segment_bytes: int, segment_ms: int, retention_ms: int,
                retention_bytes: int, index_interval: int, delete_delay_ms: int) -> bytes:
    buf = bytearray(META_SIZE)
    META.pack_into(buf, 0, META_MAGIC, VERSION, 0, META_SIZE, created_ms, segment_bytes,
                   segment_ms, retention_ms, retention_bytes, index_interval)
    struct.pack_into("<q", buf, OFF_DELETE_DELAY, delete_delay_ms)
    return bytes(buf)


def encode_segment_header(base: int, created_ms: int) -> bytes:
    buf = bytearray(SEGMENT_HEADER)
    SEG_HEAD.pack_into(buf, 0, SEG_MAGIC, VERSION, 0, SEGMENT_HEADER, base)
    _U64.pack_into(buf, OFF_COMMIT, pack_commit(0, SEGMENT_HEADER))
    struct.pack_into("<q", buf, OFF_SEG_CREATED, created_ms)
    struct.pack_into("<I", buf, OFF_SEG_CRC, segment_header_crc(buf))
    return bytes(buf)


def segment_header_crc(buf: bytes | bytearray | memoryview) -> int:
    return crc32(bytes(buf[OFF_COMMIT + 8 : OFF_SEG_CRC]), crc32(bytes(buf[:OFF_COMMIT])))


def encode_index_header(magic: bytes, entry_size: int, base: int) -> bytes:
    return IDX_HEAD.pack(magic, VERSION, entry_size, base)


def encode_batch_tail(records: Iterable[tuple[int, bytes | None, bytes, Headers | None]]
                      ) -> tuple[bytes, int, int, int, int]:
    """A batch of ``(timestamp_ms, key, value, headers)`` without its first 16 bytes (crc,
    length, first offset: the writer adds them under its lock, see :func:`batch_prefix`):
    ``(tail, crc, count, first timestamp, max timestamp)``.  The CRC covers the tail."""
    parts: list[bytes] = [b""]
    count = 0
    first_ts = max_ts = 0
    rec_pack = REC.pack
    append = parts.append
    for ts, key, value, headers in records:
        if count == 0:
            first_ts = max_ts = ts
        elif ts > max_ts:
            max_ts = ts
        count += 1
        if headers:
            hparts = []
            for name, hv in headers:
                nb = name.encode()
                hparts.append(HNAME.pack(len(nb)))
                hparts.append(nb)
                hparts.append(HVAL.pack(len(hv)))
                hparts.append(bytes(hv))
            hblob = b"".join(hparts)
            if key is None:
                append(rec_pack(ts, -1, len(value), len(hblob)))
            else:
                append(rec_pack(ts, len(key), len(value), len(hblob)))
                append(key)
            append(value)
            append(hblob)
        elif key is None:
            append(rec_pack(ts, -1, len(value), 0))
            append(value)
        else:
            append(rec_pack(ts, len(key), len(value), 0))
            append(key)
            append(value)
    parts[0] = _BODY_HEAD.pack(count, BATCH_VERSION, 0, 0, first_ts, max_ts)
    tail = b"".join(parts)
    return tail, crc32(tail), count, first_ts, max_ts


def encode_values_tail(ts: int, values: Sequence[bytes]) -> tuple[bytes, int]:
    """encode_batch_tail of plain values (no key, no headers, one timestamp): the
    append_many fast path; a record header is packed once per distinct value length."""
    heads: dict[int, bytes] = {}
    pack = REC.pack
    parts: list[bytes] = [_BODY_HEAD.pack(len(values), BATCH_VERSION, 0, 0, ts, ts)]
    add = parts.append
    for v in values:
        n = len(v)
        h = heads.get(n)
        if h is None:
            h = heads[n] = pack(ts, -1, n, 0)
        add(h)
        add(v)
    tail = b"".join(parts)
    return tail, crc32(tail)


_BODY_HEAD = struct.Struct("<IBBHqq")  # a batch header from byte 16 (count ... max ts)
_ONE_TAIL = struct.Struct("<IBBHqqqiiI")  # that, then one record's fixed fields
PREFIX = struct.Struct("<IIQ")  # crc, length, first offset: the batch's first 16 bytes
ONE_TAIL = _ONE_TAIL


def encode_one_tail(ts: int, key: bytes | None, value: bytes) -> tuple[bytes, int]:
    """The tail (see encode_batch_tail) of a one-record batch without headers, and its
    CRC: the common append, built with one pack."""
    if key is None:
        tail = _ONE_TAIL.pack(1, BATCH_VERSION, 0, 0, ts, ts, ts, -1, len(value), 0) + value
    else:
        tail = _ONE_TAIL.pack(1, BATCH_VERSION, 0, 0, ts, ts, ts, len(key), len(value),
                              0) + key + value
    return tail, crc32(tail)


def batch_prefix(crc: int, tail_len: int, first_offset: int) -> bytes:
    """The first 16 bytes of a batch (outside the CRC, as in Kafka: the writer assigns
    the offsets under its lock without checksumming again)."""
    return PREFIX.pack(crc, CRC_FROM + tail_len, first_offset)


def encode_batch(first_offset: int,
                 records: Iterable[tuple[int, bytes | None, bytes, Headers | None]]) -> bytes:
    """One batch of ``(timestamp_ms, key, value, headers)`` starting at ``first_offset``."""
    tail, crc, _, _, _ = encode_batch_tail(records)
    return batch_prefix(crc, len(tail), first_offset) + tail


def encode_one(ts: int, key: bytes | None, value: bytes) -> bytearray:
    """The batch of one record without headers: same bytes as
    ``encode_batch(0, [(ts, key, value, None)])``."""
    tail, crc = encode_one_tail(ts, key, value)
    return bytearray(batch_prefix(crc, len(tail), 0) + tail)


def set_first_offset(batch: bytearray, first_offset: int) -> None:
    """Give an encoded batch its offsets (outside the CRC)."""
    _U64.pack_into(batch, 8, first_offset)


def read_batch_header(view: memoryview | bytes, pos: int, limit: int, *,
                      verify: bool = True) -> BatchInfo:
    """The batch at ``pos`` (which must end at or before ``limit``); BatchError if it is
    not a whole, valid batch.  ``verify`` checks the CRC (the rest is always checked)."""
    if pos + BATCH_HEADER > limit:
        raise BatchError(f"a batch header at {pos} runs past the end ({limit})")
    crc, length, first, count, version, _flags, _res, first_ts, max_ts = BATCH.unpack_from(
        view, pos)
    if length < BATCH_HEADER or pos + length > limit:
        raise BatchError(f"the batch at {pos} claims {length} bytes (end {limit})")
    if version != BATCH_VERSION:
        raise BatchError(f"the batch at {pos} has version {version} (expected "
                         f"{BATCH_VERSION})")
    if count == 0:
        raise BatchError(f"the batch at {pos} holds no records")
    if verify and crc32(view[pos + CRC_FROM : pos + length]) != crc:
        raise BatchError(f"the batch at {pos} fails its checksum")
    # (tuple.__new__: a NamedTuple's own __new__ is a Python call, once per batch read)
    return _new_tuple(BatchInfo, (first, count, length, first_ts, max_ts))


def check_batches(view: memoryview | bytes, pos: int, got: int, limit: int, first: int
                  ) -> tuple[int, int, BatchError | None]:
    """Check the batches from ``pos`` one after another, the first at offset ``first``
    and each at the offset after the one before: whole within ``limit``, valid, CRC
    right (read_batch_header's checks, with no BatchInfo per batch: the walks over many
    batches -- a fetch reply, the bytes since the last sync -- run at its pace).  Only
    bytes before ``got`` are read: a batch running past it but not past ``limit`` ends
    the walk (a reply still arriving).  Returns (the position after the last batch that
    checked out, the offset after it, the BatchError of the first that did not, or None).

    A batch followed by batches of its own length and record count (what one writer's
    appends of equal-sized values, or append_many of equal-sized runs, leave) is checked
    a run at a time by :func:`_check_run`: the same checks, each over the whole run in C
    loops, so a run of one-record batches costs about one CRC call each and no Python
    step.  A run's length is guessed from a few heads first (_run_length), so a batch
    of another shape after it costs a few unpacks, not a run's worth.
    """
    p, nxt = pos, first
    unpack, check = BATCH_HEAD.unpack_from, crc32  # (locals: one step per batch)
    head, crc_from, version_ok = BATCH_HEADER, CRC_FROM, BATCH_VERSION
    hint = 0
    try:
        while p < got:
            if p + head > got:
                if p + head > limit:
                    read_batch_header(view, p, limit)  # (raises: says what is wrong)
                break
            crc, length, boff, count, version = unpack(view, p)
            if length < head or p + length > limit or version != version_ok or not count:
                read_batch_header(view, p, limit, verify=False)  # (raises, as above)
            if boff != nxt:
                raise BatchError(f"the batch at {p} has offset {boff}, expected {nxt}")
            if p + length > got:
                break  # (the rest of it is on its way)
            if check(view[p + crc_from : p + length]) != crc:
                raise BatchError(f"the batch at {p} fails its checksum")
            nxt += count
            p += length
            k = min((got - p) // length, _RUN_MAX)
            if k >= _RUN_MIN:
                k = _run_length(view, p, k, length, count, nxt, hint)
                if k >= _RUN_MIN:
                    hint = k
                    m = _check_run(view, p, k, length, count, nxt)
                    p += m * length
                    nxt += m * count
    except BatchError as exc:
        return p, nxt, exc
    return p, nxt, None


_RUN_MIN = 4      # batches of one shape after a batch before a run is tried
_RUN_MAX = 4096   # bounds the tuples a run unpacks


def _run_length(view: memoryview | bytes, p: int, k: int, length: int, count: int,
                first: int, hint: int) -> int:
    """How many of the ``k`` places ``p``, ``p + length``, ... seem to hold the batches
    of a run of that shape (see _check_run): the largest ``j`` whose ``j``-th place has
    a head with that length and offset ``first + (j - 1) * count``, found from the
    second place, then ``hint`` (the length of the run before: a writer's runs tend to
    repeat) or the last place, then by bisection (a few unpacks, no bytes walked).  Only
    a guess: _check_run checks every batch of it."""
    unpack = BATCH_HEAD.unpack_from

    def fits(j: int) -> bool:
        _, n, boff, _, _ = unpack(view, p + (j - 1) * length)
        return bool(n == length and boff == first + (j - 1) * count)

    if not fits(2):
        return 1 if fits(1) else 0
    lo, hi = 2, k  # fits(lo); not fits(hi) unless hi == k
    if 2 < hint < k:
        if fits(hint):
            if not fits(hint + 1):
                return hint
            lo = hint + 1
        else:
            hi = hint
    if hi == k and fits(k):
        return k
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _check_run(view: memoryview | bytes, p: int, k: int, length: int, count: int,
               first: int) -> int:
    """How many of the ``k`` batches from ``p`` (whose bytes are all there) are, one after
    another, ``length`` bytes of ``count`` records each, at offsets ``first``,
    ``first + count``, ..., of this version, with the right CRC: check_batches's checks,
    each a C loop over the whole run (one unpack of every batch, a count or a comparison
    per field, one map of the CRC over the batches).  The batch after them (if any) is
    left to the caller's one-batch step, which says what is wrong with it."""
    end = p + k * length
    want = range(first, first + k * count, count)
    if length <= _SMALL_BATCH:
        # each batch as (crc, length, first offset, count, version, the rest of the bytes
        # its CRC covers), 5 ints and a bytes, flat in one tuple per _GROUP batches; the
        # CRC of a run's batch is that of its rest from the CRC of the count and version
        # all of them share
        fmt = f"IIQIB{length - 21}s"
        flat: tuple[Any, ...] = ()
        at, left = p, k
        while left:  # (groups of a power of two: a few formats per length, each compiled
            #          once and kept by struct's cache, whatever lengths the runs have)
            g = min(_GROUP, 1 << (left.bit_length() - 1))
            flat += struct.unpack_from("<" + fmt * g, view, at)
            at += g * length
            left -= g
        crcs, lengths, offsets = flat[0::6], flat[1::6], flat[2::6]
        counts, versions, rests = flat[3::6], flat[4::6], flat[5::6]
        agree = _agreeing(k, length, count, want, lengths, counts, versions, offsets)
        if agree != k:
            k = agree
            crcs, rests = crcs[:k], rests[:k]
        sums = tuple(map(crc32, rests, repeat(crc32(_COUNT_VERSION(count, BATCH_VERSION)))))
    else:  # (bytes of larger batches would be a copy each: slices of the view instead)
        crcs, lengths, offsets, counts, versions = zip(
            *struct.iter_unpack(f"<IIQIB{length - 21}x", view[p:end]), strict=True)
        agree = _agreeing(k, length, count, want, lengths, counts, versions, offsets)
        if agree != k:
            k = agree
            crcs = crcs[:k]
            end = p + k * length
        sums = tuple(map(crc32, map(view[p:end].__getitem__, _run_slices(k, length))))
    if sums != crcs:
        k = _first_differing(sums, crcs, k)
    return k


@functools.lru_cache(maxsize=16)
def _run_slices(k: int, length: int) -> tuple[slice, ...]:
    """What each CRC covers in a run of ``k`` batches of ``length`` bytes, from the run's
    start: made once per shape (a fetch's chunks repeat a few), not once per batch (a
    fifth of a large batch's check, measured)."""
    return tuple(map(slice, range(CRC_FROM, k * length, length),
                     range(length, k * length + 1, length)))


_SMALL_BATCH = 1024  # batches up to this size are unpacked as bytes in a run
_GROUP = 64  # most batches per unpack
_COUNT_VERSION = struct.Struct("<IB").pack  # a batch's bytes from CRC_FROM: count, version


def _agreeing(k: int, length: int, count: int, want: Iterable[int],
              lengths: tuple[int, ...], counts: tuple[int, ...], versions: tuple[int, ...],
              offsets: tuple[int, ...]) -> int:
    """How many of a run's ``k`` batches, from its first, have its length, record count,
    format version and the offsets ``want`` (counted in C; one pass each)."""
    want = tuple(want)
    if (lengths.count(length) == k and counts.count(count) == k
            and versions.count(BATCH_VERSION) == k and offsets == want):
        return k
    return min(_first_differing(lengths, repeat(length), k),
               _first_differing(counts, repeat(count), k),
               _first_differing(versions, repeat(BATCH_VERSION), k),
               _first_differing(offsets, want, k))


def _first_differing(a: Iterable[object], b: Iterable[object], n: int) -> int:
    """The index of the first place where ``a`` and ``b`` differ (``n`` if none), in C."""
    return next(compress(_naturals(), map(ne, a, b)), n)


def decode_batch(view: memoryview | bytes, pos: int, info: BatchInfo) -> Iterator[Record]:
    """The records of a verified batch (see read_batch_header)."""
    buf: bytes | mmap.mmap = view if isinstance(view, (bytes, mmap.mmap)) else bytes(
        view[pos : pos + info.length])
    yield from decode_records(buf, pos if buf is view else 0, info)


_new_tuple = tuple.__new__
# compiled layouts of runs of uniform records: (value length, records, with the fixed
# fields?, bytes skipped before each) -> Struct (a bounded cache of immutable parsers, as
# struct keeps its own)
_RUNS: dict[tuple[int, int, bool, int], struct.Struct] = {}
_RUN = 256  # records per compiled run (a longer batch is unpacked run by run)
_I32 = struct.Struct("<i").pack
_NO_KEY = _I32(-1)
_NO_HEADERS = _I32(0)
_KEY_AND_VALUE = struct.Struct("<ii").pack  # a record's key and value lengths: one word


def _run(vlen: int, n: int, fixed: bool, skip: int = 0) -> struct.Struct:
    """The Struct that unpacks ``n`` uniform records of ``vlen``-byte values in one call:
    the values alone (``20x{vlen}s`` each), or each record's timestamp, its other fixed
    fields as 12 raw bytes, and its value (``q12s{vlen}s``), each after ``skip`` bytes (a
    one-record batch's header: ``40xq12s{vlen}s``)."""
    key = (vlen, n, fixed, skip)
    s = _RUNS.get(key)
    if s is None:
        if len(_RUNS) >= 64:
            _RUNS.clear()
        one = f"q12s{vlen}s" if fixed else f"20x{vlen}s"
        s = _RUNS[key] = struct.Struct("<" + (f"{skip}x{one}" if skip else one) * n)
    return s


def _unpack_runs(buf: bytes | mmap.mmap, p: int, count: int, stride: int, vlen: int,
                 fixed: bool) -> tuple[bytes | int, ...]:
    """What :func:`_run` unpacks, for ``count`` uniform records at ``p`` in ``buf``
    (unpacked in place: no copy of the batch first): one call per 256 records, no tuple
    per record."""
    if count <= _RUN:
        return _run(vlen, count, fixed).unpack_from(buf, p)
    out: list[bytes | int] = []
    full = _run(vlen, _RUN, fixed).unpack_from
    step = _RUN * stride
    for _ in range(count // _RUN):
        out += full(buf, p)
        p += step
    if count % _RUN:
        out += _run(vlen, count % _RUN, fixed).unpack_from(buf, p)
    return tuple(out)


def _uniform_words(vlen: int, count: int) -> tuple[bytes, bytes]:
    """What a uniform batch's strided words read as bytes: every record's key and value
    lengths (one word), every record's headers length (made once per shape: a bounded
    cache of immutable bytes, as _RUNS)."""
    key = (vlen, count)
    got = _WORDS.get(key)
    if got is None:
        if len(_WORDS) >= 64:
            _WORDS.clear()
        got = _WORDS[key] = (_KEY_AND_VALUE(-1, vlen) * count, _NO_HEADERS * count)
    return got


_WORDS: dict[tuple[int, int], tuple[bytes, bytes]] = {}


def _decode_uniform(buf: bytes | mmap.mmap, pos: int, info: BatchInfo) -> list[Record] | None:
    """decode_records of a batch whose records all have the same value length, no key
    and no headers (what append_many of equal-sized values writes), with C loops only:
    the values of up to 256 records come from one precompiled unpack (no tuple per
    record), the Records from one map.  When a record's size is a multiple of 8
    (100-byte values: 120), every record's fixed fields are checked as strided slices of
    one word view (compared as bytes: no int object per record) and the timestamps read
    from one (one int shared when the batch has one timestamp, as append_many writes);
    otherwise the unpack returns each record's timestamp and fixed bytes as well.  None
    when the batch is not laid out so."""
    count = info.records
    _, klen, vlen, hlen = REC.unpack_from(buf, pos + BATCH_HEADER)
    stride = 20 + vlen
    if klen != -1 or hlen or vlen < 0 or info.length != BATCH_HEADER + count * stride:
        return None
    start = pos + BATCH_HEADER
    first = info.first_offset
    ts: Iterable[int]
    values: Iterable[bytes | int]
    if not stride & 7:
        # (a view of the records in place, not a copy of them; released before return)
        with memoryview(buf) as whole, whole[start : pos + info.length] as mv, \
                mv.cast("i") as words, mv.cast("q") as quads:
            k = stride >> 3
            lengths, no_headers = _uniform_words(vlen, count)
            # key and value length as one word, the headers' length as another
            if quads[1::k].tobytes() != lengths or words[4 :: k << 1].tobytes() != no_headers:
                return None
            tsv = quads[::k]
            raw = tsv.tobytes()
            ts = repeat(tsv[0], count) if raw == raw[:8] * count else tsv.tolist()
        values = _unpack_runs(buf, start, count, stride, vlen, False)
    else:
        fields = _unpack_runs(buf, start, count, stride, vlen, True)
        if fields[1::3].count(_NO_KEY + _I32(vlen) + _NO_HEADERS) != count:
            return None
        ts, values = fields[0::3], fields[2::3]  # type: ignore[assignment]
    # starmap calls tuple.__new__(Record, fields) with the argument tuple zip made (and
    # reuses): map would pack a new one per record, a partial in front costs a third more
    return list(starmap(_new_tuple, zip(repeat(Record), zip(  # noqa: RUF058
        range(first, first + count), ts, repeat(None), values, repeat(())))))


# a one-record batch's 60 fixed bytes (PREFIX + ONE_TAIL), without the fields decode_one
# does not look at (flags, attributes, the batch's first and newest timestamps)
_ONE = struct.Struct("<IIQIB3x16xqiiI")
_ONE_FIXED = _ONE.size
assert PREFIX.size + ONE_TAIL.size == _ONE_FIXED


def decode_one(buf: mmap.mmap | bytes, pos: int, end: int, offset: int) -> Record | None:
    """The record when the bytes [pos, end) are exactly one whole, valid batch of one
    record at ``offset`` without key or headers (what a plain append writes: the new
    bytes a follower finds); None for anything else (the caller reads them the general
    way, which also reports damage)."""
    if end - pos < _ONE_FIXED:
        return None
    crc, length, first, count, version, ts, klen, vlen, hlen = _ONE.unpack_from(buf, pos)
    if length != end - pos or first != offset or count != 1 or klen != -1 or hlen or \
            vlen != length - _ONE_FIXED or version != BATCH_VERSION or \
            crc32(buf[pos + CRC_FROM : end]) != crc:
        return None
    return _new_tuple(Record, (offset, ts, None, buf[pos + _ONE_FIXED : end], ()))


def decode_one_run(buf: bytes | mmap.mmap, view: memoryview | bytes, pos: int, limit: int,
                   info: BatchInfo) -> tuple[list[Record], int] | None:
    """The records of the run of plain one-record batches (no key, no headers, one value
    length: what a writer's appends leave) from ``pos``, whose first batch ``info`` was
    verified, up to ``limit``: ``(records, bytes they take)``.  None when the batch at
    ``pos`` is not a plain one-record batch followed by at least _RUN_MIN - 1 batches of
    its length (the caller decodes it alone).

    Each batch of the run is checked as check_batches checks it (length, count, offset,
    version, CRC: _check_run, a C loop per check), then its record's fixed fields against
    a plain record's; the timestamps, fixed fields and values come from one precompiled
    unpack per window.  Windows double from _RUN_MIN (powers of two up to 256: a few
    Structs per value length), and the run ends at the first batch that fails either
    check, so the work past the records returned is at most one window: batches of
    another kind between the plain ones (another producer's keyed appends of the same
    length) cost no rework."""
    length = info.length
    if info.records != 1 or length < _ONE_FIXED:
        return None
    vlen = length - _ONE_FIXED
    _, klen, rlen, hlen = REC.unpack_from(buf, pos + BATCH_HEADER)
    if klen != -1 or hlen or rlen != vlen:
        return None
    k = min((limit - pos) // length, _RUN_MAX)
    if k < _RUN_MIN:
        return None
    first = info.first_offset
    k = _run_length(view, pos, k, length, 1, first, 0)
    if k < _RUN_MIN:
        return None
    plain = _NO_KEY + _I32(vlen) + _NO_HEADERS
    fields: list[bytes | int] = []
    done, g = 0, _RUN_MIN
    while done < k:
        g = min(g, _RUN, 1 << ((k - done).bit_length() - 1))
        at = pos + done * length
        ok = _check_run(view, at, g, length, 1, first + done)
        got = _run(vlen, g, True, BATCH_HEADER).unpack_from(buf, at)
        fixed = got[1::3]
        if fixed.count(plain) != g:
            ok = min(ok, _first_differing(fixed, repeat(plain), g))
        fields += got[: 3 * ok] if ok < g else got
        done += ok
        if ok < g:
            break
        g <<= 1
    if not done:
        return None
    return list(starmap(_new_tuple, zip(repeat(Record), zip(  # noqa: RUF058
        range(first, first + done), fields[0::3], repeat(None), fields[2::3], repeat(()))))
        ), done * length


def decode_records(buf: bytes | mmap.mmap, pos: int, info: BatchInfo) -> list[Record]:
    """The records of a verified batch at ``pos`` of ``buf`` (bytes, or a mapping: its
    slices are bytes, made in one step).  BatchError if the records do not fill the batch
    exactly."""
    if info.records > 4 and info.length >= BATCH_HEADER + 20:
        fast = _decode_uniform(buf, pos, info)
        if fast is not None:
            return fast
    return _decode_general(buf, pos, info)


def _decode_general(buf: bytes | mmap.mmap, pos: int, info: BatchInfo) -> list[Record]:
    end = pos + info.length
    p = pos + BATCH_HEADER
    first = info.first_offset
    out: list[Record] = []
    add = out.append
    unpack = REC.unpack_from
    new = _new_tuple
    for offset in range(first, first + info.records):
        if p + 20 > end:
            raise BatchError(f"record {offset} runs past its batch")
        ts, klen, vlen, hlen = unpack(buf, p)
        p += 20
        if klen < 0:
            key = None
        else:
            key = buf[p : p + klen]
            p += klen
        value = buf[p : p + vlen]
        p += vlen
        if p + hlen > end or vlen < 0 or klen < -1:
            raise BatchError(f"record {offset} runs past its batch")
        if hlen:
            headers = _decode_headers(buf, p, p + hlen, offset)
            p += hlen
        else:
            headers = ()
        add(new(Record, (offset, ts, key, value, headers)))
    if p != end:
        raise BatchError(f"the batch at {pos} has {end - p} bytes after its last record")
    return out


def _decode_headers(buf: bytes | mmap.mmap, p: int, hend: int,
                    offset: int) -> tuple[tuple[str, bytes], ...]:
    hl = []
    while p < hend:
        if p + 2 > hend:
            raise BatchError(f"the headers of record {offset} are cut")
        (n,) = HNAME.unpack_from(buf, p)
        p += 2
        name = buf[p : p + n].decode("utf-8", "replace")
        p += n
        if p + 4 > hend:
            raise BatchError(f"the headers of record {offset} are cut")
        (m,) = HVAL.unpack_from(buf, p)
        p += 4
        hl.append((name, buf[p : p + m]))
        p += m
    if p != hend:
        raise BatchError(f"the headers of record {offset} run past their length")
    return tuple(hl)
