"""Issue 30: nothing cut silently, labels true, players that play where the notebook lies."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stablebeat_utils import evaluate_report, runs, show


def test_a_cut_table_says_how_many_more_and_where_all_are():
    rows = [{"clip_id": f"c{i}", "prompt": "a beat " * 30} for i in range(57)]
    t = show.table(rows, ["clip_id", "prompt"], max_rows=20, source="runs/demo/04_prompts/prompts.jsonl")
    html = t._repr_html_()
    assert len(t) == 20
    assert "20 of 57 rows shown, 37 more rows — all of them in runs/demo/04_prompts/prompts.jsonl" in html
    assert "a beat " * 29 in html and "..." not in html and "…" not in html  # cells whole
    assert "37 more rows" in repr(t)
    assert show.table(rows[:1], max_rows=0).caption() == "1 row"
    assert "1 more row —" in show.table(rows[:3], max_rows=2, source="x").caption()
    scroll = show.table(rows, max_rows=0, scroll=True)._repr_html_()
    assert "overflow:auto" in scroll and "57 rows" in scroll


def test_player_embeds_the_audio_and_links_the_file_from_the_notebook(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "demo"
    wav = run / "06_generate" / "audio" / "base 0.wav"
    wav.parent.mkdir(parents=True)
    sf.write(wav, 0.1 * np.sin(np.linspace(0, 2000, 44100))[:, None].repeat(2, 1), 44100)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # JupyterLab: the kernel works where the notebook lies
    monkeypatch.setattr(show, "NOTEBOOK_DIR", None)  # a lesson opened by hand (an earlier settle may have set it)
    html = show.embedded_audio(wav)._repr_html_()
    # the audio in the <audio> element's own src: JupyterLab keeps it untrusted (it strips <source src>)
    data = re.search(r'<audio [^>]*src="data:audio/mpeg;base64,([^"]+)"', html).group(1)
    assert len(base64.b64decode(data)) > 1000 and "<source" not in html
    assert '<a href="../runs/demo/06_generate/audio/base%200.wav"' in html
    monkeypatch.setattr(show, "NOTEBOOK_DIR", run / "notebooks")  # the runner's executed copy
    assert 'href="../06_generate/audio/base%200.wav"' in show.embedded_audio(wav)._repr_html_()
    link = show.embedded_audio(wav).link()
    assert (run / "notebooks" / link.replace("%20", " ")).resolve() == wav.resolve()


def test_run_dir_found_at_the_course_root(tmp_path):
    root = tmp_path / "course"
    (root / "notebooks").mkdir(parents=True)
    (root / "runs" / "demo").mkdir(parents=True)
    nb = root / "notebooks"
    assert runs.find_run_dir("runs/demo", cwd=nb, root=root) == str((root / "runs" / "demo").resolve())
    # 01 creates the run: as given; one beside the notebook wins; an absolute path is kept
    assert runs.find_run_dir("runs/demo", creates=True, cwd=nb, root=root) == "runs/demo"
    (nb / "runs" / "demo").mkdir(parents=True)
    assert runs.find_run_dir("runs/demo", cwd=nb, root=root) == "runs/demo"
    assert runs.find_run_dir(str(tmp_path / "x"), cwd=nb, root=root) == str(tmp_path / "x")
    assert runs.find_run_dir("runs/other", cwd=nb, root=root) == "runs/other"  # nowhere: as given


def test_settle_finds_the_demo_run_from_notebooks(tmp_path, monkeypatch, capsys):
    """A lesson opened from the repo's notebooks/ (JupyterLab) reads make demo's runs/demo."""
    from stablebeat_utils import lesson, params

    course = Path(runs.__file__).resolve().parent.parent
    had_runs = (course / "runs").exists()
    demo = course / "runs" / "h30-find-run-dir-test"
    demo.mkdir(parents=True, exist_ok=True)
    try:
        monkeypatch.chdir(course / "notebooks")
        ns = dict(params.schema("06_generate"), run_dir="runs/h30-find-run-dir-test")
        P = lesson.settle("06_generate", ns)
        assert P["run_dir"] == str(demo) and "not beside this notebook" in capsys.readouterr().out
    finally:
        import shutil

        shutil.rmtree(demo if had_runs else course / "runs")
        shutil.rmtree(course / "notebooks" / "runs" / demo.name, ignore_errors=True)  # where a failure wrote


@pytest.mark.parametrize(
    ("source", "base", "finetune"),
    [
        ("tiny:sao", "tiny stand-in (tiny:sao, trained on CPU)", "fine-tune of the tiny stand-in"),
        ("stabilityai/stable-audio-open-1.0", "Stable Audio Open 1.0", "fine-tune"),
        ("/models/sao-copy", "base model (/models/sao-copy)", "fine-tune"),
    ],
)
def test_a_tiny_stand_in_is_called_one(source, base, finetune):
    labels = evaluate_report.model_labels({"base": source, "finetune": "runs/demo/05_train/export"})
    assert (labels["base"], labels["finetune"]) == (base, finetune)
    with evaluate_report.labelled({"base": source}):
        assert evaluate_report.label("base") == base
    assert evaluate_report.label("base") == "Stable Audio Open 1.0"  # outside the block: the default


def test_relink_makes_glossary_links_resolve_from_the_executed_copy(tmp_path):
    import json

    from stablebeat_utils import runner

    course = tmp_path / "course"
    (course / "docs").mkdir(parents=True)
    (course / "docs" / "glossary.md").write_text("# Glossary\n")
    (course / "notebooks").mkdir()
    out = tmp_path / "elsewhere" / "runs" / "demo" / "notebooks" / "01.ipynb"
    out.parent.mkdir(parents=True)
    md = {"cell_type": "markdown", "metadata": {}, "source": ["see [the glossary](../docs/glossary.md#ema)."]}
    out.write_text(json.dumps({"cells": [md], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    runner.relink(out, course / "notebooks")
    text = json.loads(out.read_text())["cells"][0]["source"][0]
    target = re.search(r"\]\(([^)#]+)", text).group(1)
    assert (out.parent / target).resolve() == (course / "docs" / "glossary.md").resolve(), text
    assert os.sep + "docs" in str(out.parent / target)
