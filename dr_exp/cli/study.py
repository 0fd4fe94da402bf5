"""``dr_exp study ...``: adaptive sweeps (submitted with ``dr_exp job sweep --search``)."""

from __future__ import annotations

import click

from dr_exp.cli.base import Context, cli, pass_ctx
from dr_exp.cli.output import fmt_value, print_json, print_table


@cli.group()
def study() -> None:
    """Adaptive sweeps: searches whose trials are jobs."""


def _counts(view) -> str:  # type: ignore[no-untyped-def]
    counts = view.counts()
    parts = [f"{n} {state}" for state, n in counts.items() if n]
    return f"{len(view.trials)}/{view.spec.trials} asked" + (f" ({', '.join(parts)})" if parts else "")


@study.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_ctx
def list_studies(c: Context, fmt: str) -> None:
    """Every study of the experiment, with its progress and best value."""
    from dr_exp.study import list_studies as load_all

    views = load_all(c.exp)
    if fmt == "json":
        print_json([{"name": v.name, "counts": v.counts(), "trials": v.spec.trials,
                     "best": v.best.value if v.best else None} for v in views])
        return
    if not views:
        click.echo(f"no studies in {c.exp.store.root}")
        return
    rows = []
    for v in views:
        best = v.best
        rows.append({"study": v.name, "metric": f"{v.spec.mode} {v.spec.metric}", "sampler": v.spec.sampler,
                     "pruner": v.spec.pruner, "trials": _counts(v), "best": best.value if best else None,
                     "best_trial": best.number if best else None})
    print_table(rows, list(rows[0]), max_width=80)


@study.command("show")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@pass_ctx
def show(c: Context, name: str, fmt: str) -> None:
    """One study: settings, best trial, parameter importances, and every trial with its job."""
    from dr_exp.study import load_study

    view = load_study(c.exp, name)
    if fmt == "json":
        print_json(view.to_dict())
        return
    spec = view.spec
    lines = [f"study      {view.name} (sweep {spec.sweep_id}){'  finished' if view.finished else ''}",
             f"config     {spec.config_path}/{spec.config_name}.yaml {' '.join(spec.overrides)}".rstrip(),
             f"search     {spec.search}",
             f"objective  {spec.mode} {spec.metric}",
             f"sampler    {spec.sampler} (seed {spec.seed})   pruner {spec.pruner}   parallel {spec.parallel}",
             f"trials     {_counts(view)}"]
    best = view.best
    if best is not None:
        params = " ".join(f"{k}={fmt_value(v)}" for k, v in best.params.items())
        lines.append(f"best       trial {best.number}: {spec.metric}={fmt_value(best.value)}  {params}  job {best.job_id}")
    else:
        lines.append("best       - (no complete trial yet)")
    importances = view.importances()
    if importances:
        lines.append("importance " + "  ".join(f"{k} {v:.2f}" for k, v in importances.items()))
    else:
        lines.append("importance - (needs at least 4 complete trials)")
    click.echo("\n".join(lines))
    if not view.trials:
        return
    click.echo("")
    keys = [p["name"] for p in spec.space]
    rows = []
    for t in view.trials:
        row = {"trial": t.number, "state": t.state, "value": t.value, "epochs": t.epochs}
        row.update({k: t.params.get(k) for k in keys})
        row.update(job=t.job_id or "-", job_status=t.job_status or "-", reason=t.fail_reason or "")
        rows.append(row)
    print_table(rows, list(rows[0]), max_width=160)
