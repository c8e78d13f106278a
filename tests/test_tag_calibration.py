"""Tag calibration (stage 02_tag, stablebeat_utils.tag_calibration): the producer's answers give
per-tag thresholds; simulated answers move them the right way and the rows follow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stablebeat_utils import show, tag, tag_calibration
from stablebeat_utils.audio import write_wav
from stablebeat_utils.runs import read_jsonl

SR = 44100
P = dict(
    clap_model="tiny:clap",
    backend="transformers",
    batch_size=4,
    top_k_instruments=3,
    top_k_moods=2,
    top_k_genres=1,
    min_similarity=-1.0,
    max_margin=2.0,
    window_seconds=10.0,
    device="cpu",
)


def _make_run(root: Path) -> Path:
    """Eight 10-s synthetic clips (different tones, noises and pulses) and one unreadable clip."""
    clips = root / "01_segment" / "clips"
    clips.mkdir(parents=True)
    rng = np.random.default_rng(0)
    t = np.arange(10 * SR) / SR
    rows = []
    for i in range(8):
        f = 110 * 2 ** (i / 3)
        x = 0.3 * np.sin(2 * np.pi * f * t) * (np.sin(2 * np.pi * (1 + i) * t) > 0) + 0.05 * (
            i % 3
        ) * rng.standard_normal(len(t))
        write_wav(clips / f"c{i}.wav", np.stack([x, x]).astype(np.float32), SR)
        rows.append(
            {
                "clip_id": f"c{i}",
                "source": f"c{i}.wav",
                "start": 0.0,
                "duration": 10.0,
                "path": f"01_segment/clips/c{i}.wav",
                "status": "ok",
                "reason": None,
            }
        )
    (clips / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    rows.append(
        {
            "clip_id": "bad",
            "source": "bad.wav",
            "start": 0.0,
            "duration": 10.0,
            "path": "01_segment/clips/bad.wav",
            "status": "ok",
            "reason": None,
        }
    )
    (root / "01_segment" / "segments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = _make_run(tmp_path_factory.mktemp("calib"))
    tag.run(run_dir=str(root), **P)
    return root


def _copy(base: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(base, dst)
    return dst


def _rows(root: Path) -> dict[str, dict]:
    return {r["clip_id"]: r for r in read_jsonl(root / "02_tag" / "tags.jsonl")}


def _write(path: Path, answers: list[dict]) -> Path:
    path.write_text("".join(json.dumps(a) + "\n" for a in answers))
    return path


# -- fitting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scored, expected",
    [
        ([(0.2, False), (0.3, False), (0.5, True), (0.6, True)], 0.4),  # separable: the middle of the gap
        ([(0.5, True), (0.6, True)], 0.5),  # only right: the lowest right score
        ([(0.2, False), (0.3, False)], 0.300001),  # only wrong: just above the highest
        (
            [(0.2, False), (0.35, True), (0.4, False), (0.6, True), (0.7, True)],
            0.275,
        ),  # 4 of 5 either way: the lower cut
    ],
)
def test_fit_threshold_known_answers(scored, expected):
    assert tag_calibration.fit_threshold(scored) == pytest.approx(expected)


def test_select_family_calibrated_tags_by_threshold_alone():
    scores = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.1}
    assert tag_calibration.select_family(scores, 2, -1.0, 2.0, {}) == ["a", "b"]
    # "a" judged wrong above 0.9 → out; "d" judged right from 0.05 → in, without taking a top-k place
    assert tag_calibration.select_family(scores, 2, -1.0, 2.0, {"a": 0.95, "d": 0.05}) == ["b", "c", "d"]


# -- the stage with simulated answers ---------------------------------------------------------


def test_wrong_answers_raise_the_threshold_and_remove_the_tag(base, tmp_path):
    root = _copy(base, tmp_path)
    before = _rows(root)
    carried = {}
    for cid, r in before.items():
        for t in r.get("instruments_tags", []):
            carried.setdefault(t, []).append(cid)
    tag_, clips = max(carried.items(), key=lambda kv: (len(kv[1]), kv[0]))
    answers = [{"clip_id": c, "tag": tag_, "correct": False} for c in clips]
    summary = tag.run(run_dir=str(root), **P, calibration_file=str(_write(tmp_path / "a.jsonl", answers)))
    th = summary["calibration"]["thresholds"][tag_]
    wrong_scores = [before[c]["scores"]["instruments"][tag_] for c in clips]
    assert th > max(wrong_scores)  # moved above every clip the producer called wrong
    after = _rows(root)
    for cid, r in after.items():
        if "error" in r:
            continue
        s = r["scores"]["instruments"][tag_]
        assert (tag_ in r["instruments_tags"]) == (s >= th and cid not in clips), (cid, s, th)
        assert r["scores"] == before[cid]["scores"]  # no model run: the stored scores are re-read
    calib = json.loads((root / "02_tag" / "calibration.json").read_text())
    assert calib["thresholds"][tag_] == {"family": "instruments", "threshold": th, "right": 0, "wrong": len(clips)}


def test_right_answers_lower_the_threshold_and_add_the_tag(base, tmp_path):
    root = _copy(base, tmp_path)
    before = _rows(root)
    ok = [r for r in before.values() if "error" not in r]
    # a tag no clip carries, marked right on the clip where CLAP scores it highest
    missing = sorted(t for t in ok[0]["scores"]["instruments"] if not any(t in r["instruments_tags"] for r in ok))[0]
    best = max(ok, key=lambda r: r["scores"]["instruments"][missing])
    answers = [{"clip_id": best["clip_id"], "tag": missing, "correct": True}]
    summary = tag.run(run_dir=str(root), **P, calibration_file=str(_write(tmp_path / "a.jsonl", answers)))
    th = summary["calibration"]["thresholds"][missing]
    assert th == pytest.approx(best["scores"]["instruments"][missing])
    after = _rows(root)
    assert missing in after[best["clip_id"]]["instruments_tags"]
    gained = [c for c, r in after.items() if "error" not in r and missing in r["instruments_tags"]]
    assert gained == [best["clip_id"]]  # it had the highest score: no other clip reaches the threshold
    # other tags still fill top_k as before
    for c, r in after.items():
        if "error" not in r:
            assert [t for t in r["instruments_tags"] if t != missing] == before[c]["instruments_tags"]


def test_widget_answers_are_saved_and_used_on_the_next_run(base, tmp_path):
    root = _copy(base, tmp_path)
    rows = list(_rows(root).values())
    panel = show.calibration_widget(str(root), rows, n=2)
    assert len(panel.clips) == 2 and "bad" not in [r["clip_id"] for r in panel.clips]
    (c, t), toggle = next(iter(panel.choices.items()))
    toggle.value = "wrong"
    panel.button.click()  # the Save button
    saved = read_jsonl(root / "02_tag" / "calibration_answers.jsonl")
    assert saved == [{"clip_id": c, "tag": t, "correct": False}]
    assert panel.save() == 0  # nothing new marked: nothing appended twice
    summary = tag.run(run_dir=str(root), **P)
    assert t in summary["calibration"]["thresholds"]
    assert t not in [x for f in tag.FAMILIES for x in _rows(root)[c][f"{f}_tags"]]
    # rerun: same bytes (resumable, deterministic)
    first = (root / "02_tag" / "tags.jsonl").read_bytes()
    tag.run(run_dir=str(root), **P)
    assert (root / "02_tag" / "tags.jsonl").read_bytes() == first


def test_bad_answers_are_refused_by_name_and_nothing_changes(base, tmp_path):
    root = _copy(base, tmp_path)
    before = (root / "02_tag" / "tags.jsonl").read_bytes()
    bad = _write(
        tmp_path / "bad.jsonl",
        [
            {"clip_id": "c0", "tag": "sitar", "correct": True},
            {"clip_id": "nope_7", "tag": "piano", "correct": False},
            {"clip_id": "c1", "tag": "piano", "correct": True},
        ],
    )
    with pytest.raises(tag.TagError, match=r"(?s)'sitar'.*'nope_7'") as err:
        tag.run(run_dir=str(root), **P, calibration_file=str(bad))
    assert "bad.jsonl" in str(err.value)
    assert (root / "02_tag" / "tags.jsonl").read_bytes() == before
    with pytest.raises(tag.TagError, match="answer 1: `correct` must be yes/no"):
        tag.run(
            run_dir=str(root),
            **P,
            calibration_file=str(_write(tmp_path / "b.jsonl", [{"clip_id": "c0", "tag": "piano", "correct": "maybe"}])),
        )
    with pytest.raises(tag.TagError, match="no such file"):
        tag.run(run_dir=str(root), **P, calibration_file=str(tmp_path / "absent.csv"))
    # an answer for a clip that could not be tagged is reported, not dropped in silence
    with pytest.warns(UserWarning, match="bad/piano"):
        summary = tag.run(
            run_dir=str(root),
            **P,
            calibration_file=str(_write(tmp_path / "c.jsonl", [{"clip_id": "bad", "tag": "piano", "correct": True}])),
        )
    assert summary["calibration"]["unused"] == ["bad/piano"]


def test_answers_from_csv_and_yaml(tmp_path):
    (tmp_path / "a.csv").write_text("clip_id,tag,correct\nc0,piano,yes\nc1,piano,wrong\n")
    (tmp_path / "a.yaml").write_text("answers:\n  - {clip_id: c0, tag: piano, correct: true}\n")
    assert tag_calibration.read_answers(tmp_path / "a.csv") == [
        {"clip_id": "c0", "tag": "piano", "correct": True},
        {"clip_id": "c1", "tag": "piano", "correct": False},
    ]
    assert tag_calibration.read_answers(tmp_path / "a.yaml") == [{"clip_id": "c0", "tag": "piano", "correct": True}]
