"""``mmapkit demo``: run every act in mmapkit.demos for real and print what happened."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import tempfile
import time
from pathlib import Path

from .. import demos

__all__ = ["register", "run_demo"]


def run_demo(only: list[str] | None = None, workdir: str | None = None) -> int:
    acts = sorted(m.name for m in pkgutil.iter_modules(demos.__path__)
                  if not m.name.startswith("_"))
    if only:
        acts = [a for a in acts if any(o in a for o in only)]
    failed = 0
    with tempfile.TemporaryDirectory(prefix="mmapkit-demo-", dir=workdir) as tmp:
        for number, name in enumerate(acts, 1):
            module = importlib.import_module(f"{demos.__name__}.{name}")
            print(f"\n== act {number}: {module.TITLE} ==", flush=True)
            act_dir = Path(tmp) / name
            act_dir.mkdir()
            t0 = time.perf_counter()
            try:
                module.run(act_dir, lambda text: print(f"   {text}", flush=True))
            except Exception as exc:  # a failed act is reported; the others still run
                failed += 1
                print(f"   FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            else:
                print(f"   ok ({time.perf_counter() - t0:.2f} s)", flush=True)
    print(f"\n{len(acts) - failed} of {len(acts)} acts ran as described.")
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    return run_demo(args.act, args.workdir)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="show each technique working, with real processes",
                       description="Runs every demo act: real processes, real files in a "
                       "temporary directory, and says what happened.")
    p.add_argument("act", nargs="*", help="run only acts whose name contains this")
    p.add_argument("--workdir", help="parent directory for the temporary files")
    p.set_defaults(func=_run)
