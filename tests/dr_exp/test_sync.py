"""S3 sync against a real S3-compatible server process (moto_server) on 127.0.0.1.
Nothing is patched in-process: boto3 talks HTTP to the server."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import boto3
import pytest

from dr_exp import provenance
from dr_exp.api import Experiment
from tests.conftest import EXP_CONFIGS, run_cli, snapshot, spawn_cli, wait_for
from tests.dr_exp.s3_proxy import S3Proxy

pytestmark = pytest.mark.timeout(240)
SECRET = "dr-exp-test-SECRET-9f3c1a7e5b"
BUCKET = "runs-bucket"
MOTO = str(Path(sys.executable).parent / "moto_server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    def __init__(self, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "MotoServer":
        self.proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(self.port)], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(up, 20, what="moto_server to listen")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def client(self):
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "DR_EXP_S3_URI"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def s3(creds):
    server = MotoServer().start()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.kill()


def configure(base, server, *extra):
    proc = run_cli("sync", "configure", "--s3-uri", f"s3://{BUCKET}/team", "--endpoint-url", server.url, *extra, base=base)
    assert proc.returncode == 0, proc.stderr
    return proc


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def bucket_files(server, job_id, experiment="exp") -> dict[str, bytes]:
    client = server.client()
    prefix = f"team/{experiment}/run_{job_id}/"
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix):]] = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    return out


def local_files(exp, job_id) -> dict[str, bytes]:
    run = exp.run_dir(job_id).root
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*")
            if p.is_file() and not p.name.startswith(".outcome-")}


def assert_mirrored(server, exp, job_id):
    remote = bucket_files(server, job_id)
    record = json.loads(remote.pop("_dr_exp_record.json"))
    assert record["id"] == job_id
    local = local_files(exp, job_id)
    assert sorted(remote) == sorted(local)
    for name in local:
        assert md5(remote[name]) == md5(local[name]), name


def submit(exp, overrides):
    return exp.submit(str(EXP_CONFIGS), "noop", overrides).submitted[0].id


def test_worker_syncs_completed_run_with_multipart_checkpoint(base, s3):
    exp = Experiment(base, "exp")
    configure(base, s3)
    job = submit(exp, "payload_mb=20")
    proc = run_cli("system", "worker", "--idle-timeout", "0", base=base, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert_mirrored(s3, exp, job)
    head = s3.client().head_object(Bucket=BUCKET, Key=f"team/exp/run_{job}/checkpoints/payload.ckpt")
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # 20 MiB in 8 MiB parts: a real multipart upload
    rec = exp.get(job)
    assert rec.sync["state"] == "synced" and rec.sync["objects"] >= 6
    assert "synced" in run_cli("job", "show", job, base=base).stdout
    assert "synced" in run_cli("job", "list", "-v", base=base).stdout


def test_resync_uploads_only_what_changed(base, s3):
    exp = Experiment(base, "exp")
    configure(base, s3)
    job = submit(exp, "+x=1")
    assert run_cli("system", "worker", "--idle-timeout", "0", base=base).returncode == 0
    client = s3.client()
    stamps = {o["Key"]: o["LastModified"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]}
    time.sleep(1.1)  # S3 timestamps have 1 s resolution
    again = run_cli("sync", "run", "--job", job, base=base)
    assert again.returncode == 0 and "(0 files uploaded)" in again.stdout, again.stdout
    with open(exp.run_dir(job).metrics, "a") as fh:
        fh.write('{"extra": 1}\n')
    once_more = run_cli("sync", "run", "--job", job, base=base)
    assert "(1 files uploaded)" in once_more.stdout, once_more.stdout
    after = {o["Key"]: o["LastModified"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]}
    changed = [k for k in after if after[k] != stamps.get(k)]
    assert changed == [f"team/exp/run_{job}/metrics.jsonl"]


def test_server_down_mid_upload_loses_nothing(base, s3, tmp_path):
    exp = Experiment(base, "exp")
    configure(base, s3)
    big = submit(exp, "payload_mb=120")
    small = submit(exp, "duration=1 +after=1")
    worker = spawn_cli("system", "worker", "--idle-timeout", "1", base=base, DR_EXP_SYNC_WAIT="2")
    client = s3.client()
    wait_for(lambda: client.list_multipart_uploads(Bucket=BUCKET).get("Uploads"), 60, interval=0.01,
             what="the multipart upload to start")
    s3.kill()
    out, _ = worker.communicate(timeout=90)
    assert worker.returncode == 0, out
    assert exp.get(small).status == "completed"  # the worker carried on
    queued = {p.stem for p in (exp.layout.sync_dir / "queue").glob("*.json")}
    assert {big, small} <= queued
    status = run_cli("sync", "status", base=base).stdout
    assert "failing:" in status
    restarted = MotoServer(port=s3.port).start()  # a fresh, empty server on the same address
    try:
        restarted.client().create_bucket(Bucket=BUCKET)
        proc = run_cli("sync", "run", base=base)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert_mirrored(restarted, exp, big)
        assert_mirrored(restarted, exp, small)
        assert not restarted.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads")
        assert not list((exp.layout.sync_dir / "queue").glob("*.json"))
    finally:
        restarted.kill()


def test_kill_9_after_completion_sync_survives_on_disk(base, s3):
    exp = Experiment(base, "exp")
    configure(base, s3)
    job = submit(exp, "payload_mb=150")
    worker = spawn_cli("system", "worker", "--idle-timeout", "30", base=base)
    wait_for(lambda: exp.get(job).status == "completed", 60, interval=0.005, what="job completed")
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    entry = exp.layout.sync_dir / "queue" / f"{job}.json"
    assert entry.exists(), "the pending sync was not on disk"
    proc = run_cli("sync", "run", base=base)
    assert proc.returncode == 0, proc.stderr
    assert_mirrored(s3, exp, job)
    assert not entry.exists()


def test_bad_input_one_line_exit_2_queue_intact_and_no_secret_on_disk(base, s3, creds):
    exp = Experiment(base, "exp")
    configure(base, s3)
    job = submit(exp, "+x=2")
    run_cli("system", "worker", "--idle-timeout", "0", base=base, DR_EXP_S3_URI="s3://missing-bucket")
    queue_before = snapshot(exp.layout.sync_dir / "queue")
    assert queue_before, "the failed sync should have stayed queued"
    auth = MotoServer(INITIAL_NO_AUTH_ACTION_COUNT="0").start()  # rejects every credential
    try:
        cases = [
            (["sync", "configure", "--s3-uri", "http://not-s3/x"], {}, "invalid S3 URI"),
            (["sync", "configure", "--s3-uri", "s3://Bad_Bucket"], {}, "invalid S3 URI"),
            (["sync", "configure", "--s3-uri", "s3://missing-bucket", "--endpoint-url", s3.url], {}, "does not exist"),
            (["sync", "configure", "--s3-uri", f"s3://{BUCKET}", "--endpoint-url", auth.url], {}, "refused the credentials"),
            (["sync", "run"], {"DR_EXP_S3_URI": "s3://missing-bucket"}, "does not exist"),
            (["sync", "run"], {"DR_EXP_S3_ENDPOINT_URL": auth.url}, "refused the credentials"),
        ]
        for args, env, needle in cases:
            proc = run_cli(*args, base=base, **env)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
            assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, (args, proc.stderr)
            assert snapshot(exp.layout.sync_dir / "queue").keys() == queue_before.keys()
    finally:
        auth.kill()
    assert run_cli("sync", "run", base=base).returncode == 0
    assert_mirrored(s3, exp, job)
    for path in base.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_pull_restores_run_directory_byte_for_byte(base, s3, tmp_path):
    exp = Experiment(base, "exp")
    configure(base, s3)
    res = exp.sweep(str(EXP_CONFIGS / "noop.yaml"), "+x=1,2", overrides="payload_mb=9")
    assert run_cli("system", "worker", "--idle-timeout", "0", base=base).returncode == 0
    elsewhere = tmp_path / "other_machine"
    env = {"DR_EXP_S3_URI": f"s3://{BUCKET}/team", "DR_EXP_S3_ENDPOINT_URL": s3.url}
    first = res.submitted[0].id
    proc = run_cli("sync", "pull", "--job", first, base=elsewhere, **env)
    assert proc.returncode == 0, proc.stderr
    other = Experiment(elsewhere, "exp")
    assert local_files(other, first) == local_files(exp, first)
    proc = run_cli("sync", "pull", "--sweep", res.sweep_id, base=elsewhere, **env)
    assert proc.returncode == 0, proc.stderr
    for rec in res.submitted:
        assert local_files(other, rec.id) == local_files(exp, rec.id)
    rows = json.loads(run_cli("results", "--format", "json", base=elsewhere).stdout)
    assert sorted(r["x"] for r in rows) == [1, 2]


def test_pull_brings_the_uncommitted_diff_a_run_was_submitted_with(base, s3, tmp_path):
    """Jobs submitted from a git repository with uncommitted changes refer to the diff (and the
    submit capture) stored once per experiment: sync uploads each blob once, whichever run gets
    there first, and a pull on another machine brings them, so `job show` and `job bundle` work
    there as they do here."""
    repo = tmp_path / "project"
    (repo / "job_configs").mkdir(parents=True)
    job_yaml = repo / "job_configs" / "job.yaml"
    job_yaml.write_text("_target_: dr_exp.trainers.noop.train\nduration: 0\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "first"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)
    job_yaml.write_text("_target_: dr_exp.trainers.noop.train\nduration: 0\nnote: changed after the commit\n")
    configure(base, s3)
    proc = run_cli("job", "sweep", "--config", str(job_yaml), "--params", "+x=1,2,3", base=base)
    assert proc.returncode == 0, proc.stderr
    assert run_cli("system", "worker", "--idle-timeout", "0", base=base).returncode == 0
    assert run_cli("sync", "run", base=base).returncode == 0
    exp = Experiment(base, "exp")
    jobs = [r.id for r in exp.list()]
    assert len(jobs) == 3
    prov = exp.get(jobs[0]).provenance
    assert all(exp.get(j).provenance == prov for j in jobs)  # one submit: the same blobs
    entry = next(g for g in prov["git"] if g["repo"] == str(repo))
    capture = prov["capture"]
    diff = exp.layout.provenance_file(entry["diff"], "diff").read_bytes()
    assert b"+note: changed after the commit" in diff

    listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="team/exp/provenance/")["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(f"team/exp/provenance/{sha}.{kind}"
                                                      for sha, kind in provenance.blob_names(prov))
    remote = s3.client().get_object(Bucket=BUCKET, Key=f"team/exp/provenance/{entry['diff']}.diff")["Body"].read()
    assert remote == diff
    manifests = [json.loads((exp.layout.sync_dir / "manifests" / f"{j}.json").read_text()) for j in jobs]
    for sha, kind in provenance.blob_names(prov):  # uploaded by one run, found there by the others
        ways = [m[f"@provenance/{sha}.{kind}"]["verified"] for m in manifests]
        assert ways.count("present") == 2 and len({"checksum", "reread"} & set(ways)) == 1, ways
    for job in jobs:
        assert_mirrored(s3, exp, job)

    elsewhere = tmp_path / "laptop"
    env = {"DR_EXP_S3_URI": f"s3://{BUCKET}/team", "DR_EXP_S3_ENDPOINT_URL": s3.url}
    proc = run_cli("sync", "pull", "--job", jobs[1], base=elsewhere, **env)
    assert proc.returncode == 0, proc.stderr
    other = Experiment(elsewhere, "exp")
    assert other.layout.provenance_file(entry["diff"], "diff").read_bytes() == diff
    assert other.layout.provenance_file(capture, "json").read_bytes() == \
        exp.layout.provenance_file(capture, "json").read_bytes()
    shown = run_cli("job", "show", jobs[1], base=elsewhere).stdout
    assert "+ uncommitted changes" in shown and f"provenance/{entry['diff'][:12]}" in shown
    bundle = tmp_path / "job.zip"
    proc = run_cli("job", "bundle", jobs[1], "--out", str(bundle), base=elsewhere)
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(bundle) as zf:
        assert zf.read(f"provenance/{entry['diff']}.diff") == diff


# -- stores that are not AWS: ETags that are not MD5s, no checksums, damaged uploads -------------

@pytest.fixture
def proxy(s3, request):
    """A store in front of the moto server whose ETags are random hex; ``request.param`` chooses
    how it treats checksums (see tests/dr_exp/s3_proxy.py)."""
    store = S3Proxy(s3.url, getattr(request, "param", "server")).start()
    yield store
    store.stop()


def manifest(exp, job_id) -> dict:
    return json.loads((exp.layout.sync_dir / "manifests" / f"{job_id}.json").read_text())


def queued(exp) -> set[str]:
    return {p.stem for p in (exp.layout.sync_dir / "queue").glob("*.json")}


def test_etags_that_are_not_md5s_verified_by_checksums(base, s3, proxy):
    exp = Experiment(base, "exp")
    configure(base, proxy)
    job = submit(exp, "payload_mb=20")
    proc = run_cli("system", "worker", "--idle-timeout", "0", base=base, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert_mirrored(s3, exp, job)
    through = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1")
    config = exp.run_dir(job).config.read_bytes()
    head = through.head_object(Bucket=BUCKET, Key=f"team/exp/run_{job}/config.json")
    assert head["ETag"].strip('"') != md5(config)  # the store really does hide the MD5
    direct = s3.client().head_object(Bucket=BUCKET, Key=f"team/exp/run_{job}/checkpoints/payload.ckpt")
    assert direct["ETag"].strip('"').endswith("-3")  # a multipart upload
    assert {e["verified"] for e in manifest(exp, job).values()} == {"checksum"}
    assert json.loads((exp.layout.sync_dir / "verify.json").read_text()) == {f"{proxy.url} {BUCKET}": "checksum"}
    assert not [key for method, key, _ in proxy.requests if method == "GET" and "/run_" in key]  # nothing read back
    assert not queued(exp) and exp.get(job).sync["state"] == "synced"


@pytest.mark.parametrize("proxy", ["strip", "refuse"], indirect=True)
def test_store_without_checksums_verified_by_reading_back(base, s3, proxy):
    exp = Experiment(base, "exp")
    configure(base, proxy)
    first = submit(exp, "payload_mb=9 +x=1")
    assert run_cli("system", "worker", "--idle-timeout", "0", base=base, timeout=120).returncode == 0
    assert_mirrored(s3, exp, first)
    assert {e["verified"] for e in manifest(exp, first).values()} == {"reread"}
    assert json.loads((exp.layout.sync_dir / "verify.json").read_text()) == {f"{proxy.url} {BUCKET}": "reread"}
    assert not queued(exp) and exp.get(first).sync["state"] == "synced"
    asked = proxy.uploads_with_checksums()
    assert asked > 0
    second = submit(exp, "payload_mb=9 +x=2")  # a new worker knows the answer and does not ask again
    assert run_cli("system", "worker", "--idle-timeout", "0", base=base, timeout=120).returncode == 0
    assert_mirrored(s3, exp, second)
    assert proxy.uploads_with_checksums() == asked
    assert not queued(exp) and exp.get(second).sync["state"] == "synced"


@pytest.mark.parametrize("proxy", ["server", "strip"], indirect=True)
def test_damaged_upload_detected_and_stays_queued(base, s3, proxy):
    exp = Experiment(base, "exp")
    configure(base, proxy)
    proxy.corrupt = "checkpoints/payload.ckpt"
    job = submit(exp, "payload_mb=9")
    proc = run_cli("system", "worker", "--idle-timeout", "0", base=base, timeout=120, DR_EXP_SYNC_WAIT="2")
    assert proc.returncode == 0, proc.stderr
    assert exp.get(job).status == "completed" and job in queued(exp)
    again = run_cli("sync", "run", base=base)
    assert again.returncode == 1 and "payload.ckpt does not match the local file" in again.stderr, again.stderr
    assert job in queued(exp)
    assert "checkpoints/payload.ckpt" not in manifest(exp, job)
    stored = bucket_files(s3, job)["checkpoints/payload.ckpt"]
    local = (exp.run_dir(job).checkpoints / "payload.ckpt").read_bytes()
    assert len(stored) == len(local) and stored != local
    assert "does not match" in run_cli("sync", "status", base=base).stdout
    proxy.corrupt = None
    proc = run_cli("sync", "run", base=base)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_mirrored(s3, exp, job)
    assert not queued(exp) and exp.get(job).sync["state"] == "synced"


def test_file_changed_while_uploading_stays_queued(base, s3, proxy):
    exp = Experiment(base, "exp")
    job = submit(exp, "+x=4")
    assert run_cli("system", "worker", "--idle-timeout", "0", base=base).returncode == 0
    configure(base, proxy)
    notes = exp.run_dir(job).artifacts / "notes.txt"
    notes.parent.mkdir(exist_ok=True)
    notes.write_text("first\n")

    def grow(key: str) -> None:  # runs while the upload of notes.txt is on its way
        if key.endswith("artifacts/notes.txt"):
            with open(notes, "a") as fh:
                fh.write("second\n")
            proxy.on_upload = None

    proxy.on_upload = grow
    proc = run_cli("sync", "run", "--job", job, base=base)
    assert proc.returncode == 1 and "notes.txt changed while it was being uploaded" in proc.stderr, proc.stderr
    assert job in queued(exp)
    assert bucket_files(s3, job)["artifacts/notes.txt"] == b"first\n"
    proc = run_cli("sync", "run", base=base)
    assert proc.returncode == 0 and "(1 files uploaded)" in proc.stdout, proc.stdout + proc.stderr
    assert_mirrored(s3, exp, job)
    assert not queued(exp)
