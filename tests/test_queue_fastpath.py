"""The Queue's one-call put and get (ipc/_sequenced.py): the bytes they write are the
format's spelling of a Queue message, what they read is what the general path wrote, and a
miss changes nothing."""

from __future__ import annotations

import pickle
import struct

import pytest
from conftest import exit_code, fork_child

from mmapkit.ipc import Channel
from mmapkit.ipc import _format as fmt
from mmapkit.ipc._sequenced import SEQ_FRAMED_MAX

_SEQ = struct.Struct("<Q")


def _message(seq: int, body: bytes) -> bytes:
    """A Queue message as queue.py's table spells it: seq, then the object payload."""
    raws: list[memoryview] = []
    payload = bytearray(fmt.obj_size(len(body), raws))
    fmt.write_obj(payload, 0, body, raws)
    return _SEQ.pack(seq) + bytes(payload)


def _mpmc(capacity: int = 1 << 16) -> Channel:
    return Channel.anonymous(capacity, multi_producer=True, multi_consumer=True)


def _attach(ch: Channel) -> None:
    """Take both roles and the two leases the way the general path does (first send and
    receive steal them), so the fast paths run in their common case."""
    ch.send(b"x")
    assert ch.recv() == b"x"


@pytest.mark.parametrize("blen", [0, 1, 7, 8, 9, 60, SEQ_FRAMED_MAX, SEQ_FRAMED_MAX + 1, 5000])
def test_put_writes_the_formats_frame(blen: int) -> None:
    with _mpmc() as ch:
        _attach(ch)
        counters = memoryview(bytearray(128)).cast("Q")
        counters[0] = 41
        body = bytes(range(256)) * (blen // 256) + bytes(range(blen % 256))
        head = ch._hdr[fmt.HEAD_Q]
        assert ch._send_seq(body, counters, 0)
        assert counters[0] == 42
        msg = _message(41, body)
        frame = fmt.encode_frame(msg)
        pos = head % ch.capacity
        assert bytes(ch._data[pos : pos + 8 + len(msg)]) == frame[: 8 + len(msg)]
        assert ch._hdr[fmt.HEAD_Q] == head + fmt.frame_size(len(msg))
        # the general receive path reads it as the same message
        assert ch.recv() == msg


@pytest.mark.parametrize("blen", [0, 9, 60, SEQ_FRAMED_MAX + 1])
def test_get_reads_what_the_general_path_wrote(blen: int) -> None:
    with _mpmc() as ch:
        _attach(ch)
        counters = memoryview(bytearray(128)).cast("Q")
        body = pickle.dumps(("x" * blen, blen), protocol=5)
        counters[8] = 5
        ch.send(_message(3, body))  # an older sequence number: GETS stays
        ch.send(_message(9, body))
        assert ch._recv_seq(counters, 8) == body
        assert counters[8] == 5
        assert ch._recv_seq(counters, 8) == body
        assert counters[8] == 10
        assert ch._recv_seq(counters, 8) is None  # empty: a miss
        assert ch._hdr[fmt.HEAD_Q] == ch._hdr[fmt.TAIL_Q]


def test_a_miss_changes_nothing() -> None:
    with _mpmc(4096) as ch:
        counters = memoryview(bytearray(128)).cast("Q")
        # not attached yet: the general path attaches
        assert not ch._send_seq(b"abc", counters, 0)
        assert ch._recv_seq(counters, 8) is None
        _attach(ch)
        # a message with an out-of-band buffer, or one too short, is the general path's
        raws = [memoryview(b"buffer")]
        payload = bytearray(fmt.obj_size(3, raws))
        fmt.write_obj(payload, 0, b"abc", raws)
        for msg in (_SEQ.pack(0) + bytes(payload), b"short"):
            ch.send(msg)
            tail = ch._hdr[fmt.TAIL_Q]
            assert ch._recv_seq(counters, 8) is None
            assert ch._hdr[fmt.TAIL_Q] == tail and counters[8] == 0
            assert ch.recv() == msg
        # no room up to the ring's end: nothing written, the general path pads and waits
        while ch._hdr[fmt.HEAD_Q] % ch.capacity + 64 <= ch.capacity:
            ch.send(b"f" * 8)
        head = ch._hdr[fmt.HEAD_Q]
        assert not ch._send_seq(b"b" * 100, counters, 0)
        assert ch._hdr[fmt.HEAD_Q] == head and counters[0] == 0
        # the ring full below the room last seen: nothing written either
        ch.recv_many(10_000)
        ch.send(b"w" * 100)  # the general path: a PAD up to the end, the frame at 0
        assert ch.recv() == b"w" * 100
        counters[0] = 7
        while ch._send_seq(b"c" * 100, counters, 0):
            pass
        # it stopped where the next frame would pass the room it last saw (tail then +
        # capacity), which is never more room than there is
        assert ch._hdr[fmt.HEAD_Q] + fmt.frame_size(124) > ch._room_end
        assert ch._room_end <= ch._hdr[fmt.TAIL_Q] + ch.capacity
        sent = counters[0] - 7
        got = []
        while (body := ch._recv_seq(counters, 8)) is not None:
            got.append(body)
        assert got == [b"c" * 100] * sent and counters[8] == counters[0]
        ch.check()


def test_another_holder_of_the_lease_is_a_miss() -> None:
    with _mpmc() as a:
        _attach(a)
        counters = memoryview(bytearray(128)).cast("Q")
        lease_p = fmt.PRODUCER_LEASE // 4
        lease_c = fmt.CONSUMER_LEASE // 4
        mine_p, mine_c = a._hdr32[lease_p], a._hdr32[lease_c]
        a._hdr32[lease_p] = mine_p + (1 << 8)  # another attach generation: someone else
        a._hdr32[lease_c] = mine_c + (1 << 8)
        head, tail = a._hdr[fmt.HEAD_Q], a._hdr[fmt.TAIL_Q]
        assert not a._send_seq(b"abc", counters, 0)
        assert a._recv_seq(counters, 8) is None
        assert (a._hdr[fmt.HEAD_Q], a._hdr[fmt.TAIL_Q], counters[0]) == (head, tail, 0)
        assert a._hdr32[a._pbusy] == 0 and a._hdr32[a._cbusy] == 0  # L4: busy lowered
        a._hdr32[lease_p], a._hdr32[lease_c] = mine_p, mine_c
        a.check()


def test_send_and_recv_go_straight_to_the_lease_only_while_they_may() -> None:
    """send()/recv() of a multi-producer, multi-consumer handle take the lease path at once
    (``_lease_send_limit`` / ``_lease_recv``) only once attached, and never after finish(),
    close(), or in a fork child (which attaches again, with its own slot and lease name)."""
    from mmapkit.errors import ClosedError

    with _mpmc() as ch:
        counters = memoryview(bytearray(128)).cast("Q")
        assert ch._lease_send_limit == -1 and not ch._lease_recv  # not attached yet
        _attach(ch)
        assert ch._lease_send_limit == ch.max_message and ch._lease_recv
        parent_token = ch._ptoken

        def child() -> None:  # (fork_child: its exit status says how this went)
            assert ch._lease_send_limit == -1 and not ch._lease_recv
            assert not ch._send_seq(b"abc", counters, 0)  # not attached here
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
        assert not ch._send_seq(b"after finish", counters, 0)
        ch.close()
        assert ch._lease_send_limit == -1 and not ch._lease_recv
