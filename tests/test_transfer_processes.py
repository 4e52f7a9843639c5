"""Other processes truncating the source during copy() and send(), and SIGKILL mid-copy.

The copying side always runs in an unrelated child process, so a SIGBUS would show as the
child's death by signal instead of taking the test runner down.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run_py, spawn

SIZE = 32 << 20
TRUNCATE = "import os, sys; os.truncate(sys.argv[1], int(sys.argv[2]))"


def _source(path: Path, size: int = SIZE) -> bytes:
    data = random.Random(7).randbytes(size)
    path.write_bytes(data)
    return data


def _truncate_from_another_process(path: Path, size: int = 4096) -> None:
    res = run_py(TRUNCATE, str(path), str(size), timeout=30)
    assert res.returncode == 0, res.stderr


def _not_killed_by_signal(proc: subprocess.Popen[str] | subprocess.CompletedProcess[str],
                          out: str, err: str) -> None:
    rc = proc.returncode
    assert rc is not None
    assert rc >= 0, f"child died by signal {signal.Signals(-rc).name}: {err}"
    assert rc == 0, f"child exit {rc}: {out}\n{err}"


COPY_CHILD = """
import sys, time
from mmapkit import transfer
from mmapkit.errors import BrokenError
transfer.CHUNK = 1 << 20
first = [True]
def progress(done, total):
    if first[0]:
        first[0] = False
        print("started", flush=True)
    time.sleep(0.02)
try:
    transfer.copy(sys.argv[1], sys.argv[2], method=sys.argv[3], progress=progress)
except BrokenError as exc:
    print("broken:", exc, flush=True)
    sys.exit(0)
print("finished without noticing", flush=True)
sys.exit(3)
"""


@pytest.mark.parametrize("method", ["mmap", "readwrite", "copy_file_range", "sendfile"])
def test_source_truncated_during_copy_raises_broken(tmp_path: Path, method: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _source(src)
    child = spawn(COPY_CHILD, str(src), str(dst), method)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "started"
    _truncate_from_another_process(src)
    out, err = child.communicate(timeout=60)
    _not_killed_by_signal(child, out, err)
    assert "broken: the source shrank" in out
    assert "another process" in out
    assert not dst.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".mmapkit-tmp")]


WINDOW_CHILD = """
import os, subprocess, sys
from mmapkit import transfer
from mmapkit.errors import BrokenError
src = os.open(sys.argv[1], os.O_RDONLY)
dst = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o600)
size = os.fstat(src).st_size
windows = transfer._MmapWindows()
assert windows(src, dst, 0, 4096, size) == 4096      # the whole file is mapped now
subprocess.run([sys.executable, "-c", sys.argv[3], sys.argv[1], "4096"], check=True)
try:
    # straight to the copy, as if the truncation landed just after the size check
    windows.write_window(src, dst, 1 << 20, 1 << 20, size)
except BrokenError as exc:
    print("broken:", exc, flush=True)
    sys.exit(0)
finally:
    windows.close()
sys.exit(3)
"""


def test_truncation_after_the_size_check_is_efault_not_sigbus(tmp_path: Path) -> None:
    """The backstop: the kernel copies from the mapping, so vanished pages give EFAULT."""
    src = tmp_path / "src"
    _source(src, 8 << 20)
    res = run_py(WINDOW_CHILD, str(src), str(tmp_path / "dst"), TRUNCATE, timeout=60)
    _not_killed_by_signal(res, res.stdout, res.stderr)
    assert "broken: the source shrank" in res.stdout


SEND_CHILD = """
import socket, sys
from mmapkit import transfer
from mmapkit.errors import BrokenError
sock = socket.socket(socket.AF_UNIX if sys.argv[3] == "unix" else socket.AF_INET)
sock.connect(sys.argv[2] if sys.argv[3] == "unix" else ("127.0.0.1", int(sys.argv[2])))
try:
    transfer.send(sock, sys.argv[1], method=sys.argv[4])
except BrokenError as exc:
    print("broken:", exc, flush=True)
    sys.exit(0)
finally:
    sock.close()
print("sent everything", flush=True)
sys.exit(3)
"""


@pytest.mark.parametrize("family", ["unix", "tcp"])
@pytest.mark.parametrize("method", ["splice", "sendfile", "readwrite", "mmap"])
def test_source_truncated_during_send_raises_broken(tmp_path: Path, method: str,
                                                    family: str) -> None:
    src = tmp_path / "src"
    data = _source(src)
    if family == "unix":
        listener = socket.socket(socket.AF_UNIX)
        address = str(tmp_path / "sock")
        listener.bind(address)
    else:
        listener = socket.socket(socket.AF_INET)
        listener.bind(("127.0.0.1", 0))
        address = str(listener.getsockname()[1])
    listener.listen(1)
    with listener:
        child = spawn(SEND_CHILD, str(src), address, family, method)
        listener.settimeout(30)
        conn, _ = listener.accept()
    got = bytearray()
    with conn:
        conn.settimeout(30)
        while len(got) < (2 << 20):  # the sender is blocked on a full socket buffer now
            part = conn.recv(64 << 10)
            assert part, "the sender stopped early"
            got += part
        _truncate_from_another_process(src)
        while part := conn.recv(1 << 20):
            got += part
    out, err = child.communicate(timeout=60)
    _not_killed_by_signal(child, out, err)
    assert "broken: the file shrank" in out
    assert len(got) < SIZE
    assert bytes(got) == data[: len(got)]  # what did arrive is the file's true prefix


KILL_CHILD = """
import sys, time
from mmapkit import transfer
transfer.CHUNK = 1 << 20
def progress(done, total):
    if done == 1 << 20:
        print("started", flush=True)
    time.sleep(0.02)
transfer.copy(sys.argv[1], sys.argv[2], method=sys.argv[3], progress=progress, overwrite=True)
print("done", flush=True)
"""


def _kill_rounds(tmp_path: Path, method: str, rounds: int) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    data = _source(src)
    dst.write_bytes(b"the previous version")
    rng = random.Random(method)
    for _ in range(rounds):
        child = spawn(KILL_CHILD, str(src), str(dst), method)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        # the final name holds the old version or the complete copy, never a mix
        assert dst.read_bytes() in (b"the previous version", data)
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".mmapkit-tmp")]
    assert leftovers, "killed copies leave their temporary files, which are ignorable"
    for p in leftovers:
        os.unlink(p)
    # and a fresh copy after the crashes is complete
    child = spawn(KILL_CHILD, str(src), str(dst), method)
    _out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert dst.read_bytes() == data


@pytest.mark.parametrize("method", ["auto", "mmap"])
def test_sigkill_mid_copy_never_leaves_a_half_file(tmp_path: Path, method: str) -> None:
    _kill_rounds(tmp_path, method, 4)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["auto", "mmap", "readwrite", "sendfile"])
def test_sigkill_soak(tmp_path: Path, method: str) -> None:
    _kill_rounds(tmp_path, method, 40)


BOUNDED_CHILD = """
import os, resource, sys
from mmapkit import transfer
# address space now + 96 MiB: the file (256 MiB) cannot be read or mapped whole
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (96 << 20), vm + (96 << 20)))
try:
    bytearray(300 << 20)
    print("limit not enforced", flush=True)
    sys.exit(4)
except MemoryError:
    pass
for method in sys.argv[3:]:
    res = transfer.copy(sys.argv[1], sys.argv[2] + "-" + method, method=method)
    print(method, res.bytes, flush=True)
"""


def test_file_larger_than_the_memory_it_may_use(tmp_path: Path) -> None:
    """A child limited to 96 MiB of extra address space copies 256 MiB with each method."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc to size the address-space limit")
    src = tmp_path / "src"
    block = random.Random(1).randbytes(1 << 20)
    with open(src, "wb") as f:
        for i in range(256):
            f.write(block[i:] + block[:i])
    methods = ["auto", "mmap", "readwrite", "sendfile", "copy_file_range"]
    res = run_py(BOUNDED_CHILD, str(src), str(tmp_path / "dst"), *methods, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split() == [w for m in methods for w in (m, str(256 << 20))]
    want = src.read_bytes()
    for m in methods:
        assert (tmp_path / f"dst-{m}").read_bytes() == want
