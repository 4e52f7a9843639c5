"""The KV record format as the hot paths write and read it by hand.

codec.py owns the format (pure, general, tested byte by byte).  The paths that run once
per key -- a set, the replay at open, the compaction image -- cannot afford its general
calls, so they spell the format inline.  They all live here, beside the codec:

- the precomputed tables (key-length fields, value heads by length, per-length framers),
- the in-memory value forms (``_Packed``, ``_Expiring``),
- the inline set (``setitem``/``put``, bound into ``KV``; ``held_set``, update_with()'s
  write under the writer lock), the load decoder
  (``fast_set``, used by _load.py) and the compaction-image framer (``image``: the
  ordinary set records that follow _files.image's columnar image records).

Every literal they inline is asserted against the codec below, at import, and
tests/test_kv_fastpath.py checks the bytes they write against the codec's encoding for
every value kind at the table edges, in single- and multiprocess mode.
"""

from __future__ import annotations

import struct
import time
from time import monotonic as _monotonic

from .._crc import crc32 as _fast_crc32
from . import codec
from ._crypto import Cipher
from .codec import (
    DATA_START,
    KEY_MAX,
    KIND_SET,
    KIND_SET_TTL,
    LOCK_READY,
    REC_FLAG_ENCRYPTED,
    SUPERSEDED,
)

# ``typing`` is for type checkers only (importing it costs milliseconds); type
# checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .store import KV

__all__ = [
    "KEY_LEN",
    "PACKED_BODY_MAX",
    "PLAIN",
    "REC_UNPACK",
    "SPECIAL",
    "Expiring",
    "Packed",
    "entry",
    "fast_set",
    "frame_all",
    "held_set",
    "image",
    "live_entries",
    "packer",
    "put",
    "setitem",
]

# zlib's CRC-32, or ISA-L's (the isal extra: the same values, faster; mmapkit._crc)
crc32 = _fast_crc32()

_F64 = struct.Struct("<d")
_U16 = struct.Struct("<H")
KEY_LEN = tuple(_U16.pack(n) for n in range(KEY_MAX + 1))  # a key's length field, by length
_PADS = tuple(b"\0" * n for n in range(8))
PACKED_BODY_MAX = 256  # bodies up to this long are written with one cached Struct each
_REC_PACK = struct.Struct("<HBBII").pack_into
REC_UNPACK = struct.Struct("<HBBII").unpack_from
_REC = struct.Struct("<HBBII")
_TI, _TL, _TF = struct.Struct("<Bq"), struct.Struct("<BI"), struct.Struct("<Bd")
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
# The tag and length of short bytes and str values, by length: a tuple index is a third of
# a Struct.pack on the write path (longer values are packed as they come).
_BYTES_HEAD = tuple(_TL.pack(7, n) for n in range(PACKED_BODY_MAX))
_STR_HEAD = tuple(_TL.pack(6, n) for n in range(PACKED_BODY_MAX))
# The literals spelled inline below and in _load.py: magic 0x4B56, the crc seed multiplier
# 0x9E3779B1, padded size (19 + n) & ~7, kind 1 = set, value tags 1/2 bool, 3 int, 5 float,
# 6 str, 7 bytes.  Each is tied to the codec, which owns the format.
assert codec.REC_MAGIC == 0x4B56 and KIND_SET == 1 and codec.REC_HEADER == 12
assert all(codec.record_size(n) == (19 + n) & ~7 for n in range(64))
assert codec._seed(8, 1, 0, 5) == ((8 * 0x9E3779B1) ^ (5 << 16) ^ 1) & 0xFFFFFFFF
assert (codec.T_FALSE, codec.T_TRUE, codec.T_INT, codec.T_FLOAT, codec.T_STR,
        codec.T_BYTES) == (1, 2, 3, 5, 6, 7)
assert codec.encode_value(-5) == _TI.pack(3, -5) and codec.encode_value(0.5) == _TF.pack(5, 0.5)
assert codec.encode_value(b"ab") == _BYTES_HEAD[2] + b"ab"
assert codec.encode_value("") == _STR_HEAD[0] and codec.encode_key("k") == KEY_LEN[1] + b"k"

# --- the in-memory value forms ------------------------------------------------------------

PLAIN = frozenset((int, str, bytes, float, bool, type(None)))  # kept as they are


class Packed:
    """An encoded container (or serializer) value: decoded on every read."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Expiring:
    """A value set with a ttl: ``expiry`` in unix seconds."""

    __slots__ = ("expiry", "value")

    def __init__(self, value: Any, expiry: float) -> None:
        self.value = value
        self.expiry = expiry


SPECIAL = (Packed, Expiring)  # index values that reads must unwrap


def entry(key: str, stored: Any) -> tuple[int, bytes]:
    """The (kind, body) of the record that sets ``key`` to ``stored`` (index form)."""
    kb = key.encode("utf-8", "surrogatepass")
    kb = _U16.pack(len(kb)) + kb
    kind = KIND_SET
    if type(stored) is Expiring:
        kind = KIND_SET_TTL
        kb = _F64.pack(stored.expiry) + kb
        stored = stored.value
    t = type(stored)
    if t is int and _I64_MIN <= stored <= _I64_MAX:
        vb = _TI.pack(3, stored)
    elif t is bytes:
        vb = _TL.pack(7, len(stored)) + stored
    elif t is Packed:
        vb = stored.data
    else:
        vb = codec.encode_value(stored)
    return kind, kb + vb


def live_entries(index: dict[str, Any]) -> list[tuple[int, bytes]]:
    now = time.time()
    return [entry(key, stored) for key, stored in index.items()
            if type(stored) is not Expiring or stored.expiry > now]


# --- the load decoder ---------------------------------------------------------------------

def fast_set(body: bytes) -> tuple[str, Any] | None:
    """(key, value) of a plain int/bytes/str set record, or None for the general path.

    Opening a store replays every record: this skips the generic op and value decoders
    for the common cases (same results; anything unusual goes the long way).
    """
    n = len(body)
    if n < 3:
        return None
    nk = body[0] | body[1] << 8
    v = 2 + nk
    if v >= n:
        return None
    tag = body[v]
    try:
        key = body[2:v].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    if tag == 3 and n == v + 9:
        return key, int.from_bytes(body[v + 1 :], "little", signed=True)
    if (tag == 7 or tag == 6) and n >= v + 5:
        ln = int.from_bytes(body[v + 1 : v + 5], "little")
        if n != v + 5 + ln:
            return None
        raw = body[v + 5 :]
        if tag == 7:
            return key, raw
        try:
            return key, raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return None
    return None


# --- framers: the compaction image and backups --------------------------------------------

def frame_all(entries: list[tuple[int, bytes]], cipher: Cipher | None
              ) -> tuple[list[bytes], int]:
    """The records of ``entries`` laid out from DATA_START, and where they end."""
    parts: list[bytes] = []
    pos = DATA_START
    append = parts.append
    if cipher is None:
        frame = codec.encode_record
        for kind, body in entries:
            rec = frame(kind, body, pos)
            append(rec)
            pos += len(rec)
    else:
        for kind, body in entries:
            rec = codec.encode_record(kind, cipher.encrypt(body, pos, kind), pos,
                                      REC_FLAG_ENCRYPTED)
            append(rec)
            pos += len(rec)
    return parts, pos


def _framer(n: int) -> Callable[..., bytes]:
    """pack(magic, kind, flags, n, crc, body) -> the padded record, for ``n``-byte bodies."""
    pad = _PADS[-(12 + n) & 7]
    if n > 1024:  # long bodies: no Struct for each length (the copies cost more anyway)
        def frame(magic: int, kind: int, flags: int, length: int, crc: int,
                  body: bytes) -> bytes:
            return b"".join((_REC.pack(magic, kind, flags, length, crc), body, pad))

        return frame
    return struct.Struct(f"<HBBII{n}s{len(pad)}x").pack


def image(index: dict[str, Any], cipher: Cipher | None, *, start: int = DATA_START
          ) -> tuple[list[bytes], int, int]:
    """Records of every live key of ``index`` laid out from ``start``: (buffers, end,
    count).  (_files.image puts most keys into image records first, then calls this.)"""
    if cipher is not None:
        assert start == DATA_START
        entries = live_entries(index)
        framed, end = frame_all(entries, cipher)
        return framed, end, len(entries)
    # Unencrypted: live_entries() and encode_record() fused, and bytes and int values
    # encoded inline, as this runs over every key at each compaction.  A record is
    # framed by one Struct per body length (header, body and padding in one call).
    now = time.time()
    parts: list[bytes] = []
    append = parts.append
    ti, tl, keylen, bhead, shead = _TI.pack, _TL.pack, KEY_LEN, _BYTES_HEAD, _STR_HEAD
    short = PACKED_BODY_MAX
    # body length -> (pack(magic, kind, flags, n, crc, body) giving the padded record,
    # the crc seed's length part)
    framers: dict[int, tuple[Callable[..., bytes], int]] = {}
    pos = start
    expired = 0
    for key, stored in index.items():
        t = type(stored)
        if t is Expiring and stored.expiry <= now:
            expired += 1
            continue
        kind = KIND_SET
        try:
            kb = key.encode()  # strict UTF-8 equals surrogatepass whenever it succeeds
            if t is bytes:
                nv = len(stored)
                body = b"".join((keylen[len(kb)], kb,
                                 bhead[nv] if nv < short else tl(7, nv), stored))
            elif t is str:
                raw = stored.encode()
                nv = len(raw)
                body = b"".join((keylen[len(kb)], kb,
                                 shead[nv] if nv < short else tl(6, nv), raw))
            elif t is int:
                body = keylen[len(kb)] + kb + ti(3, stored)  # struct.error past 64 bits
            else:
                kind, body = entry(key, stored)
        except (UnicodeEncodeError, struct.error):
            kind, body = entry(key, stored)
        n = len(body)
        try:
            frame, seed = framers[n]
        except KeyError:
            frame, seed = framers[n] = _framer(n), n << 16
        append(frame(0x4B56, kind, 0, n, crc32(body, (pos * 0x9E3779B1) ^ (seed | kind)),
                     body))
        pos += (19 + n) & -8
    return parts, pos, len(index) - expired


# --- the inline set (bound into KV) --------------------------------------------------------

def _pack_split(view: memoryview, pos: int, magic: int, kind: int, flags: int, n: int,
                crc: int, body: bytes) -> None:
    """A record header and a long body (one Struct per length would cost too much memory)."""
    _REC_PACK(view, pos, magic, kind, flags, n, crc)
    view[pos + 12 : pos + 12 + n] = body


def packer(self: KV, n: int) -> tuple[Callable[..., None], int]:
    """For a KIND_SET record with an ``n``-byte body: pack_into(view, pos, magic, kind,
    flags, n, crc, body), and the part of the crc seed that does not depend on where
    the record goes (see codec's seed)."""
    seed = (n << 16) ^ KIND_SET
    if n > PACKED_BODY_MAX:
        return _pack_split, seed
    made = self._packers[n] = struct.Struct(f"<HBBII{n}s").pack_into, seed
    return made


def put(self: KV, body: bytes, n: int) -> bool:
    """Write and commit a KIND_SET record with an ``n``-byte body if it fits (False:
    it does not; multiprocess mode, writer lock held)."""
    pos = self._pos
    end = pos + ((19 + n) & ~7)
    if end > self._size:
        return False
    try:
        pack, seed = self._packers[n]
    except KeyError:
        pack, seed = packer(self, n)
    pack(self._view, pos, 0x4B56, KIND_SET, 0, n, crc32(body, (pos * 0x9E3779B1) ^ seed),
         body)
    self._commit[0] = end  # the commit point
    self._pos = self._seen = end
    self._nops += 1
    if self._waitw[0]:
        self._waitw[0] = 0
        self._wake()
    return True


def held_set(self: KV, key: str, value: Any) -> bool:
    """update_with()'s write of an int, str or bytes value: multiprocess, unencrypted, not
    in a batch, this thread inside ``_tlock`` and the writer lock held with nothing
    unread (W1-W3).  setitem's bytes and put() folded into one call without their
    re-checks of what update_with() has just checked.  False: nothing written (another
    value type, a key that does not encode, or no room): the caller sets it the general
    way."""
    t = type(value)
    try:
        kb = str.encode(key)
        if t is int:
            body = KEY_LEN[len(kb)] + kb + _TI.pack(3, value)
        elif t is str:
            raw = value.encode()
            nv = len(raw)
            body = b"".join((KEY_LEN[len(kb)], kb,
                             _STR_HEAD[nv] if nv < PACKED_BODY_MAX else _TL.pack(6, nv),
                             raw))
        elif t is bytes:
            nv = len(value)
            body = b"".join((KEY_LEN[len(kb)], kb,
                             _BYTES_HEAD[nv] if nv < PACKED_BODY_MAX else _TL.pack(7, nv),
                             value))
        else:
            return False
    except (UnicodeEncodeError, struct.error, IndexError, TypeError):
        return False
    n = len(body)
    pos = self._pos
    end = pos + ((19 + n) & ~7)
    if end > self._size:
        return False
    try:
        pack, seed = self._packers[n]
    except KeyError:
        pack, seed = packer(self, n)
    pack(self._view, pos, 0x4B56, 1, 0, n, crc32(body, (pos * 0x9E3779B1) ^ seed), body)
    self._commit[0] = end  # the commit point
    self._pos = self._seen = end
    self._nops += 1
    self._index[key] = value
    if self._waitw[0]:
        self._waitw[0] = 0
        self._wake()
    return True


def setitem(self: KV, key: str, value: Any) -> None:
    """``kv[key] = value``: the hot path.  A plain value, unencrypted, not in a batch,
    and the record fits: the same bytes as set() -> _append(), with the calls and checks
    folded in.  Anything else goes through set()."""
    # (bytes and str stay two branches: one branch choosing tag and table measured ~6%
    # more instructions per set.)
    t = type(value)
    try:
        kb = str.encode(key)  # strict UTF-8 equals surrogatepass whenever it succeeds
        if t is bytes:
            nv = len(value)
            body = b"".join((KEY_LEN[len(kb)], kb,
                             _BYTES_HEAD[nv] if nv < PACKED_BODY_MAX else _TL.pack(7, nv),
                             value))
        elif t is int:
            body = KEY_LEN[len(kb)] + kb + _TI.pack(3, value)
        elif t is str:
            raw = value.encode()
            nv = len(raw)
            body = b"".join((KEY_LEN[len(kb)], kb,
                             _STR_HEAD[nv] if nv < PACKED_BODY_MAX else _TL.pack(6, nv),
                             raw))
        elif t is float:
            body = KEY_LEN[len(kb)] + kb + _TF.pack(5, value)
        elif t is bool:
            body = KEY_LEN[len(kb)] + kb + (b"\x02" if value else b"\x01")
        else:
            return self.set(key, value)
    except (UnicodeEncodeError, struct.error, IndexError, TypeError):
        # Lone surrogates, ints past 64 bits: the general path encodes them.  Keys
        # past KEY_MAX or not str: it raises the error that says so.
        return self.set(key, value)
    n = len(body)
    tlock = self._tlock
    tlock.acquire()  # not `with`: measurably cheaper on this path
    try:
        if self._inline_sp:  # single-process, unencrypted, not in a batch
            pos = self._pos
            end = pos + ((19 + n) & ~7)
            if end <= self._size:  # put() inlined
                try:
                    pack, seed = self._packers[n]
                except KeyError:
                    pack, seed = packer(self, n)
                # Header and body in one call (KIND_SET; crc32 masks the seed).
                pack(self._view, pos, 0x4B56, 1, 0, n,
                     crc32(body, (pos * 0x9E3779B1) ^ seed), body)
                self._commit[0] = end  # the commit point
                self._pos = end
                self._nops += 1
                self._index[key] = value
                return None
        elif self._inline_mp and self._depth:
            # Inside lock() or update_with(): this thread holds the writer lock.
            if put(self, body, n):
                self._index[key] = value
                return None
        elif self._inline_mp:
            # Multiprocess (W1-W3 of store.py's protocol).  The writer lock is kept between
            # writes until someone asks for it (H1-H3), so a run of writes takes it once.
            # Taken, and nobody else wrote or others only appended: write.  Anything else
            # (compacted, damaged, full) goes the general way, via set().
            if not self._held:
                self._acquire_flock(follow=True)
            w = self._commit[0]
            if (w == self._seen or (not w & SUPERSEDED and self._read_appended(w))) \
                    and put(self, body, n):
                self._index[key] = value
                words = self._waitw
                if (words[1] or words[3] or not self._hold) and (
                        not self._hold or words[3] == LOCK_READY
                        or _monotonic() >= self._turn_at):
                    self._end_hold()  # no hold, a woken waiter is READY, or H3 is due
                return None
    finally:
        tlock.release()
    return self.set(key, value)
