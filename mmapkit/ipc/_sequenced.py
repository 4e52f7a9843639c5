"""The Queue's put and get on the Channel's lease fast paths: one call a put, one a get.

Design rules:

- A Queue message (queue.py) is a u64 sequence number, then the object payload of
  ``_format.py`` (buffer count, reserved, pickle length, the pickle).  The common put is a
  pickle with no out-of-band buffer into a queue without ``maxsize``; the common get is
  such a message.  Going through ``_send_with`` / ``_recv_with`` with a closure costs as
  much again as the Channel's own multi-producer send (callgrind: 47k instructions a
  put+get against 26k), so these two write and read the whole frame in one place, under
  the lease, with one cached Struct per pickle length.
- ``_send_seq(obj, block, timeout)`` and ``_recv_seq(block, timeout)`` are the whole of
  ``Queue.put`` / ``Queue.get`` of a queue without ``maxsize``: pickling (P1) and
  unpickling included, so that queue.py can make them the Queue's own ``put`` and
  ``get`` (instance attributes): a call layer between the user and this frame was ~0.5k
  instructions a side (callgrind, ~4% of a put+get).  What they cannot do in one call
  they hand to the queue's general path, ``_seq_put_miss(obj, pickle or None, block,
  timeout)`` / ``_seq_get_miss(block, timeout)`` (queue.py sets both, through a weak
  reference: no cycle between the channel handle and the queue's parts).
- They are methods of ``SequencedChannel``, the Channel a Queue makes (queue.py), not of
  every Channel: pickle's functions are this module's globals (an attribute holding them
  cost ~0.35k instructions a put+get more), and importing mmapkit.ipc loads no pickle.
- The one-call part runs only in the lease's common case (multi-producer/consumer, format
  version 2-3, TSO; we hold the lease; the frame fits below the room we saw last, or,
  that used up, below tail + capacity looked at again (``_room_now``: on a full ring every
  put would otherwise miss, ~28k instructions a message, callgrind); or a
  whole message is there): steps L1-L3 then S4-S5 or R2-R3 then L9 of channel.py's and
  _claims.py's tables, and the Queue's P4 or G2 between them.  In every other case it
  leaves nothing changed (busy word lowered, nothing written or consumed) and the miss
  hook takes over: it claims, waits, steals.  Our process's turn (_state.Turn) is taken
  around it: another thread of ours in it is a miss too.
- They count nothing in the handle's statistics (the Queue's channel handle is private to
  it, and has none to show): four attribute updates were ~3% of a put+get.
- The counters are the Queue's state page (``_seq_counters``, cast 'Q'): PUTS is read and
  advanced under the producer claim, so ring order is sequence order; GETS is raised
  under the consumer claim (index ``_seq_gets``; 0: not kept).  A process killed between
  the two stores of either side leaves what queue.py's table says it may (a PUTS gap; a
  message consumed again).
- Pickling (P1) passes a ``buffer_callback`` that raises at the first out-of-band buffer
  (``no_buffers``, _inplace.py's, which Channel.send_obj uses too): most objects have
  none, and a fixed callback costs a third of what a new list and its bound append cost
  per put (~650 of ~28k instructions a put+get); an object that has one (a numpy array)
  stops the pickler there, and the miss hook pickles it again, collecting them (its
  __reduce__ methods up to that buffer run twice).
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from typing import Any

from . import _format as fmt
from ._inplace import HasBuffers, no_buffers
from .channel import Channel

__all__ = ["SEQ_FRAMED_MAX", "HasBuffers", "SequencedChannel", "no_buffers"]

_PLEASE_I = fmt.PRODUCER_LEASE // 4
_CLEASE_I = fmt.CONSUMER_LEASE // 4
# The frame of a Queue message: length word, sequence number, the object payload's head.
_HEAD = struct.Struct("<QQIIQ")
_HEAD_SIZE = _HEAD.size
_MSG = fmt.QUEUE_MSG  # the message without its length word
assert _HEAD.format[2:] == _MSG.format[1:]  # (the length word, then the message)
assert _MSG.size + 8 == _HEAD_SIZE == 32  # (channel.py's _seq_base: _base + 32)
# The cached framers spell the two zero words (buffer count, reserved) as pad bytes, which
# pack_into writes as zeros (documented): two arguments fewer to convert a put.
_PADDED = "<QQ8xQ"
assert struct.Struct(_PADDED).pack(29, 7, 5) == _HEAD.pack(29, 7, 0, 0, 5)
SEQ_FRAMED_MAX = 1024  # pickles up to this long are framed by one cached Struct per length
_dumps, _loads = pickle.dumps, pickle.loads


class SequencedChannel(Channel):
    """The Channel of a Queue: a Channel with the Queue's one-call put and get."""

    __slots__ = ()

    def _seq_framer(self, blen: int) -> Callable[..., None]:
        pack: Callable[..., None] = struct.Struct(f"{_PADDED}{blen}s").pack_into
        framers = self._seq_framers
        if len(framers) <= SEQ_FRAMED_MAX:  # (a list: its index is a cheaper look-up
            framers.extend([None] * (SEQ_FRAMED_MAX + 1 - len(framers)))  # than a dict's)
        framers[blen] = pack
        return pack

    def _send_seq(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Queue.put(obj, block, timeout) of a queue without maxsize: pickle ``obj`` (P1)
        and put it as the Queue message with sequence number PUTS, advancing PUTS, in one
        call when this is the lease's common case; else (nothing changed) through
        ``_seq_put_miss``."""
        try:
            body = _dumps(obj, 5, buffer_callback=no_buffers)  # P1
        except HasBuffers:
            self._seq_put_miss(obj, None, block, timeout)
            return
        blen = len(body)
        n = blen + 24
        if n <= self._lease_send_limit:  # -1 unless attached, leased and not finished
            if blen <= SEQ_FRAMED_MAX:  # (looked up before L1: a shorter claim is one
                try:  #                   a preempting tick is less likely to land in)
                    pack = self._seq_framers[blen]
                except IndexError:
                    pack = None
                if pack is None:
                    pack = self._seq_framer(blen)
            else:
                pack = None
            free = self._send_free  # our process's turn (_state.Turn)
            try:
                free.pop()
            except IndexError:  # another thread of ours has it: the miss hook waits for it
                pass
            else:
                h32, busy = self._hdr32, self._pbusy
                try:
                    h32[busy] = 1  # L1
                    if self._fenced:  # L2 (version 3: no barrier here, see _claims.py)
                        fence = self._fence
                        fence.acquire()
                        fence.release()
                    if h32[_PLEASE_I] == self._ptoken:  # L3
                        hdr, cap = self._hdr, self._cap
                        head = self._head_mine  # (see _head_mine in _state.py)
                        if head < 0:
                            head = hdr[8]  # _HEAD_Q
                        pos = head % cap
                        need = (n + 15) & ~7
                        end = head + need  # (each sum of big ints is a new int object)
                        # (the room seen last used up: look at tail again before missing,
                        # ~28k instructions less than the general path on a full ring)
                        if pos + need <= cap and (end <= self._room_end
                                                  or end <= self._room_now()):
                            counters = self._seq_counters
                            seq = counters[0]  # PUTS
                            if pack is not None:
                                pack(self._data, pos, n, seq, blen, body)  # S4
                            else:
                                _HEAD.pack_into(self._data, pos, n, seq, 0, 0, blen)
                                self._data[pos + _HEAD_SIZE : pos + _HEAD_SIZE + blen] = body
                            counters[0] = seq + 1  # P4
                            hdr[8] = self._head_mine = end  # S5: publish
                            h32[busy] = 0  # L9
                            if h32[18]:  # _CW_I
                                self._wake_consumers()
                            return
                    h32[busy] = 0  # L4: the miss hook claims (or steals)
                except BaseException:  # a busy word left up would stall thieves
                    h32[busy] = 0
                    raise
                finally:
                    free.append(True)
        self._seq_put_miss(obj, body, block, timeout)

    def _recv_seq(self, block: bool = True, timeout: float | None = None) -> Any:
        """Queue.get(block, timeout): the next Queue message's object, in one call when
        this is the lease's common case and the message has no out-of-band buffer
        (raising GETS past its sequence number when ``_seq_gets`` keeps it); else
        (nothing changed) what ``_seq_get_miss`` returns."""
        if self._lease_recv:  # attached, with the consumers' lease
            free = self._recv_free  # our process's turn (_state.Turn)
            try:
                free.pop()
            except IndexError:  # another thread of ours has it: the miss hook waits for it
                pass
            else:
                out = None
                h32, busy = self._hdr32, self._cbusy
                try:
                    h32[busy] = 1  # L1
                    if self._fenced:  # L2 (version 3: no barrier here, see _claims.py)
                        fence = self._fence
                        fence.acquire()
                        fence.release()
                    if h32[_CLEASE_I] == self._ctoken:  # L3
                        hdr, cap = self._hdr, self._cap
                        tail = self._tail_mine  # (see _tail_mine in _state.py)
                        if tail < 0:
                            tail = hdr[16]  # _TAIL_Q
                        head = self._head_seen
                        if tail >= head:  # what we saw is consumed: look at head again,
                            head = self._head_seen = hdr[8]  # before the frame's words
                        pos = tail % cap
                        dq = self._dq
                        i = pos >> 3
                        n = dq[i]  # a PAD or damage has high bits: runs past head
                        m = n + 8  # (a cached small int; tail + 8 + n made two new ones)
                        # The message's words (_HEAD after the length word): seq at i + 1,
                        # buffer count and reserved at i + 2 (0: no out-of-band buffer;
                        # read through the view that starts 2 words in, as i + 2 would be
                        # a new int object), the pickle's length at i + 3.  Every Queue
                        # message without buffers is n = 24 + that length (both puts write
                        # it so), so the pickle is the frame's last n - 24 bytes and that
                        # word is not read (~0.5k instructions); a damaged one cannot take
                        # the read past the frame.
                        if (m <= head - tail and m <= cap - pos and n >= 24
                                and self._dq2[i] == 0):
                            blen = n - 24
                            at = self._seq_base + pos
                            out = self._mm[at : at + blen]
                            gets = self._seq_gets
                            if gets:  # (0: GETS not kept)
                                counters = self._seq_counters
                                seq = dq[i + 1]
                                if seq >= counters[gets]:
                                    counters[gets] = seq + 1  # G2
                            hdr[16] = self._tail_mine = tail + ((n + 15) & ~7)  # R3
                    h32[busy] = 0  # L9 (L4 when nothing was taken)
                except BaseException:  # a busy word left up would stall thieves
                    h32[busy] = 0
                    raise
                finally:
                    free.append(True)
                if out is not None:
                    if h32[34]:  # _PW_I
                        self._wake_producers()
                    return _loads(out)  # (outside the claim and our turn: it may run
                    #                     any code, even another get())
        return self._seq_get_miss(block, timeout)
