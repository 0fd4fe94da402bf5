"""A reader racing the claimers: lists every record over and over (as `dr_exp job list` does)
until all jobs are completed, and writes what it saw as JSON: passes made, problems reported,
and any job whose status went backwards between two passes."""

import json
import sys
import time
from pathlib import Path

from dr_exp.api import Experiment

RANK = {"pending": 0, "running": 1, "completed": 2}


def main(base: str, experiment: str, n_jobs: str, go: str, out: str) -> None:
    exp = Experiment(base, experiment)
    while not Path(go).exists():
        time.sleep(0.001)
    seen: dict[str, int] = {}
    problems: list[str] = []
    backwards: list[str] = []
    passes = 0
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        records = exp.list(problems=problems)
        passes += 1
        for rec in records:
            rank = RANK[rec.status]
            if rank < seen.get(rec.id, 0):
                backwards.append(f"{rec.id}: {rec.status} after a later state")
            seen[rec.id] = rank
        if len(records) == int(n_jobs) and all(r.status == "completed" for r in records):
            break
    Path(out).write_text(json.dumps({"passes": passes, "problems": problems, "backwards": backwards}))


if __name__ == "__main__":
    main(*sys.argv[1:])
