"""Rules about the code itself, kept true by grep: one writer of each fact, one spelling of
each name, dependencies pointing one way."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DR_EXP = ROOT / "dr_exp"


def sources(package: Path = DR_EXP) -> dict[str, str]:
    return {str(p.relative_to(package)): p.read_text() for p in package.rglob("*.py")}


def test_only_transition_writes_status():
    writers = [name for name, text in sources().items() if re.search(r"\.status\s*=[^=]", text)]
    assert writers == ["state.py"]


def test_only_the_api_writes_records():
    """Records change through the API; the store's record writers are called from api.py alone."""
    writes = re.compile(r"\.(write_record|begin_attempt|end_attempt|create_jobs)\(")
    callers = sorted(name for name, text in sources().items() if writes.search(text) and name != "store.py")
    assert callers == ["api.py"], callers
    raw = re.compile(r"layout\.record\(|jobs_dir\s*/|\"jobs/\"")
    touching = sorted(name for name, text in sources().items()
                      if raw.search(text) and name not in ("store.py", "layout.py", "validate.py", "recovery.py"))
    # Readers may name a record's path (sync copies it); none of them writes through it.
    for name in touching:
        assert not re.search(r"atomic_write\([^)]*record", sources()[name]), name


RUN_FILES = ["config.json", "metrics.jsonl", "events.jsonl", "result.json", "error.txt", "train.log",
             "provenance.json", ".outcome-"]


def test_run_directory_file_names_are_spelled_once():
    for name in RUN_FILES:
        spelled = sorted(f for f, text in sources().items() if f'"{name}' in text or f"'{name}" in text
                         or f"/{name}" in text)
        assert spelled == ["rundir.py"], (name, spelled)


def test_dr_exp_does_not_import_torch_at_module_level():
    for name, text in sources().items():
        heavy = r"(import|from)\s+(torch|pytorch_lightning|lightning|decon_cnn)\b"
        top = [line for line in text.splitlines() if re.match(heavy, line)]
        assert not top, (name, top)


def test_cli_modules_do_not_import_each_other_in_a_loop():
    """The CLI's modules form a tree: command modules import `cli.base` (and a group they extend),
    `cli.main` imports them all, and nothing imports `cli.main` but the package's entry point."""
    modules = {name[:-3]: text for name, text in sources(DR_EXP / "cli").items() if name.endswith(".py")}
    graph = {}
    for name, text in modules.items():
        found = set(re.findall(r"from dr_exp\.cli\.(\w+) import", text))
        for group in re.findall(r"from dr_exp\.cli import ([\w, ]+)", text):
            found |= {m.strip() for m in group.split(",")}
        graph[name] = found & set(modules)

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import loop: {' -> '.join((*path, node))}"
        for nxt in graph.get(node, ()):
            visit(nxt, (*path, node))

    for name in graph:
        visit(name, ())
    assert [n for n, deps in graph.items() if "main" in deps] == ["__init__"]


def test_decon_cnn_never_imports_dr_exp():
    for name, text in sources(ROOT / "decon_cnn").items():
        assert not re.search(r"^\s*(from|import)\s+dr_exp\b", text, re.M), name
