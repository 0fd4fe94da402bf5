"""A self-contained HTML report: the dashboard's page with its data, styles, scripts and charts
inline, in one file that opens offline (from a laptop, an e-mail attachment, a file share).

The page is the dashboard's own (``dr_exp/dashboard/static``); instead of polling the server it
reads the bundle embedded in it (:meth:`dr_exp.dashboard.payload.Views.bundle`), so the report
shows the same table, job pages, comparisons, sweep pages and study pages, frozen at the time it
was written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr_exp.dashboard.data import Reader
from dr_exp.dashboard.payload import Views
from dr_exp.dashboard.server import static_files
from dr_exp.errors import ViewError
from dr_exp.plot import check_out, write_output


@dataclass
class Written:
    path: Path
    jobs: int
    size: int


def render(bundle: dict[str, Any]) -> str:
    """The dashboard page with everything inline and ``bundle`` as its data."""
    files = static_files()
    page = files["index.html"].decode()
    # "<" is escaped inside the JSON so that no string in the data can end the script element.
    data = json.dumps(bundle, separators=(",", ":"), default=str).replace("<", "\\u003c")
    parts = {
        '<link rel="stylesheet" href="static/app.css">': f"<style>\n{files['app.css'].decode()}</style>",
        '<script src="static/chart.js"></script>': f"<script>\n{files['chart.js'].decode()}</script>",
        '<script src="static/app.js"></script>': (f'<script type="application/json" id="drexp-bundle">{data}</script>\n'
                                                  f"<script>\n{files['app.js'].decode()}</script>"),
        "<title>dr_exp</title>": f"<title>dr_exp report: {_escape(bundle['experiment'])}</title>",
    }
    for old, new in parts.items():
        if old not in page:
            raise RuntimeError(f"the dashboard page has no {old!r} to inline")
        page = page.replace(old, new)
    return page


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_report(base_path: str | os.PathLike[str], experiment: str, out: str | os.PathLike[str],
                 sweep: str | None = None, tags: str | None = None, status: str | None = None) -> Written:
    path = check_out(out, (".html", ".htm"))
    views = Views(Reader(base_path))
    bundle = views.bundle(experiment, status=status, tags=tags, sweep=sweep)
    if not bundle["table"]["rows"]:
        raise ViewError(f"no jobs match in experiment {experiment} (status={status or 'any'}, tags={tags or 'any'}); "
                        "nothing to report")
    html = render(bundle).encode()
    write_output(path, lambda tmp: Path(tmp).write_bytes(html))
    return Written(path, len(bundle["table"]["rows"]), len(html))
