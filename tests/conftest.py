"""Shared test helpers: real child processes, tmpfs mounts, timeouts."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]

# A journal writer for kill -9 tests: appends "%08d" counters (100-byte values) forever
# and prints every 50th offset once append() returned it (acknowledged).
JOURNAL_APPENDER = """
import sys
from mmapkit import Journal
j = Journal(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    off = j.append(b"%08d" % i + b"." * 92)
    if i % 50 == 0:
        print(off, flush=True)
    i += 1
"""

# Hypothesis checks how fast it generates examples; on a loaded 2-core machine (a CI run, a
# benchmark beside the tests) that check failed a test of our code for the machine's
# speed.  The tests' own assertions are unchanged.
settings.register_profile("mmapkit", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mmapkit")


def child_env() -> dict[str, str]:
    """Environment for an unrelated ``python`` child that can import this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class Child(subprocess.Popen[str]):
    """A child of :func:`spawn`.  Its pipes live as long as it does: a test that SIGKILLs
    a child and waits for it does not read its pipes to the end, so they are closed here
    when the test drops the child, not left to the garbage collector (which would warn
    about them at some later test; pytest turns that warning into an error)."""

    def __del__(self) -> None:
        for pipe in (self.stdin, self.stdout, self.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        super().__del__()


def spawn(code: str, *args: str, **kw: object) -> Child:
    """Start an unrelated Python process (not a fork) running ``code``."""
    return Child(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=child_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        **kw,  # type: ignore[arg-type]
    )


def run_py(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in an unrelated Python process and wait for it."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=child_env(), text=True, capture_output=True, timeout=timeout,
    )


# bench/_harness.py has the same helper (fork_child / reap); the tests keep their own copy
# on purpose: a test of the library must not depend on the benchmarks (only the tests of
# bench/ import them; a wheel ships them as mmapkit._bench), a change made there for a
# measurement must not change what a test checks, and a test wants the exit code to
# assert on (exit_code below) where a benchmark only wants to fail loudly.
def fork_child(fn: Callable[[], object]) -> int:
    """Run ``fn`` in a fork child; it exits 0 when ``fn`` returns, 1 (saying why on stderr)
    when it raises, without running pytest's atexit handlers either way."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        except BaseException as exc:
            os.write(2, f"child failed: {exc!r}\n".encode())
        finally:
            os._exit(code)
    return pid


def wait_reached(p: subprocess.Popen[str], where: Path, point: str,
                 timeout: float = 30) -> None:
    """Wait until child ``p`` stops at pause point ``point`` (``mmapkit._testhooks``: it
    creates ``<where>/<point>.reached``); fail if it ends first or never gets there."""
    reached = where / f"{point}.reached"
    deadline = time.monotonic() + timeout
    while not reached.exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, f"the child never reached {point}"
        time.sleep(0.005)


def exit_code(pid: int) -> int:
    """Wait for child ``pid``; its exit code (negative: the signal that killed it)."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def receive_peaks(receive: Callable[[], object], count: int, nbytes: int) -> list[int]:
    """Traced peak memory (bytes above what was traced before) of each of ``count`` calls
    of ``receive``, each returning a writable array of ``nbytes`` bytes: how many copies
    of the array the receive made."""
    import tracemalloc

    peaks = []
    tracemalloc.start()
    try:
        for _ in range(count):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            got: Any = receive()
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
            assert got.nbytes == nbytes and got.flags.writeable
            del got
    finally:
        tracemalloc.stop()
    return peaks


@contextlib.contextmanager
def tiny_tmpfs(size: str = "256k") -> Iterator[Path]:
    """A freshly mounted tmpfs of ``size``; skips the test where mounting is not allowed."""
    if not sys.platform.startswith("linux"):
        pytest.skip("tmpfs mounts are Linux only")
    mnt = Path(tempfile.mkdtemp(prefix="mmapkit-tmpfs-"))
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or 'not permitted'}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        with contextlib.suppress(OSError):
            mnt.rmdir()


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    with tiny_tmpfs() as mnt:
        yield mnt
