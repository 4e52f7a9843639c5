"""``mmapkit bench [COMPONENT...]``: run the side-by-side benchmarks in bench/."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["register"]


def _bench_package() -> ModuleType:
    """The benchmarks: packaged as mmapkit._bench in a wheel, or bench/ in a checkout."""
    try:
        return importlib.import_module("mmapkit._bench")
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[2]
    if (root / "bench" / "_harness.py").exists():
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        return importlib.import_module("bench")
    raise FileNotFoundError("the benchmarks are not installed; run from a source checkout "
                            "of mmapkit, or install it with pip install 'mmapkit[bench]'")


def components() -> list[str]:
    pkg = _bench_package()
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                  if not m.name.startswith("_"))


def _run(args: argparse.Namespace) -> int:
    pkg = _bench_package()
    available = components()
    chosen = args.component or available
    unknown = [c for c in chosen if c not in available]
    if unknown:
        print(f"mmapkit bench: unknown component {', '.join(unknown)}; choose from "
              f"{', '.join(available)}", file=sys.stderr)
        return 2
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    status = 0
    for name in chosen:
        module = importlib.import_module(f"{pkg.__name__}.{name}")
        argv: list[str] = ["--quick"] if args.quick else []
        if args.repeat:
            argv += ["--repeat", str(args.repeat)]
        if args.out:
            argv += ["--json", os.path.join(args.out, f"{name}.json"),
                     "--markdown", os.path.join(args.out, f"{name}.md")]
            if args.chart:
                argv += ["--chart", os.path.join(args.out, f"{name}.png")]
        status = max(status, int(module.main(argv)))
    return status


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="compare mmapkit with its peers (prints ratios, writes JSON)",
                       description="Run bench/<component>.py side by side with the peers "
                       "installed by the 'bench' extra. Prints medians, p99 and ratios.")
    p.add_argument("component", nargs="*", help="kv, log, channel, journal, transfer, region... "
                   "(default: all)")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    p.add_argument("--repeat", type=int, help="repeats per case")
    p.add_argument("--out", metavar="DIR", help="write <component>.json and .md into DIR")
    p.add_argument("--chart", action="store_true", help="also draw <component>.png in --out")
    p.set_defaults(func=_run)
