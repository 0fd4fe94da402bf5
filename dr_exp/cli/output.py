"""Plain, fast table output (a 10,000-row listing must print in well under a second)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import click


def fmt_time(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def print_table(rows: Iterable[dict[str, Any]], columns: list[str], max_width: int = 48) -> None:
    """Columns as wide as their widest cell (at most ``max_width``; longer cells end in "…")."""
    cells = [[v if type(v) is str else fmt_value(v) for v in map(row.get, columns)] for row in rows]
    widths = []
    by_column = list(zip(*cells, strict=True)) or [()] * len(columns)  # len() over a whole column runs in C
    for i, column in enumerate(columns):
        width = max(len(column), max(map(len, by_column[i]), default=0))
        if width > max_width:
            for line in cells:
                if len(line[i]) > max_width:
                    line[i] = line[i][: max_width - 1] + "…"
            width = max_width
        widths.append(width)
    template = "  ".join(f"{{:<{w}.{w}}}" for w in widths)
    out = click.get_text_stream("stdout")
    out.write(template.format(*columns).rstrip() + "\n" + template.format(*("-" * w for w in widths)).rstrip() + "\n")
    for start in range(0, len(cells), 2000):  # in chunks: a 100,000-row table is not one string
        out.write("".join(template.format(*line).rstrip() + "\n" for line in cells[start:start + 2000]))
    out.flush()


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
