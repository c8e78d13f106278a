"""Tests for stablebeat_utils.train_watch: each demo scored as it is made (07's metrics as a distance to
the training clips, defect detectors), a row for every demo, warnings naming what to try."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from stablebeat_utils import audio, audio_checks as ac, evaluate_metrics as em, train_watch as tw

SR = 44100
DEMO = Path(__file__).resolve().parents[1] / "stablebeat_utils" / "data" / "demo_audio"


def _clip(tmp_path, i=0, start=20.0) -> Path:
    a, _ = audio.load(sorted(DEMO.glob("*.ogg"))[i], sr=SR)
    path = tmp_path / f"clip{i}.wav"
    audio.write_wav(path, audio.to_stereo(a)[:, int(start * SR) : int((start + 3) * SR)], SR, subtype="FLOAT")
    return path


def test_distance_is_07s_log_distance_to_the_training_medians(tmp_path):
    paths = [_clip(tmp_path, i) for i in range(3)]
    med = tw.reference_medians(paths, SR)
    truth = {m: [] for m in em.SIGNAL_METRICS}
    for q in paths:
        for m, v in em.signal_metrics(audio.load(q, sr=SR)[0], SR).items():
            truth[m].append(math.log(v))
    assert med == {m: float(np.median(v)) for m, v in truth.items()}
    y = audio.load(paths[1], sr=SR)[0]
    row = tw.score_demo(y, SR, med)
    assert row["status"] == "scored" and row["fired"] == ""
    own = em.signal_metrics(y, SR)
    for m in em.SIGNAL_METRICS:
        assert row[f"{m}_dist"] == abs(math.log(own[m]) - med[m])
    assert row["distance"] == np.mean([row[f"{m}_dist"] for m in em.SIGNAL_METRICS])
    # a training clip is closer to the training clips than a tone is
    t = np.arange(2 * SR) / SR
    assert tw.score_demo(np.stack([0.5 * np.sin(2 * np.pi * 440 * t)] * 2), SR, med)["distance"] > row["distance"]


def test_a_demo_that_cannot_be_scored_gets_a_row_saying_why(tmp_path, capsys):
    watch = tw.DemoWatch(tmp_path / "05_train", [_clip(tmp_path)])
    watch.add(4, "step00000004_0.wav", "a trap beat", np.zeros((2, SR)), SR)
    nan = np.full((2, SR), np.nan)
    watch.add(4, "step00000004_1.wav", "a lofi beat", nan, SR)
    assert watch.end_step(4) == math.inf
    rows = tw.read_scores(tmp_path / "05_train" / tw.CSV_NAME)
    assert [r["status"] for r in rows] == ["not scored: silent", "not scored: non-finite samples"]
    assert rows[0]["fired"] == "silence" and "non_finite" in rows[1]["fired"]
    err = capsys.readouterr().err
    assert "step00000004_0.wav ('a trap beat') could not be scored: silent" in err
    assert "non_finite in step00000004_1.wav — the weights diverged: lower lr" in err
    assert len(tw.warnings_of(rows)) == 2


def test_clicks_collapse_and_growing_distance_warn(tmp_path, capsys):
    clip = _clip(tmp_path)
    watch = tw.DemoWatch(tmp_path / "05_train", [clip])
    y = audio.load(clip, sr=SR)[0][:, : 2 * SR]
    clicked = y.copy()
    clicked[:, SR // 4 :: SR // 8] += 0.3  # 8 clicks per second
    watch.add(2, "a.wav", "prompt one", clicked, SR)
    other = audio.load(_clip(tmp_path, 1), sr=SR)[0][:, : 2 * SR]
    watch.add(2, "b.wav", "prompt two", other, SR)
    assert watch.end_step(2) == math.inf
    assert "clicks in a.wav" in capsys.readouterr().err
    rng = np.random.default_rng(0)
    watch.add(4, "c.wav", "prompt one", 0.3 * rng.standard_normal((2, 2 * SR)), SR)
    watch.add(4, "d.wav", "prompt two", 0.3 * rng.standard_normal((2, 2 * SR)), SR)
    watch.end_step(4)
    assert "collapse in c.wav — every prompt sounds alike" in capsys.readouterr().err
    # the distance to the training clips grows over 3 successive demo steps: the beat drowning in noise
    noise = 0.2 * rng.standard_normal((2, 2 * SR))
    for k, step in enumerate((6, 8, 10, 12)):
        watch.add(step, f"s{step}.wav", "prompt one", y + (k + 1) * 0.5 * noise, SR)
        watch.end_step(step)
    err = capsys.readouterr().err
    assert "grew over the last 3 demos" in err and "export_from='best'" in err
    rows = tw.read_scores(tmp_path / "05_train" / tw.CSV_NAME)
    assert [r["step"] for r in rows] == [2, 2, 4, 4, 6, 8, 10, 12]
    assert rows[2]["collapse"] < ac.COLLAPSE_DB and rows[0]["collapse"] > ac.COLLAPSE_DB
    # a resumed session keeps the earlier rows
    again = tw.DemoWatch(tmp_path / "05_train", [clip])
    again.add(14, "e.wav", "prompt one", y, SR)
    assert math.isfinite(again.end_step(14))
    assert len(tw.read_scores(tmp_path / "05_train" / tw.CSV_NAME)) == 9


def test_the_watch_figure_draws_what_the_scores_say():
    from stablebeat_utils import plots

    curves = [{"step": s, "loss": 1.0 / s, "lr": 1e-5} for s in range(1, 9)]
    val = [{"step": 4, "val_loss": 0.5}, {"step": 8, "val_loss": 0.6}]
    base = dict.fromkeys(tw.DETECTORS, 0.0) | {"silence": -20.0, "collapse": None}
    scores = [
        {**base, "step": 4, "file": "a", "prompt": "p1", "status": "scored", "distance": 0.4, "fired": ""},
        {
            **base,
            "step": 8,
            "file": "b",
            "prompt": "p1",
            "status": "scored",
            "distance": 0.9,
            "fired": "clicks",
            "clicks": 3.0,
        },
        {
            **base,
            "step": 8,
            "file": "c",
            "prompt": "p2",
            "status": "not scored: silent",
            "distance": None,
            "fired": "silence",
            "silence": -math.inf,
        },
    ]
    thresholds = {"non_finite": 0.0, "silence": ac.SILENCE_DBFS, "clicks": ac.CLICK_RATE}
    fig = plots.plot_training_watch(curves, val, scores, thresholds, exported_step=4)
    ax1, ax2, ax3 = fig.axes
    assert {ln.get_label() for ln in ax1.lines} == {"training loss", "held-out loss"}
    labels = {ln.get_label() for ln in ax2.lines}
    assert {"detector fired", "exported (step 4)", "mean"} <= labels
    fired = next(ln for ln in ax2.lines if ln.get_label() == "detector fired")
    assert list(fired.get_xdata()) == [8] and list(fired.get_ydata()) == [0.9]
    clicks = next(ln for ln in ax3.lines if ln.get_label() == "clicks")
    assert list(clicks.get_ydata())[1] == 3.0 / ac.CLICK_RATE  # over the threshold line at 1
    silence = next(ln for ln in ax3.lines if ln.get_label() == "silence")
    assert list(silence.get_ydata())[2] > 1 > list(silence.get_ydata())[0]
