"""The ``mmapkit`` command.

Design rules:

- ``main(argv) -> int`` and nothing at module level but definitions; ``console_main`` is
  the console-script entry that exits with main's result.
- One subcommand group per component, each in its own module under
  ``mmapkit.commands`` exposing ``register(subparsers)``; handlers return an exit code.
  ``mmapkit.commands.COMMANDS`` lists them with their help, so ``mmapkit --help`` imports
  no command module and no component, and running a subcommand imports only its module
  (start-up time: issue 16).  Adding a component adds a file and a row to that table.
- Our errors print as one line (``mmapkit: error: ...``) and exit 1; usage errors exit 2
  (argparse); Ctrl-C exits 130.  Tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .commands import COMMANDS
from .errors import MmapkitError

__all__ = ["build_parser", "console_main", "main"]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``mmapkit`` parser, with the full parser of ``command``'s module (imported now)
    and a help-only entry for every other subcommand (nothing imported for those)."""
    parser = argparse.ArgumentParser(
        prog="mmapkit",
        description="Memory-mapped files done right: crash-safe KV store and logs, "
        "shared-memory channels, zero-copy transfer.",
    )
    parser.add_argument("--version", action="version", version=f"mmapkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = COMMANDS[command][0] if command in COMMANDS else None
    registered = False
    for name, (module_name, help_) in COMMANDS.items():
        if module_name != wanted:
            sub.add_parser(name, help=help_, add_help=False)
        elif not registered:  # one module may register several commands (transfer)
            module = importlib.import_module(f"{__package__}.commands.{module_name}")
            module.register(sub)
            registered = True
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv: the first word that is not an option (the top-level
    options take no value)."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg
    return None


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(_command(argv))
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
