"""Byte formats of the log: records, the buffer file header, log-file frames.

Design rules:

- Pure functions over bytes-like objects (h11 style): nothing here opens, maps or locks a
  file.  The buffer and the writer are thin wrappers that call these.
- One record encoding everywhere: the bytes a caller frames into the mapped buffer are,
  unchanged, the bytes a frame of the log file carries (compressed in batches).  The flush
  thread therefore never re-encodes a record; it only finds record boundaries.
- A record is committed by its ``size`` word, stored last as one aligned 4-byte store: a
  process killed mid-record leaves ``size == 0`` and the record does not exist.  The CRC
  catches everything else (flipped bytes, torn stores of a dying OS).
- Decoders never raise ``struct.error`` or ``IndexError``: garbage yields what is still
  valid plus :class:`Damage` reports, or one of our ``FileFormatError`` subclasses.
- All integers little-endian.  Layouts are documented byte by byte in docs/formats.md.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import CorruptFileError, ForeignFileError, FormatVersionError

__all__ = [
    "BUF_HEADER",
    "BUF_MAGIC",
    "BUF_STREAM_AT",
    "COMPRESS_NONE",
    "COMPRESS_ZLIB",
    "COMPRESS_ZSTD",
    "FRAME_HEADER",
    "FRAME_MAGIC",
    "HEAD_OFFSET",
    "HEAD_SEQ_OFFSET",
    "PAD_BIT",
    "RECORD_HEADER",
    "REC_BODY",
    "REC_CRC_AT",
    "REC_REST",
    "REC_REST_AT",
    "REC_SIZE_AT",
    "Damage",
    "Frame",
    "Record",
    "Transform",
    "align8",
    "all_zero",
    "blank_buffer",
    "buffer_size_problem",
    "decode_buffer_header",
    "decode_frames",
    "decode_record",
    "encode_buffer_header",
    "encode_chunk",
    "encode_frame",
    "encode_record",
    "find_records",
    "incomplete_at",
    "iter_records",
    "open_frame",
    "plausible_head",
    "record_of",
    "scan_ring",
]

VERSION = 1

# --- records -------------------------------------------------------------------------
# 0 u32 size (header + message, unpadded; the next record starts at align8(size))
# 4 u32 crc32 of bytes [8, size)
# 8 u64 sequence   16 u64 time (microseconds since the epoch)   24 u32 pid
# 28 u16 level     30 u16 flags (0; reserved)                     32 message (UTF-8)
RECORD_HEADER = 32
REC_SIZE_AT, REC_CRC_AT, REC_REST_AT = 0, 4, 8  # the crc covers [REC_REST_AT, size)
REC_REST = struct.Struct("<QQIHH")   # the 24 bytes at offset 8
REC_BODY = struct.Struct("<IQQIHH")  # crc and the rest: the 28 bytes at offset 4
REC_FULL = struct.Struct("<IIQQIHH")
_U32 = struct.Struct("<I")
PAD_BIT = 0x8000_0000  # size word with this bit: skip to the end of the buffer's data area
MAX_RECORD = 0x7FFF_FFFF


def align8(n: int) -> int:
    return (n + 7) & ~7


@dataclass(frozen=True, slots=True)
class Record:
    """One log record as read back: ``time`` in seconds since the epoch (float)."""

    time: float
    pid: int
    level: int
    message: str
    sequence: int
    stream: int = 0

    @property
    def time_us(self) -> int:
        return round(self.time * 1_000_000)


def encode_record(seq: int, time_us: int, pid: int, level: int, message: bytes) -> bytes:
    """The record's bytes, padded with zeros to a multiple of 8."""
    size = RECORD_HEADER + len(message)
    if size > MAX_RECORD:
        raise ValueError(f"a log record of {len(message)} bytes is too large (limit 2 GiB)")
    rest = REC_REST.pack(seq, time_us, pid, level & 0xFFFF, 0)
    crc = zlib.crc32(message, zlib.crc32(rest))
    return _U32.pack(size) + _U32.pack(crc) + rest + message + b"\0" * (align8(size) - size)


def decode_record(data: bytes | bytearray | memoryview, offset: int = 0
                  ) -> tuple[int, int, int, int, int, bytes] | None:
    """``(size, seq, time_us, pid, level, message)`` of a valid record at ``offset``, else None.

    None means: no complete record with a matching checksum starts here (zero size word,
    pad marker, cut short, or damaged).
    """
    end = len(data)
    if offset < 0 or offset + RECORD_HEADER > end:
        return None
    size, crc, seq, t, pid, level, _flags = REC_FULL.unpack_from(data, offset)
    if size < RECORD_HEADER or size & PAD_BIT or offset + size > end:
        return None
    if zlib.crc32(data[offset + 8 : offset + size]) != crc:
        return None
    return size, seq, t, pid, level, bytes(data[offset + RECORD_HEADER : offset + size])


def _to_record(fields: tuple[int, int, int, int, int, bytes], stream: int) -> Record:
    _, seq, t, pid, level, msg = fields
    return Record(t / 1_000_000, pid, level, msg.decode("utf-8", "replace"), seq, stream)


record_of = _to_record  # for the reader's salvage of a buffer with a damaged header


def iter_records(blob: bytes | bytearray | memoryview, stream: int = 0
                 ) -> Iterator[Record | Damage]:
    """Records of a frame payload (records back to back, each padded to 8 bytes).

    A record that fails its checksum is skipped if the one after it is valid (one
    :class:`Damage`); otherwise the rest of the blob is reported as damaged.
    """
    pos, end = 0, len(blob)
    while pos < end:
        fields = decode_record(blob, pos)
        if fields is not None:
            yield _to_record(fields, stream)
            pos += align8(fields[0])
            continue
        # Damaged record: trust its size word only if a valid record follows it.
        size = _U32.unpack_from(blob, pos)[0] if pos + 4 <= end else 0
        nxt = pos + align8(size)
        if RECORD_HEADER <= size < PAD_BIT and (nxt == end or decode_record(blob, nxt)):
            yield Damage(pos, nxt - pos, "record checksum mismatch", lost=1)
            pos = nxt
            continue
        yield Damage(pos, end - pos, "damaged records up to the end of the frame")
        return


# --- damage reports ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes a decoder had to skip.  ``lost`` is the number of records in them when a
    surviving header says so (``None`` when unknown); times are seconds since the epoch."""

    offset: int
    length: int
    reason: str
    lost: int | None = None
    first_time: float | None = None
    last_time: float | None = None
    stream: int | None = None
    first_seq: int | None = None

    def describe(self) -> str:
        what = f"{self.length} bytes at offset {self.offset} skipped ({self.reason})"
        if self.lost is not None:
            what += f"; {self.lost} records lost"
        if self.first_time is not None and self.last_time is not None:
            what += f", written between {self.first_time:.6f} and {self.last_time:.6f}"
        return what


# --- the buffer file header ----------------------------------------------------------
# 0 magic "MKLOGBUF"   8 u16 version   10 u16 flags (0)   12 u32 data offset (4096)
# 16 u64 capacity of the data area    24 u64 stream id
# 32 u64 head position (first byte not yet in a log file)
# 40 u64 head sequence (sequence number of the record at head; next one if empty)
# 48 u64 created (microseconds)        56 u32 pid of the creator
# 60 u32 crc32 of bytes [0, 32) and [48, 60)   64..4096 zero
BUF_MAGIC = b"MKLOGBUF"
BUF_HEADER = 4096
_BUF = struct.Struct("<8sHHIQQQQQI")
BUF_STREAM_AT = 24
HEAD_OFFSET = 32
HEAD_SEQ_OFFSET = 40


def encode_buffer_header(capacity: int, stream: int, head: int, head_seq: int,
                         created_us: int, pid: int) -> bytes:
    raw = _BUF.pack(BUF_MAGIC, VERSION, 0, BUF_HEADER, capacity, stream, head, head_seq,
                    created_us, pid)
    crc = zlib.crc32(raw[48:60], zlib.crc32(raw[:32]))
    return raw + _U32.pack(crc) + b"\0" * (BUF_HEADER - _BUF.size - 4)


@dataclass(frozen=True, slots=True)
class BufferHeader:
    capacity: int
    stream: int
    head: int
    head_seq: int
    created_us: int
    pid: int


def decode_buffer_header(data: bytes | bytearray | memoryview, path: str | None = None
                         ) -> BufferHeader:
    """Parse a buffer file header; raises ForeignFileError, FormatVersionError or
    CorruptFileError (never struct.error)."""
    if len(data) < _BUF.size + 4:
        raise CorruptFileError(f"log buffer {path or ''} is cut short ({len(data)} bytes); "
                               "it holds no records", path=path, offset=0)
    (magic, version, _flags, data_off, cap, stream, head, head_seq, created,
     pid) = _BUF.unpack_from(data)
    if magic != BUF_MAGIC:
        raise ForeignFileError(f"{path or 'data'} is not an mmapkit log buffer (magic "
                               f"{bytes(magic)!r}); pass a log buffer or directory", path=path)
    crc = _U32.unpack_from(data, 60)[0]
    # The checksum first: a damaged version field is damage, not a newer format (a newer
    # version keeps this header checksum, so its files still say "upgrade").
    if zlib.crc32(bytes(data[48:60]), zlib.crc32(bytes(data[:32]))) != crc:
        raise CorruptFileError(f"log buffer {path or ''} has a damaged header (checksum "
                               "mismatch)", path=path, offset=0)
    if version > VERSION:
        raise FormatVersionError(
            f"log buffer {path or ''} has format version {version}; this mmapkit reads up to "
            f"{VERSION}: upgrade mmapkit to recover it", path=path, found=version,
            supported=VERSION)
    if data_off != BUF_HEADER or cap <= 0 or cap % 8 or version == 0:
        raise CorruptFileError(f"log buffer {path or ''} has a damaged header (data offset "
                               f"{data_off}, capacity {cap}, version {version})",
                               path=path, offset=0)
    if not plausible_head(head, head_seq):
        raise CorruptFileError(
            f"log buffer {path or ''} has a damaged head (position {head}, sequence "
            f"{head_seq})", path=path, offset=HEAD_OFFSET)
    return BufferHeader(cap, stream, head, head_seq, created, pid)


MAX_POSITION = 1 << 62  # head positions and sequences stay far below this (years of logging)


def plausible_head(head: int, head_seq: int) -> bool:
    """True if the head fields (which the header checksum does not cover: they change with
    every flush) could have been written by a writer: aligned, in range, sequence >= 1."""
    return head % 8 == 0 and 0 <= head < MAX_POSITION and 1 <= head_seq < MAX_POSITION


def buffer_size_problem(data: bytes | bytearray | memoryview, capacity: int) -> str | None:
    """Why a buffer file of these bytes cannot hold a ring of ``capacity`` (None: it can).

    Shorter than header + capacity: cut.  Longer is a resize cut short (a writer grows
    the file before its header says so) as long as the excess is zeros; anything in the
    excess is damage."""
    end = BUF_HEADER + capacity
    if len(data) == end or (len(data) > end and all_zero(data, end)):
        return None
    what = "" if len(data) < end else " and the bytes past that are not zero"
    return f"it has {len(data)} bytes but its header says {end}{what}"


def blank_buffer(data: bytes | bytearray | memoryview) -> bool:
    """True for a buffer file whose creator never finished it: no magic yet (the magic is
    stored last) and nothing in the data area, so it cannot hold a record."""
    return all_zero(data, 0, 8) and all_zero(data, BUF_HEADER)


_NONZERO = re.compile(rb"[^\x00]")


def all_zero(data: bytes | bytearray | memoryview, start: int = 0,
             stop: int | None = None) -> bool:
    """True if every byte of ``data[start:stop]`` is 0 (counted in C, without a copy of
    bytes or bytearray: buffers are megabytes)."""
    if isinstance(data, memoryview):
        data, start, stop = data.tobytes()[start:stop], 0, None
    end = len(data) if stop is None else min(stop, len(data))
    start = min(start, end)
    return data.count(0, start, end) == end - start


def _next_nonzero(blob: bytes, pos: int) -> int:
    """Offset of the first non-zero byte of ``blob`` at or after ``pos``, or -1."""
    step = 4096
    while pos < len(blob):
        chunk = blob[pos : pos + step]
        if chunk.count(0) != len(chunk):
            m = _NONZERO.search(chunk)
            assert m is not None
            return pos + m.start()
        pos += step
    return -1


def find_records(area: bytes | bytearray | memoryview, start: int = 0, stop: int | None = None
                 ) -> list[tuple[int, int, int]]:
    """``(offset, size, sequence)`` of every record that verifies in ``area[start:stop]``
    at a multiple of 8, by sequence (the first of equal sequences): the salvage of a
    buffer whose header or head cannot be trusted.  Zero runs are skipped in C."""
    stop = len(area) if stop is None else stop
    start = align8(start)
    blob = bytes(area[start:stop])
    out: dict[int, tuple[int, int, int]] = {}
    pos, end = 0, len(blob)
    while pos + RECORD_HEADER <= end:
        nonzero = _next_nonzero(blob, pos)
        if nonzero < 0:
            break
        pos = nonzero & ~7
        fields = decode_record(blob, pos)
        if fields is None:
            pos += 8
            continue
        out.setdefault(fields[1], (start + pos, fields[0], fields[1]))
        pos += align8(fields[0])
    return [out[k] for k in sorted(out)]


def scan_ring(area: bytes | bytearray | memoryview, head: int, head_seq: int | None = None
              ) -> tuple[list[tuple[int, int]], int, int, list[Damage]]:
    """Find the live records of a buffer's data area, starting at position ``head``.

    Positions grow without bound; a record at position p lives at ``p % len(area)``.
    Returns ``(spans, tail, next_seq, damages)``: ``spans`` are ``(offset, length)`` byte
    ranges of the area holding whole records back to back (at most two: before and after
    the wrap), ``tail`` the position after the last record.  Scanning stops at a zero size
    word, at a record out of sequence (stale bytes of an earlier lap) or at damage.  With
    ``head_seq`` (the header's), a first record numbered above it means the bytes were
    copied while a live writer reused them: nothing is returned for this look.
    """
    cap = len(area)
    spans: list[tuple[int, int]] = []
    damages: list[Damage] = []
    if cap == 0 or cap % 8 or head % 8:
        return spans, head, 0, [Damage(0, cap, "buffer data area misaligned")]
    pos = head
    start = head
    expect: int | None = None
    while pos - head < cap:
        off = pos % cap
        if off == 0 and pos > start:  # the previous record ended exactly at the end
            spans.append((start % cap, pos - start))
            start = pos
        size = _U32.unpack_from(area, off)[0] if off + 4 <= cap else 0
        if size == 0:
            break
        if size & PAD_BIT:
            if off + (size & ~PAD_BIT) != cap:
                damages.append(Damage(off, 4, "bad wrap marker in buffer"))
                break
            if pos > start:
                spans.append((start % cap, pos - start))
            pos += cap - off
            start = pos
            continue
        fields = decode_record(area, off)
        if fields is None:
            # Skip one damaged record if its size word leads to the next one in sequence.
            nxt = off + align8(size)
            after = decode_record(area, nxt % cap) if RECORD_HEADER <= size < cap else None
            if (after is not None and expect is not None and after[1] == expect + 1
                    and nxt <= cap and pos + align8(size) - head < cap):
                if pos > start:
                    spans.append((start % cap, pos - start))
                damages.append(Damage(off, align8(size), "damaged record in buffer", lost=1))
                pos += align8(size)
                start = pos
                expect += 1
                continue
            if any(area[off : off + RECORD_HEADER]) and off + RECORD_HEADER <= cap:
                damages.append(Damage(off, cap - off, "damaged record in buffer"))
            break
        seq = fields[1]
        if expect is not None and seq != expect:
            break  # stale record of an earlier lap
        if expect is None and head_seq is not None and seq > head_seq:
            break  # a newer lap than the header says: a torn copy of a live buffer
        expect = seq + 1
        pos += align8(fields[0])
    if pos > start:
        spans.append((start % cap, pos - start))
    return spans, pos, expect or 0, damages


# --- log-file frames -----------------------------------------------------------------
# 0 magic b"\xabMLG"   4 u8 version   5 u8 flags   6 u16 header size (64)
# 8 u32 stored payload size          12 u32 raw (decompressed) payload size
# 16 u64 stream id    24 u64 first sequence    32 u32 record count   36 u32 pid
# 40 u64 first time (us)             48 u64 last time (us)
# 56 u32 crc32 of the stored payload  60 u32 crc32 of header bytes [0, 60)
FRAME_MAGIC = b"\xabMLG"
FRAME_HEADER = 64
_FRAME = struct.Struct("<4sBBHIIQQIIQQI")
COMPRESS_NONE, COMPRESS_ZLIB, COMPRESS_ZSTD = 0, 1, 2
FLAG_COMPRESS_MASK = 0x03
FLAG_ENCRYPTED = 0x04
_KNOWN_FLAGS = FLAG_COMPRESS_MASK | FLAG_ENCRYPTED
MAX_PAYLOAD = 1 << 26  # a frame never carries more than 64 MiB (writers use ~64 KiB chunks)

Transform = Callable[[bytes, bytes], bytes]  # (payload, header-as-associated-data) -> bytes


@dataclass(frozen=True, slots=True)
class Frame:
    offset: int
    size: int          # header + stored payload
    flags: int
    stream: int
    first_seq: int
    count: int
    pid: int
    first_time_us: int
    last_time_us: int
    raw_size: int
    payload: bytes     # stored payload (compressed and maybe encrypted)

    @property
    def compression(self) -> int:
        return self.flags & FLAG_COMPRESS_MASK

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)


def encode_frame(records: bytes, *, stream: int, first_seq: int, count: int, pid: int,
                 first_time_us: int, last_time_us: int, compression: int = COMPRESS_ZLIB,
                 compress: Callable[[bytes], bytes] | None = None,
                 encrypt: Transform | None = None) -> bytes:
    """One frame carrying ``records`` (record encodings back to back).

    ``compress`` turns the raw records into the stored form for ``compression``;
    ``encrypt(payload, aad)`` seals it, with the header's first 40 bytes as associated data.
    """
    if compression == COMPRESS_NONE:
        stored = bytes(records)
    elif compress is not None:
        stored = compress(records)
    elif compression == COMPRESS_ZLIB:
        stored = zlib.compress(records, 6)
    else:
        raise ValueError("zstd frames need a compress function (the zstd extra)")
    flags = compression
    if encrypt is not None:
        flags |= FLAG_ENCRYPTED
    pre = _FRAME.pack(FRAME_MAGIC, VERSION, flags, FRAME_HEADER, 0, len(records), stream,
                      first_seq, count, pid, first_time_us, last_time_us, 0)
    if encrypt is not None:
        stored = encrypt(stored, pre[16:56])
    if len(stored) > MAX_PAYLOAD or len(records) > MAX_PAYLOAD:
        raise ValueError("frame payload too large; write records in smaller batches")
    head = _FRAME.pack(FRAME_MAGIC, VERSION, flags, FRAME_HEADER, len(stored), len(records),
                       stream, first_seq, count, pid, first_time_us, last_time_us,
                       zlib.crc32(stored))
    return head + _U32.pack(zlib.crc32(head)) + stored


def encode_chunk(records: bytes | bytearray | memoryview, last: int, *, stream: int,
                 compression: int = COMPRESS_ZLIB,
                 compress: Callable[[bytes], bytes] | None = None,
                 encrypt: Transform | None = None) -> tuple[bytes, int, int]:
    """``(frame, count, last sequence)`` for records back to back in ``records`` (each
    padded to 8 bytes, consecutive sequences), the last one starting at offset ``last``.

    The one frame builder of the log: the frame's sequence, count, pid and times are read
    from the first and the last record, so they cannot disagree with what it carries.
    """
    first_seq, t0, pid = REC_REST.unpack_from(records, REC_REST_AT)[:3]
    last_seq, t1 = REC_REST.unpack_from(records, last + REC_REST_AT)[:2]
    count = last_seq - first_seq + 1
    frame = encode_frame(records, stream=stream, first_seq=first_seq,  # type: ignore[arg-type]
                         count=count, pid=pid, first_time_us=t0, last_time_us=t1,
                         compression=compression, compress=compress, encrypt=encrypt)
    return frame, count, last_seq


def _parse_header(data: bytes | bytearray | memoryview, pos: int
                  ) -> tuple[int, ...] | None:
    """Header fields after the magic if a frame header with a valid checksum is at ``pos``."""
    if pos + FRAME_HEADER > len(data):
        return None
    fields = _FRAME.unpack_from(data, pos)
    if fields[0] != FRAME_MAGIC:
        return None
    if _U32.unpack_from(data, pos + 60)[0] != zlib.crc32(data[pos : pos + 60]):
        return None
    return tuple(fields[1:])


def decode_frames(data: bytes | bytearray | memoryview, *, path: str | None = None,
                  final: bool = True) -> Iterator[Frame | Damage]:
    """Frames of a log file's bytes, and :class:`Damage` for what had to be skipped.

    After damage the decoder resynchronises at the next magic whose header checksum holds.
    With ``final=False`` (a file another process may still be appending to), an incomplete
    frame at the very end is not reported: decoding just stops before it; the caller
    resumes from ``Frame.offset + Frame.size`` of the last frame.  A frame of a newer
    format version raises FormatVersionError.
    """
    buf = data if isinstance(data, bytes) else bytes(data)
    mv = memoryview(buf)
    end = len(mv)
    pos = 0
    while pos < end:
        hdr = _parse_header(mv, pos)
        if hdr is None:
            if not final and _maybe_incomplete(mv, pos):
                return
            nxt = _find_next(buf, pos + 1)
            if pos == 0 and nxt < 0 and end >= 4 and bytes(mv[:4]) != FRAME_MAGIC:
                raise ForeignFileError(
                    f"{path or 'data'} is not an mmapkit log file (no frame found); pass a "
                    "log file or directory written by mmapkit.log", path=path)
            stop = nxt if nxt >= 0 else end
            yield Damage(pos, stop - pos, "unreadable bytes (no valid frame header)")
            pos = stop
            continue
        (version, flags, hsize, stored, raw, stream, first_seq, count, pid, t0, t1,
         pcrc) = hdr
        if version > VERSION:
            raise FormatVersionError(
                f"{path or 'log file'} has a frame of format version {version} at offset "
                f"{pos}; this mmapkit reads up to {VERSION}: upgrade mmapkit",
                path=path, found=version, supported=VERSION)
        frame_end = pos + hsize + stored
        bad = (hsize != FRAME_HEADER or flags & ~_KNOWN_FLAGS or version == 0
               or stored > MAX_PAYLOAD or raw > MAX_PAYLOAD)
        if not bad and frame_end > end:
            if not final:
                return
            bad = True
        if not bad and zlib.crc32(mv[pos + hsize : frame_end]) != pcrc:
            bad = True
        if bad:
            nxt = _find_next(buf, pos + 1)
            stop = nxt if nxt >= 0 else end
            yield Damage(pos, stop - pos, "frame payload damaged or cut short", lost=count,
                         first_time=t0 / 1e6, last_time=t1 / 1e6, stream=stream,
                         first_seq=first_seq)
            pos = stop
            continue
        yield Frame(pos, hsize + stored, flags, stream, first_seq, count, pid, t0, t1, raw,
                    bytes(mv[pos + hsize : frame_end]))
        pos = frame_end


def _find_next(blob: bytes, start: int) -> int:
    """Offset of the next frame magic at or after ``start`` with a valid header, or -1."""
    mv = memoryview(blob)
    pos = start
    while True:
        pos = blob.find(FRAME_MAGIC, pos)
        if pos < 0:
            return -1
        if _parse_header(mv, pos) is not None or pos + FRAME_HEADER > len(mv):
            return pos
        pos += 1


def incomplete_at(data: bytes | bytearray | memoryview, pos: int) -> bool:
    """True if a frame starts at ``pos`` and runs past the end of ``data``: a frame cut
    short, or one still being appended (``decode_frames`` with ``final=False`` stops
    before it)."""
    mv = memoryview(data)
    hdr = _parse_header(mv, pos)
    if hdr is None:
        return _maybe_incomplete(mv, pos)
    return pos + hdr[2] + hdr[3] > len(mv)


def _maybe_incomplete(mv: memoryview, pos: int) -> bool:
    """True if the bytes from ``pos`` to the end could be the start of a frame."""
    tail = bytes(mv[pos : pos + 4])
    return pos + FRAME_HEADER > len(mv) and FRAME_MAGIC.startswith(tail)


def open_frame(frame: Frame, *, path: str | None = None,
               decompress: Callable[[int, bytes, int], bytes],
               decrypt: Transform | None = None) -> bytes:
    """The raw records of a frame: decrypted and decompressed, checked against raw_size."""
    payload = frame.payload
    if frame.encrypted:
        if decrypt is None:
            from ..errors import DecryptionError

            raise DecryptionError(
                f"{path or 'the log'} is encrypted; pass private_key= (the X25519 private "
                "key matching the writer's public_key) to read it", path=path)
        aad = _FRAME.pack(FRAME_MAGIC, VERSION, frame.flags, FRAME_HEADER, 0, frame.raw_size,
                          frame.stream, frame.first_seq, frame.count, frame.pid,
                          frame.first_time_us, frame.last_time_us, 0)[16:56]
        payload = decrypt(payload, aad)
    raw = decompress(frame.compression, payload, frame.raw_size)
    if len(raw) != frame.raw_size:
        raise CorruptFileError(
            f"frame at offset {frame.offset} of {path or 'the log'} decompressed to "
            f"{len(raw)} bytes, its header says {frame.raw_size}", path=path,
            offset=frame.offset, lost=frame.count)
    return raw
