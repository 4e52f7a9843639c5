"""bench/channel.py: the floor row's bare Python ring delivers every object, whole and in
order, across many wraps (a floor that dropped or mangled messages would be no floor)."""

from __future__ import annotations

import os

from bench import channel as bc


def test_python_ring_floor_delivers_every_object_in_order() -> None:
    send_side, recv_side, close = bc.pyring_pair(1024)  # wraps every few messages
    objs = [(i, "x" * (i % 97)) for i in range(3000)]  # frames of many lengths
    pid = os.fork()
    if pid == 0:  # the producer
        code = 1
        try:
            send, _ = send_side()
            for o in objs:
                send(o)
            code = 0
        finally:
            os._exit(code)
    try:
        recv, _ = recv_side()
        got = [recv() for _ in objs]
    finally:
        _, status = os.waitpid(pid, 0)
        close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert got == objs
