"""mmapkit.Queue / JoinableQueue / SimpleQueue: multiprocessing's documented behaviour, in
one process, across fork children and across spawn / forkserver children."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import pickle
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _queue_children import pool_init, round_trip
from conftest import exit_code, fork_child, receive_peaks, run_py
from hypothesis import given, settings
from hypothesis import strategies as st

from mmapkit.errors import MessageTooLargeError, MmapkitError
from mmapkit.ipc import JoinableQueue as ExportedJoinable
from mmapkit.ipc import Queue as ExportedQueue
from mmapkit.ipc import SimpleQueue as ExportedSimple
from mmapkit.ipc.queue import JoinableQueue, Queue, SimpleQueue

SMALL = 1 << 16
CHILDREN = Path(__file__).with_name("_queue_children.py")


def _check(q: Queue | SimpleQueue) -> None:
    q._shared.channel.check()


# --- one process ---------------------------------------------------------------------


def test_exported_from_ipc() -> None:
    assert (ExportedQueue, ExportedJoinable, ExportedSimple) == (Queue, JoinableQueue,
                                                                  SimpleQueue)


def test_fifo_of_any_picklable_objects() -> None:
    q = Queue(capacity=SMALL)
    objs: list[Any] = [1, "two", b"three", (4, "x" * 40), {"five": [5.0]}, None,
                       bytearray(b"6" * 1000), list(range(100))]
    for o in objs:
        q.put(o)
    assert q.qsize() == len(objs)
    assert not q.empty()
    assert [q.get() for _ in objs] == objs
    assert q.empty() and q.qsize() == 0
    _check(q)
    q.close()


def test_get_empty_raises_queue_empty() -> None:
    q = Queue(capacity=SMALL)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(block=False, timeout=10)  # block=False ignores the timeout
    t = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    assert time.monotonic() - t >= 0.04
    q.put(1)
    assert q.get(timeout=0) == 1


def test_maxsize_full_and_qsize() -> None:
    q = Queue(maxsize=3, capacity=SMALL)
    assert q.maxsize == 3 and not q.full()
    for i in range(3):
        q.put_nowait(i)
    assert q.full() and q.qsize() == 3
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.02)
    with pytest.raises(queue.Full):
        q.put(3, block=False, timeout=5)
    assert q.get() == 0
    assert not q.full()
    q.put(3, timeout=0)
    assert [q.get_nowait() for _ in range(3)] == [1, 2, 3]


def test_maxsize_zero_is_bounded_by_the_ring_only() -> None:
    q = Queue(capacity=4096)
    n = 0
    with pytest.raises(queue.Full):
        while True:
            q.put_nowait(b"x" * 100)
            n += 1
    assert n > 10 and q.qsize() == n and not q.full()  # full() speaks of maxsize only
    assert q.get() == b"x" * 100
    q.put_nowait(b"y")


def test_put_blocks_until_a_get_makes_room() -> None:
    q = Queue(maxsize=1, capacity=SMALL)
    q.put("a")
    threading.Timer(0.05, q.get).start()
    q.put("b", timeout=10)  # returns once the timer's get() took "a"
    assert q.get(timeout=1) == "b"


def test_get_blocks_until_a_put() -> None:
    q = Queue(capacity=SMALL)
    threading.Timer(0.05, q.put, args=("late",)).start()
    assert q.get(timeout=10) == "late"


def test_after_close_every_call_raises_value_error() -> None:
    q = Queue(capacity=SMALL)
    q.put(1)
    q.close()
    q.close()  # idempotent
    for call in (lambda: q.put(2), lambda: q.get(), q.get_nowait, lambda: q.put_nowait(1),
                 q.qsize, q.empty, q.full, lambda: q.put_many([1]), q.get_many):
        with pytest.raises(ValueError, match="is closed"):
            call()
    q.join_thread()
    q.cancel_join_thread()


def test_join_thread_needs_close_like_multiprocessing() -> None:
    q = Queue(capacity=SMALL)
    with pytest.raises(AssertionError, match="not closed"):
        q.join_thread()
    q.cancel_join_thread()
    q.close()
    q.join_thread()


def test_other_handles_carry_on_after_one_closes() -> None:
    q = Queue(capacity=SMALL)
    pid = fork_child(lambda: q.close())
    assert exit_code(pid) == 0
    q.put(1)
    assert q.get() == 1


def test_message_larger_than_the_ring_names_the_capacity_to_use() -> None:
    q = Queue(capacity=4096)
    with pytest.raises(MessageTooLargeError, match=r"capacity=8192 or more") as info:
        q.put(b"x" * 5000)
    assert isinstance(info.value, MmapkitError)
    q.put(b"fits")  # the queue is unharmed
    assert q.get() == b"fits"
    big = Queue(capacity=8192)
    big.put(b"x" * 5000)
    assert big.get() == b"x" * 5000


def test_numpy_arrays_travel_out_of_band() -> None:
    np = pytest.importorskip("numpy")
    q = Queue(capacity=1 << 21)
    a = np.arange(100_000, dtype=np.float64)
    sliced = np.arange(1000, dtype=np.int32)[::3]  # not contiguous: pickled in-band
    q.put(a)
    q.put(sliced)
    # The contiguous array went as an out-of-band buffer: the message is barely larger
    # than the data (an in-band pickle would be the same size, so look at the pickle).
    b = q.get()
    assert b.dtype == a.dtype and (b == a).all() and b.flags.writeable
    c = q.get()
    assert (c == sliced).all()
    b[0] = 42.0  # the received array owns its memory: the ring is not touched
    q.put(a)
    assert q.get()[0] == 0.0


def test_numpy_array_is_copied_once_on_the_way_out() -> None:
    """get() of an array makes one copy of it (a bytearray the array is a view of), not
    two: traced peak memory of each get stays near one array."""
    np = pytest.importorskip("numpy")
    a = np.ones(2 << 20, dtype=np.uint8)  # 2 MiB
    q = Queue(capacity=16 << 20)
    try:
        for _ in range(3):
            q.put(a)
        peaks = receive_peaks(q.get, 3, a.nbytes)
    finally:
        q.close()
    assert all(p < 1.5 * a.nbytes for p in peaks), peaks


def test_pickle_buffer_is_not_serialised_in_band() -> None:
    q = Queue(capacity=1 << 20)
    payload = bytearray(range(256)) * 1000
    q.put(pickle.PickleBuffer(payload))
    ch = q._shared.channel
    with ch.recv_view() as view:  # look at the raw message: a small pickle, one buffer
        _seq, count, _, body_len = (int.from_bytes(view[i:j], "little")
                                   for i, j in ((0, 8), (8, 12), (12, 16), (16, 24)))
        assert count == 1 and body_len < 100
        assert bytes(view[-len(payload):]) == payload


def test_put_many_get_many() -> None:
    q = Queue(capacity=SMALL)
    q.put_many([(i, "x" * 40) for i in range(50)])
    got = q.get_many(max_messages_to_get=20)
    assert got == [(i, "x" * 40) for i in range(20)]
    assert q.get_many() == [(i, "x" * 40) for i in range(20, 50)]
    with pytest.raises(queue.Empty):
        q.get_many(timeout=0.01)
    with pytest.raises(ValueError):
        q.get_many(max_messages_to_get=0)


def test_put_many_full_says_how_many_went_in() -> None:
    q = Queue(maxsize=4, capacity=SMALL)
    with pytest.raises(queue.Full) as info:
        q.put_many(range(10), timeout=0.01)
    assert info.value.args == (4,)
    assert q.get_many() == [0, 1, 2, 3]


def test_simple_queue() -> None:
    q = SimpleQueue(capacity=SMALL)
    assert q.empty()
    q.put([1, 2])
    assert not q.empty()
    assert q.get() == [1, 2]
    q.close()
    with pytest.raises(OSError):  # multiprocessing.SimpleQueue's closed pipe: OSError
        q.put(1)
    with pytest.raises(OSError):
        q.get()


def test_joinable_queue_task_done_and_join() -> None:
    q = JoinableQueue(capacity=SMALL)
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()
    q.join()  # nothing put: returns at once
    for i in range(3):
        q.put(i)
    joined = threading.Event()

    def joiner() -> None:
        q.join()
        joined.set()

    t = threading.Thread(target=joiner)
    t.start()
    for _ in range(3):
        q.get()
        assert not joined.is_set()
        q.task_done()
    t.join(10)
    assert joined.is_set()
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()


@pytest.mark.parametrize("cls", [Queue, JoinableQueue, SimpleQueue])
def test_pickling_outside_process_start_is_refused_like_multiprocessing(cls: Any) -> None:
    q = cls(capacity=SMALL)
    name = cls.__name__
    with pytest.raises(RuntimeError, match=f"^{name} objects should only be shared between "
                       "processes through inheritance"):
        pickle.dumps(q)
    # the same words as multiprocessing's own queue
    with pytest.raises(RuntimeError, match="through inheritance"):
        pickle.dumps(mp.get_context("fork").Queue())


def test_no_name_is_left_behind() -> None:
    q = JoinableQueue(capacity=SMALL)
    assert all(os.fstat(fd).st_nlink == 0 for fd in q._shared.fds)
    assert q._shared.channel.path is not None  # the parent's handle opened by name...
    assert not os.path.exists(q._shared.channel.path)  # ...which is already gone


def test_repr_and_properties() -> None:
    q = Queue(maxsize=2, capacity=SMALL)
    assert q.capacity == SMALL
    assert "maxsize=2" in repr(q) and "capacity=65536" in repr(q)
    q.close()
    assert "closed" in repr(q)
    with pytest.raises(TypeError):
        Queue(maxsize="3")  # type: ignore[arg-type]


def test_threads_put_and_get_concurrently() -> None:
    q = Queue(maxsize=8, capacity=SMALL)
    got: list[int] = []
    lock = threading.Lock()

    def consume() -> None:
        while True:
            x = q.get(timeout=10)
            if x is None:
                return
            with lock:
                got.append(x)

    consumers = [threading.Thread(target=consume) for _ in range(3)]
    producers = [threading.Thread(target=q.put_many, args=(range(k, 600, 3),))
                 for k in range(3)]
    for t in consumers + producers:
        t.start()
    for t in producers:
        t.join()
    for _ in consumers:
        q.put(None)
    for t in consumers:
        t.join(10)
    assert sorted(got) == list(range(600))
    _check(q)


# --- model test ------------------------------------------------------------------------

_ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, 10**6)),
    st.tuples(st.just("get"), st.none()),
    st.tuples(st.just("qsize"), st.none()),
    st.tuples(st.just("empty"), st.none()),
    st.tuples(st.just("full"), st.none()),
    st.tuples(st.just("put_many"), st.lists(st.integers(), max_size=4)),
), max_size=60)


@settings(max_examples=60, deadline=None)
@given(maxsize=st.integers(0, 5), ops=_ops)
def test_model_against_queue_queue(maxsize: int, ops: list[tuple[str, Any]]) -> None:
    """Non-blocking calls behave as queue.Queue's (ring large enough that maxsize rules)."""
    real = Queue(maxsize=maxsize, capacity=SMALL)
    model: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
    try:
        for op, arg in ops:
            if op == "put":
                outcome = [None, None]
                for i, target in enumerate((real, model)):
                    try:
                        target.put_nowait(arg)
                    except queue.Full:
                        outcome[i] = "full"
                assert outcome[0] == outcome[1]
            elif op == "put_many":
                try:
                    real.put_many(arg, block=False)
                    went = len(arg)
                except queue.Full as exc:
                    went = exc.args[0]
                fit = len(arg) if maxsize == 0 else min(len(arg), maxsize - model.qsize())
                assert went == fit
                for x in arg[:went]:
                    model.put_nowait(x)
            elif op == "get":
                results = []
                for target in (real, model):
                    try:
                        results.append(target.get_nowait())
                    except queue.Empty:
                        results.append("empty")
                assert results[0] == results[1]
            else:
                assert getattr(real, op)() == getattr(model, op)()
        _check(real)
    finally:
        real.close()


# --- fork children ---------------------------------------------------------------------


def test_fork_many_producers_and_consumers_exactly_once() -> None:
    q = Queue(maxsize=16, capacity=4096)  # small: producers wait for room and for count
    out = Queue(capacity=1 << 20)
    n, producers, consumers = 300, 3, 3

    def produce(k: int) -> None:
        for i in range(n):
            q.put((k, i, "x" * (i % 50)))

    def consume() -> None:
        seen = []
        while (item := q.get(timeout=20)) is not None:
            seen.append(item[:2])
        out.put(seen)

    pids = [fork_child(lambda k=k: produce(k)) for k in range(producers)]
    cpids = [fork_child(consume) for _ in range(consumers)]
    assert [exit_code(p) for p in pids] == [0] * producers
    for _ in range(consumers):
        q.put(None)
    assert [exit_code(p) for p in cpids] == [0] * consumers
    seen = [x for _ in range(consumers) for x in out.get(timeout=10)]
    assert sorted(seen) == [(k, i) for k in range(producers) for i in range(n)]
    assert q.empty() and q.qsize() == 0
    _check(q)


def test_fork_child_blocked_on_maxsize_wakes_when_parent_gets() -> None:
    q = Queue(maxsize=2, capacity=SMALL)

    def produce() -> None:
        for i in range(10):
            q.put(i, timeout=20)

    pid = fork_child(produce)
    got = [q.get(timeout=20) for _ in range(10)]
    assert got == list(range(10))
    assert exit_code(pid) == 0


def test_fork_joinable_queue_join_across_processes() -> None:
    q = JoinableQueue(capacity=SMALL)
    for i in range(20):
        q.put(i)

    def work() -> None:
        while True:
            try:
                q.get(timeout=0.2)
            except queue.Empty:
                return
            q.task_done()

    pids = [fork_child(work) for _ in range(2)]
    q.join()
    assert [exit_code(p) for p in pids] == [0, 0]
    with pytest.raises(ValueError):
        q.task_done()


def test_multiprocessing_fork_process_and_pool_initializer() -> None:
    round_trip(mp.get_context("fork"))


# --- spawn and forkserver children (each costs a fresh interpreter: keep them few) -------


def test_multiprocessing_spawn_and_forkserver_process_and_pool_initializer() -> None:
    """Run as a user's script runs (a light __main__ that each fresh interpreter re-imports):
    Process and Pool initializer arguments under spawn, then under forkserver."""
    res = run_py(f"import runpy; runpy.run_path({str(CHILDREN)!r}, run_name='__main__')",
                 "spawn", "forkserver", timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["spawn", "ok", "forkserver", "ok"]


def test_a_task_argument_is_refused_as_multiprocessing_refuses_it() -> None:
    q = Queue(capacity=SMALL)
    with mp.get_context("fork").Pool(1) as pool, pytest.raises(RuntimeError,
                                                               match="inheritance"):
        pool.apply(pool_init, (q,))


def test_get_waits_for_new_producers_after_all_producers_left() -> None:
    """The Channel raises BrokenError when every producer is gone; a queue keeps waiting."""
    q = Queue(capacity=SMALL)
    assert exit_code(fork_child(lambda: q.put("from a producer that exits"))) == 0
    assert q.get(timeout=5) == "from a producer that exits"
    with pytest.raises(queue.Empty):
        q.get(timeout=0.15)  # longer than the Channel's 50 ms sleep slice
    threading.Timer(0.1, q.put, args=("new producer",)).start()
    assert q.get(timeout=10) == "new producer"


def test_put_waits_for_new_consumers_after_all_consumers_died() -> None:
    q = Queue(capacity=4096)

    def consume_then_die() -> None:
        q.get()
        os.kill(os.getpid(), signal.SIGKILL)

    q.put(b"taken")
    assert exit_code(fork_child(consume_then_die)) == -signal.SIGKILL
    with pytest.raises(queue.Full):
        while True:
            q.put(b"x" * 200, timeout=0.15)
    threading.Timer(0.1, q.get).start()
    q.put(b"x" * 200, timeout=10)  # a new consumer made room


def test_unpicklable_object_raises_from_put_and_the_queue_carries_on() -> None:
    q = Queue(maxsize=2, capacity=SMALL)
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        q.put(lambda: None)
    assert q.qsize() == 0 and q.empty()
    q.put(1)
    assert q.get() == 1


def test_ctx_is_accepted_and_closing_releases_every_descriptor() -> None:
    gc.collect()  # earlier tests' handles close now, not during the count
    fds = set(os.listdir("/proc/self/fd"))
    for _ in range(5):
        for q in (Queue(ctx=mp.get_context("spawn"), capacity=SMALL),
                  JoinableQueue(capacity=SMALL), SimpleQueue(capacity=SMALL)):
            q.put(1)
            q.get()
            if isinstance(q, JoinableQueue):
                q.task_done()
            q.close()
    # Nothing of ours left open.  Only our files count: in a full run a thread an earlier
    # test left behind may open a descriptor of its own meanwhile (seen once).
    ours = []
    for fd in set(os.listdir("/proc/self/fd")) - fds:
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own fd)
            if "mmapkit-queue-" in os.readlink(f"/proc/self/fd/{fd}"):
                ours.append(fd)
    assert ours == []


def test_put_and_get_without_maxsize_are_the_channels_one_call_methods() -> None:
    """docs/queue.md, item 14: bound on the queue object when it has no maxsize; an
    overriding subclass keeps its own; after close() the class's methods answer again, and
    a bound method kept from before raises ValueError like them."""
    q = Queue(capacity=SMALL)
    assert q.put.__self__ is q._chan and q.get.__self__ is q._chan
    put, get = q.put, q.get
    put(("x", 1))
    Queue.put(q, "class")
    assert get() == ("x", 1) and Queue.get(q) == "class"
    q.close()
    assert "put" not in vars(q) and "get" not in vars(q)
    for call in (lambda: put(1), lambda: get(), lambda: q.put(1), lambda: q.get()):
        with pytest.raises(ValueError, match="closed"):
            call()
    bounded = Queue(maxsize=3, capacity=SMALL)
    assert "put" not in vars(bounded) and "get" not in vars(bounded)
    bounded.close()

    class Counting(Queue):
        puts = 0

        def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
            Counting.puts += 1
            super().put(obj, block, timeout)

    c = Counting(capacity=SMALL)
    c.put("a")
    assert Counting.puts == 1 and "put" not in vars(c) and c.get() == "a"
    c.close()


def test_full_shared_memory_raises_disk_full_and_leaves_nothing(
        tmpfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/dev/shm full (here a 256 KiB tmpfs in its place): Queue() raises DiskFullError,
    which says what to do, and leaves no file or directory behind; a ring that fits
    still works there."""
    from mmapkit.errors import DiskFullError
    from mmapkit.ipc import queue as queue_module

    monkeypatch.setattr(queue_module, "_shm_dir", lambda: str(tmpfs))
    for cls in (Queue, SimpleQueue, JoinableQueue):
        with pytest.raises(DiskFullError) as raised:
            cls(capacity=4 << 20)
        assert str(tmpfs) in str(raised.value) and "capacity=" in str(raised.value)
        assert list(tmpfs.iterdir()) == []
    q = Queue(capacity=64 << 10)
    try:
        q.put(("fits", 1))
        assert q.get(timeout=5) == ("fits", 1)
    finally:
        q.close()
    assert list(tmpfs.iterdir()) == []
