"""The Queue tests' multiprocessing round trip, and a script that runs it under the start
methods named on its command line.  It imports only mmapkit, so that each spawn /
forkserver child (which re-imports the main module) starts fast."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import time
from typing import Any

from mmapkit.ipc.queue import JoinableQueue, Queue, SimpleQueue

SMALL = 1 << 16
_POOL_Q: Queue | None = None


def child(q: Queue, j: JoinableQueue, s: SimpleQueue, b: Queue) -> None:
    x = q.get(timeout=20)
    b.put_nowait("one")  # b's maxsize=1 travelled with the handle
    try:
        b.put_nowait("two")
        full = False
    except queue.Full:
        full = True
    q.put(("child", x, os.getpid(), full, b.qsize(), b.full()))
    j.get(timeout=20)
    s.put(s.get() + 1)  # before task_done(): the parent's join() returning means s has it
    j.task_done()


def pool_init(q: Queue) -> None:
    global _POOL_Q
    _POOL_Q = q


def pool_work(x: int) -> int:
    assert _POOL_Q is not None
    _POOL_Q.put(x * 10)
    return x


def round_trip(ctx: Any) -> None:
    """A Process child and a Pool worker (through its initializer) use queues made here."""
    q, j, s = Queue(capacity=SMALL), JoinableQueue(capacity=SMALL), SimpleQueue(capacity=SMALL)
    b = Queue(maxsize=1, capacity=SMALL)
    p = ctx.Process(target=child, args=(q, j, s, b), daemon=True)  # never outlives a failure
    p.start()
    q.put("hello")
    j.put("task")
    s.put(41)
    reply = q.get(timeout=30)
    while reply == "hello":  # we took our own "hello" before the child did: give it back
        q.put(reply)
        time.sleep(0.01)
        reply = q.get(timeout=30)
    assert reply == ("child", "hello", p.pid, True, 1, True), reply
    assert b.full() and b.get_nowait() == "one" and b.empty()
    j.join()
    assert s.get() == 42
    p.join(30)
    assert p.exitcode == 0
    with ctx.Pool(1, initializer=pool_init, initargs=(q,)) as pool:
        assert sorted(pool.map(pool_work, range(4))) == [0, 1, 2, 3]
    assert sorted(q.get(timeout=10) for _ in range(4)) == [0, 10, 20, 30]
    assert q.empty()
    q._shared.channel.check()


if __name__ == "__main__":
    for method in sys.argv[1:]:
        round_trip(mp.get_context(method))
        print(method, "ok", flush=True)
