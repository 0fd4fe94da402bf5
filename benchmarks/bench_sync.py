"""S3 sync throughput against a real S3-compatible server (moto_server on 127.0.0.1):
SyncHandler on a run directory (many small files + one large checkpoint) versus plain boto3
``upload_file`` calls with the same TransferConfig on the same server, SyncHandler again with
the re-read verification that stores without checksums get, and the time of a no-change re-sync
of a 1,000-file run directory.

    python -m benchmarks.bench_sync [--small-files 300] [--checkpoint-mb 128]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig

from benchmarks.common import machine, table
from dr_exp.api import Experiment
from dr_exp.sync import SyncConfig, SyncHandler
from dr_exp.sync.handler import REREAD


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"


def make_run(exp: Experiment, job_id: str, small: int, big_mb: int) -> int:
    run = exp.run_dir(job_id).root
    (run / "checkpoints").mkdir(parents=True)
    (run / "artifacts").mkdir()
    total = 0
    for i in range(small):
        data = os.urandom(2048)
        (run / "artifacts" / f"f{i:05d}.json").write_bytes(data)
        total += len(data)
    if big_mb:
        data = os.urandom(big_mb * 1024 * 1024)
        (run / "checkpoints" / "last.ckpt").write_bytes(data)
        total += len(data)
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small-files", type=int, default=300)
    parser.add_argument("--checkpoint-mb", type=int, default=128)
    parser.add_argument("--resync-files", type=int, default=1000)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    print(f"machine: {machine()}")
    server, url = start_server()
    try:
        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as tmp:
            exp = Experiment(tmp, "bench")
            exp.store.ensure()
            config = SyncConfig(s3_uri="s3://bench/dr", endpoint_url=url)
            handler = SyncHandler(exp.store, config)
            size = make_run(exp, "a" * 8, args.small_files, args.checkpoint_mb)
            t0 = time.perf_counter()
            handler.sync_job("a" * 8)
            t_sync = time.perf_counter() - t0

            tc = TransferConfig(multipart_threshold=config.multipart_threshold_mb * 1024 * 1024,
                                multipart_chunksize=config.multipart_threshold_mb * 1024 * 1024,
                                max_concurrency=config.max_concurrency)
            run = exp.run_dir("a" * 8).root
            t0 = time.perf_counter()
            for path in sorted(p for p in run.rglob("*") if p.is_file()):
                client.upload_file(str(path), "bench", "plain/" + path.relative_to(run).as_posix(), Config=tc)
            t_plain = time.perf_counter() - t0

            make_run(exp, "c" * 8, args.small_files, args.checkpoint_mb)
            reread = SyncHandler(exp.store, config)
            reread.verify_mode = REREAD  # as on a store that keeps no checksums
            t0 = time.perf_counter()
            reread.sync_job("c" * 8)
            t_reread = time.perf_counter() - t0

            make_run(exp, "b" * 8, args.resync_files, 0)
            handler.sync_job("b" * 8)
            t0 = time.perf_counter()
            res = handler.sync_job("b" * 8)
            t_resync = time.perf_counter() - t0
            assert res.uploaded == 0
        mb = size / 1e6
        rows = [{"what": f"plain boto3 upload_file loop ({args.small_files} x 2 KiB + {args.checkpoint_mb} MiB)",
                 "seconds": f"{t_plain:.2f}", "MB_per_s": f"{mb / t_plain:.1f}", "ratio": "1.00"},
                {"what": "SyncHandler.sync_job (manifest, SHA-256, checksum check)", "seconds": f"{t_sync:.2f}",
                 "MB_per_s": f"{mb / t_sync:.1f}", "ratio": f"{t_plain / t_sync:.2f}"},
                {"what": "SyncHandler.sync_job, verified by reading back", "seconds": f"{t_reread:.2f}",
                 "MB_per_s": f"{mb / t_reread:.1f}", "ratio": f"{t_plain / t_reread:.2f}"},
                {"what": f"no-change re-sync of {args.resync_files} files", "seconds": f"{t_resync:.3f}",
                 "MB_per_s": "-", "ratio": "-"}]
        print(table(rows, ["what", "seconds", "MB_per_s", "ratio"]))
    finally:
        server.kill()


if __name__ == "__main__":
    main()
