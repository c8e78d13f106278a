import errno
import json

import pytest

from stablebeat_utils import runs
from stablebeat_utils.runs import JsonlLog, Run, RunFolderError


def test_jsonl_append_once_and_reopen(tmp_path):
    log = JsonlLog(tmp_path / "rows.jsonl")
    assert log.append({"clip_id": "b", "x": 1}, {"clip_id": "a", "x": 2}) == 2
    assert log.append({"clip_id": "a", "x": 99}) == 0  # never twice
    again = JsonlLog(tmp_path / "rows.jsonl")
    assert again.keys() == {"a", "b"}
    assert again.get("a")["x"] == 2


def test_jsonl_drops_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"clip_id": "a"}\n{"clip_id": "b", "x"')
    log = JsonlLog(path)
    assert log.keys() == {"a"}
    assert path.read_bytes() == b'{"clip_id": "a"}\n'  # repaired in place
    log.append({"clip_id": "b"})
    assert [r["clip_id"] for r in runs.read_jsonl(path)] == ["a", "b"]


def test_finalize_sorts_bytes_independently_of_order(tmp_path):
    a, b = JsonlLog(tmp_path / "a.jsonl"), JsonlLog(tmp_path / "b.jsonl")
    rows = [{"clip_id": str(i), "v": i} for i in range(10)]
    a.append(*rows)
    b.append(*reversed(rows))
    a.finalize(), b.finalize()
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with runs.atomic_path(target) as tmp:
            tmp.write_text("half")
            1 / 0
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left


def test_disk_full_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "x.json"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.os, "replace", full)
    with pytest.raises(RunFolderError, match="no space left"):
        runs.atomic_write_json(target, {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_stage_record_and_params(tmp_path):
    run = Run(tmp_path)
    assert not run.is_done("01_segment")
    run.mark_done("01_segment", params={"a": 1}, clips=3)
    assert run.is_done("01_segment") and run.is_done("01_segment", {"a": 1})
    assert not run.is_done("01_segment", {"a": 2})
    assert run.stage_record("01_segment")["summary"] == {"clips": 3}


def test_incompatible_run_folder_refused(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"run_format": 999}))
    with pytest.raises(RunFolderError, match="run format 999"):
        Run(tmp_path).check_compatible()


def test_jsonl_discard_drops_rows_for_good(tmp_path):
    from stablebeat_utils.runs import JsonlLog, read_jsonl

    log = JsonlLog(tmp_path / "x.jsonl")
    log.append({"clip_id": "a", "v": 1}, {"clip_id": "b", "v": 2}, {"clip_id": "c", "v": 3})
    assert log.discard({"b", "zz"}) == 1 and log.discard(set()) == 0
    assert [r["clip_id"] for r in read_jsonl(tmp_path / "x.jsonl")] == ["a", "c"]
    assert "b" not in JsonlLog(tmp_path / "x.jsonl")
    assert log.append({"clip_id": "b", "v": 4}) == 1  # may come back, with its new content
