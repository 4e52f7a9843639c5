"""Subcommands of the ``mmapkit`` command line, one module per component.

Each public module here defines ``register(subparsers)``, which adds its subcommand and
sets ``func`` (``args -> exit code``) on the parser.
"""
