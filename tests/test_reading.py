"""The reading test (tests/reading.py) finds each thing a producer trips on, and passes what the
lessons now show (show.Table, show.Player)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import soundfile as sf

import reading
from stablebeat_utils import show

PROMPT = "A dark and melancholic cloud trap beat at 110 BPM in G minor, using synth bells, plucked bass, and deep sub."


def _run(tmp_path, tiny=True):
    run = tmp_path / "run"
    (run / "04_prompts").mkdir(parents=True)
    (run / "04_prompts" / "prompts.jsonl").write_text(json.dumps({"clip_id": "c0", "prompt": PROMPT}) + "\n")
    (run / "06_generate").mkdir()
    src = "tiny:sao" if tiny else "stabilityai/stable-audio-open-1.0"
    (run / "06_generate" / "generations.jsonl").write_text(json.dumps({"model": "base", "model_source": src}) + "\n")
    wav = run / "06_generate" / "a.wav"
    sf.write(wav, 0.1 * np.ones((4410, 2)), 44100)
    (run / "notebooks").mkdir()
    return run, wav


def _nb(run, *outputs, name="06_generate.ipynb"):
    cells = [{"cell_type": "code", "metadata": {}, "source": "", "execution_count": 1, "outputs": list(outputs)}]
    path = run / "notebooks" / name
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def _html(text):
    return {"output_type": "display_data", "metadata": {}, "data": {"text/html": text, "text/plain": "<…>"}}


def test_what_the_lessons_show_now_reads_clean(tmp_path, monkeypatch):
    run, wav = _run(tmp_path)
    monkeypatch.setattr(show, "NOTEBOOK_DIR", run / "notebooks")
    table = show.table([{"prompt": PROMPT}] * 30, max_rows=20, source="04_prompts/prompts.jsonl")._repr_html_()
    player = show.embedded_audio(wav)._repr_html_()
    _nb(run, _html(table), _html(player), _html("<b>tiny stand-in (tiny:sao, random weights)</b>"))
    assert reading.read_run(run) == []


def test_each_trip_is_found(tmp_path):
    run, wav = _run(tmp_path)
    with pd.option_context("display.max_colwidth", 50):
        pandas_cut = pd.DataFrame([{"prompt": PROMPT}])._repr_html_()  # pandas' own: cut, no count
    ipython = '<audio controls><source src="data:audio/mpeg;base64,' + "QUFB" * 100 + '"></audio>'  # IPython's
    frozen = {"output_type": "display_data", "metadata": {}, "data": {"text/plain": "segment:   0%|          | 0/11"}}
    _nb(run, _html(pandas_cut), _html(ipython), _html("<td>Stable Audio Open 1.0</td>"), frozen)
    found = "\n".join(reading.read_run(run))
    assert "a prompt cut with an ellipsis" in found
    assert "a table cell cut with an ellipsis" in found
    assert "a table without its count of rows" in found
    assert "no src on the <audio> element" in found
    assert "'Stable Audio Open 1.0' beside a tiny stand-in" in found
    assert "a progress bar frozen at 0 %" in found


def test_a_link_that_does_not_resolve_from_the_notebook_is_a_player_without_audio(tmp_path, monkeypatch):
    run, wav = _run(tmp_path)
    monkeypatch.setattr(show, "NOTEBOOK_DIR", run)  # links made for another folder than where it lies
    _nb(run, _html(show.embedded_audio(wav)._repr_html_()))
    assert any("its link does not resolve from the notebook" in f for f in reading.read_run(run))


def test_sao_label_is_fine_with_the_real_model(tmp_path):
    run, _ = _run(tmp_path, tiny=False)
    _nb(run, _html("<p>Stable Audio Open 1.0</p>"))
    assert reading.read_run(run) == []


def _learning(run, closer, frechet):
    rec = {
        "metrics": {m: {} for m in ("spectral_centroid", "spectral_flatness", "hp_ratio", "transient_sharpness")},
        "closer": closer,
        "frechet": {"base": frechet[0], "finetune": frechet[1]},
        "shows_learning": len(closer) >= 3 and frechet[1] < frechet[0],
    }
    (run / "07_evaluate").mkdir(exist_ok=True)
    (run / "07_evaluate" / "summary.json").write_text(json.dumps({"learning": rec}))


def test_a_demo_whose_fine_tune_did_not_learn_is_a_finding(tmp_path):
    run, _ = _run(tmp_path)
    _nb(run)
    _learning(run, ["spectral_centroid", "hp_ratio", "transient_sharpness"], (0.041, 0.046))
    (found,) = reading.read_run(run)
    assert "did not move toward the demo beats: 3 of 4" in found and "0.041 -> 0.046" in found
    _learning(run, ["spectral_centroid", "hp_ratio", "transient_sharpness"], (0.041, 0.035))
    assert reading.read_run(run) == []
    real, _ = _run(tmp_path / "real", tiny=False)  # a producer's own run: their result, not a lesson's flaw
    _nb(real)
    _learning(real, [], (0.041, 0.046))
    assert reading.read_run(real) == []


def _variations(run, means):
    """06's variations.jsonl: per strength, rows whose four distances from the playback average ``means[k]``."""
    metrics = ("spectral_centroid", "spectral_flatness", "hp_ratio", "transient_sharpness")
    rows = [
        {"key": f"{which}-{k:g}-42", "model": which, "strength": k, "vae_floor": 1.9,
         "playback_metrics": {m: v for m in metrics}, **{m: 2.0 for m in metrics}}
        for which in ("base", "finetune")
        for k, v in means.items()
    ]  # fmt: skip
    (run / "06_generate").mkdir(exist_ok=True)
    (run / "06_generate" / "variations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_demo_whose_variations_forget_the_strength_is_a_finding(tmp_path):
    run, _ = _run(tmp_path)
    _nb(run)
    _variations(run, {0.1: 0.8, 0.9: 0.6})
    found = reading.read_run(run)
    assert len(found) == 2 and "the demo's base variations do not stay closer" in found[0]
    assert "at strength 0.1 (0.80) than at 0.9 (0.60)" in found[0] and "finetune" in found[1]
    _variations(run, {0.1: 0.3, 0.9: 0.6})
    assert reading.read_run(run) == []
    real, _ = _run(tmp_path / "real", tiny=False)
    _nb(real)
    _variations(real, {0.1: 0.8, 0.9: 0.6})
    assert reading.read_run(real) == []
