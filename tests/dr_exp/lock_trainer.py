"""A trainer for fencing tests: it holds an exclusive lock on a file for as long as it trains,
so two trainers of one job running at the same moment cannot go unnoticed."""

import fcntl
import json
import os
import time

from dr_exp import preemption


def train(*, job_id: str, worker_id: str, storage_path: str, lock_path: str, seconds: float = 6.0,
          **config: object) -> dict:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        with open(lock_path + ".overlap", "a") as fh:
            fh.write(f"{os.getpid()} attempt {os.environ['DR_EXP_ATTEMPT']}\n")
        raise RuntimeError("another trainer of this job holds the lock") from None
    with open(lock_path + ".log", "a") as fh:
        fh.write(json.dumps({"pid": os.getpid(), "attempt": int(os.environ["DR_EXP_ATTEMPT"]), "at": time.time()}) + "\n")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if preemption.requested():
            raise preemption.Preempted(None)
        time.sleep(0.05)
    return {"metrics": {"done": 1.0}}
