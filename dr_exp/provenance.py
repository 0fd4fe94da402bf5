"""What produced a run: code version, uncommitted changes, packages, machine, seeds, command.

Captured twice, cheaply:

- **At submit** (:func:`capture_submit`, once per submit or sweep call, never per job): the git
  state of the repositories that hold the job config and its ``_target_``'s code (commit, branch,
  dirty flag, the uncommitted diff), Python and package versions, the host, the command line and
  its working directory. The whole capture and every diff are stored once per experiment under
  their SHA-256 (``provenance/<sha256>.json``, ``provenance/<sha256>.diff``); a record keeps only a
  small summary that points at them (``JobRecord.provenance``, :meth:`SubmitCapture.summary`).
- **At run time** (:func:`record_attempt`, in the job's process at the start of every attempt):
  the node's host, GPUs and driver, Python, packages, torch/CUDA/cuDNN/NCCL versions and an
  allow-list of environment variables, merged with the record's submit provenance and the config's
  seeds into the run directory's provenance file (:attr:`dr_exp.rundir.RunDir.provenance`).

Secrets stay out: environment variables are allow-listed (:data:`ENV_ALLOW`), never dumped, and an
untracked file enters the diff only if it looks like source code (:data:`SOURCE_SUFFIXES`), so an
untracked ``.env`` never does. Nothing here imports torch: package versions come from the installed
distributions' metadata directories (what :mod:`importlib.metadata` reads), and torch's own build
details from ``sys.modules`` when the job's process has already imported it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from dr_exp import __version__, fence
from dr_exp.fileio import atomic_write
from dr_exp.job import JobRecord
from dr_exp.layout import Layout
from dr_exp.rundir import RunDir
from dr_exp.store import ExperimentStore

FORMAT = 1
# The uncommitted diff is cut here (and marked ``truncated``); DR_EXP_PROVENANCE_MAX_DIFF overrides.
MAX_DIFF_BYTES = 2 * 1024 * 1024
MAX_UNTRACKED_FILE = 256 * 1024
MAX_LISTED = 50
GIT_TIMEOUT = 20.0
SOURCE_SUFFIXES = frozenset({".py", ".pyx", ".pxd", ".yaml", ".yml", ".toml", ".cfg", ".sh", ".c", ".cc", ".cpp",
                             ".h", ".hpp", ".cu", ".cuh", ".ipynb"})
# The only environment variables ever captured: what changes how a run computes, never credentials.
ENV_ALLOW = ("CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "NCCL_P2P_DISABLE", "NCCL_IB_DISABLE", "TORCH_CUDNN_V8_API_ENABLED", "PYTHONPATH", "VIRTUAL_ENV",
             "CONDA_DEFAULT_ENV", "DR_EXP_CONFIG_SEARCHPATH", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID",
             "SLURM_ARRAY_TASK_ID", "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST", "SLURM_CLUSTER_NAME",
             "SLURM_CPUS_PER_TASK", "SLURM_GPUS_ON_NODE")
# Distributions shown in summaries (names normalised as in their metadata directories).
KEY_PACKAGES = ("torch", "pytorch_lightning", "lightning", "torchvision", "torchmetrics", "numpy", "hydra_core",
                "omegaconf", "dr_exp", "nvidia_cudnn_cu12", "nvidia_nccl_cu12", "nvidia_cuda_runtime_cu12",
                "nvidia_cudnn_cu11", "nvidia_nccl_cu11")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


# -- the environment --------------------------------------------------------------------------
def allowed_env() -> dict[str, str]:
    return {k: os.environ[k] for k in ENV_ALLOW if k in os.environ}


def installed_packages() -> dict[str, str]:
    """Every installed distribution and its version, from the ``*.dist-info``/``*.egg-info``
    directories on ``sys.path`` (first one wins, as for imports): about a millisecond."""
    out: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                dist, _, version = name.rsplit(".", 1)[0].partition("-")
                out.setdefault(dist.lower().replace("-", "_").replace(".", "_"), version.split("-")[0] or "?")
    return dict(sorted(out.items()))


def key_packages(packages: dict[str, str]) -> dict[str, str]:
    return {name: packages[name] for name in KEY_PACKAGES if name in packages}


def _python() -> dict[str, Any]:
    return {"version": platform.python_version(), "implementation": platform.python_implementation(),
            "executable": sys.executable}


def _system() -> dict[str, Any]:
    uname = os.uname()
    return {"host": socket.gethostname(), "os": f"{uname.sysname} {uname.release}", "machine": uname.machine,
            "cpus": os.cpu_count()}


def seeds(config: dict[str, Any]) -> dict[str, Any]:
    """The config's seed keys (``seed``, ``*_seed``, at any depth) by dotted path."""
    out: dict[str, Any] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                key = f"{path}.{k}" if path else str(k)
                if (k == "seed" or str(k).endswith("_seed")) and not isinstance(v, (dict, list)):
                    out[key] = v
                else:
                    walk(v, key)

    walk(config, "")
    return out


def is_seed_key(key: str) -> bool:
    """True for a parameter name that sets a seed (``seed``, ``+seed``, ``data.seed``, ``init_seed``)."""
    last = key.lstrip("+~").rsplit(".", 1)[-1]
    return last == "seed" or last.endswith("_seed")


# -- git --------------------------------------------------------------------------------------
def _git(cwd: str, *args: str, limit: int | None = None) -> tuple[int, bytes, str]:
    """Run git; stdout is read up to ``limit`` bytes (+1, to tell that it was cut)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        proc = subprocess.Popen(["git", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=env)
    except FileNotFoundError:
        return 127, b"", "git is not installed"
    try:
        if limit is None:
            out, err = proc.communicate(timeout=GIT_TIMEOUT)
            return proc.returncode, out, err.decode(errors="replace")
        assert proc.stdout is not None
        out = proc.stdout.read(limit + 1)
        if len(out) > limit:
            proc.kill()
        _, err = proc.communicate(timeout=GIT_TIMEOUT)
        return (0 if len(out) > limit else proc.returncode), out, err.decode(errors="replace")
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return 124, b"", f"git {args[0]} took longer than {GIT_TIMEOUT:g}s"


def _max_diff() -> int:
    try:
        return max(0, int(os.environ.get("DR_EXP_PROVENANCE_MAX_DIFF", MAX_DIFF_BYTES)))
    except ValueError:
        return MAX_DIFF_BYTES


def _toplevel(directory: str) -> tuple[str | None, str]:
    if not os.path.isdir(directory):
        return None, f"{directory} is not a directory"
    rc, out, err = _git(directory, "rev-parse", "--show-toplevel")
    if rc != 0:
        first = (err.strip().splitlines() or ["git failed"])[0]
        return None, "not a git repository" if "not a git repository" in first else first[:200]
    return out.decode().strip(), ""


def _new_file_patch(rel: str, text: bytes) -> bytes:
    """A new untracked file as a patch that ``git apply`` accepts."""
    lines = text.splitlines(keepends=True)
    body = b"".join(b"+" + line for line in lines)
    if lines and not lines[-1].endswith(b"\n"):
        body += b"\n\\ No newline at end of file\n"
    header = (f"diff --git a/{rel} b/{rel}\nnew file mode 100644\n--- /dev/null\n+++ b/{rel}\n"
              f"@@ -0,0 +1,{len(lines)} @@\n").encode()
    return header + body if lines else f"diff --git a/{rel} b/{rel}\nnew file mode 100644\n".encode()


def git_state(repo: str) -> tuple[dict[str, Any], bytes]:
    """The state of the work tree at ``repo`` (its top level) and its uncommitted diff: changes
    to tracked files against HEAD, plus untracked source files as new files, cut at the cap."""
    cap = _max_diff()
    # Untracked directories are listed, not walked: a run or data directory inside the repository
    # must not make every submit list its files.
    rc, out, err = _git(repo, "status", "--porcelain=v2", "--branch", "-z", "--untracked-files=normal")
    if rc != 0:
        return {"repo": repo, "note": (err.strip().splitlines() or ["git status failed"])[0][:200]}, b""
    commit = branch = None
    tracked, untracked = 0, []
    items = out.decode(errors="surrogateescape").split("\0")
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("# branch.oid "):
            commit = item.split(" ", 2)[2]
        elif item.startswith("# branch.head "):
            branch = item.split(" ", 2)[2]
        elif item.startswith(("1 ", "2 ", "u ")):
            tracked += 1
            i += 1 if item.startswith("2 ") else 0  # a rename names its source next
        elif item.startswith("? "):
            untracked.append(item[2:])
        i += 1
    commit = None if commit in (None, "(initial)") else commit
    state: dict[str, Any] = {"repo": repo, "commit": commit, "branch": None if branch == "(detached)" else branch,
                             "dirty": bool(tracked or untracked), "changed": tracked, "untracked": len(untracked)}
    diff = b""
    truncated = False
    if tracked:
        args = ["diff", "HEAD"] if commit else ["diff", "--cached"]
        rc, diff, err = _git(repo, *args, "--binary", "--no-color", "--no-ext-diff", "--no-textconv", limit=cap)
        if rc != 0:
            state["note"] = f"git diff failed: {(err.strip().splitlines() or ['?'])[0][:200]}"
        truncated = len(diff) > cap
    included, skipped = [], []
    for rel in untracked:
        path = os.path.join(repo, rel)
        why, data = "", b""
        if rel.endswith("/"):
            why = "untracked directory"
        elif os.path.splitext(rel)[1] not in SOURCE_SUFFIXES:
            why = "not a source file"
        else:
            try:
                size = os.path.getsize(path)
                why = f"{size} bytes, over {MAX_UNTRACKED_FILE}" if size > MAX_UNTRACKED_FILE else ""
                data = b"" if why else Path(path).read_bytes()
            except OSError as exc:
                why, data = exc.strerror or "unreadable", b""
            if not why and b"\0" in data[:8192]:
                why = "binary"
            if not why and len(diff) + len(data) > cap:
                why, truncated = "over the diff size cap", True
        if why:
            skipped.append({"path": rel, "why": why})
        else:
            diff += _new_file_patch(rel, data)
            included.append(rel)
    if truncated:
        diff = diff[:cap]
        diff = diff[:diff.rfind(b"\n") + 1]
    state.update(diff=digest(diff) if diff else None, diff_bytes=len(diff), truncated=truncated)
    state["untracked_included"] = included[:MAX_LISTED]
    state["untracked_skipped"] = skipped[:MAX_LISTED]
    return state, diff


# -- at submit ----------------------------------------------------------------------------------
def command_line(argv: list[str]) -> str:
    """The command as typed: ``dr_exp job sweep ...`` (``python -m dr_exp`` shows as ``dr_exp``)."""
    if not argv:
        return ""
    program = argv[0]
    if program.endswith(("dr_exp/__main__.py", "dr_exp/cli/main.py")) or os.path.basename(program) == "dr_exp":
        program = "dr_exp"
    return shlex.join([program, *argv[1:]])


def _module_dir(target: str) -> str | None:
    """The directory of the module that defines ``target``: it was imported when the config was
    checked, so ``sys.modules`` has it; no import happens here."""
    parts = target.split(".")
    for n in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:n]))
        path = getattr(module, "__file__", None) if module is not None else None
        if path:
            return os.path.dirname(os.path.abspath(path))
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec else None
    return os.path.dirname(os.path.abspath(origin)) if origin and origin != "built-in" else None


_SUMMARY_KEYS = ("repo", "path", "commit", "branch", "dirty", "diff", "diff_bytes", "truncated", "note")


def _summary(state: dict[str, Any], holds: list[str]) -> dict[str, Any]:
    """A repository's entry in a record: what tells the code apart, no more (a record is read on
    every claim and listing)."""
    out = {k: state[k] for k in _SUMMARY_KEYS if k in state}
    if not out.get("diff"):
        for k in ("diff", "diff_bytes", "truncated"):
            out.pop(k, None)
    elif not out.get("truncated"):
        out.pop("truncated", None)
    return {**out, "holds": holds}


@dataclass
class SubmitCapture:
    """One submit call's provenance: the document stored once, the diffs, and per config source
    the small summary each record carries."""

    document: dict[str, Any]
    diffs: dict[str, bytes] = field(default_factory=dict)
    sources: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    _summaries: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @cached_property
    def digest(self) -> str:
        return digest(canonical(self.document))

    def summary(self, config_path: str, target: str, rerun_of: dict[str, Any] | None = None) -> dict[str, Any]:
        """What a record stores: one dict per config source, shared by the batch's records (a
        record's provenance is never changed in place)."""
        key = (config_path, target)
        out = self._summaries.get(key)
        if out is None:
            out = self._summaries[key] = {"capture": self.digest, "command": self.document["command_line"],
                                          "git": self.sources.get(key, [])}
        return {**out, "rerun_of": rerun_of} if rerun_of else out

    def save(self, layout: Layout) -> None:
        """Write the capture and the diffs under the experiment, each once (content-addressed)."""
        layout.provenance_dir.mkdir(parents=True, exist_ok=True)
        for sha, diff in self.diffs.items():
            put_blob(layout, sha, "diff", diff)
        put_blob(layout, self.digest, "json", canonical(self.document))


def put_blob(layout: Layout, sha: str, kind: str, data: bytes) -> None:
    path = layout.provenance_file(sha, kind)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)


def blob_names(provenance: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(sha256, kind) of every blob a record's provenance refers to (its own capture and diffs,
    and the diffs of the run it reruns)."""
    prov = provenance if isinstance(provenance, dict) else {}
    out = [(prov["capture"], "json")] if isinstance(prov.get("capture"), str) else []
    for entry in [*prov.get("git", []), *(prov.get("rerun_of") or {}).get("git", [])]:
        if isinstance(entry, dict) and isinstance(entry.get("diff"), str):
            out.append((entry["diff"], "diff"))
    return list(dict.fromkeys(out))


def read_blob(layout: Layout, sha: str | None, kind: str) -> bytes | None:
    if not sha:
        return None
    try:
        return layout.provenance_file(sha, kind).read_bytes()
    except (OSError, ValueError):
        return None


def capture_submit(sources: Iterable[tuple[str, str]], argv: list[str] | None = None) -> SubmitCapture:
    """Capture once for a batch: ``sources`` are the (config directory, ``_target_``) pairs of its
    jobs (config directory ``""`` for configs built in Python: the running script's directory
    stands in). Each repository is inspected once, however many jobs and pairs name it."""
    argv = list(sys.argv if argv is None else argv)
    cwd = os.getcwd()
    script = os.path.dirname(os.path.abspath(argv[0])) if argv and os.path.isfile(argv[0]) else cwd
    pairs = list(dict.fromkeys(sources))
    dirs: dict[str, tuple[str | None, str]] = {}
    states: dict[str, dict[str, Any]] = {}
    capture = SubmitCapture({})
    for config_path, target in pairs:
        roles: dict[str, list[str]] = {}
        for role, directory in (("config", config_path or script), ("code", _module_dir(target or ""))):
            if directory is None:
                continue
            if directory not in dirs:
                dirs[directory] = _toplevel(directory)
            top, note = dirs[directory]
            key = top or f"!{directory}"
            if top is not None and top not in states:
                states[top], diff = git_state(top)
                if diff:
                    capture.diffs[states[top]["diff"]] = diff
            elif top is None and key not in states:
                states[key] = {"repo": None, "path": directory, "note": note}
            roles.setdefault(key, []).append(role)
        capture.sources[(config_path, target)] = [_summary(states[key], holds) for key, holds in roles.items()]
    packages = installed_packages()
    capture.document = {
        "format": FORMAT, "kind": "submit", "captured_at": time.time(), "dr_exp": __version__,
        "command": argv, "command_line": command_line(argv), "cwd": cwd, **_system(), "python": _python(),
        "packages": key_packages(packages), "installed": packages, "env": allowed_env(),
        "git": list(states.values())}
    return capture


# -- at run time ----------------------------------------------------------------------------------
def _torch() -> dict[str, Any] | None:
    """torch's build, only if this process imported it already (never imported here)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    info: dict[str, Any] = {"version": getattr(torch, "__version__", None)}
    version = getattr(torch, "version", None)
    info["cuda"] = getattr(version, "cuda", None)
    for key, get in (("cudnn", lambda: torch.backends.cudnn.version()),
                     ("nccl", lambda: ".".join(map(str, torch.cuda.nccl.version())) if info["cuda"] else None)):
        try:
            info[key] = get()
        except Exception:  # noqa: BLE001 - a torch built without it: not known
            info[key] = None
    return info


def gpus() -> dict[str, Any]:
    """GPU models and the driver from ``nvidia-smi`` (none when it is not installed)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"gpus": [], "driver": None, "note": "nvidia-smi not found"}
    try:
        proc = subprocess.run([smi, "--query-gpu=index,name,driver_version,memory.total,uuid",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"gpus": [], "driver": None, "note": f"nvidia-smi failed: {exc}"}
    if proc.returncode != 0:
        return {"gpus": [], "driver": None, "note": (proc.stderr or proc.stdout).strip()[:200]}
    found = []
    for line in proc.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5:
            found.append({"index": parts[0], "name": parts[1], "driver": parts[2], "memory_mib": parts[3],
                          "uuid": parts[4]})
    return {"gpus": found, "driver": found[0]["driver"] if found else None}


def node_info() -> dict[str, Any]:
    """What the node running a job has (host, GPUs, packages, allowed environment)."""
    packages = installed_packages()
    return {"captured_at": time.time(), **_system(), "python": _python(), "packages": key_packages(packages),
            "installed": packages, "torch": _torch(), **gpus(), "env": allowed_env()}


def run_document(layout: Layout, job_id: str, rec: JobRecord | None, config: dict[str, Any],
                 note: str | None = None) -> dict[str, Any]:
    """The run's provenance without any attempt yet: the record's submit provenance with the full
    submit capture, the config source and its seeds."""
    submitted = rec.provenance if rec is not None else None
    if rec is not None:
        extra = {"config_hash": rec.config_hash, "overrides": rec.overrides, "sweep_params": rec.sweep_params,
                 "sweep_id": rec.sweep_id,
                 "config_source": f"{rec.config_path}/{rec.config_name}.yaml" if rec.config_name else None}
    else:
        extra = {"note": note}
    capture = read_blob(layout, (submitted or {}).get("capture"), "json")
    return {"format": FORMAT, "job_id": job_id, "experiment": layout.experiment, **extra, "seeds": seeds(config),
            "submit": {**(submitted or {}), "details": json.loads(capture) if capture else None}, "attempts": []}


def record_attempt(run: RunDir, job_id: str, worker_id: str, attempt: int, config: dict[str, Any]) -> None:
    """Write the run's provenance file at the start of an attempt: :func:`run_document`, the
    earlier attempts' nodes, and this node."""
    layout = Layout.of_run_dir(run.root)
    rec, note = None, None
    try:
        rec = ExperimentStore(layout.base_path, layout.experiment).read_record(job_id, quick=True)
    except Exception as exc:  # noqa: BLE001 - provenance never stops a job
        note = f"could not read the job record: {exc}"
    doc = run_document(layout, job_id, rec, config, note)
    previous = read_run(run) or {}
    earlier = previous.get("attempts") if isinstance(previous.get("attempts"), list) else []
    node = node_info()
    if node["installed"] == (doc["submit"].get("details") or {}).get("installed"):
        node["installed"] = "same as at submit"  # the common case: keep the file small
    doc["attempts"] = [*(a for a in earlier if isinstance(a, dict) and a.get("attempt") != attempt),
                       {"attempt": attempt, "worker_id": worker_id, **node}]
    fence.guard()
    atomic_write(run.provenance, json.dumps(doc, indent=1, default=str) + "\n")


def read_run(run: RunDir) -> dict[str, Any] | None:
    try:
        data = json.loads(run.read(run.provenance))  # on disk, or in the run's archive once packed
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


# -- reading it back ---------------------------------------------------------------------------------
def describe_git(entry: dict[str, Any]) -> str:
    """One line for a repository: ``3f2b9c1e0a4d on main + uncommitted changes (2.1 KiB diff)``."""
    if not entry.get("repo"):
        return f"{entry.get('path', '?')}: {entry.get('note') or 'not a git repository'}"
    text = f"{(entry.get('commit') or '(no commit yet)')[:12]} on {entry.get('branch') or '(detached HEAD)'}"
    if entry.get("dirty"):
        size = entry.get("diff_bytes") or 0
        text += f" + uncommitted changes ({size / 1024:.1f} KiB diff{', truncated' if entry.get('truncated') else ''}"
        text += f", provenance/{entry['diff'][:12]}….diff)" if entry.get("diff") else ")"
    return f"{text}  [{entry.get('repo')}]"


def describe(provenance: dict[str, Any] | None, run: RunDir) -> list[tuple[str, str]]:
    """``job show``'s provenance lines: code, command, where it ran, seeds, what it reruns."""
    if not provenance:
        return [("code", "(no provenance: submitted before dr_exp recorded it)")]
    lines = [("code", describe_git(g)) for g in provenance.get("git", [])] or [("code", "-")]
    lines.append(("command", provenance.get("command") or "-"))
    origin = provenance.get("rerun_of")
    if origin:
        lines.append(("rerun of", f"job {origin.get('job')} of experiment {origin.get('experiment')}"
                                  + (f" (bundle {origin['bundle']})" if origin.get("bundle") else "")))
    ran = read_run(run)
    if ran:
        if ran.get("seeds"):
            lines.append(("seeds", " ".join(f"{k}={v}" for k, v in ran["seeds"].items())))
        for a in ran.get("attempts", [])[-1:]:
            torch = a.get("torch") or {}
            gpu = ", ".join(sorted({g.get("name", "?") for g in a.get("gpus", [])})) or "no GPU"
            build = f"torch {torch.get('version')} CUDA {torch.get('cuda')} cuDNN {torch.get('cudnn')}" if torch else \
                " ".join(f"{k} {v}" for k, v in a.get("packages", {}).items() if k in ("torch", "pytorch_lightning"))
            lines.append(("ran on", f"{a.get('host')} (attempt {a.get('attempt')}): {gpu}"
                                    + (f", driver {a['driver']}" if a.get("driver") else "")
                                    + f", Python {a.get('python', {}).get('version')}" + (f", {build}" if build else "")))
        where = str(run.provenance) if run.provenance.exists() else f"{run.packed} ({run.relative(run.provenance)} inside)"
        lines.append(("provenance", where))
    return lines
