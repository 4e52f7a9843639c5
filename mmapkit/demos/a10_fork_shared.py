"""Parent and fork child talk through one anonymous MAP_SHARED mapping."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..region import Region
from ..wait import Waiter

TITLE = "parent and child share anonymous memory (MAP_SHARED|MAP_ANONYMOUS)"


def run(workdir: Path, say: Callable[[str], None]) -> None:
    with Region.anonymous(4096) as region:
        turn = Waiter(region, 0)  # 0: child's turn to write, 1: parent's, 2: done
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                region.view[64:80] = b"hello from child"
                turn.store(1)
                turn.wake()
                while turn.load() != 2:
                    turn.wait(1, timeout=5)
                code = 0 if bytes(region.view[128:145]) == b"hello from parent" else 3
            finally:
                turn.close()
                os._exit(code)
        while turn.load() != 1:
            turn.wait(0, timeout=5)
        said = bytes(region.view[64:80]).decode()
        say(f"parent {os.getpid()} reads what child {pid} wrote: {said!r}")
        region.view[128:145] = b"hello from parent"
        turn.store(2)
        turn.wake()
        _, status = os.waitpid(pid, 0)
        turn.close()
        if os.waitstatus_to_exitcode(status) != 0 or said != "hello from child":
            raise RuntimeError("the child did not see the parent's bytes")
        say("child read the parent's reply through the same pages: both directions work")
