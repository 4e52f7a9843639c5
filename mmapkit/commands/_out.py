"""Output for the command line: rich when the ``cli`` extra is installed, plain text if not."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["print_json", "print_table", "stdout_is_tty"]


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
                title: str | None = None) -> None:
    """A table with right-aligned numbers; rich's when available and on a terminal."""
    cells = [[_fmt(c) for c in row] for row in rows]
    if stdout_is_tty():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            table = Table(title=title)
            for h in headers:
                table.add_column(h)
            for row in cells:
                table.add_row(*row)
            Console().print(table)
            return
    if title:
        print(title)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in cells:
        cols = zip(row, widths, strict=True)
        print("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in cols))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("-", "").replace("x", "").isdigit()
