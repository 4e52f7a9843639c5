"""The Channel's in-place paths: messages written and read inside the ring, and objects.

Design rules:

- ``reserve(n)`` hands the producer the ``n`` payload bytes of a frame inside the ring,
  under the producer claim (steps S1-S3 of channel.py's table); the length word and the
  head store (S4-S5) follow when the block ends without an exception, so a block that
  raises, or a process killed inside it, publishes nothing.  ``recv_view()`` lends a
  read-only view of the next payload under the consumer claim (R1-R2); the tail store
  (R3) follows when the block ends, whatever happened in it (the message is consumed).
- ``_send_with`` / ``_recv_with`` are the same two as plain calls taking a function: a
  generator-based context manager costs as much as a small send, and the Queue
  (queue.py) puts and gets every message this way.
- Objects (``send_obj``/``recv_obj``) travel by pickle protocol 5 in the object payload
  of ``_format.py`` (``write_obj``/``read_obj``/``copy_obj``): out-of-band buffers (numpy
  arrays, PickleBuffer) are written straight into the ring, one copy, and come out as
  views of the receiver's one copy (but see recv_obj below).
- ``send_obj`` frames a small object without out-of-band buffers (a pickle of at most
  ``SMALL_OBJ`` bytes: most messages) into bytes, the object head and the pickle, and
  sends it by ``send()``'s one-call path; the extra copy of up to 4 KiB costs less than
  ``_send_with``'s closure and general claim.  Pickling first passes ``no_buffers``,
  which stops at the first out-of-band buffer (a fixed callback costs less than a new
  list and its bound append); such an object is pickled again, collecting them (its
  __reduce__ methods up to that buffer run twice).
- ``recv_obj`` takes the common message (no out-of-band buffer) by ``recv()``'s one-call
  path and unpickles the pickle in those bytes (sliced out up to 4 KiB, which is cheaper
  than a memoryview; in place beyond).  A message with buffers needs a writable copy, a
  bytearray, which recv()'s bytes are not: while the last object the handle received
  had buffers, it first looks at the buffer count of the message at tail and, when
  there are, takes it by ``_recv_with`` into a bytearray (one copy); otherwise such a
  message comes by recv() and is copied once more.  So a stream of arrays pays a second
  copy on its first array only, and a stream of small objects pays no look (~260 ns a
  message; in 4 x 4 on 2 vCPUs a look on every message cost 17%, 556k against 669k
  msgs/s, and waiting there, outside the claim, had every consumer spinning).  One
  consumer waits in the look while the ring is empty; several wait in recv()'s claim.
  A fork child and a closed handle start without the look (it waits as a consumer).
- Both sides together, callgrind, a send_obj + recv_obj of a tuple of an int and a
  40-char str in one process: 41.2k -> 25.7k instructions (MPMC 45.9k -> 29.9k); in
  two processes 408k -> 812k msgs/s (4 x 4: 369k -> 650k).
- A broadcast channel has no in-place paths: its producer may overwrite a frame a
  subscriber is looking at, and subscribers share no claim with it.  Its objects are
  framed in a bytearray and sent by copy.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import MessageTooLargeError, ModeConflictError
from . import _format as fmt
from ._state import State
from ._wake import deadline as _deadline

__all__ = ["SMALL_OBJ", "HasBuffers", "InPlace", "no_buffers"]

_HEAD_Q, _TAIL_Q = fmt.HEAD_Q, fmt.TAIL_Q
_CW_I = fmt.CONSUMERS_WAITING // 4
_PRODUCER, _CONSUMER = fmt.STATE_PRODUCER, fmt.STATE_CONSUMER
_copy_obj = fmt.copy_obj
_OBJ_HEAD = fmt.OBJ_HEAD
_OBJ_HEAD_SIZE = _OBJ_HEAD.size
SMALL_OBJ = 4096  # a pickle up to this long (no out-of-band buffer) goes by send()


def _fast_paths_spell_the_codec() -> bool:
    """The format as send_obj and recv_obj's look spell it inline, against _format.py."""
    payload = bytearray(fmt.obj_size(3, []))
    fmt.write_obj(payload, 0, b"abc", [])
    head = fmt.FRAME.pack(5, fmt.KIND_DATA) + _OBJ_HEAD.pack(7, 0, 9)
    return (_OBJ_HEAD.pack(0, 0, 3) + b"abc" == payload  # send_obj: head + pickle
            and fmt.PAD_WORD > 0xFFFFFFFF  # the look: a PAD's length word has high bits,
            and int.from_bytes(head[:8], "little") == 5  # a data frame's is its length,
            and int.from_bytes(head[8:16], "little") & 0xFFFFFFFF == 7)  # the count


assert _fast_paths_spell_the_codec()


class HasBuffers(Exception):
    """Pickling met an out-of-band buffer: pickle the object again, collecting them."""


def no_buffers(buffer: Any) -> None:
    """A ``buffer_callback`` for pickle.dumps that stops at the first out-of-band buffer
    (see the top comment)."""
    raise HasBuffers


class InPlace(State):
    """reserve(), recv_view() and the object path of a Channel (a base class of it: the
    state is the Channel's)."""

    __slots__ = ()

    if TYPE_CHECKING:  # provided by the Channel or another of its bases
        def _attach(self, role: int) -> int: ...
        def _too_large(self, n: int) -> MessageTooLargeError: ...
        def _acquire_space(self, need: int, deadline: float | None) -> int: ...
        def _lease_place(self, need: int) -> int: ...
        def _p_leave(self) -> None: ...
        def _wake_consumers(self) -> None: ...
        def _lease_take(self) -> tuple[int, int, int] | None: ...
        def _take(self, deadline: float | None) -> tuple[int, int, int]: ...
        def _release(self, tail: int, n: int) -> None: ...
        def _await_data(self, tail: int, deadline: float | None) -> None: ...
        def send(self, data: bytes | bytearray | memoryview,
                 timeout: float | None = None) -> None: ...
        def recv(self, timeout: float | None = None) -> bytes: ...

    def _in_place_need(self, n: int) -> int:
        """Checks shared by reserve() and _send_with(); the ring bytes an ``n``-byte frame
        takes (length word and payload, padded to 8)."""
        if self._bc:
            raise ModeConflictError("reserve() writes in place, which a broadcast channel "
                                    "cannot offer; use send()")
        if self._pslot is None:
            self._attach(_PRODUCER)
        if n < 0:
            raise ValueError(f"cannot reserve {n} bytes")
        if n > self._max:
            raise self._too_large(n)
        return fmt.frame_size(n)

    @contextlib.contextmanager
    def reserve(self, n: int, timeout: float | None = None) -> Iterator[memoryview]:
        """``with ch.reserve(n) as buf:`` fill ``buf`` (n bytes inside the ring) in place;
        the message is published when the block ends, and dropped if it raises.

        With ``multi_producer`` the producer claim is held for the whole block: keep it
        short.  Do not keep ``buf`` (or views of it) after the block.
        """
        need = self._in_place_need(n)
        with self._send_mutex if self._plocked else contextlib.nullcontext():
            head = self._acquire_space(need, _deadline(timeout))
            done = False
            try:
                pos = head % self._cap
                buf = self._data[pos + 8 : pos + 8 + n]
                try:
                    yield buf
                finally:
                    buf.release()
                done = True
            finally:
                self._end_in_place(head, n, need, done)

    def _end_in_place(self, head: int, n: int, need: int, publish: bool) -> None:
        """The end of reserve() and _send_with(): the length word and head store (S4-S5)
        when ``publish``, then the unclaim and wake-up (S6) either way."""
        try:
            if publish:
                self._dq[(head % self._cap) >> 3] = n
                self._hdr[_HEAD_Q] = head + need
        finally:
            if self._plocked:
                self._p_leave()
        if publish:
            if self._hdr32[_CW_I]:
                self._wake_consumers()
            self._sent += 1
            self._sent_bytes += n


    @contextlib.contextmanager
    def recv_view(self, timeout: float | None = None) -> Iterator[memoryview]:
        """``with ch.recv_view() as mv:`` read the next message in place (no copy); it is
        consumed when the block ends, even if the block raises.  ``mv`` is read-only
        and invalid after the block; copy what you keep."""
        if self._bc:
            raise ModeConflictError("a broadcast producer may overwrite what a view shows; "
                                    "use recv() on broadcast channels")
        if self._cslot is None:
            self._attach(_CONSUMER)
        with self._recv_mutex if self._clocked else contextlib.nullcontext():
            tail, start, n = self._take(_deadline(timeout))
            view = self._data[start : start + n].toreadonly()
            try:
                yield view
            finally:
                view.release()
                self._release(tail, n)

    def _send_with(self, n: int, fill: Callable[[memoryview, int], None],
                   deadline: float | None = None) -> None:
        """:meth:`reserve` as a plain call, for mmapkit.ipc.queue (a generator-based
        context manager costs as much as the send itself): ``fill(ring, at)`` writes the
        ``n``-byte payload at offset ``at`` of the ring view, in place under the producer
        claim (steps S1-S4); the frame is published (S5-S6) when it returns, and dropped
        if it raises.  ``deadline`` is a time.monotonic() value (None: wait for room)."""
        need = self._in_place_need(n)
        mutex = self._send_mutex if self._plocked else None
        if mutex:
            mutex.acquire()
        try:
            head = self._lease_place(need) if self._please else -1
            if head < 0:
                head = self._acquire_space(need, deadline)
            done = False
            try:
                fill(self._data, head % self._cap + 8)
                done = True
            finally:
                self._end_in_place(head, n, need, done)
        finally:
            if mutex:
                mutex.release()

    def _recv_with(self, take: Callable[[mmap.mmap, int, int], Any],
                   deadline: float | None = None) -> Any:
        """:meth:`recv_view` as a plain call, for mmapkit.ipc.queue: ``take(mapping, at,
        n)`` reads the next message, ``n`` bytes at offset ``at`` of the mmap, in place
        under the consumer claim (steps R1-R2), and its result is returned; the message is
        consumed (R3-R4) when it returns, even if it raises.  ``take`` must not write the
        mapping nor keep a view of it.  ``deadline`` is a time.monotonic() value."""
        if self._cslot is None:
            if self._bc:
                raise ModeConflictError("a broadcast producer may overwrite what a view "
                                        "shows; use recv() on broadcast channels")
            self._attach(_CONSUMER)
        mutex = self._recv_mutex if self._clocked else None
        if mutex:
            mutex.acquire()
        try:
            taken = self._lease_take() if self._clease else None
            tail, start, n = taken or self._take(deadline)
            try:
                return take(self._mm, self._base + start, n)
            finally:
                self._release(tail, n)
        finally:
            if mutex:
                mutex.release()


    def send_obj(self, obj: Any, timeout: float | None = None) -> None:
        """Send a picklable object (pickle protocol 5).  Out-of-band buffers (numpy arrays,
        PickleBuffer) are copied straight into the ring: one copy, no intermediate bytes.
        A small object without them goes as one message by send() (see the top comment)."""
        import pickle

        try:
            body = pickle.dumps(obj, 5, buffer_callback=no_buffers)
        except HasBuffers:
            buffers: list[pickle.PickleBuffer] = []
            body = pickle.dumps(obj, 5, buffer_callback=buffers.append)
            raws = fmt.pickle_buffers(buffers)
        else:
            if len(body) <= SMALL_OBJ:  # the object payload in one piece, by send()
                self.send(_OBJ_HEAD.pack(0, 0, len(body)) + body, timeout)
                return
            raws = []
        total = fmt.obj_size(len(body), raws)
        try:
            if self._bc:  # no writing in place: subscribers may be reading there
                blob = bytearray(total)
                fmt.write_obj(blob, 0, body, raws)
                self.send(blob, timeout)
            else:
                self._send_with(total, lambda ring, at: fmt.write_obj(ring, at, body, raws),
                                _deadline(timeout))
        finally:
            for r in raws:
                r.release()

    def _buffers_next(self, timeout: float | None) -> bool:
        """Whether the message at tail is an object payload with out-of-band buffers (or
        a frame that does not say: a PAD, damage), looked at while the last object this
        handle received had buffers.  One consumer waits here while the ring is empty
        (nobody else can take the message it then sees); with several, an empty ring says
        False (they wait in recv()'s claim, not all spinning here at once), and another
        consumer may take the message looked at first.  A PAD or damage has high bits in
        its length word; a frame never starts in the ring's last 8 bytes."""
        hdr, dq, cap = self._hdr, self._dq, self._cap
        tail = hdr[_TAIL_Q]
        if hdr[_HEAD_Q] == tail:
            if self._mc:
                return False
            self._await_data(tail, _deadline(timeout))
        pos = tail % cap
        n = dq[pos >> 3]
        return not (_OBJ_HEAD_SIZE <= n <= 0xFFFFFFFF and pos + 8 + _OBJ_HEAD_SIZE <= cap
                    and not dq[(pos + 8) >> 3] & 0xFFFFFFFF)  # the head's first u32: count

    def recv_obj(self, timeout: float | None = None) -> Any:
        """Receive an object sent by :meth:`send_obj`.  The message is copied once: the
        whole payload (bytes) when it has no out-of-band buffer, else all of it into a
        bytearray whose views the buffers (numpy arrays) are (writable); the first
        message with buffers after one without (or one another consumer took first) is
        copied twice: see the top comment."""
        import pickle

        blob: bytes | bytearray
        if self._bc:
            blob = bytearray(self.recv(timeout))
        elif self._obj_look and self._buffers_next(timeout):
            blob = self._recv_with(_copy_obj, _deadline(timeout))
        else:  # the common message, by recv()'s one-call path
            whole = self.recv(timeout)
            if len(whole) >= _OBJ_HEAD_SIZE:
                count, _, blen = _OBJ_HEAD.unpack_from(whole)
                end = _OBJ_HEAD_SIZE + blen
                if count == 0 and end <= len(whole):
                    if self._obj_look:
                        self._obj_look = False
                    # (a small pickle is sliced out, ~130 ns less than a memoryview)
                    return pickle.loads(whole[_OBJ_HEAD_SIZE:end] if blen <= SMALL_OBJ
                                        else memoryview(whole)[_OBJ_HEAD_SIZE:end])
            blob = bytearray(whole)  # buffers (a second copy), or not an object payload
        if blob.__class__ is bytes:
            self._obj_look = False
            return pickle.loads(blob)
        try:
            body, bufs = fmt.read_obj(memoryview(blob))
        except ValueError as exc:
            raise ValueError(f"the message is not an object sent by send_obj() ({exc}); "
                             "receive it with recv()") from None
        self._obj_look = bool(bufs)
        return pickle.loads(body, buffers=bufs)
