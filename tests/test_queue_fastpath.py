"""The Queue's one-call put and get (ipc/_sequenced.py): the bytes they write are the
format's spelling of a Queue message, what they read is what the general path wrote, and a
miss changes nothing."""

from __future__ import annotations

import contextlib
import pickle
import queue
import struct
import time

import pytest
from conftest import exit_code, fork_child

from mmapkit.ipc import Channel
from mmapkit.ipc import _format as fmt
from mmapkit.ipc._sequenced import SEQ_FRAMED_MAX, SequencedChannel

_SEQ = struct.Struct("<Q")


def _message(seq: int, body: bytes) -> bytes:
    """A Queue message as queue.py's table spells it: seq, then the object payload."""
    raws: list[memoryview] = []
    payload = bytearray(fmt.obj_size(len(body), raws))
    fmt.write_obj(payload, 0, body, raws)
    return _SEQ.pack(seq) + bytes(payload)


def _mpmc(capacity: int = 1 << 16) -> SequencedChannel:
    return SequencedChannel.anonymous(capacity, multi_producer=True, multi_consumer=True)


def _attach(ch: Channel) -> None:
    """Take both roles and the two leases the way the general path does (first send and
    receive steal them), so the fast paths run in their common case."""
    ch.send(b"x")
    assert ch.recv() == b"x"


MISSED = object()  # what _Parts' get hook returns


class _Parts:
    """A Queue's parts on a bare channel (what queue.py's _Shared sets): the counters, and
    miss hooks that record what was handed to them."""

    def __init__(self, ch: SequencedChannel, gets: int = 8) -> None:
        self.counters = memoryview(bytearray(128)).cast("Q")
        self.puts: list[tuple[object, bytes | None, bool, float | None]] = []
        self.gets = 0
        ch._seq_counters = self.counters
        ch._seq_gets = gets
        ch._seq_put_miss = lambda *a: self.puts.append(a)
        ch._seq_get_miss = self._get_missed
        self.ch = ch

    def _get_missed(self, block: bool, timeout: float | None) -> object:
        self.gets += 1
        return MISSED

    def put(self, obj: object) -> bool:
        """The one-call put of ``obj``: True when it put it, False when it missed."""
        missed = len(self.puts)
        self.ch._send_seq(obj)
        return len(self.puts) == missed


def _bytes_pickling_to(blen: int) -> bytes:
    """A bytes object whose pickle (protocol 5) is ``blen`` bytes long (blen >= 15)."""
    k = blen - len(pickle.dumps(b"", 5))
    while len(pickle.dumps(b"x" * k, 5)) > blen:
        k -= 1
    obj = b"x" * k
    assert len(pickle.dumps(obj, 5)) == blen
    return obj


@pytest.mark.parametrize("blen", [15, 16, 22, 23, 75, SEQ_FRAMED_MAX, SEQ_FRAMED_MAX + 1,
                                  5000])
def test_put_writes_the_formats_frame(blen: int) -> None:
    with _mpmc() as ch:
        _attach(ch)
        parts = _Parts(ch)
        parts.counters[0] = 41
        obj = _bytes_pickling_to(blen)
        body = pickle.dumps(obj, 5)
        head = ch._hdr[fmt.HEAD_Q]
        msg = _message(41, body)
        frame = fmt.encode_frame(msg)
        pos = head % ch.capacity
        # bytes left by earlier messages: every byte of the frame (the framer's zero
        # words are pad bytes) must be written
        ch._data[pos : pos + len(frame)] = b"\xff" * len(frame)
        assert parts.put(obj)
        assert parts.counters[0] == 42
        assert bytes(ch._data[pos : pos + 8 + len(msg)]) == frame[: 8 + len(msg)]
        assert ch._hdr[fmt.HEAD_Q] == head + fmt.frame_size(len(msg))
        # the general receive path reads it as the same message
        assert ch.recv() == msg


@pytest.mark.parametrize("blen", [0, 9, 60, SEQ_FRAMED_MAX + 1])
def test_get_reads_what_the_general_path_wrote(blen: int) -> None:
    with _mpmc() as ch:
        _attach(ch)
        parts = _Parts(ch)
        obj = ("x" * blen, blen)
        body = pickle.dumps(obj, protocol=5)
        parts.counters[8] = 5
        ch.send(_message(3, body))  # an older sequence number: GETS stays
        ch.send(_message(9, body))
        assert ch._recv_seq() == obj
        assert parts.counters[8] == 5
        assert ch._recv_seq() == obj
        assert parts.counters[8] == 10
        assert parts.gets == 0
        assert ch._recv_seq(False, 0.5) is MISSED  # empty: a miss
        assert parts.gets == 1
        assert ch._hdr[fmt.HEAD_Q] == ch._hdr[fmt.TAIL_Q]
        ch._seq_gets = 0  # GETS not kept
        ch.send(_message(20, body))
        assert ch._recv_seq() == obj
        assert parts.counters[8] == 10


def test_a_miss_changes_nothing() -> None:
    with _mpmc(4096) as ch:
        parts = _Parts(ch)
        counters = parts.counters
        # not attached yet: the general path attaches
        assert not parts.put(b"abc")
        assert parts.puts[-1] == (b"abc", pickle.dumps(b"abc", 5), True, None)
        assert ch._recv_seq(True, 3.0) is MISSED and parts.gets == 1
        _attach(ch)
        # a message with an out-of-band buffer, or one too short, is the general path's
        raws = [memoryview(b"buffer")]
        payload = bytearray(fmt.obj_size(3, raws))
        fmt.write_obj(payload, 0, b"abc", raws)
        for msg in (_SEQ.pack(0) + bytes(payload), b"short"):
            ch.send(msg)
            tail = ch._hdr[fmt.TAIL_Q]
            assert ch._recv_seq() is MISSED
            assert ch._hdr[fmt.TAIL_Q] == tail and counters[8] == 0
            assert ch.recv() == msg
        # an object with an out-of-band buffer: handed over unpickled (body None)
        buffer = pickle.PickleBuffer(bytearray(b"oob"))
        assert not parts.put(buffer)
        assert parts.puts[-1] == (buffer, None, True, None)
        # no room up to the ring's end: nothing written, the general path pads and waits
        while ch._hdr[fmt.HEAD_Q] % ch.capacity + 64 <= ch.capacity:
            ch.send(b"f" * 8)
        head = ch._hdr[fmt.HEAD_Q]
        assert not parts.put(b"b" * 100)
        assert ch._hdr[fmt.HEAD_Q] == head and counters[0] == 0
        # the ring full below the room last seen: nothing written either
        ch.recv_many(10_000)
        ch.send(b"w" * 100)  # the general path: a PAD up to the end, the frame at 0
        assert ch.recv() == b"w" * 100
        counters[0] = 7
        while parts.put(b"c" * 100):
            pass
        # it stopped where the next frame would pass the room there is (it looks at tail
        # again when the room it saw last is used up), never more room than there is
        size = len(pickle.dumps(b"c" * 100, 5))
        assert ch._hdr[fmt.HEAD_Q] + fmt.frame_size(24 + size) > ch._room_end
        assert ch._room_end <= ch._hdr[fmt.TAIL_Q] + ch.capacity
        sent = counters[0] - 7
        got = []
        while (obj := ch._recv_seq()) is not MISSED:
            got.append(obj)
        assert got == [b"c" * 100] * sent and counters[8] == counters[0]
        ch.check()


def test_a_full_ring_looks_at_tail_again_before_it_misses() -> None:
    """When a frame would pass the room seen last, the one-call put (and the lease send)
    looks at tail again under the claim: room a consumer made since is used at once, not
    through the general path (whose _p_leave drops the copy of head)."""
    with _mpmc(4096) as ch:
        _attach(ch)
        ch.send(b"y" * (ch.capacity - 16 - 8))  # head and tail to 0 mod the capacity
        ch.recv()
        parts = _Parts(ch)
        obj = _bytes_pickling_to(28)  # a 64-byte frame: 64 of them fill the ring exactly
        while parts.put(obj):
            pass
        assert parts.counters[0] == 64 and len(parts.puts) == 1  # the last one: no room
        room = ch._room_end
        assert ch._recv_seq() == obj  # room for one more frame
        assert parts.put(obj)  # no miss: the one-call put looked at tail
        assert ch._room_end == room + 64 and ch._head_mine == ch._hdr[fmt.HEAD_Q]
        assert not parts.put(obj)  # and no more room than there is
        got = 0
        while ch._recv_seq() is not MISSED:
            got += 1
        assert got == 64
        # the Channel's own lease send does the same
        with contextlib.suppress(queue.Full):
            while True:
                ch.send(b"e" * 56, timeout=0)
        assert ch._head_mine == -1  # (the general path, which found no room)
        assert ch.recv() == b"e" * 56
        head = ch._hdr[fmt.HEAD_Q]
        ch.send(b"e" * 56, timeout=0)
        assert ch._head_mine == head + 64
        assert len(ch.recv_many(100)) == 64
        ch.check()


def test_a_get_that_waited_on_an_empty_ring_takes_the_message_in_one_call() -> None:
    """A get that misses on an empty ring with the consumers' lease ours waits as the
    general path would, then takes the message through the one-call get (which keeps
    its copy of tail; the general path's _c_leave drops it).  Timeouts still hold."""
    from mmapkit import Queue

    q = Queue(capacity=1 << 16)
    try:
        q.put("attach")
        assert q.get() == "attach"  # both roles attached, both leases ours
        with pytest.raises(queue.Empty):
            q.get(timeout=0.05)
        with pytest.raises(queue.Empty):
            q.get_nowait()

        def child() -> None:
            time.sleep(0.2)
            q.put(("late", 1))

        pid = fork_child(child)
        assert q.get(timeout=10) == ("late", 1)
        assert q._chan._tail_mine == q._chan._hdr[fmt.TAIL_Q]
        assert exit_code(pid) == 0
    finally:
        q.close()


def test_get_takes_the_pickle_as_the_frame_less_the_header() -> None:
    """A Queue message without buffers is 24 bytes of words and its pickle, whichever put
    wrote it, so the one-call get takes the frame's last n - 24 bytes and does not read
    the pickle-length word: a damaged one changes nothing, and reads stay in the frame."""
    with _mpmc() as ch:
        _attach(ch)
        parts = _Parts(ch)
        obj = ("whole", 7)
        for damage in (0, 1, 10**9):
            head = ch._hdr[fmt.HEAD_Q]
            assert parts.put(obj)
            length_word = (head % ch.capacity) // 8 + 3  # after n, seq, count|reserved
            assert ch._dq[length_word] == len(pickle.dumps(obj, 5))
            if damage:
                ch._dq[length_word] = damage
            assert ch._recv_seq() == obj
        assert parts.gets == 0
        ch.check()


def test_another_holder_of_the_lease_is_a_miss() -> None:
    with _mpmc() as a:
        _attach(a)
        parts = _Parts(a)
        lease_p = fmt.PRODUCER_LEASE // 4
        lease_c = fmt.CONSUMER_LEASE // 4
        mine_p, mine_c = a._hdr32[lease_p], a._hdr32[lease_c]
        a._hdr32[lease_p] = mine_p + (1 << 8)  # another attach generation: someone else
        a._hdr32[lease_c] = mine_c + (1 << 8)
        head, tail = a._hdr[fmt.HEAD_Q], a._hdr[fmt.TAIL_Q]
        assert not parts.put(b"abc")
        assert a._recv_seq() is MISSED
        assert (a._hdr[fmt.HEAD_Q], a._hdr[fmt.TAIL_Q], parts.counters[0]) == (head, tail, 0)
        assert a._hdr32[a._pbusy] == 0 and a._hdr32[a._cbusy] == 0  # L4: busy lowered
        assert a._send_free == [True] and a._recv_free == [True]  # our turns given back
        a._hdr32[lease_p], a._hdr32[lease_c] = mine_p, mine_c
        a.check()


def test_the_copies_of_the_positions_are_dropped_by_any_other_claim() -> None:
    """_head_mine / _tail_mine (the one-call paths' copies of head and tail) hold only
    while no other claim ran since: a general path of ours, or a steal, clears them, and
    the one-call paths read the positions again."""
    with _mpmc() as ch:
        _attach(ch)
        parts = _Parts(ch)
        assert parts.put(1) and ch._head_mine == ch._hdr[fmt.HEAD_Q]
        assert ch._recv_seq() == 1 and ch._tail_mine == ch._hdr[fmt.TAIL_Q]
        ch.send_many([b"a", b"b"])  # a general path of ours: head moved under the copy
        assert ch._head_mine == -1
        assert parts.put(2)
        assert ch.recv_many(2) == [b"a", b"b"]  # the same for tail
        assert ch._tail_mine == -1
        assert ch._recv_seq() == 2
        assert ch._head_mine >= 0 and ch._tail_mine >= 0
        # a thief (a fork child: another participant) moved both; our steal back
        # clears them

        def child() -> None:
            ch.send(b"from the child")  # attaches, steals the producers' lease
            assert ch.recv() == b"from the child"  # and the consumers'

        assert exit_code(fork_child(child)) == 0
        head, tail = ch._hdr[fmt.HEAD_Q], ch._hdr[fmt.TAIL_Q]
        assert head == tail and ch._head_mine < head
        assert not parts.put(3)  # the lease is the child's: a miss
        ch.send(b"steal")  # the general path steals the lease back
        assert ch.recv() == b"steal"
        assert ch._head_mine == -1 and ch._tail_mine == -1
        assert parts.put(4) and ch._recv_seq() == 4
        ch.check()


def test_send_and_recv_go_straight_to_the_lease_only_while_they_may() -> None:
    """send()/recv() of a multi-producer, multi-consumer handle take the lease path at once
    (``_lease_send_limit`` / ``_lease_recv``) only once attached, and never after finish(),
    close(), or in a fork child (which attaches again, with its own slot and lease name)."""
    from mmapkit.errors import ClosedError

    with _mpmc() as ch:
        parts = _Parts(ch)
        assert ch._lease_send_limit == -1 and not ch._lease_recv  # not attached yet
        _attach(ch)
        assert ch._lease_send_limit == ch.max_message and ch._lease_recv
        parent_token = ch._ptoken

        def child() -> None:  # (fork_child: its exit status says how this went)
            assert ch._lease_send_limit == -1 and not ch._lease_recv
            assert not parts.put(b"abc")  # not attached here
            for i in range(100):
                ch.send(b"c%d" % i)  # attaches, steals the lease from the parent
            assert ch._lease_send_limit == ch.max_message
            assert ch._ptoken != parent_token

        assert exit_code(fork_child(child)) == 0
        assert [ch.recv() for _ in range(100)] == [b"c%d" % i for i in range(100)]
        ch.send(b"p")  # steals the lease back from the dead child
        assert ch.recv() == b"p"
        ch.check()
        ch.finish()
        assert ch._lease_send_limit == -1
        with pytest.raises(ClosedError):
            ch.send(b"after finish")
        assert not parts.put(b"after finish")
        ch.close()
        assert ch._lease_send_limit == -1 and not ch._lease_recv


@pytest.mark.parametrize("kind", ["queue", "channel"])
def test_threads_of_one_process_take_turns(kind: str) -> None:
    """Threads sharing one handle (one lease name, one busy word) put and get on the
    lease's one-call paths at once.  The switch interval is cut to a microsecond so that
    threads switch inside those paths: only the handle's turn (_state.Turn) keeps two of
    them from writing at one head or taking one message.  Every message arrives once and
    whole, and the ring checks."""
    import sys
    import threading

    from mmapkit.ipc import Queue

    producers, per = 4, 3000
    q = Queue(capacity=1 << 14) if kind == "queue" else None
    ch = q._shared.channel if q is not None else _mpmc(1 << 14)
    if q is not None:
        put, get = q.put, q.get
    else:
        def put(x: tuple[int, int], timeout: float) -> None:
            ch.send(struct.pack("<II", *x), timeout=timeout)

        def get(timeout: float) -> tuple[int, ...]:
            return struct.unpack("<II", ch.recv(timeout=timeout))
    got: list[list[tuple[int, ...]]] = [[], [], []]

    def produce(k: int) -> None:
        for i in range(per):
            put((k, i), timeout=20)

    def consume(j: int) -> None:
        for _ in range(producers * per // len(got)):
            got[j].append(tuple(get(timeout=20)))

    # (daemons, every wait bounded: without the turn, two threads' frames at one head
    # wedge the ring; the test then fails in seconds instead of hanging)
    threads = [threading.Thread(target=produce, args=(k,), daemon=True)
               for k in range(producers)]
    threads += [threading.Thread(target=consume, args=(j,), daemon=True)
                for j in range(len(got))]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        end = time.monotonic() + 60
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
    finally:
        sys.setswitchinterval(old)
    assert not any(t.is_alive() for t in threads)
    everything = sorted(x for g in got for x in g)
    assert everything == [(k, i) for k in range(producers) for i in range(per)]
    for g in got:  # each producer's messages in its order, as each consumer saw them
        for k in range(producers):
            mine = [i for (p, i) in g if p == k]
            assert mine == sorted(mine)
    ch.check()
    if q is not None:
        q.close()
    else:
        ch.close()
