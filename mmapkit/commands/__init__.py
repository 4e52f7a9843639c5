"""Subcommands of the ``mmapkit`` command line, one module per component.

Each public module here defines ``register(subparsers)``, which adds its subcommand(s) and
sets ``func`` (``args -> exit code``) on the parser.

``COMMANDS`` names every subcommand, the module that registers it and its one-line help,
so that ``mmapkit --help`` (and a mistyped command) can be answered without importing
any command module, and running one subcommand imports only its own module and the
components it uses.  tests/test_import_time.py checks this table against what the
modules register, so a new command module must add its row here.
"""

from __future__ import annotations

__all__ = ["COMMANDS"]

# subcommand -> (module under mmapkit.commands, help shown by ``mmapkit --help``), in the
# order ``mmapkit --help`` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("bench", "compare mmapkit with its peers (prints ratios, writes JSON)"),
    "channel": ("channel", "inspect, send to, receive from, benchmark a channel"),
    "demo": ("demo", "show each technique working, with real processes"),
    "inspect": ("inspect", "page-cache residency of files, or the mappings of a process"),
    "journal": ("journal", "append to, read, follow, check and serve a journal"),
    "kv": ("kv", "inspect and edit a KV store file"),
    "log": ("log", "read, follow, search and repair crash-safe logs"),
    "copy": ("transfer", "copy files by the fastest kernel path (reflink, "
             "copy_file_range, sendfile...)"),
    "send": ("transfer", "send a file to a loopback or Unix socket (zero-copy)"),
    "recv": ("transfer", "receive one file sent by `mmapkit send` (loopback)"),
}
