"""`dr_exp plot` as a user runs it: files whose pixels are checked (one line per job), grouped
bands, a value per job against a parameter, and bad input that exits 2 with one line.

With DR_EXP_SCREENSHOTS=1 the curve plot is also copied to docs/plot.png for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.dr_exp.dash_helpers import DOCS, site, update_screenshots  # noqa: F401 -- fixtures

pytestmark = pytest.mark.timeout(120)

TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def rgb(hex_color: str) -> tuple[int, int, int]:
    return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def colour_counts(path) -> dict[tuple[int, int, int], int]:
    with Image.open(path) as img:
        pixels = img.convert("RGB")
        return {c: n for n, c in pixels.getcolors(maxcolors=1 << 24)}


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_curves_png_has_one_line_per_job(site, tmp_path):  # noqa: F811
    out = tmp_path / "acc.png"
    said = ok(run_cli("plot", "val/acc", "--sweep", site.sweep_id, "--out", str(out), base=site.base))
    assert said.strip() == f"wrote {out}: val/acc per epoch, 6 jobs (6 jobs)"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width >= 800 and img.height >= 400
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # a new file's usual mode, not a temp file's 0600
    counts = colour_counts(out)
    assert len(counts) > 50  # not blank: axes, text, lines
    white = counts.get((255, 255, 255), 0)
    assert white < 0.97 * sum(counts.values())
    drawn = [c for c in TAB10 if counts.get(rgb(c), 0) >= 80]
    assert drawn == TAB10[:6], drawn  # six jobs, six colours (lines and their legend keys)
    for unused in ("#e377c2", "#bcbd22", "#17becf"):
        assert counts.get(rgb(unused), 0) == 0
    if update_screenshots():
        shutil.copy(out, DOCS / "plot.png")


def test_grouped_over_seeds_draws_a_band_per_group(site, tmp_path):  # noqa: F811
    out = tmp_path / "grouped.png"
    said = ok(run_cli("plot", "val/acc", "--sweep", site.sweep_id, "--average-over", "seed", "--out", str(out),
                      base=site.base))
    assert "3 groups (6 jobs)" in said
    counts = colour_counts(out)
    assert [c for c in TAB10 if counts.get(rgb(c), 0) >= 80] == TAB10[:3]
    out2 = tmp_path / "by_lr.svg"
    assert "3 groups (6 jobs)" in ok(run_cli("plot", "val/acc", "--tags", "a", "--group-by", "lr", "--out", str(out2),
                                             base=site.base))
    ET.parse(out2)  # well-formed SVG


def test_value_per_job_against_a_parameter(site, tmp_path):  # noqa: F811
    out = tmp_path / "lr.svg"
    said = ok(run_cli("plot", "--x", "lr", "--y", "val/loss", "--value", "best", "--status", "completed",
                      "--out", str(out), base=site.base))
    assert said.strip() == f"wrote {out}: best val/loss of 6 jobs against lr"
    svg = out.read_text()
    ET.fromstring(svg)
    assert svg.count('id="PathCollection_1"') == 1  # the scatter of the 6 jobs
    default = ok(run_cli("plot", "--x", "seed", "--y", "val/acc", base=site.base, cwd=tmp_path))
    assert "val_acc_vs_seed.png" in default and (tmp_path / "val_acc_vs_seed.png").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["val/nope"], "no selected job has logged metric 'val/nope'; metrics: train/loss, val/acc, val/loss"),
    (["val/acc", "--sweep", "zzz"], "no sweep 'zzz'"),
    (["val/acc", "--status", "done"], "unknown status done"),
    (["val/acc", "--tags", "nosuchtag"], "no jobs match"),
    (["val/acc", "--out", "{tmp}/missing/x.png"], "directory {tmp}/missing does not exist"),
    (["val/acc", "--out", "{tmp}/a-file/x.png"], "does not exist"),
    (["val/acc", "--out", "{tmp}/x.jpg"], "ending in .png, .svg, .pdf"),
    (["val/acc", "--group-by", "depth"], "--group-by depth: no such parameter; parameters: lr, seed"),
    (["--x", "depth", "--y", "val/acc"], "--x depth: no selected job has this parameter"),
    (["--x", "lr", "--y", "val/nope"], "no selected job has logged metric 'val/nope'"),
    (["--x", "lr"], "--x PARAM and --y METRIC go together"),
    ([], "say which metric to plot"),
    (["--study", "nope"], "no study 'nope'"),
    (["--study", "nope", "val/acc"], "--study plots the study's own metric"),
])
def test_bad_input_is_one_line_and_exit_2(site, tmp_path, args, message):  # noqa: F811
    (tmp_path / "a-file").write_text("")
    args = [a.format(tmp=tmp_path) for a in args]
    proc = run_cli("plot", *args, base=site.base, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and message.format(tmp=tmp_path) in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written


def test_study_plot_shows_trials_best_so_far_pruned_and_importances(tmp_path):
    base = tmp_path / "runs"
    base.mkdir()
    ok(run_cli("job", "sweep", "--config", "exp_configs/synthetic.yaml", "--search",
               "lr=tag(log,interval(1e-4,1e-1)) dropout=interval(0,0.5)", "--trials", "12", "--parallel", "2",
               "--metric", "val/acc", "--mode", "max", "--pruner", "median", "--seed", "1",
               "--overrides", "epochs=6", base=base))
    ok(run_cli("system", "worker", "--idle-timeout", "0", base=base))
    [study] = json.loads(ok(run_cli("study", "list", "--format", "json", base=base)))
    assert study["counts"]["complete"] >= 4 and study["counts"]["pruned"] >= 1, study  # both kinds of point
    out = tmp_path / "study.png"
    said = ok(run_cli("plot", "--study", study["name"], "--out", str(out), base=base))
    assert said.strip() == f"wrote {out}: 12 of 12 trials of study {study['name']}"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width >= 1200  # two panels: trials and importances
    counts = colour_counts(out)
    for colour, what in (("#1f77b4", "complete trials"), ("#a16207", "pruned trials"), ("#dc2626", "best so far"),
                         ("#16a34a", "importance bars")):
        assert counts.get(rgb(colour), 0) >= 20, what
