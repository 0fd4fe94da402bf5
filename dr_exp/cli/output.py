"""Plain, fast table output (a 10,000-row listing must print in well under a second)."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable
from typing import Any

import click


def fmt_time(ts: float | None) -> str:
    if not ts:
        return "-"
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def print_table(rows: list[dict[str, Any]], columns: list[str], max_width: int = 48) -> None:
    cells = [[fmt_value(row.get(c)) for c in columns] for row in rows]
    widths = [len(c) for c in columns]
    for line in cells:
        for i, cell in enumerate(line):
            widths[i] = min(max(widths[i], len(cell)), max_width)

    def render(line: list[str]) -> str:
        parts = []
        for cell, width in zip(line, widths, strict=True):
            if len(cell) > width:
                cell = cell[: width - 1] + "…"
            parts.append(cell.ljust(width))
        return "  ".join(parts).rstrip()

    out = [render(list(columns)), render(["-" * w for w in widths])]
    out.extend(render(line) for line in cells)
    click.echo("\n".join(out))


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def stream_json(items: Iterable[Any], lines: bool = False) -> None:
    """Print items as a JSON array (or JSON lines) one at a time: memory does not grow with them."""
    out = click.get_text_stream("stdout")
    if lines:
        for item in items:
            out.write(json.dumps(item, default=str) + "\n")
        return
    out.write("[")
    first = True
    for item in items:
        out.write(("\n" if first else ",\n") + json.dumps(item, default=str))
        first = False
    out.write("\n]\n" if not first else "]\n")
