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


def test_jsonl_log_keeps_an_index_not_the_rows(tmp_path):
    """At the card's scale the rows do not fit comfortably in memory (02's: ~600 MiB for 40,000
    clips): the log holds keys and offsets, and reads a row back when asked."""
    import tracemalloc

    path = tmp_path / "big.jsonl"
    pad = "x" * 5000
    path.write_text("".join(json.dumps({"clip_id": f"c{i:04d}", "pad": pad, "i": i}) + "\n" for i in range(2000)))
    tracemalloc.start()
    log = JsonlLog(path)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(log) == 2000
    assert held < 1_000_000, f"the log holds {held / 1e6:.1f} MB for a 10 MB file: it keeps the rows"
    assert log.get("c0042")["i"] == 42 and log.get("nope") is None


def test_rows_view_reads_like_a_list_and_never_writes_back(tmp_path):
    log = JsonlLog(tmp_path / "rows.jsonl")
    log.append(*({"clip_id": c, "v": i} for i, c in enumerate("dbca")))
    rows = log.rows()
    assert len(rows) == 4 and rows[0]["clip_id"] == "d" and rows[-1]["clip_id"] == "a"
    assert [r["clip_id"] for r in rows[1:3]] == ["b", "c"]
    assert rows == runs.read_jsonl(tmp_path / "rows.jsonl")
    rows[0]["v"] = 99  # a fresh dict each read
    assert log.get("d")["v"] == 0
    final = log.finalize(sort_key=lambda r: -r["v"])
    assert [r["clip_id"] for r in final] == ["a", "c", "b", "d"]
    assert [r["clip_id"] for r in runs.read_jsonl(tmp_path / "rows.jsonl")] == ["a", "c", "b", "d"]
    log.append({"clip_id": "e", "v": 4}, {"clip_id": "e", "v": 5})  # the same key twice in one call
    assert len(log) == 5 and log.get("e")["v"] == 4
    again = JsonlLog(tmp_path / "rows.jsonl")
    assert [r["clip_id"] for r in again.rows()] == ["a", "c", "b", "d", "e"]
    assert again.discard({"c", "zz"}) == 1 and "c" not in again and again.get("e")["v"] == 4
    empty = JsonlLog(tmp_path / "none.jsonl")
    assert list(empty.finalize()) == [] and (tmp_path / "none.jsonl").read_bytes() == b""


def test_a_cut_line_far_from_the_start_is_repaired(tmp_path):
    path = tmp_path / "rows.jsonl"
    body = "".join(json.dumps({"clip_id": f"c{i}", "pad": "y" * 300}) + "\n" for i in range(400))
    path.write_text(body + '{"clip_id": "cut", "pad": "' + "z" * 70000)  # a tail longer than one block
    log = JsonlLog(path)
    assert len(log) == 400 and path.read_text() == body
    log.append({"clip_id": "new"})
    assert runs.read_jsonl(path)[-1] == {"clip_id": "new"}
