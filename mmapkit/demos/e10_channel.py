"""A channel between a fork child, an unrelated process, and a SIGKILLed producer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import BrokenError, EndOfChannel
from ..ipc import Channel

TITLE = "message channel: fork child, unrelated process, and a producer killed with -9"


def run(workdir: Path, say: Callable[[str], None]) -> None:
    with Channel.anonymous(1 << 16) as ch:
        pid = os.fork()
        if pid == 0:  # the child produces, then ends the stream
            code = 1
            try:
                ch.send_many(b"%d" % i for i in range(100_000))
                ch.finish()
                code = 0
            finally:
                os._exit(code)
        t0 = time.perf_counter()
        got = 0
        try:
            while True:
                got += len(ch.recv_many(1024, timeout=30))
        except EndOfChannel:
            pass
        rate = got / (time.perf_counter() - t0)
        os.waitpid(pid, 0)
        if got != 100_000:
            raise RuntimeError(f"received {got} of 100000 messages")
        say(f"fork child -> parent: {got:,} messages, then EndOfChannel ({rate:,.0f} msgs/s)")

    path = workdir / "chan"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")])))
    with Channel.create(path, capacity=1 << 16) as ch:
        program = ("import sys\nfrom mmapkit.ipc import Channel\n"
                "ch = Channel.open(sys.argv[1])\n"
                "ch.send_obj({'pid': __import__('os').getpid(), 'hello': 'from another program'})\n"
                "i = 0\n"
                "while True:\n"
                "    ch.send(b'tick %d' % i); i += 1\n")
        proc = subprocess.Popen([sys.executable, "-c", program, str(path)], env=env)
        try:
            hello = ch.recv_obj(timeout=30)
            say(f"unrelated process {hello['pid']} opened {path.name} by path: {hello['hello']!r}")
            first = ch.recv(timeout=30)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        say(f"it streams {first.decode()!r}...; now it is killed with SIGKILL mid-stream")
        drained = 1
        try:
            while True:
                msg = ch.recv(timeout=30)
                if not msg.startswith(b"tick "):
                    raise RuntimeError(f"torn message {msg[:20]!r}")
                drained += 1
        except BrokenError:
            pass
        else:  # pragma: no cover - recv() only leaves by raising
            raise RuntimeError("no BrokenError")
        ch.check()
        say(f"the receiver drained {drained:,} whole messages, then got BrokenError instead of "
            "waiting forever; the ring checks out")
        ch.unlink()
