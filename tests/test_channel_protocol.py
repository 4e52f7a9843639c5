"""The Channel's cross-process protocol, step by step (the state table at the top of
mmapkit/ipc/channel.py): each test holds one real, unrelated process between two steps
with a test-only pause point (MMAPKIT_PAUSE, read once at import by mmapkit._testhooks)
while another process acts, so each race happens every time."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import child_env, exit_code, fork_child

from mmapkit.errors import EndOfChannel, ModeConflictError
from mmapkit.ipc import Channel

# These tests SIGKILL children (or servers) whose pipes and sockets the test leaves to
# the garbage collector: the one place an unclosed-resource warning is expected.
pytestmark = [pytest.mark.timeout(120),
              pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")]


class Pause:
    """One pause point in one child process: start it with :meth:`spawn`, wait until it is
    held with :meth:`wait`, let it go with :meth:`go`."""

    def __init__(self, tmp_path: Path, step: str) -> None:
        self.dir = tmp_path / f"pause-{step.replace(':', '-')}"
        self.dir.mkdir()
        self.step = step

    def spawn(self, code: str, *args: str) -> subprocess.Popen[str]:
        env = child_env()
        env["MMAPKIT_PAUSE"] = self.step
        env["MMAPKIT_PAUSE_DIR"] = str(self.dir)
        return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                                env=env, text=True, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait(self, proc: subprocess.Popen[str], timeout: float = 60) -> None:
        flag = self.dir / f"{self.step}.reached"
        deadline = time.monotonic() + timeout
        while not flag.exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the child ended before pausing at {self.step}: {out}{err}")
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the child never reached {self.step}")
            time.sleep(0.005)

    def go(self) -> None:
        (self.dir / f"{self.step}.go").touch()


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child failed ({proc.returncode}): {out}{err}"
    return out


# --- O1..O5: open ------------------------------------------------------------------------


def test_open_while_the_path_is_replaced_lands_on_one_channel(tmp_path: Path) -> None:
    """O2 -> O3: the path is unlinked and re-created (smaller) between the opener's map and
    its lock file: it must map, lock and claim the *new* channel, never a mix (the old code
    extended the new file to the old size and locked another channel's files)."""
    path = tmp_path / "ch"
    old = Channel.create(path, capacity=1 << 16, multi_producer=True)
    pause = Pause(tmp_path, "channel.open:mapped")
    child = pause.spawn("""
        import sys
        from mmapkit.ipc import Channel
        ch = Channel.open(sys.argv[1])
        ch.send(b"from the opener")
        print(ch.capacity, flush=True)
        ch.close()
    """, str(path))
    pause.wait(child)
    old.unlink()
    new = Channel.create(path, capacity=4096)
    size = os.path.getsize(path)
    pause.go()
    assert finish(child).split() == ["4096"]
    assert os.path.getsize(path) == size  # the opener never extended a file
    assert new.recv(timeout=10) == b"from the opener"
    with pytest.raises(queue.Empty):
        old.recv(timeout=0)
    new.check()
    old.close()
    new.close()


def test_open_of_a_busy_channel_is_not_damage(tmp_path: Path) -> None:
    """O5: head and tail move between the opener's two reads (here: more than a whole
    ring), which an unordered read mistook for impossible positions (CorruptFileError)."""
    path = tmp_path / "ch"
    prod = Channel.create(path, capacity=1024)
    cons = Channel.open(path)
    for i in range(3):
        prod.send(bytes([i]) * 100)
    pause = Pause(tmp_path, "channel.positions")
    child = pause.spawn("""
        import sys
        from mmapkit.ipc import Channel
        with Channel.open(sys.argv[1]) as ch:
            ch.check()
        print("opened", flush=True)
    """, str(path))
    pause.wait(child)
    for _ in range(3):
        cons.recv(timeout=5)
    for i in range(40):  # ~4.5 rings: head laps the tail the child read first
        prod.send(bytes([i]) * 100)
        cons.recv(timeout=5)
    prod.send(b"x" * 500)
    pause.go()
    assert finish(child).strip() == "opened"
    prod.close()
    cons.close()


def test_creators_and_openers_starting_at_the_same_moment(tmp_path: Path) -> None:
    """C1/C2 against O1: unrelated processes race "create, or open if it exists" on the
    same fresh paths; none may see a young channel as foreign or damaged."""
    n, paths = 5, 12
    gate = tmp_path / "go"
    code = """
        import os, sys, time
        from mmapkit.ipc import Channel
        me, base, n, gate = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
        while not os.path.exists(gate):
            time.sleep(0.001)
        for i in range(n):
            path = f"{base}-{i}"
            try:
                ch = Channel.create(path, capacity=4096, multi_producer=True)
            except FileExistsError:
                ch = Channel.open(path)
            ch.send(me.encode())
            ch.close()
    """
    env = child_env()
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(k),
                               str(tmp_path / "ch"), str(paths), str(gate)],
                              env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for k in range(n)]
    time.sleep(0.5)
    gate.touch()
    for p in procs:
        finish(p)
    for i in range(paths):
        with Channel.open(tmp_path / f"ch-{i}") as ch:
            ch.check()
            got = sorted(ch.recv_many(100, timeout=5))
        assert got == sorted(str(k).encode() for k in range(n))


# --- A1..A6: attach ------------------------------------------------------------------------


ATTACH_CONSUMER = """
    import sys
    from mmapkit.ipc import Channel
    ch = Channel.open(sys.argv[1])
    print(ch.recv(timeout=30).decode(), flush=True)
    sys.stdin.readline()  # stay the consumer until the test is done
    ch.close()
"""


def test_one_single_consumer_even_when_two_attach_at_once(tmp_path: Path) -> None:
    """A1..A6 exclude each other: a second attacher waits on the registry lock while the
    first is between taking its slot lock and writing its state, then sees it alive."""
    path = tmp_path / "ch"
    prod = Channel.create(path, capacity=4096)
    prod.send(b"one")
    pause = Pause(tmp_path, "channel.attach:slot")
    child = pause.spawn(ATTACH_CONSUMER, str(path))
    pause.wait(child)
    other = Channel.open(path)
    errors: list[BaseException] = []

    def attach() -> None:
        try:
            other.recv(timeout=30)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=attach)
    t.start()
    t.join(0.3)
    assert t.is_alive(), "the second attacher did not wait for the registry lock"
    pause.go()
    t.join(30)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ModeConflictError), errors
    out, err = child.communicate("done\n", timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == "one"
    other.close()
    prod.close()


def test_killed_holding_the_registry_lock_wedges_nobody(tmp_path: Path) -> None:
    """K at A4: the kernel drops the registry and slot locks of a process killed mid-attach;
    the slot it had locked (state not yet written) is free again."""
    path = tmp_path / "ch"
    prod = Channel.create(path, capacity=4096)
    prod.send(b"for the survivor")
    pause = Pause(tmp_path, "channel.attach:slot")
    child = pause.spawn(ATTACH_CONSUMER, str(path))
    pause.wait(child)
    got: list[bytes] = []
    other = Channel.open(path)
    t = threading.Thread(target=lambda: got.append(other.recv(timeout=30)))
    t.start()
    t.join(0.3)
    assert t.is_alive()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    t.join(10)
    assert got == [b"for the survivor"]
    assert sum(p["alive"] for p in other.describe()["participants"]) == 2
    other.close()
    prod.close()


def test_a_new_stream_while_a_receiver_waits(tmp_path: Path) -> None:
    """A3 -> A4: a new producer has cleared the finished stream's slots but not yet written
    its own: a waiting receiver sees no producer at all and keeps waiting (no false
    EndOfChannel or BrokenError), then receives the new stream."""
    path = tmp_path / "ch"
    first = Channel.create(path, capacity=4096)
    cons = Channel.open(path)
    first.send(b"old")
    first.finish()
    first.close()
    assert cons.recv(timeout=5) == b"old"
    with pytest.raises(EndOfChannel):
        cons.recv(timeout=5)
    pause = Pause(tmp_path, "channel.attach:slot")
    child = pause.spawn("""
        import sys
        from mmapkit.ipc import Channel
        with Channel.open(sys.argv[1]) as ch:
            ch.send(b"new")
            ch.finish()
    """, str(path))
    pause.wait(child)
    roles = [p["role"] for p in cons.describe()["participants"]]
    assert "finished" not in roles  # A3 done
    with pytest.raises(queue.Empty):
        cons.recv(timeout=0.3)
    pause.go()
    assert cons.recv(timeout=30) == b"new"
    finish(child)
    with pytest.raises(EndOfChannel):
        cons.recv(timeout=5)
    cons.close()


# --- S/R: claims, and peers killed while holding them ----------------------------------------


def test_producer_killed_holding_the_claim(tmp_path: Path) -> None:
    """K at S4: a producer killed with the claim held and half a frame written; the other
    producers carry on and nothing of the half frame is ever seen."""
    path = tmp_path / "ch"
    ch = Channel.create(path, capacity=4096, multi_producer=True)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from mmapkit.ipc import Channel
        ch = Channel.open(sys.argv[1])
        with ch.reserve(100) as buf:
            buf[:50] = b"t" * 50
            print("claimed", flush=True)
            time.sleep(60)
    """), str(path)], env=child_env(), text=True, stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "claimed"
    with pytest.raises(queue.Full):  # the claim is really held
        ch.send(b"blocked", timeout=0.2)
    child.kill()
    child.wait()
    ch.send(b"after", timeout=10)
    assert ch.recv(timeout=5) == b"after"
    with pytest.raises(queue.Empty):
        ch.recv(timeout=0)
    ch.check()
    ch.close()


def test_consumer_killed_holding_the_claim(tmp_path: Path) -> None:
    """K at R2: a consumer killed holding the claim before its tail store; the next
    consumer gets that very message, once."""
    path = tmp_path / "ch"
    ch = Channel.create(path, capacity=4096, multi_consumer=True)
    ch.send(b"first")
    ch.send(b"second")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from mmapkit.ipc import Channel
        ch = Channel.open(sys.argv[1])
        with ch.recv_view() as view:
            print(bytes(view).decode(), flush=True)
            time.sleep(60)
    """), str(path)], env=child_env(), text=True, stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "first"
    other = Channel.open(path)
    with pytest.raises(queue.Empty):  # the claim is really held
        other.recv(timeout=0.2)
    child.kill()
    child.wait()
    assert other.recv(timeout=10) == b"first"
    assert other.recv(timeout=10) == b"second"
    other.close()
    ch.close()


# --- D: close --------------------------------------------------------------------------------


def test_close_releases_every_lock_even_when_a_step_fails(tmp_path: Path) -> None:
    path = tmp_path / "ch"
    ch = Channel.create(path, capacity=4096)
    ch.send(b"m")
    assert ch.recv(timeout=1) == b"m"  # producer and consumer slots, both locked
    exported = memoryview(ch._mm)  # the mapping cannot be closed while this lives
    with pytest.raises(BufferError):
        ch.close()
    assert ch.closed
    ch.close()  # idempotent
    code = """
        import sys
        from mmapkit.ipc import Channel
        with Channel.open(sys.argv[1]) as ch:
            ch.send(b"again")
            print(ch.recv(timeout=5).decode())
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(path)],
                         env=child_env(), text=True, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "again"
    exported.release()


def test_check_on_a_live_channel_is_not_damage(tmp_path: Path) -> None:
    """check() while the frames it walks are consumed and overwritten by a wrap-around:
    what it read after tail moved is not damage; it looks again."""
    path = tmp_path / "ch"
    prod = Channel.create(path, capacity=1024)
    cons = Channel.open(path)
    for i in range(4):
        prod.send(bytes([i]) * 200)  # frames at ring offsets 0, 208, 416, 624
    pause = Pause(tmp_path, "channel.check")
    child = pause.spawn("""
        import sys
        from mmapkit.ipc import Channel
        with Channel.open(sys.argv[1]) as ch:
            ch.check()
        print("clean", flush=True)
    """, str(path))
    pause.wait(child)  # it has walked the frame at 0
    for _ in range(4):
        cons.recv(timeout=5)
    prod.send(b"s" * 150)
    prod.send(b"\xff" * 500)  # wraps: ring offsets 0..512 now hold 0xff payload
    pause.go()
    assert finish(child).strip() == "clean"
    with pytest.raises(Exception, match="unknown frame kind"):  # what it would have read
        from mmapkit.ipc import _format as fmt
        fmt.decode_frame(bytes(prod._data), 208)
    prod.check()
    prod.close()
    cons.close()


# --- F1 / U1-U2: fork and unlink with the path replaced ---------------------------------------


def test_fork_child_after_the_path_was_replaced_keeps_its_channel(tmp_path: Path) -> None:
    """F1: the child's new lock descriptions are of its own channel's files even though the
    path now names another channel: the parent still looks alive to it."""
    path = tmp_path / "ch"
    ch = Channel.create(path, capacity=4096)
    with pytest.raises(queue.Empty):
        ch.recv(timeout=0)  # the parent is the single consumer
    ch.unlink()
    other = Channel.create(path, capacity=4096)

    def child() -> None:
        try:
            ch.recv(timeout=0)
        except ModeConflictError:
            return
        raise AssertionError("the child became a second consumer")

    assert exit_code(fork_child(child)) == 0
    ch.close()
    other.close()


def test_a_stale_handle_does_not_unlink_the_new_channel(tmp_path: Path) -> None:
    path = tmp_path / "ch"
    a = Channel.create(path, capacity=4096)
    b = Channel.open(path)
    a.unlink()
    assert not path.exists() and not Path(str(path) + ".lock").exists()
    c = Channel.create(path, capacity=4096)
    b.unlink()  # b's channel is already gone: the new one stays
    assert path.exists() and Path(str(path) + ".lock").exists()
    c.send(b"still here")
    with Channel.open(path) as d:
        assert d.recv(timeout=1) == b"still here"
    for h in (a, b, c):
        h.close()
