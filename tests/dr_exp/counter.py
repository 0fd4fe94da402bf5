"""A reader for the stale-read test: lists the jobs and runs `job recover`'s full scan over and
over until all are completed, and writes what it saw as JSON (passes made, listings that missed
a job, problems reported, jobs recovery acted on)."""

import json
import sys
import time

from dr_exp.api import Experiment


def main(base: str, experiment: str, n_jobs: str, out: str) -> None:
    exp = Experiment(base, experiment)
    passes, short, problems, recovered = 0, [], [], []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        records = exp.list(problems=problems)
        recovered += exp.recover(full_scan=True)  # no worker died: there is nothing to recover
        passes += 1
        if len(records) != int(n_jobs):
            short.append(len(records))
        if records and all(r.status == "completed" for r in records):
            break
    with open(out, "w") as fh:
        json.dump({"passes": passes, "short": short, "problems": problems, "recovered": recovered}, fh)


if __name__ == "__main__":
    main(*sys.argv[1:])
