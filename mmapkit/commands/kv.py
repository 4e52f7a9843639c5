"""``mmapkit kv FILE get|set|del|list|dump|stats|check|compact|repair``.

Reads open the store read-only (they follow a multiprocess file without locking it);
writes open it in multiprocess mode so they work beside running applications that use
multiprocess=True.  Values on the command line are JSON when they parse as JSON
(``42``, ``[1, 2]``, ``"text"``), otherwise plain strings; ``--bytes`` stores UTF-8 bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from ..kv import KV, codec
from ._out import print_json, print_table

__all__ = ["register"]


def _key(args: argparse.Namespace) -> bytes | None:
    raw = args.key_hex or os.environ.get("MMAPKIT_KV_KEY")
    if not raw:
        return None
    try:
        return bytes.fromhex(raw)
    except ValueError:
        raise ValueError("--key-hex (or MMAPKIT_KV_KEY) must be hexadecimal, e.g. 64 hex "
                         "digits for a 32-byte key") from None


def _open(args: argparse.Namespace, *, write: bool) -> KV:
    if not write:
        return KV(args.file, readonly=True, key=_key(args))
    return KV(args.file, multiprocess=not args.single, key=_key(args))


def _parse_value(text: str, as_bytes: bool) -> Any:
    if as_bytes:
        return text.encode()
    try:
        return codec.from_json_value(json.loads(text))
    except json.JSONDecodeError:
        return text


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(codec.to_json_value(value), ensure_ascii=False)


def _cmd_get(args: argparse.Namespace) -> int:
    with _open(args, write=False) as kv:
        if args.name not in kv:
            print(f"mmapkit kv: no key {args.name!r} in {args.file}", file=sys.stderr)
            return 1
        value = kv[args.name]
        if args.json:
            print_json(codec.to_json_value(value))
        else:
            print(_show(value))
    return 0


def _cmd_set(args: argparse.Namespace) -> int:
    with _open(args, write=True) as kv:
        kv.set(args.name, _parse_value(args.value, args.bytes), ttl=args.ttl)
        if args.sync:
            kv.sync()
    return 0


def _cmd_del(args: argparse.Namespace) -> int:
    with _open(args, write=True) as kv:
        missing = [n for n in args.name if n not in kv]
        with kv.batch():
            for n in args.name:
                kv.pop(n, None)
    if missing:
        print(f"mmapkit kv: not found: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    with _open(args, write=False) as kv:
        names = sorted(k for k in kv if k.startswith(args.prefix or ""))
    if args.json:
        print_json(names)
    else:
        for n in names:
            print(n)
    return 0


def _cmd_dump(args: argparse.Namespace) -> int:
    with _open(args, write=False) as kv:
        if args.json:
            kv.export_json(sys.stdout)
            sys.stdout.write("\n")
        else:
            for k in sorted(kv):
                print(f"{k}\t{_show(kv[k])}")
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    with _open(args, write=True) as kv:
        n = kv.import_json(args.json_file)
    print(f"imported {n} keys into {args.file}")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    with _open(args, write=False) as kv:
        st = dataclasses.asdict(kv.statistics())
    if args.json:
        print_json(st)
    else:
        print_table(["statistic", "value"], [[k, v] for k, v in st.items()],
                    title=f"KV {args.file}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    report = KV.check(args.file, key=_key(args))
    doc = dataclasses.asdict(report)
    if args.json:
        print_json(doc)
    else:
        print(f"{args.file}: {'ok' if report.ok else 'DAMAGED'} ({report.records} records, "
              f"{report.keys} keys, {report.committed_bytes} committed of {report.file_bytes} "
              "bytes)")
        for problem in report.problems:
            print(f"  {problem}")
        if not report.ok:
            print(f"  repair with: mmapkit kv {args.file} repair")
    return 0 if report.ok else 1


def _cmd_compact(args: argparse.Namespace) -> int:
    with _open(args, write=True) as kv:
        before = kv.statistics().file_bytes
        kv.compact()
        after = kv.statistics().file_bytes
    print(f"{args.file}: {before:,} -> {after:,} bytes")
    return 0


def _cmd_repair(args: argparse.Namespace) -> int:
    report = KV.repair(args.file, key=_key(args))
    print(f"{args.file}: repaired, {report.keys} keys kept"
          + (f"; the damaged original is in {args.file}.damaged"
             if os.path.exists(args.file + ".damaged") else ""))
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("kv", help="inspect and edit a KV store file",
                       description="Read, write, check and repair an mmapkit KV file.")
    p.add_argument("file", help="the KV file")
    p.add_argument("--key-hex", help="encryption key in hex (or set MMAPKIT_KV_KEY)")
    p.add_argument("--single", action="store_true",
                   help="write in single-process mode (default: multiprocess, so it works "
                   "beside running multiprocess users)")
    ops = p.add_subparsers(dest="op", metavar="OP", required=True)

    def op(name: str, fn: Any, help_: str, json_flag: bool = False) -> argparse.ArgumentParser:
        q = ops.add_parser(name, help=help_)
        if json_flag:
            q.add_argument("--json", action="store_true", help="JSON output")
        q.set_defaults(func=fn)
        return q

    q = op("get", _cmd_get, "print one value", json_flag=True)
    q.add_argument("name")
    q = op("set", _cmd_set, "store one value (JSON, or a plain string)")
    q.add_argument("name")
    q.add_argument("value")
    q.add_argument("--bytes", action="store_true", help="store the text as UTF-8 bytes")
    q.add_argument("--ttl", type=float, help="expire after this many seconds")
    q.add_argument("--sync", action="store_true", help="flush to the device before exiting")
    q = op("del", _cmd_del, "delete keys (all in one atomic batch)")
    q.add_argument("name", nargs="+")
    q = op("list", _cmd_list, "list keys", json_flag=True)
    q.add_argument("--prefix", help="only keys starting with this")
    op("dump", _cmd_dump, "print every key and value (--json: the export format)",
       json_flag=True)
    q = op("load", _cmd_load, "import a JSON export (one atomic batch)")
    q.add_argument("json_file")
    op("stats", _cmd_stats, "statistics", json_flag=True)
    op("check", _cmd_check, "verify every record; exit 1 when damaged", json_flag=True)
    op("compact", _cmd_compact, "rewrite the live data into a tight new file")
    op("repair", _cmd_repair, "salvage what verifies into a fresh file (keeps the original)")
