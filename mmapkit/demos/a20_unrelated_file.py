"""Two unrelated processes (the second a fresh interpreter, not a fork) talk through one
mapped file: each maps it with Region.open and they take turns on a Waiter word."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from ..region import Region
from ..wait import Waiter

TITLE = "two unrelated processes talk through one mapped file"

# Layout of the shared file: the turn word at 0 (0: child writes, 1: parent reads and
# replies, 2: child reads the reply), the child's message at 64, the reply at 128.
_CHILD = textwrap.dedent("""
    import os, sys
    from mmapkit.region import Region
    from mmapkit.wait import Waiter

    with Region.open(sys.argv[1]) as region:
        turn = Waiter(region, 0)
        message = f"hello from pid {os.getpid()}".encode()
        region.view[64 : 64 + len(message)] = message
        turn.store(1)
        turn.wake()
        while turn.load() != 2:
            if not turn.wait(1, timeout=10):
                sys.exit("the parent never replied")
        reply = bytes(region.view[128:192]).rstrip(b"\\0").decode()
        turn.close()
    print(reply)
""")


def _env() -> dict[str, str]:
    # The child must import this very mmapkit, installed or not.
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def run(workdir: Path, say: Callable[[str], None]) -> None:
    path = workdir / "shared.bin"
    with Region.open(path, 4096, create=True) as region:
        turn = Waiter(region, 0)
        backend = turn.backend
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while turn.load() != 1:
                turn.wait(0, timeout=0.2)
                if child.poll() is not None or time.monotonic() > deadline:
                    child.kill()
                    _, err = child.communicate()
                    raise RuntimeError(f"the child never wrote its message: {err.strip()}")
            said = bytes(region.view[64:128]).rstrip(b"\0").decode()
            say(f"process {os.getpid()} mapped {path.name}; a fresh interpreter (pid "
                f"{child.pid}, started with subprocess, no fork) mapped it too")
            say(f"parent reads what the child stored in the file's pages: {said!r}")
            reply = f"hello back from pid {os.getpid()}".encode()
            region.view[128 : 128 + len(reply)] = reply
            turn.store(2)
            turn.wake()
            out, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            turn.close()
    if child.returncode != 0 or said != f"hello from pid {child.pid}":
        raise RuntimeError(f"the unrelated processes did not see each other's bytes "
                           f"(child exit {child.returncode}: {err.strip()})")
    if out.strip() != reply.decode():
        raise RuntimeError(f"the child did not read the parent's reply (it read {out!r})")
    say(f"child read the reply through its own mapping: {out.strip()!r}")
    say(f"no pipe or socket carried the bytes: only {path.name} ({path.stat().st_size} bytes) "
        f"and a {backend} wake-up on its first word")
