"""``mmapkit inspect FILE...`` (page-cache residency) and ``mmapkit inspect --pid PID``.

A file that cannot be inspected is reported on stderr and the others still are; the exit
code is then 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .. import inspect as _inspect
from ._out import print_json, print_table

__all__ = ["register"]


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _files(args: argparse.Namespace) -> int:
    action = _inspect.touch if args.touch else _inspect.evict if args.evict else _inspect.residency
    results: list[_inspect.Residency] = []
    errors: list[dict[str, str]] = []
    for path in args.files:
        try:
            results.append(action(path))
        except (OSError, ValueError) as exc:
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            errors.append({"path": path, "error": message})
            print(f"mmapkit: error: {path}: {message}", file=sys.stderr)
    pages = sum(r.pages for r in results)
    resident = sum(r.resident_pages for r in results)
    size = sum(r.size for r in results)
    resident_bytes = sum(r.resident_bytes for r in results)
    fraction = resident / pages if pages else 1.0
    if args.json:
        print_json({
            "files": [r.to_dict(args.width) for r in results],
            "total": {"files": len(results), "pages": pages, "resident_pages": resident,
                      "size": size, "resident_bytes": resident_bytes, "fraction": fraction},
            "errors": errors,
        })
        return 1 if errors else 0
    digits = len(str(max((r.pages for r in results), default=0)))
    for r in results:
        dirty = ""
        if r.cachestat is not None and r.cachestat.dirty:
            dirty = f"  ({r.cachestat.dirty} dirty"
            dirty += ": not evictable until written back; sync, then evict again)" if args.evict \
                else ")"
        print(f"{r.resident_pages:>{digits}}/{r.pages:<{digits}} pages {r.fraction:7.1%}  "
              f"{r.chart(args.width)}  {r.path}{dirty}")
    if results:
        print(f"total: {resident} of {pages} pages resident ({fraction:.1%}), "
              f"{_size(resident_bytes)} of {_size(size)} in {len(results)} "
              f"file{'s' if len(results) != 1 else ''}")
    return 1 if errors else 0


def _pid(args: argparse.Namespace) -> int:
    rows = _inspect.mappings(args.pid, sort=args.sort)
    total = _inspect.totals(rows)
    shown = rows if args.top <= 0 else rows[: args.top]
    if args.json:
        print_json({"pid": args.pid, "mappings": [dataclasses.asdict(m) for m in shown],
                    "more": len(rows) - len(shown), "total": dataclasses.asdict(total)})
        return 0
    table = [[m.size // 1024, m.rss // 1024, m.pss // 1024, m.swap // 1024, m.areas, m.name]
             for m in [*shown, total]]
    print_table(["size KiB", "RSS KiB", "PSS KiB", "swap KiB", "areas", "mapping"], table,
                title=f"mappings of process {args.pid}, largest {args.sort} first")
    if len(shown) < len(rows):
        print(f"... {len(rows) - len(shown)} more mappings (--top 0 shows all)")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.pid is not None:
        if args.files or args.touch or args.evict:
            print("mmapkit inspect: --pid takes no FILE and no --touch/--evict",
                  file=sys.stderr)
            return 2
        return _pid(args)
    if not args.files:
        print("mmapkit inspect: name at least one FILE, or --pid PID", file=sys.stderr)
        return 2
    if args.width < 1:
        print("mmapkit inspect: --width must be at least 1", file=sys.stderr)
        return 2
    return _files(args)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "inspect", help="page-cache residency of files, or the mappings of a process",
        description="Show which pages of each FILE are in the page cache (like vmtouch -v), "
        "optionally reading them in (--touch) or dropping them (--evict) first; or, with "
        "--pid, what a process has mapped (from /proc/PID/smaps), largest first.")
    p.add_argument("files", nargs="*", metavar="FILE", help="files to inspect")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--touch", action="store_true",
                      help="read every page into the page cache first")
    mode.add_argument("--evict", action="store_true",
                      help="drop the files' clean pages from the page cache first "
                      "(POSIX_FADV_DONTNEED; dirty pages stay until written back)")
    p.add_argument("--width", type=int, default=60, help="chart cells per file (default 60)")
    p.add_argument("--pid", type=int, help="show the mappings of this process instead")
    p.add_argument("--top", type=int, default=20,
                   help="with --pid: show this many mappings (0: all; default 20)")
    p.add_argument("--sort", choices=["size", "rss", "pss", "swap"], default="size",
                   help="with --pid: what 'largest' means (default size)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_run)
