"""``mmapkit log cat|tail|grep|stats|recover|ship DIR_OR_FILE``: read, repair, ship logs."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..log import Record

from ..errors import DecryptionError

__all__ = ["parse_time", "register"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str) -> float:
    """Epoch seconds from "1700000000", an ISO date/time, or an age like "15m", "2h", "1d"."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        return time.time() - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot read {text!r} as a time: use epoch seconds, an ISO date like "
            "2026-01-31T12:00, or an age like 15m, 2h, 1d") from None


def _key(path: str | None) -> bytes | None:
    if path is None:
        return None
    raw = Path(path).read_bytes()
    text = raw.strip()
    if len(text) == 64 and re.fullmatch(rb"[0-9a-fA-F]+", text):
        return bytes.fromhex(text.decode())
    if len(raw) != 32:
        raise DecryptionError(f"{path} must hold a 32-byte X25519 private key (raw, or 64 hex "
                         "digits)")
    return raw


def _records(args: argparse.Namespace, follow: bool = False) -> Iterator[Record]:
    from ..log import read

    return read(args.path, name=args.name, private_key=_key(args.key), since=args.since,
                until=args.until, follow=follow, on_damage=_damage)


def _damage(path: str, damage: object) -> None:
    describe = getattr(damage, "describe", None)
    print(f"mmapkit log: damage in {path}: {describe() if describe else damage}",
          file=sys.stderr, flush=True)


def _show(records: Iterable[Record], as_json: bool) -> int:
    import logging

    n = 0
    for rec in records:
        t = rec.time
        if as_json:
            print(json.dumps({"time": t, "pid": rec.pid,
                              "level": rec.level,
                              "sequence": rec.sequence,
                              "stream": rec.stream,
                              "message": rec.message}), flush=True)
        else:
            stamp = dt.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="microseconds")
            level = logging.getLevelName(rec.level)
            print(f"{stamp} {rec.pid:>7} {level:<8} {rec.message}",
                  flush=True)
        n += 1
    return n


def _cat(args: argparse.Namespace) -> int:
    _show(_records(args, args.follow), args.json)
    return 0


def _tail(args: argparse.Namespace) -> int:
    from ..log.reader import tail

    _show(tail(args.path, args.lines, follow=args.follow, poll_interval=0.2, name=args.name,
               private_key=_key(args.key), since=args.since, until=args.until,
               on_damage=_damage), args.json)
    return 0


def _grep(args: argparse.Namespace) -> int:
    try:
        pattern = re.compile(args.pattern, re.IGNORECASE if args.ignore_case else 0)
    except re.error as exc:
        print(f"mmapkit log grep: bad pattern {args.pattern!r}: {exc}", file=sys.stderr)
        return 2
    found = _show((r for r in _records(args, args.follow)
                   if pattern.search(r.message)), args.json)
    return 0 if found else 1


def _stats(args: argparse.Namespace) -> int:
    from ..log import check

    report = check(args.path, name=args.name, private_key=_key(args.key))
    data = {
        "files": report.files, "buffers": report.buffers, "frames": report.frames,
        "records": report.records, "duplicates_dropped": report.duplicates,
        "cut_frames_recovered": report.superseded,
        "first_time": report.first_time, "last_time": report.last_time,
        "damages": [{"path": p, "offset": d.offset, "length": d.length, "reason": d.reason,
                     "records_lost": d.lost, "first_time": d.first_time,
                     "last_time": d.last_time} for p, d in report.damages],
        "ok": report.ok,
    }
    if args.json:
        from ._out import print_json

        print_json(data)
    else:
        from ._out import print_table

        def show(key: str, value: object) -> object:
            if key.endswith("_time") and isinstance(value, float):
                return dt.datetime.fromtimestamp(value).isoformat(sep=" ")
            return value

        rows = [(k, show(k, v)) for k, v in data.items() if k != "damages"]
        print_table(["", str(args.path)], rows, title="mmapkit log stats")
        for p, d in report.damages:
            print(f"damage: {p}: {d.describe()}")
    return 0 if report.ok else 1


def _recover(args: argparse.Namespace) -> int:
    """Write every dead process's buffer into the log files (live ones are left alone)."""
    from ..log import Writer
    from ..log._files import parse_buffer_name

    path = Path(args.path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a log directory; recover takes the "
                                "directory that holds the .mbuf buffer files")
    names = sorted({p[0] for e in path.iterdir() if (p := parse_buffer_name(e.name))})
    if args.name:
        names = [n for n in names if n == args.name]
    total = 0
    result = {}
    for name in names:
        with Writer(path, name) as w:
            n = w.statistics().recovered
        result[name] = n
        total += n
    if args.json:
        from ._out import print_json

        print_json({"recovered": result, "total": total})
    else:
        for name, n in result.items():
            print(f"{name}: recovered {n} records from buffers of dead processes")
        if not result:
            print("no buffers found")
    return 0


def _ship(args: argparse.Namespace) -> int:
    """Send every record of the log to Redis exactly once (until SIGTERM, or --once)."""
    from ..mirror import Shipper, sink_from_url
    from ..mirror._runner import run_foreground

    try:
        sink = sink_from_url(args.url, stream=args.stream)
        shipper = Shipper(args.path, sink, name=args.name, private_key=_key(args.key),
                          batch=args.batch)
    except ValueError as exc:
        print(f"mmapkit log ship: {exc}", file=sys.stderr)
        return 2
    code = run_foreground(shipper, progress=args.progress, once=args.once)
    if args.once:
        print(f"{shipper.name}: sent {shipper.statistics().sent}")
    return code


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("log", help="read, follow, search and repair crash-safe logs",
                       description="Read logs written by mmapkit.log (files and the buffers "
                       "of live or dead processes), exactly once and in order.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser, *, times: bool = True) -> None:
        q.add_argument("path", help="log directory, .mlog file or .mbuf buffer")
        q.add_argument("--name", help="only the log of this name in a shared directory")
        q.add_argument("--key", metavar="FILE", help="X25519 private key (raw 32 bytes or "
                       "hex) for encrypted logs")
        q.add_argument("--json", action="store_true", help="JSON output")
        if times:
            q.add_argument("--since", type=parse_time, help="from this time (epoch, ISO, "
                           "or an age like 15m)")
            q.add_argument("--until", type=parse_time, help="up to this time")

    q = actions.add_parser("cat", help="print every record")
    common(q)
    q.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    q.set_defaults(func=_cat)
    q = actions.add_parser("tail", help="print the last records")
    common(q)
    q.add_argument("-n", "--lines", type=int, default=10, help="how many (default 10)")
    q.add_argument("--follow", "-f", action="store_true", help="then keep printing new ones")
    q.set_defaults(func=_tail)
    q = actions.add_parser("grep", help="print records whose message matches a regex")
    q.add_argument("pattern")
    common(q)
    q.add_argument("-i", "--ignore-case", action="store_true")
    q.add_argument("--follow", "-f", action="store_true")
    q.set_defaults(func=_grep)
    q = actions.add_parser("stats", help="counts, time range and damage (exit 1 if damaged)")
    common(q, times=False)
    q.set_defaults(func=_stats)
    q = actions.add_parser("recover", help="write buffers of dead processes into log files")
    common(q, times=False)
    q.set_defaults(func=_recover)
    q = actions.add_parser("ship", help="send every record to a Redis stream exactly once "
                           "(follows until SIGTERM)")
    q.add_argument("path", help="the log directory")
    q.add_argument("url", help="redis://host:port/0/STREAM or unix:///path.sock?stream=S")
    q.add_argument("--stream", default=None, help="the Redis stream (instead of the URL's)")
    q.add_argument("--name", help="only the log of this name in a shared directory")
    q.add_argument("--key", metavar="FILE", help="X25519 private key for encrypted logs")
    q.add_argument("--batch", type=int, default=1000, help="most records per send")
    q.add_argument("--once", action="store_true", help="exit when everything there is sent")
    q.add_argument("--progress", type=float, default=1.0, help="seconds between progress "
                   "lines on stderr (0: none)")
    q.set_defaults(func=_ship)
