"""The Queue's messages on the Channel's lease fast paths: one call a put, one a get.

Design rules:

- A Queue message (queue.py) is a u64 sequence number, then the object payload of
  ``_format.py`` (buffer count, reserved, pickle length, the pickle).  The common put is a
  pickle with no out-of-band buffer into a queue without ``maxsize``; the common get is
  such a message.  Going through ``_send_with`` / ``_recv_with`` with a closure costs as
  much again as the Channel's own multi-producer send (callgrind: 47k instructions a
  put+get against 26k), so these two write and read the whole frame in one place, under
  the lease, with one cached Struct per pickle length.
- They run only in the lease's common case (multi-producer/consumer, format version 2-3,
  TSO; we hold the lease; the frame fits below the room we saw last, or a whole message
  is there): steps L1-L3 then S4-S5 (``_send_seq``) or R2-R3 (``_recv_seq``) then L9 of
  channel.py's and _claims.py's tables, and the Queue's P4 or G2 between them.  In every
  other case they leave nothing changed (busy word lowered, nothing written or consumed)
  and return a miss: the caller takes the general path, which claims, waits, steals.
- They count nothing in the handle's statistics (the Queue's channel handle is private to
  it, and has none to show): four attribute updates were ~3% of a put+get.
- The counters are the Queue's state page (``counters`` cast 'Q'): PUTS is read and
  advanced under the producer claim, so ring order is sequence order; GETS is raised
  under the consumer claim.  A process killed between the two stores of either side
  leaves what queue.py's table says it may (a PUTS gap; a message consumed again).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _format as fmt
from ._state import State

__all__ = ["SEQ_FRAMED_MAX", "Sequenced"]

_PLEASE_I = fmt.PRODUCER_LEASE // 4
_CLEASE_I = fmt.CONSUMER_LEASE // 4
# The frame of a Queue message: length word, sequence number, the object payload's head.
_HEAD = struct.Struct("<QQIIQ")
_HEAD_SIZE = _HEAD.size
_MSG = fmt.QUEUE_MSG  # the message without its length word
assert _HEAD.format[2:] == _MSG.format[1:]  # (the length word, then the message)
assert _MSG.size + 8 == _HEAD_SIZE == 32
SEQ_FRAMED_MAX = 1024  # pickles up to this long are framed by one cached Struct per length


class Sequenced(State):
    """The Queue's one-call put and get (a base class of the Channel)."""

    __slots__ = ()

    if TYPE_CHECKING:  # provided by the Channel
        def _wake_consumers(self) -> None: ...
        def _wake_producers(self) -> None: ...

    def _seq_framer(self, blen: int) -> Callable[..., None]:
        pack: Callable[..., None] = struct.Struct(f"<QQIIQ{blen}s").pack_into
        self._seq_framers[blen] = pack
        return pack

    def _send_seq(self, body: bytes, counters: memoryview, puts: int) -> bool:
        """Put the Queue message of pickle ``body`` (no out-of-band buffer) with sequence
        number ``counters[puts]``, advancing it; True when done, False (nothing changed)
        when this is not the lease's common case."""
        blen = len(body)
        n = blen + 24
        need = (n + 15) & ~7
        if n > self._lease_send_limit:  # -1 unless attached, leased and not finished
            return False
        mutex = self._send_mutex
        mutex.acquire()
        h32, busy = self._hdr32, self._pbusy
        try:
            h32[busy] = 1  # L1
            if self._fenced:  # L2 (version 3: no barrier here, see _claims.py)
                fence = self._fence
                fence.acquire()
                fence.release()
            if h32[_PLEASE_I] == self._ptoken:  # L3
                hdr, cap = self._hdr, self._cap
                head = hdr[8]  # _HEAD_Q
                pos = head % cap
                if pos + need <= cap and head + need <= self._room_end:
                    seq = counters[puts]
                    if blen <= SEQ_FRAMED_MAX:
                        pack = self._seq_framers.get(blen) or self._seq_framer(blen)
                        pack(self._data, pos, n, seq, 0, 0, blen, body)  # S4
                    else:
                        _HEAD.pack_into(self._data, pos, n, seq, 0, 0, blen)
                        self._data[pos + _HEAD_SIZE : pos + _HEAD_SIZE + blen] = body
                    counters[puts] = seq + 1  # P4
                    hdr[8] = head + need  # S5: publish
                    h32[busy] = 0  # L9
                    if h32[18]:  # _CW_I
                        self._wake_consumers()
                    return True
            h32[busy] = 0  # L4: the caller's general path claims (or steals)
            return False
        except BaseException:  # a busy word left up would stall thieves
            h32[busy] = 0
            raise
        finally:
            mutex.release()

    def _recv_seq(self, counters: memoryview, gets: int) -> Any:
        """Get the next Queue message if it has no out-of-band buffer: its pickle (bytes),
        raising ``counters[gets]`` past its sequence number (``gets`` 0: no counter).  None
        (nothing changed) when this is not the lease's common case, or the message is
        another kind."""
        if not self._lease_recv:  # attached, with the consumers' lease
            return None
        mutex = self._recv_mutex
        mutex.acquire()
        h32, busy = self._hdr32, self._cbusy
        try:
            h32[busy] = 1  # L1
            if self._fenced:  # L2 (version 3: no barrier here, see _claims.py)
                fence = self._fence
                fence.acquire()
                fence.release()
            if h32[_CLEASE_I] == self._ctoken:  # L3
                hdr, cap = self._hdr, self._cap
                tail = hdr[16]  # _TAIL_Q
                head = hdr[8]  # before the frame's words: they are whole below it
                pos = tail % cap
                dq = self._dq
                i = pos >> 3
                n = dq[i]  # a PAD or damage has high bits: runs past head
                if tail + 8 + n <= head and pos + 8 + n <= cap and n >= 24:
                    # The message's words (_HEAD after the length word): seq at i + 1,
                    # buffer count and reserved at i + 2 (0: no out-of-band buffer), the
                    # pickle's length at i + 3; two word reads cost less than an unpack.
                    blen = dq[i + 3]
                    if dq[i + 2] == 0 and blen + 24 <= n:
                        at = self._base + pos + _HEAD_SIZE
                        out = self._mm[at : at + blen]
                        if gets:  # (0: GETS not kept)
                            seq = dq[i + 1]
                            if seq >= counters[gets]:
                                counters[gets] = seq + 1  # G2
                        hdr[16] = tail + ((n + 15) & ~7)  # R3
                        h32[busy] = 0  # L9
                        if h32[34]:  # _PW_I
                            self._wake_producers()
                        return out
            h32[busy] = 0
            return None
        except BaseException:
            h32[busy] = 0
            raise
        finally:
            mutex.release()
