"""A logging process is killed with SIGKILL; the next start recovers every record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

TITLE = "crash-safe logging: kill -9 a logging process, recover every record"

CHILD = """
import logging, sys
import mmapkit.log as mlog
handler = mlog.Handler(sys.argv[1], "demo", buffer_size=1 << 20, flush_interval=3600)
log = logging.getLogger("demo"); log.addHandler(handler); log.setLevel(logging.INFO)
for i in range(int(sys.argv[2])):
    log.info("order %d shipped", i)
print("logged", flush=True)
sys.stdin.read()   # wait here to be killed, records still in the mapped buffer
"""


def run(workdir: Path, say: Callable[[str], None]) -> None:
    import mmapkit.log as mlog

    n = 2000
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(workdir), str(n)], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != "logged":
        child.kill()
        raise RuntimeError(f"the logging child did not start: {line!r}")
    buffered = sum(1 for _ in mlog.read_buffer(next(workdir.glob("demo.*.mbuf")))[1])
    say(f"child {child.pid} logged {n} records; {buffered} of them are only in its "
        "mapped buffer file")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.stdin is not None
    child.stdin.close()
    child.stdout.close()
    say(f"child killed with SIGKILL (exit status {child.returncode})")
    t0 = time.perf_counter()
    with mlog.Writer(workdir, "demo") as w:  # the next start
        recovered = w.statistics().recovered
    say(f"next start recovered {recovered} records from the dead process's buffer in "
        f"{(time.perf_counter() - t0) * 1000:.1f} ms")
    messages = [r.message for r in mlog.read(workdir)]
    expected = [f"demo: order {i} shipped" for i in range(n)]
    if messages != expected:
        raise RuntimeError(f"expected {n} records in order, read {len(messages)}")
    if recovered != buffered:
        raise RuntimeError(f"{buffered} records were buffered but {recovered} recovered")
    say(f"reading the log gives all {n} records exactly once, in order: "
        f"{messages[0]!r} ... {messages[-1]!r}")
