"""A reader racing six workers: reads the job summary over and over (as `dr_exp status` does)
until every job is completed, and writes what it saw: passes, counts that did not add up, and
jobs whose state went backwards between two passes."""

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
    n = int(n_jobs)
    seen: dict[str, tuple[int, int]] = {}  # job -> (rev, rank)
    bad_totals, backwards = [], []
    passes = 0
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        counts = exp.counts()
        passes += 1
        if sum(counts.values()) != n:
            bad_totals.append(counts)
        for row in exp.summaries():
            rank, rev = RANK.get(row["status"], 9), row["rev"]
            old = seen.get(row["id"])
            if old is not None and (rev < old[0] or (rank < old[1] and rev <= old[0])):
                backwards.append(f"{row['id']}: {row['status']} rev {rev} after rev {old[0]}")
            if old is None or rev >= old[0]:
                seen[row["id"]] = (rev, rank)
        if counts.get("completed") == n:
            break
    Path(out).write_text(json.dumps({"passes": passes, "bad_totals": bad_totals[:5], "backwards": backwards[:5]}))


if __name__ == "__main__":
    main(*sys.argv[1:])
