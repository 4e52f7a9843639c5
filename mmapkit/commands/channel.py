"""``mmapkit channel stat|send|recv|bench PATH``: look at and use a channel file."""

from __future__ import annotations

import argparse
import os
import queue
import sys
import time

from ..errors import BrokenError, EndOfChannel
from ..ipc import Channel
from ._out import print_json, print_table

__all__ = ["register"]


def _stat(args: argparse.Namespace) -> int:
    with Channel.open(args.path) as ch:
        info = ch.describe()
    if args.json:
        print_json(info)
        return 0
    rows = [[k, v] for k, v in info.items() if k != "participants"]
    print_table(["field", "value"], rows, title=f"channel {args.path}")
    parts = info["participants"]
    if parts:
        print_table(["slot", "role", "pid", "alive", "subscriber", "cursor"],
                    [[p["slot"], p["role"], p["pid"], "yes" if p["alive"] else "no",
                      p.get("name", ""), p.get("cursor", "")] for p in parts],
                    title="participants")
    return 0


def _open_or_create(args: argparse.Namespace) -> Channel:
    if args.create and not os.path.exists(args.path):
        try:
            return Channel.create(args.path, capacity=args.capacity)
        except FileExistsError:
            pass  # created by someone else meanwhile
    return Channel.open(args.path)


def _send(args: argparse.Namespace) -> int:
    with _open_or_create(args) as ch:
        messages = [m.encode() for m in args.message]
        if not messages:
            messages = [line.rstrip(b"\n") for line in sys.stdin.buffer]
        for sent, m in enumerate(messages):
            try:
                ch.send(m, timeout=args.timeout)
            except queue.Full:
                print(f"mmapkit: error: the channel stayed full for {args.timeout} s after "
                      f"{sent} message(s); is anyone receiving?", file=sys.stderr)
                return 1
        if args.finish:
            ch.finish()
    print(f"sent {len(messages)} message(s)", file=sys.stderr)
    return 0


def _recv(args: argparse.Namespace) -> int:
    count = 0
    out = sys.stdout.buffer
    with Channel.open(args.path) as ch:
        try:
            while args.count is None or count < args.count:
                msg = ch.recv(timeout=args.timeout)
                out.write(msg + b"\n")
                out.flush()
                count += 1
        except queue.Empty:
            print(f"no message within {args.timeout} s", file=sys.stderr)
        except EndOfChannel:
            print("end of channel: every producer finished", file=sys.stderr)
        except BrokenError as exc:
            print(f"stopped: {exc}", file=sys.stderr)
    print(f"received {count} message(s)", file=sys.stderr)
    return 0 if args.count is None or count == args.count else 1


def _bench(args: argparse.Namespace) -> int:
    """Throughput of one producer (a fork child) and one consumer over a fresh channel."""
    ch = Channel.create(args.path, capacity=args.capacity)
    try:
        msg = b"\0" * args.size
        n = args.messages
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the producer child
            code = 1
            try:
                for i in range(0, n, 256):
                    ch.send_many([msg] * min(256, n - i))
                ch.finish()
                code = 0
            finally:
                os._exit(code)
        got = 0
        t0 = time.perf_counter()
        while got < n:
            got += len(ch.recv_many(256, timeout=60))
        elapsed = time.perf_counter() - t0
        os.waitpid(pid, 0)
        rows = [["messages", n], ["message size (B)", args.size],
                ["seconds", round(elapsed, 4)], ["messages/s", round(n / elapsed)],
                ["MB/s", round(n * args.size / elapsed / 1e6, 1)]]
        print_table(["measure", "value"], rows, title=f"channel bench {args.path}")
    finally:
        ch.close()
        ch.unlink()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("channel", help="inspect, send to, receive from, benchmark a channel",
                       description="Shared-memory message channels between processes.")
    csub = p.add_subparsers(dest="channel_command", metavar="ACTION", required=True)

    s = csub.add_parser("stat", help="header, positions, pending messages, participants")
    s.add_argument("path")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_stat)

    s = csub.add_parser("send", help="send messages (arguments, or stdin lines)")
    s.add_argument("path")
    s.add_argument("message", nargs="*", help="messages to send (default: one per stdin line)")
    s.add_argument("--create", action="store_true", help="create the channel if missing")
    s.add_argument("--capacity", type=int, default=1 << 20, help="ring bytes for --create")
    s.add_argument("--finish", action="store_true",
                   help="end the stream afterwards (receivers then get end of channel)")
    s.add_argument("--timeout", type=float, default=None, help="seconds to wait for room")
    s.set_defaults(func=_send)

    s = csub.add_parser("recv", help="receive messages, one per output line")
    s.add_argument("path")
    s.add_argument("--count", type=int, default=None, help="stop after this many")
    s.add_argument("--timeout", type=float, default=None,
                   help="stop when nothing arrives for this many seconds")
    s.set_defaults(func=_recv)

    s = csub.add_parser("bench", help="quick throughput of a new channel at PATH (removed after)")
    s.add_argument("path")
    s.add_argument("--messages", type=int, default=200_000)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--capacity", type=int, default=1 << 22)
    s.set_defaults(func=_bench)
