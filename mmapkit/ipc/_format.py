"""The Channel file format: pure functions over bytes, no mmap, no OS.

Design rules:

- Little-endian, versioned: an 8-byte magic, a format version, and a CRC-32 over the fixed
  fields.  A foreign file raises ForeignFileError, a newer version FormatVersionError (checked
  before the CRC: a newer layout may checksum differently), damage CorruptFileError.
- Layout (byte by byte in docs/formats.md, "Channel"):

  ========  ======  ===========================================================
  offset    size    field
  ========  ======  ===========================================================
  0         64      fixed header: magic, version, flags, capacity, sizes, crc
  64        64      producer line: head (u64), consumers sleeping, sleep epoch (u32s),
                    doorbell, broadcast PAD, producer lease (v2)
  128       64      consumer line: tail (u64), producers sleeping, sleep epoch (u32s),
                    consumer lease (v2)
  4096      4096    participant slots: 64 x 64 bytes
  8192      cap     the ring: frames ``[u32 length][u32 kind][payload][pad to 8]``
  ========  ======  ===========================================================

- Positions (head, tail) are byte counts since the channel was created; they only grow.
  ``position % capacity`` is the place in the ring.  Head is written by producers only,
  tail by consumers only, each on its own cache line (no false sharing).
- Version 2 adds the claim leases (one u32 per role: the lease name of the participant
  that holds it, 0 for none), a "busy" u32 per role and an attach generation in each
  slot; _claims.py says how they are used.  Version 1 files (no leases: every claim is a
  flock) are still read and used the version 1 way, so older processes on them stay
  correct.
- Version 3 has the layout of version 2; only the lease entry differs: its holder enters
  with no barrier of its own, and a thief makes every participant's CPU run one
  (membarrier(2), _claims.py).  A process of an older mmapkit would enter with its own
  barrier and steal without the thief's: no exclusion between the two, so the version
  keeps it out (FormatVersionError).  Created where membarrier works, else version 2.
- A frame of kind PAD means "the rest of the ring up to its end is unused": a message is
  never split across the wrap-around, so a reader always gets one contiguous view.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptFileError, ForeignFileError, FormatVersionError

__all__ = [
    "CONSUMERS_EPOCH",
    "CONSUMERS_WAITING",
    "CONSUMER_LEASE",
    "DOORBELL",
    "FENCELESS_VERSION",
    "FIXED",
    "FLAG_BROADCAST",
    "FLAG_MULTI_CONSUMER",
    "FLAG_MULTI_PRODUCER",
    "FRAME",
    "HEAD",
    "HEADER_SIZE",
    "HEAD_Q",
    "KIND_DATA",
    "KIND_PAD",
    "LEASE_VERSION",
    "LOCK_REGISTRY",
    "LOCK_SLOT",
    "MAGIC",
    "NAME_SIZE",
    "OBJ_HEAD",
    "PAD_EVICTED",
    "PAD_WORD",
    "PRODUCERS_EPOCH",
    "PRODUCERS_WAITING",
    "PRODUCER_LEASE",
    "QUEUE_MSG",
    "SLOT_CBUSY",
    "SLOT_COUNT",
    "SLOT_CURSOR",
    "SLOT_GENERATION",
    "SLOT_NAME",
    "SLOT_OFFSET",
    "SLOT_PBUSY",
    "SLOT_PID",
    "SLOT_SIZE",
    "SLOT_SLEEPING",
    "SLOT_STATE",
    "STATE_CONSUMER",
    "STATE_FINISHED",
    "STATE_FREE",
    "STATE_PRODUCER",
    "STATE_SUBSCRIBER",
    "TAIL",
    "TAIL_Q",
    "VERSION",
    "Header",
    "check_positions",
    "copy_obj",
    "copy_out",
    "decode_frame",
    "decode_header",
    "encode_frame",
    "encode_header",
    "encode_header_v1",
    "frame_size",
    "iter_frames",
    "max_message",
    "obj_size",
    "pickle_buffers",
    "read_obj",
    "write_frame",
    "write_obj",
]

MAGIC = b"MMKCHAN\x00"
VERSION = 3
MIN_VERSION = 1  # still read, and used without leases
LEASE_VERSION = 2  # the first version with claim leases
FENCELESS_VERSION = 3  # leases entered with no barrier: thieves call membarrier(2)
FIXED = struct.Struct("<8sIIQIII")  # magic, version, flags, capacity, header, slots, slot size
_CRC = struct.Struct("<I")
FIXED_SIZE = 64
HEADER_SIZE = 8192
SLOT_OFFSET = 4096
SLOT_SIZE = 64
SLOT_COUNT = 64
HEAD = 64  # u64, producers write
CONSUMERS_WAITING = 72  # u32, consumers write
CONSUMERS_EPOCH = 76  # u32, consumers write: bumped each time one goes to sleep
DOORBELL = 80  # u32: 1 once any handle waits through the doorbell FIFO (fileno())
PAD_EVICTED = 88  # u64, broadcast: start of a PAD the producer evicted with nothing else
PRODUCER_LEASE = 96  # u32 (v2): the lease name of the producer holding it, 0: none
TAIL = 128  # u64, consumers write
PRODUCERS_WAITING = 136  # u32, producers write
PRODUCERS_EPOCH = 140  # u32, producers write
CONSUMER_LEASE = 144  # u32 (v2): the lease name of the consumer holding it, 0: none
FLAG_MULTI_PRODUCER = 1
FLAG_MULTI_CONSUMER = 2
FLAG_BROADCAST = 4
_KNOWN_FLAGS = FLAG_MULTI_PRODUCER | FLAG_MULTI_CONSUMER | FLAG_BROADCAST
SLOT_PBUSY = 12  # u32 in a slot (v2): 1 while its producer is in (or entering) a claim
SLOT_CURSOR = 16  # u64 in a slot: a broadcast subscriber's read position
SLOT_GENERATION = 24  # u32 in a slot (v2): bumped at each attach; a lease name is
#                      generation << 8 | 1 + slot (24 bits of it: a name is never reused
#                      while anything could still hold the old one)
SLOT_CBUSY = 28  # u32 in a slot (v2): 1 while its consumer is in (or entering) a claim
SLOT_NAME = 32  # 32 bytes in a slot: a subscriber's UTF-8 name, zero-padded
NAME_SIZE = 32
FRAME = struct.Struct("<II")  # payload length, kind
_U64 = struct.Struct("<Q")  # the same frame header as one word (payload length | kind << 32)
KIND_DATA = 0
KIND_PAD = 1
PAD_WORD = KIND_PAD << 32  # a PAD frame's header read as one u64 (what the ring holds)
# participant slot states (u32 at SLOT_STATE)
STATE_FREE, STATE_PRODUCER, STATE_CONSUMER, STATE_FINISHED, STATE_SUBSCRIBER = 0, 1, 2, 3, 4
SLOT_STATE = 0  # u32 in a slot
SLOT_PID = 4  # u32 in a slot: the process that took it (informational)
SLOT_SLEEPING = 8  # u32 in a slot: 1 while its participant sleeps
# the side lock file's bytes (open-file-description byte-range locks)
LOCK_REGISTRY = 2  # guards the slot table
LOCK_SLOT = 64  # byte LOCK_SLOT + i: slot i's liveness lock, held for a handle's life
# channel.py stores a frame header as one u64: a data frame's is its length, a PAD's this.
assert FRAME.pack(0, KIND_PAD) == PAD_WORD.to_bytes(8, "little")
HEAD_Q, TAIL_Q = HEAD // 8, TAIL // 8  # head and tail as indexes of the header cast 'Q'
assert all(FRAME.pack(n, KIND_DATA) == n.to_bytes(8, "little") for n in (0, 1, 0xFFFFFFFF))
MIN_CAPACITY = 64
_MAX_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class Header:
    """The fixed fields of a channel file."""

    version: int
    flags: int
    capacity: int
    header_size: int = HEADER_SIZE
    slot_count: int = SLOT_COUNT
    slot_size: int = SLOT_SIZE

    @property
    def multi_producer(self) -> bool:
        return bool(self.flags & FLAG_MULTI_PRODUCER)

    @property
    def multi_consumer(self) -> bool:
        return bool(self.flags & FLAG_MULTI_CONSUMER)

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)

    @property
    def file_size(self) -> int:
        return self.header_size + self.capacity


def round_capacity(capacity: int) -> int:
    """The ring size actually used for a requested ``capacity`` (a multiple of 8)."""
    if not isinstance(capacity, int) or isinstance(capacity, bool):
        raise TypeError(f"capacity must be an int, got {type(capacity).__name__}")
    if capacity < MIN_CAPACITY:
        raise ValueError(f"capacity must be at least {MIN_CAPACITY} bytes, got {capacity}")
    return (capacity + 7) & ~7


def encode_header(capacity: int, flags: int = 0, version: int = VERSION) -> bytes:
    """The 64 fixed header bytes of a new channel with a ring of ``capacity`` bytes
    (``version``: LEASE_VERSION where the lease entry needs its own barrier)."""
    if version not in (LEASE_VERSION, VERSION):
        raise ValueError(f"a new channel is version {LEASE_VERSION} or {VERSION}")
    if capacity % 8 or capacity < MIN_CAPACITY:
        raise ValueError(f"capacity must be a multiple of 8 and >= {MIN_CAPACITY}")
    if flags & ~_KNOWN_FLAGS:
        raise ValueError(f"unknown flags {flags:#x}")
    fixed = FIXED.pack(MAGIC, version, flags, capacity, HEADER_SIZE, SLOT_COUNT, SLOT_SIZE)
    body = fixed + _CRC.pack(zlib.crc32(fixed))
    return body + b"\0" * (FIXED_SIZE - len(body))


def decode_header(buf: bytes | bytearray | memoryview, *, path: str | None = None) -> Header:
    """Check and decode the fixed header at the start of ``buf`` (trailing bytes ignored)."""
    where = path or "the channel"
    data = bytes(buf[:FIXED_SIZE])
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise ForeignFileError(
            f"{where} is not an mmapkit channel (wrong magic); check the path, or create "
            "one with Channel.create()", path=path)
    if len(data) < FIXED.size + _CRC.size:
        raise CorruptFileError(f"{where} is cut off inside its header ({len(data)} bytes)",
                               path=path, offset=len(data))
    _, version, flags, capacity, header_size, slots, slot_size = FIXED.unpack_from(data)
    if not MIN_VERSION <= version <= VERSION:
        raise FormatVersionError(
            f"{where} has channel format version {version}; this mmapkit reads version "
            f"{VERSION}: upgrade mmapkit (or recreate the channel)",
            path=path, found=version, supported=VERSION)
    (crc,) = _CRC.unpack_from(data, FIXED.size)
    if crc != zlib.crc32(data[: FIXED.size]):
        raise CorruptFileError(f"{where} has a damaged header (checksum mismatch); "
                               "unlink it and create the channel again", path=path, offset=0)
    if flags & ~_KNOWN_FLAGS:
        raise FormatVersionError(
            f"{where} uses channel features {flags & ~_KNOWN_FLAGS:#x} unknown to this "
            "mmapkit; upgrade mmapkit", path=path, found=version, supported=VERSION)
    if (capacity % 8 or capacity < MIN_CAPACITY or header_size != HEADER_SIZE
            or slots != SLOT_COUNT or slot_size != SLOT_SIZE):
        raise CorruptFileError(f"{where} has impossible header fields (capacity {capacity}, "
                               f"header {header_size}, slots {slots}x{slot_size})",
                               path=path, offset=8)
    return Header(version, flags, capacity, header_size, slots, slot_size)


def encode_header_v1(capacity: int, flags: int = 0) -> bytes:
    """The fixed header of a version 1 channel (no leases), as older mmapkit wrote it:
    for tests that a version 1 file is still used the version 1 way."""
    fixed = FIXED.pack(MAGIC, 1, flags, capacity, HEADER_SIZE, SLOT_COUNT, SLOT_SIZE)
    body = fixed + _CRC.pack(zlib.crc32(fixed))
    return body + b"\0" * (FIXED_SIZE - len(body))


def max_message(capacity: int) -> int:
    """The largest payload a ring of ``capacity`` bytes can carry."""
    return min(capacity - FRAME.size, _MAX_LENGTH)


def frame_size(length: int) -> int:
    """Bytes a payload of ``length`` takes in the ring: 8-byte frame header, padded to 8."""
    return FRAME.size + ((length + 7) & ~7)


def encode_frame(payload: bytes | bytearray | memoryview) -> bytes:
    """One data frame as it lies in the ring (the writer stores the frame header last)."""
    n = memoryview(payload).nbytes
    if n > _MAX_LENGTH:
        raise ValueError(f"a frame holds at most {_MAX_LENGTH} bytes, got {n}")
    return FRAME.pack(n, KIND_DATA) + bytes(payload) + b"\0" * (-n % 8)


def write_frame(ring: Any, pos: int, n: int, payload: Any) -> None:
    """Write the data frame of an ``n``-byte payload (any buffer) at offset ``pos`` of the
    writable ``ring``: the payload, then its length word (kind DATA, 0, in the high half:
    one u64 store).  The bytes are encode_frame's but for the padding, which nothing
    reads.  Channel.send() packs short payloads with a cached Struct of the same layout."""
    ring[pos + 8 : pos + 8 + n] = payload
    _U64.pack_into(ring, pos, n)


def decode_frame(ring: bytes | bytearray | memoryview, pos: int, *,
                 limit: int | None = None) -> tuple[int, int, int]:
    """Decode the frame at ``pos`` of ``ring``: (kind, payload start, payload length).

    ``limit`` is how many bytes from ``pos`` are published (head - tail); a frame that
    claims more, or runs past the ring's end, raises CorruptFileError.
    """
    size = len(ring)
    if pos % 8 or pos < 0 or pos + FRAME.size > size:
        raise CorruptFileError(f"frame position {pos} is not inside the ring of {size} bytes",
                               offset=pos)
    length, kind = FRAME.unpack_from(ring, pos)
    if kind == KIND_PAD:
        return KIND_PAD, pos + FRAME.size, size - pos - FRAME.size
    if kind != KIND_DATA:
        raise CorruptFileError(f"unknown frame kind {kind} at ring offset {pos}", offset=pos)
    need = frame_size(length)
    if pos + need > size or (limit is not None and need > limit):
        raise CorruptFileError(f"frame at ring offset {pos} claims {length} bytes, more than "
                               "was written; the channel is damaged", offset=pos)
    return KIND_DATA, pos + FRAME.size, length


def iter_frames(ring: bytes | bytearray | memoryview, tail: int,
                head: int) -> Iterator[tuple[int, int, int]]:
    """(position, payload start, length) of every data frame between ``tail`` and ``head``."""
    capacity = len(ring)
    check_positions(head, tail, capacity)
    while tail < head:
        pos = tail % capacity
        kind, start, length = decode_frame(ring, pos, limit=head - tail)
        if kind == KIND_PAD:
            tail += capacity - pos
            continue
        yield tail, start, length
        tail += frame_size(length)
    if tail != head:
        raise CorruptFileError(f"frames run past the head position {head}", offset=head)


def check_positions(head: int, tail: int, capacity: int) -> None:
    """Head and tail of a sane ring: aligned, ordered, at most ``capacity`` apart."""
    if head % 8 or tail % 8 or tail > head or head - tail > capacity:
        raise CorruptFileError(
            f"impossible ring positions head={head} tail={tail} for capacity {capacity}; "
            "the channel is damaged: unlink it and create it again", offset=HEAD)


# --- object payloads (Channel.send_obj; a Queue message is a u64 sequence number + this) --

OBJ_HEAD = struct.Struct("<IIQ")  # out-of-band buffer count, reserved (0), pickle length
_OBJ_HEAD_SIZE = OBJ_HEAD.size
# A Queue message (ipc/queue.py, ipc/_sequenced.py): its u64 sequence number, then an
# object payload; the two heads as one Struct, the common case in one pack.
QUEUE_MSG = struct.Struct("<QIIQ")
assert QUEUE_MSG.size == 8 + OBJ_HEAD.size and QUEUE_MSG.format[2:] == OBJ_HEAD.format[1:]


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def pickle_buffers(buffers: Sequence[Any]) -> list[memoryview]:
    """The raw bytes of pickle's out-of-band ``PickleBuffer`` s, one copy only for a
    buffer that is not contiguous."""
    raws = []
    for b in buffers:
        try:
            raws.append(b.raw())
        except BufferError:
            raws.append(memoryview(bytes(memoryview(b))))
    return raws


def obj_size(body_len: int, raws: Sequence[memoryview]) -> int:
    """Bytes of an object payload: OBJ_HEAD, the pickle padded to 8 when buffers follow,
    then each buffer as its u64 length and bytes, padded to 8 but the last."""
    if not raws:
        return OBJ_HEAD.size + body_len
    return OBJ_HEAD.size + _pad8(body_len) + sum(8 + _pad8(r.nbytes) for r in raws)


def write_obj(buf: Any, at: int, body: bytes, raws: Sequence[memoryview]) -> None:
    """Write the object payload of pickle ``body`` and out-of-band ``raws`` at ``at`` of
    the writable buffer ``buf`` (obj_size() bytes)."""
    OBJ_HEAD.pack_into(buf, at, len(raws), 0, len(body))
    at += OBJ_HEAD.size
    buf[at : at + len(body)] = body
    at += _pad8(len(body))
    for r in raws:
        _U64.pack_into(buf, at, r.nbytes)
        at += 8
        buf[at : at + r.nbytes] = r
        at += _pad8(r.nbytes)


def read_obj(buf: memoryview) -> tuple[memoryview, list[memoryview]]:
    """(pickle, out-of-band buffers) of the object payload that is all of ``buf``, as
    views of it.  ValueError when it is not one."""
    try:
        count, _, body_len = OBJ_HEAD.unpack_from(buf, 0)
    except struct.error:
        raise ValueError(f"{len(buf)} bytes are too short for an object header") from None
    at = OBJ_HEAD.size
    if at + body_len > len(buf):
        raise ValueError("the pickle runs past the end")
    body = buf[at : at + body_len]
    at += _pad8(body_len)
    bufs = []
    for _ in range(count):
        if at + 8 > len(buf):
            raise ValueError("a buffer length runs past the end")
        (size,) = _U64.unpack_from(buf, at)
        at += 8
        if at + size > len(buf):
            raise ValueError("a buffer runs past the end")
        bufs.append(buf[at : at + size])
        at += _pad8(size)
    return body, bufs


def copy_obj(mapping: Any, at: int, n: int) -> bytes | bytearray:
    """The receiver's one copy of the ``n``-byte object payload at ``at`` of ``mapping``:
    the pickle alone when there is no out-of-band buffer (what pickle.loads takes), else
    all of it (a bytearray, whose views read_obj() gives the buffers as, writable)."""
    if n >= _OBJ_HEAD_SIZE:
        count, _, body_len = OBJ_HEAD.unpack_from(mapping, at)
        if count == 0 and body_len <= n - _OBJ_HEAD_SIZE:
            body: bytes = mapping[at + _OBJ_HEAD_SIZE : at + _OBJ_HEAD_SIZE + body_len]
            return body
    return copy_out(mapping, at, n)


def copy_out(mapping: Any, at: int, n: int) -> bytearray:
    """``n`` bytes at ``at`` of ``mapping`` in a new bytearray, copied once (slicing an
    mmap makes bytes first: a second copy of what may be a large array)."""
    with memoryview(mapping) as whole, whole[at : at + n] as part:
        return bytearray(part)
