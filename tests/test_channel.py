"""Channel behaviour with real processes: fork children, unrelated processes, SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import random
import select
import signal
import struct
import time
import zlib
from pathlib import Path

import pytest
from conftest import exit_code, fork_child, receive_peaks, spawn

from mmapkit.errors import (
    BrokenError,
    ClosedError,
    CorruptFileError,
    EndOfChannel,
    ForeignFileError,
    FormatVersionError,
    MessageTooLargeError,
    ModeConflictError,
)
from mmapkit.ipc import Channel, ChannelStatistics

# These tests SIGKILL children (or servers) whose pipes and sockets the test leaves to
# the garbage collector: the one place an unclosed-resource warning is expected.
pytestmark = [pytest.mark.timeout(120),
              pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")]


def _signed(seq: int, size: int) -> bytes:
    body = random.Random(seq).randbytes(size)
    return struct.pack("<QI", seq, zlib.crc32(body)) + body


def _verify(msg: bytes) -> int:
    seq, crc = struct.unpack_from("<QI", msg)
    assert zlib.crc32(msg[12:]) == crc, f"torn or damaged message {seq}"
    return int(seq)


# --- basics ---------------------------------------------------------------------------


def test_parent_child_anonymous_round_trip() -> None:
    ch = Channel.anonymous(4096)

    def child() -> None:
        for i in range(5000):
            ch.send(_signed(i, i % 300))
        ch.finish()

    pid = fork_child(child)
    got = []
    with pytest.raises(EndOfChannel):
        while True:
            got.append(_verify(ch.recv(timeout=30)))
    assert got == list(range(5000))
    assert exit_code(pid) == 0
    ch.check()
    stats = ch.statistics()
    assert isinstance(stats, ChannelStatistics)
    assert stats.messages_received == 5000 and stats.used == 0
    with pytest.raises(AttributeError):
        stats.messages_received = 1  # type: ignore[misc]
    ch.close()


def test_unrelated_processes_by_path(tmp_path: Path) -> None:
    path = tmp_path / "chan"
    with Channel.create(path, capacity=1 << 12) as ch:
        child = spawn("""
            import sys
            from mmapkit.ipc import Channel
            with Channel.open(sys.argv[1]) as ch:
                for i in range(3000):
                    ch.send(b"%d" % i * (i % 50 + 1))
                ch.finish()
        """, str(path))
        for i in range(3000):
            assert ch.recv(timeout=30) == b"%d" % i * (i % 50 + 1)
        with pytest.raises(EndOfChannel):
            ch.recv(timeout=30)
        _, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        ch.check()
    ch.unlink()
    assert not path.exists() and not Path(f"{path}.lock").exists()


def test_wrap_around_keeps_every_message_whole() -> None:
    rng = random.Random(7)
    with Channel.anonymous(256) as ch:
        sent: list[bytes] = []
        for _ in range(3000):
            msg = rng.randbytes(rng.randint(0, ch.max_message))
            while True:
                try:
                    ch.send_nowait(msg)
                    sent.append(msg)
                    break
                except queue.Full:
                    try:
                        assert ch.recv_nowait() == sent.pop(0)
                    except queue.Empty:  # only a wrap-around PAD was there: now skipped
                        assert not sent
        while sent:
            assert ch.recv_nowait() == sent.pop(0)
        ch.check()
        assert ch.statistics().used == 0


def test_timeouts() -> None:
    with Channel.anonymous(64) as ch:
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            ch.recv(timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 5
        with pytest.raises(queue.Empty):
            ch.recv_nowait()
        ch.send(b"x" * 40)  # 48 of 64 bytes
        with pytest.raises(queue.Full):
            ch.send_nowait(b"y" * 16)
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            ch.send(b"y" * 16, timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 5
        assert ch.recv() == b"x" * 40
        ch.send_nowait(b"y" * 16)
        assert ch.statistics().full_waits >= 1 and ch.statistics().empty_waits >= 1


def test_oversized_and_exact_fit() -> None:
    with Channel.anonymous(1024) as ch:
        assert ch.max_message == 1016
        with pytest.raises(MessageTooLargeError, match="larger capacity"):
            ch.send(b"x" * 1017)
        with pytest.raises(MessageTooLargeError):
            with ch.reserve(5000):
                pass
        for _ in range(3):  # at every place in the ring, wrapping as needed
            try:
                ch.send_nowait(b"z" * 1016)
            except queue.Full:  # a PAD to the ring's end must be consumed first
                with pytest.raises(queue.Empty):
                    ch.recv_nowait()
                ch.send_nowait(b"z" * 1016)
            assert ch.recv() == b"z" * 1016
            ch.send(b"abc")
            assert ch.recv() == b"abc"


def test_finished_handle_cannot_send() -> None:
    with Channel.anonymous(1024) as ch:
        ch.send(b"a")
        ch.finish()
        with pytest.raises(ClosedError, match="finish"):
            ch.send(b"b")
        assert ch.recv() == b"a"
        with pytest.raises(EndOfChannel):
            ch.recv_nowait()


def test_closed_handle() -> None:
    ch = Channel.anonymous(1024)
    ch.close()
    ch.close()
    assert ch.closed
    for call in (lambda: ch.send(b"x"), ch.recv, ch.statistics, ch.finish):
        with pytest.raises(ClosedError):
            call()


def test_files_checked_on_open(tmp_path: Path) -> None:
    path = tmp_path / "c"
    Channel.create(path, capacity=4096).close()
    with pytest.raises(FileExistsError, match=r"Channel\.open"):
        Channel.create(path)
    raw = bytearray(path.read_bytes())
    newer = bytearray(raw)
    struct.pack_into("<I", newer, 8, 9)
    (tmp_path / "newer").write_bytes(newer)
    with pytest.raises(FormatVersionError):
        Channel.open(tmp_path / "newer")
    (tmp_path / "foreign").write_bytes(b"hello world" * 100)
    with pytest.raises(ForeignFileError):
        Channel.open(tmp_path / "foreign")
    (tmp_path / "short").write_bytes(raw[:5000])
    with pytest.raises(ForeignFileError, match="truncated"):
        Channel.open(tmp_path / "short")
    bad = bytearray(raw)
    struct.pack_into("<Q", bad, 64, 5)  # head not aligned
    (tmp_path / "bad").write_bytes(bad)
    with pytest.raises(CorruptFileError):
        Channel.open(tmp_path / "bad")


def test_messages_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c"
    with Channel.create(path, capacity=4096) as ch:
        ch.send(b"kept")
        ch.finish()
    with Channel.open(path) as ch:
        assert ch.describe()["pending_messages"] == 1
        assert ch.recv(timeout=5) == b"kept"
        with pytest.raises(EndOfChannel):
            ch.recv(timeout=5)


def test_pickled_by_path_to_spawned_child(tmp_path: Path) -> None:
    path = tmp_path / "c"
    with Channel.create(path, capacity=4096) as ch:
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=_spawned_sender, args=(ch,))
        proc.start()
        assert ch.recv(timeout=60) == b"from a spawned child"
        proc.join(60)
        assert proc.exitcode == 0
    with pytest.raises(TypeError, match="fork"):
        pickle.dumps(Channel.anonymous(64))


def _spawned_sender(ch: Channel) -> None:
    ch.send(b"from a spawned child")
    ch.finish()


def test_single_producer_channel_refuses_a_second_producer(tmp_path: Path) -> None:
    path = tmp_path / "c"
    with Channel.create(path, capacity=4096) as a, Channel.open(path) as b:
        a.send(b"1")
        with pytest.raises(ModeConflictError, match="multi_producer"):
            b.send(b"2")
        a.close()  # a leaves (without finish): b may take over
        b.send(b"2")


# --- liveness -------------------------------------------------------------------------


def test_producer_closing_without_finish_breaks_after_drain() -> None:
    ch = Channel.anonymous(4096)

    def child() -> None:
        ch.send(b"one")
        ch.send(b"two")
        ch.close()

    pid = fork_child(child)
    assert exit_code(pid) == 0
    assert ch.recv(timeout=10) == b"one"
    assert ch.recv(timeout=10) == b"two"
    with pytest.raises(BrokenError, match="without finish"):
        ch.recv(timeout=10)
    ch.close()


def test_receiver_notices_sigkilled_producer_while_sleeping() -> None:
    with Channel.anonymous(4096) as ch:
        def child() -> None:
            ch.send(b"hello")
            time.sleep(60)

        pid = fork_child(child)
        assert ch.recv(timeout=30) == b"hello"
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        t0 = time.monotonic()
        with pytest.raises(BrokenError):
            ch.recv(timeout=30)
        assert time.monotonic() - t0 < 5


def test_sender_notices_sigkilled_consumer() -> None:
    with Channel.anonymous(64) as ch:
        def child() -> None:
            ch.recv()
            time.sleep(60)

        pid = fork_child(child)
        ch.send(b"x" * 48)
        deadline = time.monotonic() + 30
        while ch.statistics().used and time.monotonic() < deadline:
            time.sleep(0.01)
        ch.send(b"y" * 48)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with pytest.raises(BrokenError, match="consumer"):
            ch.send(b"z" * 48, timeout=30)


@pytest.mark.parametrize("rounds", [pytest.param(6, id="6-rounds"),
                                    pytest.param(60, id="60-rounds", marks=pytest.mark.slow)])
def test_sigkill_producer_mid_message_never_tears(tmp_path: Path, rounds: int) -> None:
    """Kill the sender at random instants while it writes large messages; the receiver gets
    only whole messages, in order, then BrokenError, and the ring checks out."""
    rng = random.Random(rounds)
    path = tmp_path / "c"
    with Channel.create(path, capacity=1 << 16) as ch:
        next_seq = 0
        for _ in range(rounds):
            child = spawn("""
                import random, struct, sys, zlib
                from mmapkit.ipc import Channel
                ch = Channel.open(sys.argv[1])
                seq = int(sys.argv[2])
                while True:
                    body = random.Random(seq).randbytes(seq % 20000)
                    ch.send(struct.pack("<QI", seq, zlib.crc32(body)) + body)
                    seq += 1
            """, str(path), str(next_seq))
            # the sender is writing once its first message arrives; kill it a bit later
            deadline = time.monotonic() + 60
            while not ch.statistics().producers_alive and time.monotonic() < deadline:
                time.sleep(0.005)  # until then the last round's dead sender is all there is
            assert _verify(ch.recv(timeout=60)) == next_seq
            next_seq += 1
            time.sleep(rng.uniform(0, 0.2))
            child.kill()
            child.wait()
            with pytest.raises(BrokenError):
                while True:
                    assert _verify(ch.recv(timeout=30)) == next_seq
                    next_seq += 1
            ch.check()
        assert next_seq >= rounds


# --- batches, zero copy, objects -------------------------------------------------------


def test_send_many_recv_many() -> None:
    with Channel.anonymous(1024) as ch:
        msgs = [b"%05d" % i * (i % 7) for i in range(2000)]

        def child() -> None:
            assert ch.send_many(msgs) == len(msgs)
            ch.finish()

        pid = fork_child(child)
        got: list[bytes] = []
        with pytest.raises(EndOfChannel):
            while True:
                batch = ch.recv_many(max_messages=50, max_bytes=200, timeout=30)
                assert 1 <= len(batch) <= 50
                assert len(batch) == 1 or sum(map(len, batch)) <= 200
                got += batch
        assert got == msgs
        assert exit_code(pid) == 0


def test_reserve_and_recv_view_in_place() -> None:
    with Channel.anonymous(4096) as ch:
        with ch.reserve(10) as buf:
            buf[:] = b"0123456789"
        with pytest.raises(RuntimeError):
            with ch.reserve(5) as buf:
                buf[:] = b"lost!"
                raise RuntimeError("abandon")
        with ch.recv_view() as mv:
            assert mv.readonly and bytes(mv) == b"0123456789"
        with pytest.raises(queue.Empty):
            ch.recv_nowait()


def test_objects_and_numpy_without_extra_copy() -> None:
    np = pytest.importorskip("numpy")
    with Channel.anonymous(1 << 22) as ch:
        ch.send_obj({"a": [1, 2, 3], "t": ("x", None)})
        assert ch.recv_obj() == {"a": [1, 2, 3], "t": ("x", None)}
        arr = np.arange(200_000, dtype=np.float64).reshape(400, 500)
        ch.send_obj({"arr": arr, "k": 1})
        # the array's bytes are in the ring verbatim (out of band), not inside a pickle copy
        assert ch.statistics().used < arr.nbytes + 1024
        out = ch.recv_obj()
        got = out["arr"]
        assert np.array_equal(got, arr) and got.dtype == arr.dtype
        assert got.flags.writeable and not got.flags.owndata  # a view of the one copy
        base = got.base
        while not isinstance(base, (bytearray, memoryview)) and getattr(base, "base", None):
            base = base.base
        assert isinstance(base, (bytearray, memoryview))
        ch.send(b"not an object")
        with pytest.raises(ValueError, match="recv"):
            ch.recv_obj()


@pytest.mark.parametrize("multi", [False, True])
def test_send_obj_writes_the_object_payload_of_the_codec_on_each_path(multi: bool) -> None:
    """send_obj's paths (a small pickle framed into bytes and sent by send(); a pickle
    longer than SMALL_OBJ written in place; an object with an out-of-band buffer pickled
    again, collecting it) put in the ring exactly what _format.write_obj writes, and
    recv_obj gives each object back."""
    from mmapkit.ipc import _format as fmt
    from mmapkit.ipc._inplace import SMALL_OBJ

    small = (1234567, "o" * 40)
    # pickles of exactly SMALL_OBJ bytes and of one more: the two sides of the boundary
    edge, past = (next(b"e" * k for k in range(size - 64, size)
                       if len(pickle.dumps(b"e" * k, 5)) == size)
                  for size in (SMALL_OBJ, SMALL_OBJ + 1))
    large = "L" * (3 * SMALL_OBJ)
    oob = pickle.PickleBuffer(bytearray(b"out of band" * 50))
    with Channel.anonymous(1 << 20, multi_producer=multi, multi_consumer=multi) as ch:
        for obj in (small, edge, past, large, oob):
            buffers: list[pickle.PickleBuffer] = []
            body = pickle.dumps(obj, 5, buffer_callback=buffers.append)
            raws = fmt.pickle_buffers(buffers)
            want = bytearray(fmt.obj_size(len(body), raws))
            fmt.write_obj(want, 0, body, raws)
            ch.send_obj(obj)
            assert ch.recv() == bytes(want)
            ch.send_obj(obj)
            got = ch.recv_obj()
            if obj is oob:
                assert bytes(got) == bytes(oob.raw())
            else:
                assert got == obj


@pytest.mark.parametrize("multi", [False, True])
def test_recv_obj_takes_each_kind_of_message_on_its_path(multi: bool) -> None:
    """recv_obj through every change of path (small objects by recv(); arrays, once one
    was seen, by _recv_with), arrays writable, and a message that is no object payload
    refused with the ValueError that says to use recv(), whatever came before it."""
    np = pytest.importorskip("numpy")
    arr = np.arange(1000, dtype=np.int64)
    sequence: list[object] = [("a", 1), {"arr": arr}, {"arr": arr * 2}, ("b", 2), ("c", 3),
                              {"arr": arr * 3}, ("d", 4), {"arr": arr * 4}, {"arr": arr * 5}]
    with Channel.anonymous(1 << 20, multi_producer=multi, multi_consumer=multi) as ch:
        for obj in sequence:
            ch.send_obj(obj)
        for obj in sequence:
            got = ch.recv_obj()
            if isinstance(obj, dict):
                assert isinstance(got, dict) and np.array_equal(got["arr"], obj["arr"])
                assert got["arr"].flags.writeable
                got["arr"][0] = -1  # (a view of the receiver's own copy, not the ring)
            else:
                assert got == obj
        for before in (("small", 0), {"arr": arr}):
            ch.send_obj(before)
            ch.recv_obj()
            ch.send(b"not an object")
            with pytest.raises(ValueError, match="recv"):
                ch.recv_obj()
            ch.send(b"x" * 40)  # long enough for a head, but its counts are wrong
            with pytest.raises(ValueError, match="recv"):
                ch.recv_obj()


def test_recv_obj_copies_a_stream_of_arrays_once_each() -> None:
    """After the first array of a stream, each array is copied once on the way out (one
    bytearray): traced peak memory of a receive stays near one array, not two."""
    np = pytest.importorskip("numpy")
    arr = np.ones(2 << 20, dtype=np.uint8)  # 2 MiB
    with Channel.anonymous(16 << 20) as ch:
        for _ in range(4):
            ch.send_obj(arr)
        peaks = receive_peaks(ch.recv_obj, 4, arr.nbytes)
    assert all(p < 1.5 * arr.nbytes for p in peaks[1:]), peaks


def test_recv_obj_after_an_array_in_a_fork_child_and_after_close(tmp_path: Path) -> None:
    """The handle remembers that its last object had buffers (recv_obj then looks at tail
    first, and waits there as a consumer); a fork child (no slot yet) and a closed handle
    start without that: the child waits as any consumer (BrokenError while no producer
    is left, then the next array), and the closed handle raises what recv() raises."""
    np = pytest.importorskip("numpy")
    arr = np.arange(1000, dtype=np.int64)
    ch = Channel.create(tmp_path / "c", capacity=1 << 20)
    ch.send_obj(arr)
    assert np.array_equal(ch.recv_obj(), arr)
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()

    def child() -> None:
        os.read(go_r, 1)  # the parent closed its handle: no producer, no consumer
        try:
            with pytest.raises(BrokenError):
                ch.recv_obj(timeout=10)
        finally:
            os.write(ready_w, b"r")  # (a failure here fails the test; it never hangs it)
        assert np.array_equal(ch.recv_obj(timeout=30), arr * 2)

    pid = fork_child(child)
    ch.close()
    with pytest.raises(Exception) as by_recv:
        ch.recv()
    with pytest.raises(type(by_recv.value)):
        ch.recv_obj()
    os.write(go_w, b"g")
    assert select.select([ready_r], [], [], 30)[0], "the child never got past its wait"
    with Channel.open(tmp_path / "c") as sender:
        sender.send_obj(arr * 2)
        assert exit_code(pid) == 0
    for fd in (go_r, go_w, ready_r, ready_w):
        os.close(fd)


def test_send_obj_too_large_for_the_ring_says_so_on_each_path() -> None:
    """A small pickle still longer than the ring is refused by send(), a long one by the
    in-place path: MessageTooLargeError either way, and the channel carries on."""
    with Channel.anonymous(1024) as ch:
        for obj in ("s" * 2000, "L" * 10_000):
            with pytest.raises(MessageTooLargeError):
                ch.send_obj(obj)
        ch.send_obj(("fits", 1))
        assert ch.recv_obj() == ("fits", 1)


# --- doorbell and asyncio -------------------------------------------------------------


def test_asyncio_round_trip_between_processes(tmp_path: Path) -> None:
    import asyncio

    ping = Channel.create(tmp_path / "ping", capacity=1024, spin=0)
    pong = Channel.create(tmp_path / "pong", capacity=1024, spin=0)

    def child() -> None:
        async def echo() -> None:
            while True:
                try:
                    msg = await ping.arecv(timeout=30)
                except EndOfChannel:
                    pong.finish()
                    return
                await pong.asend(msg.upper(), timeout=30)

        asyncio.run(echo())

    pid = fork_child(child)

    async def main() -> list[bytes]:
        ticks = 0

        async def ticker() -> None:  # the loop stays free while we wait for replies
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        task = asyncio.create_task(ticker())
        got = []
        for i in range(200):
            await ping.asend(b"msg %d" % i + b"." * 100, timeout=30)  # 200 x 120 B > 1 KiB
            got.append(await pong.arecv(timeout=30))
        ping.finish()
        with pytest.raises(EndOfChannel):
            await pong.arecv(timeout=30)
        task.cancel()
        assert ticks > 0
        return got

    got = asyncio.run(main())
    assert got == [(b"msg %d" % i + b"." * 100).upper() for i in range(200)]
    assert exit_code(pid) == 0
    with pytest.raises(queue.Empty):
        asyncio.run(Channel.anonymous(64).arecv(timeout=0.1))
    ping.close()
    pong.close()


def test_select_on_the_doorbell() -> None:
    import select

    with Channel.anonymous(1024, spin=0) as ch:
        def child() -> None:
            time.sleep(0.3)
            ch.send(b"ding")
            time.sleep(0.5)

        pid = fork_child(child)
        t0 = time.monotonic()
        msg = None
        while msg is None and time.monotonic() - t0 < 20:
            try:
                msg = ch.recv_nowait()
            except queue.Empty:
                with ch.armed() as fd:
                    select.select([fd], [], [], 5)
        assert msg == b"ding"
        assert time.monotonic() - t0 < 4  # woken by the bell, not by the 5 s timeout
        assert exit_code(pid) == 0


def test_strict_ordering_mode_for_weak_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The locked mode used on ARM64 & co (forced here on x86): same results."""
    monkeypatch.setenv("MMAPKIT_CHANNEL_STRICT", "1")
    ch = Channel.anonymous(512)

    def child() -> None:
        for i in range(3000):
            ch.send(_signed(i, i % 100))
        ch.send_many(_signed(i, 7) for i in range(3000, 3100))
        ch.finish()

    pid = fork_child(child)
    got = []
    with pytest.raises(EndOfChannel):
        while True:
            if len(got) % 2:
                got += [_verify(m) for m in ch.recv_many(10, timeout=30)]
            else:
                got.append(_verify(ch.recv(timeout=30)))
    assert got == list(range(3100))
    assert exit_code(pid) == 0
    ch.close()


def test_damaged_ring_gives_our_error_never_a_crash(tmp_path: Path) -> None:
    """Flip bytes anywhere in the pending frames of a channel file: receiving yields whole
    original messages, then a CorruptFileError (or the end of the data); check() agrees."""
    path = tmp_path / "c"
    msgs = [bytes([i]) * (i * 3 % 50) for i in range(40)]
    with Channel.create(path, capacity=4096) as ch:
        for m in msgs:
            ch.send(m)
    pristine = path.read_bytes()
    used = sum(8 + (len(m) + 7) // 8 * 8 for m in msgs)
    rng = random.Random(5)
    for _ in range(60):
        raw = bytearray(pristine)
        at = 8192 + rng.randrange(used)
        raw[at] ^= 1 << rng.randrange(8)
        path.write_bytes(raw)
        with Channel.open(path) as ch:
            damaged = False
            try:
                ch.check()
            except CorruptFileError:
                damaged = True
            got = []
            try:
                while True:
                    got.append(ch.recv_nowait())
            except CorruptFileError:
                assert damaged
            except (queue.Empty, BrokenError):
                pass
            # what came out before the damage is exactly what was sent (a flipped payload
            # byte changes that message only: frames carry no checksum)
            diffs = sum(a != b for a, b in zip(got, msgs, strict=False))
            assert diffs <= 1


def test_disk_full_on_create_leaves_nothing(tmpfs: Path) -> None:
    from mmapkit.errors import DiskFullError

    with pytest.raises(DiskFullError):
        Channel.create(tmpfs / "big", capacity=4 << 20)
    assert list(tmpfs.iterdir()) == []
    with Channel.create(tmpfs / "small", capacity=64 << 10) as ch:  # what fits still works
        ch.send(b"ok")
        assert ch.recv() == b"ok"


def test_a_dropped_handle_does_not_look_alive(tmp_path: Path) -> None:
    import gc

    path = tmp_path / "c"
    with Channel.create(path, capacity=4096) as receiver:
        sender: Channel | None = Channel.open(path)
        assert sender is not None
        sender.send(b"only")
        del sender  # dropped without close(): the finalizer releases its liveness lock
        gc.collect()
        assert receiver.recv(timeout=5) == b"only"
        with pytest.raises(BrokenError):
            receiver.recv(timeout=5)


def test_send_many_reports_a_partial_send() -> None:
    # With a timeout, send_many sends what fits and says how many; queue.Full only when
    # nothing went out.  (It used to raise queue.Full after a partial send, losing the count.)
    with Channel.anonymous(256) as ch:
        msgs = [bytes([i]) * 24 for i in range(20)]
        sent = ch.send_many(msgs, timeout=0)
        assert 0 < sent < len(msgs)
        with pytest.raises(queue.Full):
            ch.send_many(msgs[sent:], timeout=0)
        assert [ch.recv_nowait() for _ in range(sent)] == msgs[:sent]
        with pytest.raises(queue.Empty):
            ch.recv_nowait()
        assert ch.send_many(iter(msgs[:3]), timeout=0) == 3


def test_every_short_length_and_buffer_kind() -> None:
    # Payloads up to _FRAMED_MAX go through one cached Struct per length, longer ones in
    # two steps; bytes, bytearray and memoryviews all arrive as the same bytes.  The ring is
    # small, so frames also wrap around its end.
    with Channel.anonymous(4096) as ch:
        for n in range(0, 300):
            data = bytes((n + i) & 0xFF for i in range(n))
            for msg in (data, bytearray(data), memoryview(data), memoryview(bytearray(data))):
                ch.send(msg)
                assert ch.recv() == data


def test_bad_arguments(tmp_path: Path) -> None:
    with Channel.anonymous(1024) as ch:
        with pytest.raises(TypeError):
            ch.send("text is not bytes")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            ch.send(12345)  # type: ignore[arg-type]
        ch.send(memoryview(bytearray(b"abcdefgh")).cast("I"))  # any buffer: sent as bytes
        assert ch.recv() == b"abcdefgh"
        with pytest.raises(ValueError):
            ch.recv_many(0)
        with pytest.raises(ValueError):
            with ch.reserve(-1):
                pass
    with pytest.raises(ValueError, match="at least"):
        Channel.create(tmp_path / "tiny", capacity=8)
    with pytest.raises(ValueError):
        Channel.anonymous(0)
    with pytest.raises(FileNotFoundError):
        Channel.open(tmp_path / "missing")
    assert not (tmp_path / "tiny").exists()
