"""The channel codec: header and frames, whole, byte by byte, cut off, with trailing bytes,
and fuzzed."""

from __future__ import annotations

import collections
import queue
import struct
import zlib

import pytest
from conftest import exit_code, fork_child
from hypothesis import given, settings
from hypothesis import strategies as st

from mmapkit.errors import (
    CorruptFileError,
    ForeignFileError,
    FormatVersionError,
    MessageTooLargeError,
)
from mmapkit.ipc import Channel
from mmapkit.ipc import _format as fmt


def test_header_round_trip_and_layout() -> None:
    raw = fmt.encode_header(4096, fmt.FLAG_MULTI_PRODUCER)
    assert len(raw) == 64
    assert raw[:8] == b"MMKCHAN\0"
    assert struct.unpack_from("<I", raw, 8)[0] == 3  # version
    assert struct.unpack_from("<I", raw, 12)[0] == 1  # flags
    assert struct.unpack_from("<Q", raw, 16)[0] == 4096
    assert struct.unpack_from("<III", raw, 24) == (8192, 64, 64)
    assert struct.unpack_from("<I", raw, 36)[0] == zlib.crc32(raw[:36])
    assert raw[40:] == bytes(24)
    h = fmt.decode_header(raw + b"trailing bytes are ignored")
    assert (h.version, h.capacity, h.multi_producer, h.multi_consumer) == (3, 4096, True, False)
    assert h.file_size == 8192 + 4096
    # version 2 (where membarrier is not there): the same layout, another version word
    v2 = fmt.encode_header(4096, fmt.FLAG_MULTI_PRODUCER, fmt.LEASE_VERSION)
    assert v2[:8] + v2[12:36] == raw[:8] + raw[12:36]
    assert fmt.decode_header(v2).version == 2
    with pytest.raises(ValueError):
        fmt.encode_header(4096, 0, 1)


def test_header_every_flipped_byte_is_refused() -> None:
    raw = fmt.encode_header(1 << 16, fmt.FLAG_MULTI_CONSUMER)
    for i in range(40):
        bad = bytearray(raw)
        bad[i] ^= 0x41
        with pytest.raises((ForeignFileError, FormatVersionError, CorruptFileError)):
            fmt.decode_header(bytes(bad))


def test_header_cut_off_at_every_offset() -> None:
    raw = fmt.encode_header(1 << 12)
    for cut in range(len(raw)):
        data = raw[:cut]
        if cut >= 40:  # the checked fields are complete
            assert fmt.decode_header(data).capacity == 1 << 12
            continue
        with pytest.raises((ForeignFileError, CorruptFileError)):
            fmt.decode_header(data)


def test_header_foreign_and_newer() -> None:
    with pytest.raises(ForeignFileError, match="not an mmapkit channel"):
        fmt.decode_header(b"\x7fELF" + bytes(100))
    with pytest.raises(ForeignFileError):
        fmt.decode_header(b"")
    newer = bytearray(fmt.encode_header(4096))
    struct.pack_into("<I", newer, 8, 4)
    with pytest.raises(FormatVersionError, match="upgrade mmapkit") as info:
        fmt.decode_header(bytes(newer))
    assert (info.value.found, info.value.supported) == (4, 3)
    older = bytearray(fmt.encode_header(4096))
    struct.pack_into("<I", older, 8, 0)
    with pytest.raises(FormatVersionError):
        fmt.decode_header(bytes(older))
    # unknown feature flags with a correct checksum: a newer writer
    flagged = bytearray(fmt.encode_header(4096))
    struct.pack_into("<I", flagged, 12, 0x80)
    struct.pack_into("<I", flagged, 36, zlib.crc32(bytes(flagged[:36])))
    with pytest.raises(FormatVersionError, match="unknown"):
        fmt.decode_header(bytes(flagged))


def test_capacity_rules() -> None:
    assert fmt.round_capacity(100) == 104
    with pytest.raises(ValueError):
        fmt.round_capacity(8)
    with pytest.raises(TypeError):
        fmt.round_capacity(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fmt.encode_header(100)
    assert fmt.max_message(4096) == 4088


def test_frames_whole_and_cut() -> None:
    payloads = [b"", b"a", b"12345678", b"x" * 13]
    ring = bytearray(256)
    head = 0
    for p in payloads:
        frame = fmt.encode_frame(p)
        assert len(frame) == fmt.frame_size(len(p)) and len(frame) % 8 == 0
        assert struct.unpack_from("<II", frame) == (len(p), 0)
        ring[head : head + len(frame)] = frame
        head += len(frame)
    got = [bytes(ring[s : s + n]) for _, s, n in fmt.iter_frames(ring, 0, head)]
    assert got == payloads
    # a published range cut inside any frame is refused, never misread
    ends = set()
    at = 0
    for p in payloads:
        at += fmt.frame_size(len(p))
        ends.add(at)
    for cut in range(0, head, 8):
        if cut in ends or cut == 0:
            assert len(list(fmt.iter_frames(ring, 0, cut))) == sum(1 for e in ends if e <= cut)
        else:
            with pytest.raises(CorruptFileError):
                list(fmt.iter_frames(ring, 0, cut))


def test_pad_frame_wraps() -> None:
    ring = bytearray(64)
    frame = fmt.encode_frame(b"hello")  # 16 bytes
    struct.pack_into("<II", ring, 48, 0, fmt.KIND_PAD)
    ring[0:16] = frame
    # tail at 48 (pad to 64), then the frame at ring offset 0 = position 64
    assert [(t, n) for t, _, n in fmt.iter_frames(ring, 48, 80)] == [(64, 5)]


def test_positions() -> None:
    fmt.check_positions(80, 16, 64)
    for head, tail in [(8, 16), (100, 0), (3, 0), (8, 5)]:
        with pytest.raises(CorruptFileError):
            fmt.check_positions(head, tail, 64)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_header_garbage_gives_our_errors(data: bytes) -> None:
    try:
        fmt.decode_header(data)
    except (ForeignFileError, FormatVersionError, CorruptFileError):
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=64, max_size=256).map(lambda b: b[: len(b) // 8 * 8]),
       st.integers(0, 40), st.integers(0, 300))
def test_frames_garbage_gives_our_errors(ring: bytes, tail8: int, span: int) -> None:
    tail = tail8 * 8
    head = tail + span // 8 * 8
    try:
        for _, start, n in fmt.iter_frames(ring, tail, head):
            assert start >= 0 and start + n <= len(ring)
    except CorruptFileError:
        pass


# --- the ring against a model ---------------------------------------------------------

_OPS = st.lists(st.tuples(st.sampled_from(["send", "send_many", "recv", "recv_many",
                                            "reserve", "view"]),
                          st.integers(0, 300), st.integers(1, 5)), max_size=120)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([64, 128, 256, 1000]), _OPS)
def test_ring_matches_a_fifo_model(capacity: int, ops: list[tuple[str, int, int]]) -> None:
    """Any interleaving of the sending and receiving calls behaves like a FIFO queue; the
    ring never loses, duplicates or tears a message, whatever the wrap-around."""
    import collections
    import queue

    from mmapkit.ipc import Channel

    model: collections.deque[bytes] = collections.deque()
    counter = 0
    with Channel.anonymous(capacity) as ch:
        for op, size, count in ops:
            size = min(size, ch.max_message)
            if op in ("send", "reserve", "send_many"):
                batch = []
                for _ in range(count if op == "send_many" else 1):
                    counter += 1
                    batch.append(bytes([counter % 251]) * size)
                for msg in batch:
                    try:
                        if op == "reserve":
                            with ch.reserve(len(msg), timeout=0) as buf:
                                buf[:] = msg
                        else:
                            ch.send_nowait(msg)
                    except queue.Full:
                        break
                    model.append(msg)
            elif op == "recv_many":
                try:
                    got = ch.recv_many(count, max_bytes=size, timeout=0)
                except queue.Empty:
                    assert not model
                    got = []
                assert got == [model.popleft() for _ in got]
            else:
                try:
                    if op == "view":
                        with ch.recv_view(timeout=0) as mv:
                            got1 = bytes(mv)
                    else:
                        got1 = ch.recv_nowait()
                except queue.Empty:
                    assert not model  # at most a PAD was there (and is skipped now)
                    continue
                assert got1 == model.popleft()
            ch.check()
        while model:
            assert ch.recv_nowait() == model.popleft()
        with pytest.raises(queue.Empty):
            ch.recv_nowait()


# One process plays both sides against a deque: every mix of sizes, ring capacities, single
# and batch calls, wrap-arounds (PAD frames) and full/empty rings delivers exactly the
# messages sent, in order.
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 600)),
        st.tuples(st.just("send_many"), st.lists(st.integers(0, 300), min_size=1, max_size=6)),
        st.tuples(st.just("recv"), st.just(0)),
        st.tuples(st.just("recv_many"), st.integers(1, 5)),
        st.tuples(st.just("view"), st.just(0)),
    ),
    max_size=80)


@settings(max_examples=400, deadline=None)
@given(capacity=st.integers(8, 160).map(lambda k: k * 8), ops=_OPS)
def test_ring_matches_a_queue_model(capacity: int, ops: list[tuple[str, object]]) -> None:
    model: collections.deque[bytes] = collections.deque()
    counter = 0

    def payload(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return (counter.to_bytes(4, "little") * (n // 4 + 1))[:n]

    with Channel.anonymous(capacity) as ch:
        limit = ch.max_message
        for op, arg in ops:
            if op == "send":
                assert isinstance(arg, int)
                msg = payload(arg)
                if arg > limit:
                    with pytest.raises(MessageTooLargeError):
                        ch.send_nowait(msg)
                    continue
                try:
                    ch.send_nowait(msg if counter % 2 else memoryview(msg))
                except queue.Full:
                    continue
                model.append(msg)
            elif op == "send_many":
                assert isinstance(arg, list)
                msgs = [payload(min(n, limit)) for n in arg]
                try:
                    sent = ch.send_many(msgs, timeout=0)
                except queue.Full:
                    sent = 0
                model.extend(msgs[:sent])
            elif op == "recv":
                if not model:
                    with pytest.raises(queue.Empty):
                        ch.recv_nowait()
                    continue
                assert ch.recv_nowait() == model.popleft()
            elif op == "recv_many":
                assert isinstance(arg, int)
                if not model:
                    with pytest.raises(queue.Empty):
                        ch.recv_many(arg, timeout=0)
                    continue
                got = ch.recv_many(arg, timeout=0)
                assert got == [model.popleft() for _ in got] and 1 <= len(got) <= arg
            else:
                if not model:
                    continue
                with ch.recv_view(timeout=0) as mv:
                    assert bytes(mv) == model.popleft()
        ch.check()
        while model:
            assert ch.recv_nowait() == model.popleft()
        with pytest.raises(queue.Empty):
            ch.recv_nowait()


# --- the hot paths write the codec's bytes ------------------------------------------------

EDGES = (0, 1, 7, 8, 9, 15, 16, 17, 40, 255, 256, 257, 1000)


def _payload(n: int) -> bytes:
    return bytes((i * 7 + n) % 251 for i in range(n))


def _send_each(ch: Channel, how: str, payload: bytes) -> None:
    if how == "send":
        ch.send(payload)
    elif how == "send bytearray":
        ch.send(bytearray(payload))
    elif how == "send_many":
        assert ch.send_many([payload]) == 1
    elif how == "reserve":
        with ch.reserve(len(payload)) as buf:
            buf[:] = payload
    else:  # the Queue's plain-call path

        def fill(ring: memoryview, at: int) -> None:
            ring[at : at + len(payload)] = payload

        ch._send_with(len(payload), fill)


@pytest.mark.parametrize("multi", [False, True], ids=["SPSC", "MPMC"])
@pytest.mark.parametrize("how", ["send", "send bytearray", "send_many", "reserve", "send_with"])
def test_every_send_path_writes_the_codecs_frame(how: str, multi: bool) -> None:
    """The frame a fast path writes (its header word and payload) is byte for byte
    fmt.encode_frame's, it advances head by fmt.frame_size, and a PAD is the codec's."""
    cap = 4096
    pads = 0
    with Channel.anonymous(cap, multi_producer=multi, multi_consumer=multi) as ch:
        for _ in range(3):  # ~6 KiB through a 4 KiB ring: it wraps, with a PAD
            for n in EDGES:
                payload = _payload(n)
                head = ch._hdr[8]
                _send_each(ch, how, payload)
                new_head = ch._hdr[8]
                pos = (new_head - fmt.frame_size(n)) % cap
                if new_head - head != fmt.frame_size(n):  # a PAD went first, up to the end
                    assert new_head - head == fmt.frame_size(n) + cap - head % cap
                    assert bytes(ch._data[head % cap : head % cap + 8]) == fmt.FRAME.pack(
                        0, fmt.KIND_PAD)
                    assert pos == 0
                    pads += 1
                assert bytes(ch._data[pos : pos + 8 + n]) == fmt.encode_frame(payload)[: 8 + n]
                ch.check()
                assert ch.recv() == payload
    assert pads >= 1


def test_frames_written_by_another_process_are_the_codecs() -> None:
    """The same across processes: a fork child sends through every path; the parent
    decodes the ring with the codec alone and compares bytes."""
    cap = 1 << 16
    with Channel.anonymous(cap, multi_producer=True, multi_consumer=True) as ch:
        hows = ["send", "send bytearray", "send_many", "reserve", "send_with"]

        def child() -> None:
            for how in hows:
                for n in EDGES:
                    _send_each(ch, how, _payload(n))
            ch.finish()

        assert exit_code(fork_child(child)) == 0
        head, tail = ch._hdr[8], ch._hdr[16]
        ring = bytes(ch._data)
        frames = list(fmt.iter_frames(ring, tail, head))
        expected = [_payload(n) for _ in hows for n in EDGES]
        assert len(frames) == len(expected)
        for (pos, start, length), payload in zip(frames, expected, strict=True):
            at = pos % cap
            assert ring[at : at + 8 + length] == fmt.encode_frame(payload)[: 8 + length]
            assert ring[start : start + length] == payload
        assert [ch.recv() for _ in expected] == expected
        ch.check()
