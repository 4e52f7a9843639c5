"""The ``mmapkit`` command.

Design rules:

- ``main(argv) -> int`` and nothing at module level but definitions; ``console_main`` is
  the console-script entry that exits with main's result.
- One subcommand group per component, each in its own module under
  ``mmapkit.commands`` exposing ``register(subparsers)``; handlers return an exit code.
  Modules are discovered, so adding a component adds a file and touches nothing here.
- Our errors print as one line (``mmapkit: error: ...``) and exit 1; usage errors exit 2
  (argparse); Ctrl-C exits 130.  Tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from . import __version__, commands
from .errors import MmapkitError

__all__ = ["build_parser", "console_main", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmapkit",
        description="Memory-mapped files done right: crash-safe KV store and logs, "
        "shared-memory channels, zero-copy transfer.",
    )
    parser.add_argument("--version", action="version", version=f"mmapkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except (MmapkitError, OSError) as exc:
        if args.debug:
            raise
        print(f"mmapkit: error: {exc}", file=sys.stderr)
        return 1


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":  # python -m mmapkit.cli, as well as python -m mmapkit
    raise SystemExit(main())
