"""Generic file I/O: whole-file writes, staged batches, in-place overwrites, JSONL reading."""

import os
from pathlib import Path

import pytest

from dr_exp.errors import CorruptFile
from dr_exp.fileio import append_line, overwrite, parse_jsonl, publish, read_jsonl, sync_filesystem, write_new_files


def test_overwrite_keeps_exactly_the_new_content(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"a long old content")
    fd = os.open(path, os.O_WRONLY)
    try:
        assert overwrite(fd, b"short", path) and path.read_bytes() == b"short"
        assert overwrite(fd, b"longer than before", path) and path.read_bytes() == b"longer than before"
        assert overwrite(fd, b"x", path, empty_only=True) is False
        assert path.read_bytes() == b"longer than before"
    finally:
        os.close(fd)


def test_staged_files_are_invisible_until_published(tmp_path):
    paths = [str(tmp_path / f"f{i}.json") for i in range(3)]
    temps = write_new_files((p, f"{i}".encode()) for i, p in enumerate(paths))
    assert not any(os.path.exists(p) for p in paths) and all(os.path.exists(t) for t in temps)
    sync_filesystem(tmp_path)
    publish(temps, paths)
    assert [Path(p).read_text() for p in paths] == ["0", "1", "2"] and not any(os.path.exists(t) for t in temps)


def test_a_failed_stage_leaves_nothing(tmp_path):
    good = str(tmp_path / "a.json")
    bad = str(tmp_path / "missing-dir" / "b.json")
    with pytest.raises(FileNotFoundError):
        write_new_files([(good, b"1"), (bad, b"2")])
    assert os.listdir(tmp_path) == []


def test_jsonl_skips_a_torn_tail_but_not_damage_in_the_middle(tmp_path):
    path = tmp_path / "m.jsonl"
    append_line(path, {"a": 1})
    append_line(path, {"a": 2})
    with open(path, "ab") as fh:
        fh.write(b'{"a": 3, "b"')  # a writer died mid-line
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    damaged = b'{"a": 1}\nnot json\n{"a": 2}\n'
    with pytest.raises(CorruptFile, match="line 2"):
        parse_jsonl(damaged, "m.jsonl")
    problems: list[str] = []
    assert parse_jsonl(damaged, "m.jsonl", problems) == [{"a": 1}, {"a": 2}]
    assert len(problems) == 1 and "line 2" in problems[0]
    assert read_jsonl(tmp_path / "absent.jsonl") == []
