"""The Channel's broadcast mode: one producer side, named subscribers with cursors.

Design rules:

- A broadcast channel (``broadcast=True``) never makes its producers wait for readers:
  a send evicts the oldest messages to make room.  Each subscriber reads at its own
  cursor, kept in its participant slot with its name (``subscribe(name)``), so a
  subscriber that comes back resumes where it stopped.
- Eviction moves tail first and overwrites the bytes after: a subscriber that copies a
  frame and then sees tail past its cursor knows the copy may be torn, and raises
  OverrunError (with the bytes it lost) instead of handing it out.  A subscriber never
  gets a view into the ring: the producer may overwrite it at any time.
- When even the emptied ring cannot take the frame unless the PAD frame before it goes
  too, the producer records where that PAD was (PAD_EVICTED): a subscriber whose cursor
  was at it lost nothing and carries on without an error.
- Producers of a broadcast channel claim by flock (no lease); on weakly ordered CPUs a
  subscriber reads under the same kernel lock (channel.py's top comment).

Steps (B1-B2 of channel.py's table):

    ====  =====================================  ==========  ===============================
    step  what                                   holds       another process may see
    ====  =====================================  ==========  ===============================
    B1    broadcast send: evict (store tail      pclaim if   subscribers at an evicted
          first), PAD if the frame would cross   MP          cursor get OverrunError
          the end, then overwrite, store head
    B2    subscriber: copy at cursor, re-read    -           -
          tail (moved past: OverrunError), then
          store the cursor in its slot
    ====  =====================================  ==========  ===============================
"""

from __future__ import annotations

import fcntl
from typing import TYPE_CHECKING, TypeVar

from ..errors import ModeConflictError, OverrunError
from . import _format as fmt
from . import _slots
from ._slots import slot_byte as _slot_byte
from ._wake import deadline as _deadline

if TYPE_CHECKING:
    pass

from ._state import State

__all__ = ["Broadcast"]

_HEAD_Q = fmt.HEAD_Q
_TAIL_Q = fmt.TAIL_Q
_CW_I = fmt.CONSUMERS_WAITING // 4
_PAD_WORD = fmt.PAD_WORD
_PAD_EVICTED_Q = fmt.PAD_EVICTED // 8
_CONSUMER = fmt.STATE_CONSUMER
_write_frame = fmt.write_frame
_Self = TypeVar("_Self", bound="Broadcast")


class Broadcast(State):
    """Subscribing, sending and receiving on a broadcast Channel (a base class of it: the
    state is the Channel's)."""

    __slots__ = ()

    if TYPE_CHECKING:  # provided by the Channel or another of its bases
        def _check_open(self) -> None: ...
        def _attach(self, role: int) -> int: ...
        def _claim(self, fd: int, deadline: float | None, full: bool) -> None: ...
        def _await_data(self, tail: int, deadline: float | None) -> None: ...
        def _wake_consumers(self) -> None: ...
        def _bad_frame(self, tail: int, head: int) -> Exception: ...

    @property
    def broadcast(self) -> bool:
        return self._bc

    @property
    def cursor(self) -> int:
        """A broadcast subscriber's read position (bytes since the channel was created)."""
        return self._cursor

    def subscribe(self: _Self, name: str) -> _Self:
        """Make this handle the broadcast subscriber ``name`` and return it.

        A new name starts at the oldest message the ring still retains; a name seen before
        resumes where it stopped (if the producer overwrote that meanwhile, the first
        receive raises OverrunError).  Each name is one live handle at a time.
        """
        with self._attach_mutex:  # the registry lock does not exclude our own threads
            return self._subscribe_locked(name)

    def _subscribe_locked(self: _Self, name: str) -> _Self:
        self._check_open()
        if not self._bc:
            raise ModeConflictError("subscribe() is for channels created with broadcast=True")
        if self._cslot is not None:
            raise ModeConflictError("this handle already subscribed; open another handle "
                                    "for another subscriber")
        raw = name.encode()
        if not 1 <= len(raw) <= fmt.NAME_SIZE:
            raise ValueError(f"a subscriber name is 1 to {fmt.NAME_SIZE} bytes of UTF-8, "
                             f"got {len(raw)}")
        slot = _slots.take_subscriber(self._hdr32, self._hdr8, self._lock_fd, raw,
                                      (self._pslot, self._cslot),
                                      lambda: int(self._hdr[_TAIL_Q]))
        self._cslot = slot
        self._cursor = int(self._hdr[_slot_byte(slot, fmt.SLOT_CURSOR) // 8])
        return self

    def _set_cursor(self, value: int) -> None:
        assert self._cslot is not None
        self._cursor = value
        self._hdr[_slot_byte(self._cslot, fmt.SLOT_CURSOR) // 8] = value

    def _cursor_back(self, msg: bytes) -> None:
        """Un-receive the message just received (recv_many's byte limit)."""
        self._set_cursor(self._cursor - fmt.frame_size(len(msg)))
        self._received -= 1
        self._received_bytes -= len(msg)

    def _send_broadcast(self, data: bytes | memoryview, n: int, timeout: float | None) -> None:
        """Publish to every subscriber; never waits for readers: the oldest messages are
        evicted (tail moves first, then the bytes are overwritten) to make room."""
        need = fmt.frame_size(n)
        hdr, cap, dq = self._hdr, self._cap, self._dq
        with self._send_mutex:
            if self._plocked:
                self._claim(self._pclaim, _deadline(timeout), True)
            try:
                head = hdr[_HEAD_Q]
                tail = hdr[_TAIL_Q]
                pos = head % cap
                pad = cap - pos if pos + need > cap else 0
                while tail < head and head + pad + need - tail > cap:
                    tpos = tail % cap
                    word = dq[tpos >> 3]
                    tail += cap - tpos if word == _PAD_WORD else fmt.frame_size(word & 0xFFFFFFFF)
                if tail != hdr[_TAIL_Q]:
                    hdr[_TAIL_Q] = tail  # readers see the eviction before the overwrite
                if pad:
                    dq[pos >> 3] = _PAD_WORD
                    head += pad
                    hdr[_HEAD_Q] = head
                    pos = 0
                    if head + need - tail > cap:
                        # Even the emptied ring needs the PAD itself gone.  Readers that were
                        # at the PAD lost nothing: say where it was, so they need not raise.
                        hdr[_PAD_EVICTED_Q] = tail
                        tail = head
                        hdr[_TAIL_Q] = tail
                _write_frame(self._data, pos, n, data)
                hdr[_HEAD_Q] = head + need
            finally:
                if self._plocked:
                    fcntl.flock(self._pclaim, fcntl.LOCK_UN)
        if self._hdr32[_CW_I]:
            self._wake_consumers()
        self._sent += 1
        self._sent_bytes += n

    def _overrun(self, cursor: int, tail: int) -> OverrunError:
        self._set_cursor(tail)
        return OverrunError(
            f"subscriber fell behind: the producer overwrote {tail - cursor} bytes of messages "
            "it had not read; it continues from the oldest retained message (a larger "
            "capacity, or a faster reader, avoids this)", lost_bytes=tail - cursor)

    def _recv_broadcast(self, timeout: float | None) -> bytes:
        if self._cslot is None:
            self._attach(_CONSUMER)  # raises: subscribe first
        if self._pending_overrun is not None:
            exc, self._pending_overrun = self._pending_overrun, None
            raise exc
        deadline = _deadline(timeout)
        hdr = self._hdr
        while True:
            c = self._cursor
            if hdr[_HEAD_Q] == c:
                self._await_data(c, deadline)
                continue
            if self._clocked:  # weakly ordered CPU: read under the producers' lock
                fcntl.flock(self._cclaim, fcntl.LOCK_EX)
            try:
                out = self._read_at(c)
            finally:
                if self._clocked:
                    fcntl.flock(self._cclaim, fcntl.LOCK_UN)
            if out is not None:
                self._received += 1
                self._received_bytes += len(out)
                return out

    def _read_at(self, c: int) -> bytes | None:
        """The message at cursor ``c`` (moving the cursor past it), or None after skipping
        a PAD; OverrunError if the producer evicted it before or while we copied it."""
        hdr, cap = self._hdr, self._cap
        head = hdr[_HEAD_Q]
        tail = hdr[_TAIL_Q]
        if c < tail:
            if c == hdr[_PAD_EVICTED_Q] and tail == c + cap - c % cap:
                self._set_cursor(tail)  # only a PAD was evicted under us: nothing lost
                return None
            raise self._overrun(c, tail)
        pos = c % cap
        word = self._dq[pos >> 3]
        if word == _PAD_WORD:
            if hdr[_TAIL_Q] > c:
                raise self._overrun(c, hdr[_TAIL_Q])
            self._set_cursor(c + cap - pos)
            return None
        n = word & 0xFFFFFFFF
        if word >> 32 or pos + 8 + n > cap or n + 8 > head - c:
            if hdr[_TAIL_Q] > c:  # overwritten while we looked
                raise self._overrun(c, hdr[_TAIL_Q])
            raise self._bad_frame(c, head)
        out = self._mm[self._base + pos + 8 : self._base + pos + 8 + n]
        if hdr[_TAIL_Q] > c:  # evicted during the copy: the bytes may be torn
            raise self._overrun(c, hdr[_TAIL_Q])
        self._set_cursor(c + fmt.frame_size(n))
        return out
