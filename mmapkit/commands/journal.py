"""``mmapkit journal DIR append|cat|tail|consumers|stats|check|serve|mirror``.

The commands only translate arguments into Journal calls.  Values given on the command
line (or one per stdin line) are stored as UTF-8; printed values are decoded as UTF-8 with
backslash escapes for other bytes (``--json`` gives text, or base64 under ``value_b64``
when the bytes are not UTF-8).  ``--from`` takes ``earliest``, ``latest``, an offset, or a
time (ISO date, or an age like ``15m``: the first record at or after it).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ._out import print_json, print_table

if TYPE_CHECKING:
    from ..journal import Journal, Record

__all__ = ["register"]


def _open(args: argparse.Namespace, *, create: bool = False) -> Journal:
    from ..journal import Journal

    return Journal(args.dir, create=create)


def _from(j: Journal, text: str) -> str | int:
    if text in ("earliest", "latest"):
        return text
    if text.isdigit():
        return int(text)
    from .log import parse_time

    try:
        when = parse_time(text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"--from takes earliest, latest, an offset or a time: {exc}") from None
    found = j.offset_for_time(int(when * 1000))
    return "latest" if found is None else found


def _text(b: bytes) -> str:
    """Printable text: UTF-8, with other bytes and control characters escaped."""
    t = b.decode("utf-8", "backslashreplace")
    if t.isprintable():
        return t
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in t)


def _bytes_field(out: dict[str, Any], name: str, b: bytes | None) -> None:
    if b is None:
        out[name] = None
        return
    try:
        out[name] = b.decode("utf-8")
    except UnicodeDecodeError:
        out[name + "_b64"] = base64.b64encode(b).decode()


def _show(records: Iterable[Record], as_json: bool, limit: int | None = None) -> int:
    n = 0
    if limit is not None and limit <= 0:
        return 0
    for rec in records:
        if as_json:
            row: dict[str, Any] = {"offset": rec.offset, "timestamp_ms": rec.timestamp_ms}
            _bytes_field(row, "key", rec.key)
            _bytes_field(row, "value", rec.value)
            if rec.headers:
                row["headers"] = {name: _text(v) for name, v in rec.headers}
            print(json.dumps(row, ensure_ascii=False), flush=True)
        else:
            stamp = dt.datetime.fromtimestamp(rec.timestamp_ms / 1000).isoformat(
                sep=" ", timespec="milliseconds")
            key = "" if rec.key is None else f" [{_text(rec.key)}]"
            print(f"{rec.offset} {stamp}{key} {_text(rec.value)}", flush=True)
        n += 1
        if n == limit:
            break
    return n


def _append(args: argparse.Namespace) -> int:
    headers = []
    for h in args.header or ():
        name, sep, value = h.partition("=")
        if not sep or not name:
            print(f"mmapkit journal: --header takes NAME=VALUE, got {h!r}", file=sys.stderr)
            return 2
        headers.append((name, value.encode()))
    values = args.value if args.value else [line.rstrip("\n") for line in sys.stdin]
    key = None if args.key is None else args.key.encode()
    with _open(args, create=args.create) as j:
        if args.batch:
            if not values:
                return 0
            first = j.append_many([(v.encode(), key, headers or None) for v in values])
            offsets = list(range(first, first + len(values)))
        else:
            offsets = [j.append(v.encode(), key=key, headers=headers or None)
                       for v in values]
        if args.sync:
            j.sync()
    if args.json:
        print_json({"offsets": offsets})
    else:
        for o in offsets:
            print(o)
    return 0


def _cat(args: argparse.Namespace) -> int:
    with _open(args) as j:
        try:
            where = _from(j, args.from_)
        except ValueError as exc:
            print(f"mmapkit journal: {exc}", file=sys.stderr)
            return 2
        with j.reader(where, follow=args.follow, timeout=args.timeout) as r:
            _show(r, args.json, args.count)
    return 0


def _tail(args: argparse.Namespace) -> int:
    if args.lines < 0:
        print("mmapkit journal: -n must be >= 0", file=sys.stderr)
        return 2
    with _open(args) as j:
        start = max(j.start_offset, j.end_offset - args.lines)
        with j.reader(start, follow=args.follow, timeout=args.timeout) as r:
            _show(r, args.json)
    return 0


def _consumers(args: argparse.Namespace) -> int:
    with _open(args) as j:
        end = j.end_offset
        rows = [{"name": name, "committed": off, "lag": max(0, end - off)}
                for name, off in sorted(j.consumer_offsets().items())]
    if args.json:
        print_json({"end_offset": end, "consumers": rows})
    elif rows:
        print_table(["consumer", "committed", "lag"],
                    [(r["name"], r["committed"], r["lag"]) for r in rows],
                    title=f"consumers of {args.dir} (end offset {end})")
    else:
        print("no consumer has committed yet")
    return 0


def _stats(args: argparse.Namespace) -> int:
    with _open(args) as j:
        s = j.statistics()
    data = {k: getattr(s, k) for k in s.__dataclass_fields__}
    if args.json:
        print_json(data)
    else:
        print_table(["", str(args.dir)], list(data.items()), title="mmapkit journal stats")
    return 0


def _check(args: argparse.Namespace) -> int:
    from ..journal import Journal

    report = Journal.check(args.dir)
    data = {k: getattr(report, k) for k in report.__dataclass_fields__}
    if args.json:
        print_json(data)
    else:
        rows = [(k, v) for k, v in data.items() if k not in ("problems", "damaged",
                                                              "stale_indexes")]
        print_table(["", str(args.dir)], rows, title="mmapkit journal check")
        for first, end in report.damaged:
            print(f"damaged: offsets [{first}, {end})")
        for p in report.problems:
            print(f"problem: {p}")
        for p in report.stale_indexes:
            print(f"stale index (rebuilt on use): {p}")
    return 0 if report.ok else 1


def _serve(args: argparse.Namespace) -> int:
    from ..journal.remote import serve

    with _open(args) as j, serve(j, args.address, idle_timeout=args.idle_timeout) as server:
        print(f"serving {args.dir} on {server.address_text}", flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2 if deadline is None else max(0.0, min(0.2, deadline -
                                                                  time.monotonic())))
    return 0


def _mirror(args: argparse.Namespace) -> int:
    from ..mirror import Mirror, sink_from_url
    from ..mirror._runner import run_foreground

    try:
        sink = sink_from_url(args.url, stream=args.stream)
        mirror = Mirror(args.dir, sink, name=args.name, batch=args.batch,
                        linger_ms=args.linger_ms, on_gap=args.on_gap)
    except ValueError as exc:
        print(f"mmapkit journal mirror: {exc}", file=sys.stderr)
        return 2
    code = run_foreground(mirror, progress=args.progress, once=args.once)
    if args.once:
        st = mirror.statistics()
        print(f"{st.name}: sent {st.sent}, position {st.position}")
    return code


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("journal", help="append to, read, follow, check and serve a journal",
                       description="Work with an mmapkit.Journal directory (a Kafka-class "
                       "log shared by processes).")
    p.add_argument("dir", help="the journal directory")
    ops = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def json_flag(q: argparse.ArgumentParser) -> None:
        q.add_argument("--json", action="store_true", help="JSON output")

    q = ops.add_parser("append", help="append values (arguments, or one per stdin line)")
    q.add_argument("value", nargs="*")
    q.add_argument("--key", help="the records' key (UTF-8)")
    q.add_argument("--header", action="append", metavar="NAME=VALUE", help="a header "
                   "(repeatable)")
    q.add_argument("--batch", action="store_true", help="append all values as one batch "
                   "(all or nothing)")
    q.add_argument("--create", action="store_true", help="create the journal if missing")
    q.add_argument("--sync", action="store_true", help="flush to the device before exiting")
    json_flag(q)
    q.set_defaults(func=_append)

    def reading(q: argparse.ArgumentParser) -> None:
        q.add_argument("--follow", "-f", action="store_true", help="keep printing new "
                       "records")
        q.add_argument("--timeout", type=float, default=None, help="with --follow: stop "
                       "after this many seconds without a new record")
        json_flag(q)

    q = ops.add_parser("cat", help="print records from an offset or time on")
    q.add_argument("--from", dest="from_", default="earliest", metavar="WHERE",
                   help="earliest (default), latest, an offset, or a time (ISO, or an age "
                   "like 15m)")
    q.add_argument("--count", type=int, default=None, help="stop after this many")
    reading(q)
    q.set_defaults(func=_cat)
    q = ops.add_parser("tail", help="print the last records")
    q.add_argument("-n", "--lines", type=int, default=10, help="how many (default 10)")
    reading(q)
    q.set_defaults(func=_tail)
    q = ops.add_parser("consumers", help="named consumers, their committed offsets and lag")
    json_flag(q)
    q.set_defaults(func=_consumers)
    q = ops.add_parser("stats", help="offsets, segments, bytes and settings")
    json_flag(q)
    q.set_defaults(func=_stats)
    q = ops.add_parser("check", help="verify every batch and index (exit 1 if damaged)")
    json_flag(q)
    q.set_defaults(func=_check)
    q = ops.add_parser("serve", help="serve remote readers (RemoteReader) over TCP or a "
                       "Unix socket")
    q.add_argument("address", help="HOST:PORT (port 0: any free port) or a Unix socket path")
    q.add_argument("--duration", type=float, default=None, help="stop after this many "
                   "seconds (default: until Ctrl-C)")
    q.add_argument("--idle-timeout", type=float, default=600.0, help="drop a client silent "
                   "for this many seconds (default 600)")
    q.set_defaults(func=_serve)
    q = ops.add_parser("mirror", help="copy every record to Redis Streams or Kafka, exactly "
                       "once and in order (until SIGTERM)")
    q.add_argument("url", help="redis://host:port/0/STREAM, unix:///path.sock?stream=S, "
                   "rediss://... or kafka://host:port/TOPIC")
    q.add_argument("--stream", default=None, help="the Redis stream (instead of the URL's)")
    q.add_argument("--name", default=None, help="the mirror's consumer name (default "
                   "mirror; keep it across restarts)")
    q.add_argument("--batch", type=int, default=1000, help="most records per send")
    q.add_argument("--linger-ms", type=float, default=0.0, help="wait this long for a "
                   "fuller batch")
    q.add_argument("--on-gap", choices=("error", "skip"), default="error", help="records "
                   "deleted by retention before they were mirrored: stop (default) or skip")
    q.add_argument("--once", action="store_true", help="exit when the target has caught up")
    q.add_argument("--progress", type=float, default=1.0, help="seconds between progress "
                   "lines on stderr (0: none)")
    q.set_defaults(func=_mirror)
