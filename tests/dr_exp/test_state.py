import pytest

from dr_exp.errors import InvalidTransition
from dr_exp.job import JobRecord
from dr_exp.state import TRANSITIONS, Status, transition


def make() -> JobRecord:
    return JobRecord(id="00000000-0000-4000-8000-000000000000", experiment="e", config={"_target_": "x.y"})


def test_legal_path_records_history():
    rec = make()
    transition(rec, Status.RUNNING, "claimed", worker_id="w1")
    transition(rec, Status.COMPLETED, "done")
    assert rec.status == "completed" and rec.worker_id == "w1"
    assert [(h["from"], h["to"]) for h in rec.history] == [("pending", "running"), ("running", "completed")]


@pytest.mark.parametrize(("old", "new"), [("completed", "running"), ("pending", "completed"), ("failed", "running"),
                                     ("cancelled", "completed"), ("completed", "pending")])
def test_illegal_transitions_raise(old, new):
    rec = make()
    rec.status = old
    with pytest.raises(InvalidTransition):
        transition(rec, new)
    assert rec.status == old and rec.history == []


def test_table_matches_design():
    assert TRANSITIONS[Status.RUNNING] >= {Status.PENDING, Status.COMPLETED, Status.FAILED, Status.CANCELLED}
    assert TRANSITIONS[Status.FAILED] == {Status.PENDING}
    assert TRANSITIONS[Status.COMPLETED] == frozenset()


def test_only_transition_writes_status():
    """Grep the package: `.status =` is assigned in state.py only."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "dr_exp"
    writers = [str(p.relative_to(root)) for p in root.rglob("*.py")
               if re.search(r"\.status\s*=[^=]", p.read_text())]
    assert writers == ["state.py"]
