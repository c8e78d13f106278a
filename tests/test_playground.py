"""06_generate playground: its callbacks driven without a browser (tiny SAO, offline)."""

from __future__ import annotations

import numpy as np
import pytest

from stablebeat_utils import generate as gen
from stablebeat_utils import playground as pg
from stablebeat_utils.runs import read_jsonl
from test_generate import make_lora  # the engine-format LoRA builder

FAST = dict(steps=2, seconds_total=3.0, seed=9, base_model="tiny:sao", device="cpu")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A run folder whose 05_train/export holds a LoRA (as 05_train's LoRA mode exports)."""
    run_dir = tmp_path_factory.mktemp("pg") / "run"
    make_lora(run_dir / "05_train" / "export" / "lora.safetensors")
    return run_dir


def test_build_prompt_reads_like_the_card():
    text = pg.build_prompt(
        "cloud trap", ["melancholic", "dark"], ["synth bells", "plucked bass", "deep sub"], 110, "G", "minor"
    )
    assert text == (
        "A melancholic and dark cloud trap beat at 110 BPM in G minor, using synth bells, plucked bass, and deep sub."
    )
    assert pg.build_prompt("emo rap", [], ["piano"], None, "", "minor") == "An emo rap beat, using piano."


def test_pickers_come_from_the_vocabularies(tmp_path):
    from stablebeat_utils import tag

    p = pg.build({**FAST, "run_dir": str(tmp_path)})
    vocab = tag.load_vocab()
    assert list(p.genre.options)[1:] == [e.tag for e in vocab["genres"]]
    assert list(p.instruments.options) == [e.tag for e in vocab["instruments"]]
    p.mode.value = "builder"
    p.genre.value = "trap"
    p.moods.value = ("dark",)
    p.instruments.value = ("808",)
    p.bpm.value = 140
    p.key.value = "F#"
    assert p.prompt_text() == "A dark trap beat at 140 BPM in F# minor, using 808."
    assert "140 BPM" in p.preview.value
    assert p.widget._repr_mimebundle_() is not None  # displays as a widget


def test_bad_input_is_a_message_not_a_traceback(tmp_path):
    p = pg.build({**FAST, "run_dir": str(tmp_path)})
    p.prompt.value = "   "
    assert p.generate() is None and "prompt is empty" in p.status.value
    p.prompt.value = "a trap beat"
    p.choice.value = "fine-tune"
    assert p.generate() is None
    assert "No fine-tuned model" in p.status.value and "05_train/export" in p.status.value
    p.choice.value = "base"
    p.duration.value = 100.0
    assert p.generate() is None
    assert "100 s is longer than this model can make" in p.status.value and "47.55 s" in p.status.value
    missing = pg.build({**FAST, "run_dir": str(tmp_path), "base_model": str(tmp_path / "no-such-model")})
    missing.choice.value = "base"
    assert missing.generate() is None
    assert "Could not generate" in missing.status.value and "no-such-model" in missing.status.value
    assert "Traceback" not in missing.status.value
    assert not missing.button.disabled and p.save_take() is None and "generate first" in p.saved.value


def test_ab_same_seed_players_spectrograms_and_saved_takes(lora_run):
    p = pg.build({**FAST, "run_dir": str(lora_run)})
    p.prompt.value = "a moody cloud trap beat at 100 BPM"
    p.choice.value = "A/B"
    p.strength.value = 1.0
    takes = p.generate()
    assert takes is not None, p.status.value
    assert [t.model for t in takes] == ["base", "finetune"] and {t.seed for t in takes} == {9}
    assert takes[1].lora_strength == 1.0 and "LoRA" in takes[1].source
    assert not np.allclose(takes[0].audio, takes[1].audio)
    assert "Done" in p.status.value and p.progress.value == p.progress.max == 4
    boxes = p.results.children
    assert len(boxes) == 2
    for box in boxes:
        _label, audio, image = box.children
        assert audio.value[:4] == b"RIFF" and image.value[:4] == b"\x89PNG"

    # the base take is exactly what the stage's own generation gives for that seed
    model, config = gen.load_model("tiny:sao", "cpu")
    ref = gen.generate_audio(
        model, config, ["a moody cloud trap beat at 100 BPM"], 9, gen.Settings(steps=2, seconds_total=3.0), "cpu"
    )[0][0]
    assert np.array_equal(ref, takes[0].audio)

    # strength 0: the "fine-tune" is the base model
    p.strength.value = 0.0
    p.choice.value = "fine-tune"
    zero = p.generate()
    assert np.array_equal(zero[0].audio, takes[0].audio)

    p.takes = takes
    rows = p.save_take()
    assert [r["model"] for r in rows] == ["base", "finetune"]
    saved = read_jsonl(lora_run / "06_generate" / "takes.jsonl")
    assert len(saved) == 2 and all((lora_run / r["path"]).is_file() for r in saved)
    assert all(r["path"].startswith("06_generate/takes/") for r in saved)
    p.save_take()  # saving the same takes again adds no rows
    assert len(read_jsonl(lora_run / "06_generate" / "takes.jsonl")) == 2


# -- the playground as a producer meets it (issue 30) --------------------------------------------


def _controls(p):
    return [p.mode, p.prompt, p.genre, p.moods, p.instruments, p.bpm, p.key, p.scale, p.steps, p.cfg, p.seed]


def test_every_control_has_a_tooltip_and_a_whole_label(tmp_path):
    p = pg.build({**FAST, "run_dir": str(tmp_path)})
    controls = _controls(p) + [p.duration, p.choice, p.strength, p.button, p.save_button]
    for w in controls:
        assert (getattr(w, "tooltip", None) or "").strip(), f"{type(w).__name__} {w.description!r}: no tooltip"
    assert len(p.choice.tooltips) == len(p.choice.options) and all(p.choice.tooltips)
    width = float(pg.LABEL_WIDTH.removesuffix("em"))
    for w in controls:
        # ~0.6 em a character in JupyterLab's 13 px UI font: the label fits its box, not "Seed (-1: ran…"
        assert len(w.description) * 0.6 <= width, w.description
        if w.description and hasattr(w, "style") and "description_width" in w.style.keys:
            assert w.style.description_width == pg.LABEL_WIDTH


def test_steps_range_fits_the_profile(tmp_path):
    demo = pg.build({**FAST, "steps": 8, "run_dir": str(tmp_path)})
    assert demo.steps.max == 50 and demo.steps.value == 8
    card = pg.build({**FAST, "steps": 200, "run_dir": str(tmp_path)})
    assert card.steps.max == 500 and card.steps.value == 200


def test_values_recorded_as_typed():
    assert pg.as_typed(3.5000000000000004, 0.5) == 3.5
    assert pg.as_typed(0.7000000000000001, 0.05) == 0.7
    assert pg.as_typed(12.0, 1.0) == 12.0


def test_cfg_is_recorded_as_typed(tmp_path):
    p = pg.build({**FAST, "run_dir": str(tmp_path)})
    p.cfg.value = 3.5000000000000004  # what the slider's step arithmetic sends
    assert p._settings().cfg_scale == 3.5 and repr(p._settings().as_dict()["cfg_scale"]) == "3.5"


def test_lora_strength_only_for_a_lora_fine_tune(tmp_path, lora_run):
    full = pg.build({**FAST, "run_dir": str(tmp_path)})  # no fine-tune (or a full one): no slider
    assert full.strength.layout.display == "none"
    shown = [full.steps, full.cfg, full.seed, full.duration, full.choice, full.button]
    assert all(w.layout.display != "none" for w in shown)  # hiding the slider hides nothing else
    lora = pg.build({**FAST, "run_dir": str(lora_run)})
    assert lora.strength.layout.display is None


def test_05b_focus_model_is_selectable(tmp_path):
    from test_generate import _export_finetune

    run_dir = tmp_path / "run"
    before = pg.build({**FAST, "run_dir": str(run_dir)})
    assert "05b focus" not in before.choice.options
    _export_finetune(run_dir / "05b_focus" / "export")
    p = pg.build({**FAST, "run_dir": str(run_dir)})
    assert list(p.choice.options) == ["base", "fine-tune", "A/B", "05b focus", "all three"]
    p.choice.value = "05b focus"
    takes = p.generate()
    assert takes is not None, p.status.value
    assert [t.model for t in takes] == ["focus"] and takes[0].source == str(run_dir / "05b_focus" / "export")
    assert "05b focus" in p.results.children[0].children[0].value
    base = pg.build({**FAST, "run_dir": str(run_dir)})
    base.choice.value = "base"
    assert not np.allclose(base.generate()[0].audio, takes[0].audio)  # another model, same seed


# -- from model to music (issue 29): loops, variations, blind listening -------------------------


def _beat_wav(path, bpm=140, seconds=8.0, sr=44100, mono=False, silent=False):
    import soundfile as sf

    from test_loops import click_beat

    audio, _ = click_beat(bpm, seconds, sr=sr)
    audio = audio[:1] if mono else audio
    sf.write(str(path), (0 * audio if silent else audio).T, sr)
    return path


def test_cut_loops_from_takes(tmp_path):
    from test_loops import click_beat

    p = pg.build({**FAST, "run_dir": str(tmp_path)})
    assert p.cut_loops() is None and "generate first" in p.loop_out.children[0].value
    audio, _ = click_beat(140, 12)
    p.takes = [pg.Take("base", audio, 44100, "A dark trap beat at 140 BPM in F minor.", 1, {}, "synthetic")]
    p.loop_bars.value = 2
    (row,) = p.cut_loops()
    assert row["path"].endswith("-loop-2bars-140bpm-Fm.wav") and (tmp_path / row["path"]).is_file()
    assert row["click_free"] and not row["tempo_flagged"]
    p.takes = [pg.Take("base", audio[:, :44100], 44100, "A trap beat at 140 BPM.", 1, {}, "synthetic")]
    (row,) = p.cut_loops()
    assert row["path"] is None and "too short for one bar" in p.loop_out.children[0].value


def test_variation_of_a_file_converted_or_refused(tmp_path):
    p = pg.build({**FAST, "run_dir": str(tmp_path)})
    p.choice.value = "base"
    p.prompt.value = "a dark trap beat at 140 BPM"
    for bad, why in [
        (_beat_wav(tmp_path / "silent.wav", silent=True), "silent"),
        (_beat_wav(tmp_path / "short.wav", seconds=0.5), "too short"),
        (tmp_path / "missing.wav", "not found"),
    ]:
        p.init_clip.value = str(bad)
        assert p.vary() is None
        assert why in p.status.value and bad.name in p.status.value and "Traceback" not in p.status.value
    p.init_clip.value = "auto"  # no 04_prompts in this run folder
    assert p.vary() is None and "04_prompts" in p.status.value
    mono = _beat_wav(tmp_path / "mono22k.wav", mono=True, sr=22050, seconds=4.0)
    p.init_clip.value = str(mono)
    p.var_strength.value = 0.2
    (take,) = p.vary()
    assert take.audio.shape[0] == 2 and take.sr == 44100 and take.info["strength"] == 0.2
    assert "made stereo" in p.status.value and "22050 → 44100" in p.status.value and "mono22k.wav" in p.status.value
    assert take.settings["variation_of"] == str(mono) and take.info["distance"] >= 0
    assert take.info["playback_distance"] >= 0 and take.info["vae_floor"] >= 0
    assert f"moment by moment: base {take.info['playback_distance']:.2f}" in p.status.value
    assert not p.loop_button.disabled and not p.save_button.disabled


def test_blind_rounds_recorded_across_restarts_and_reported(lora_run):
    import random

    from stablebeat_utils import evaluate_report

    blind_file = lora_run / "06_generate" / gen.BLIND_FILE
    blind_file.unlink(missing_ok=True)
    p = pg.build({**FAST, "run_dir": str(lora_run)})
    p.prompt.value = "a dark trap beat at 140 BPM"
    assert p.blind_choose("A") is None and "first" in p.blind_status.value
    p._rng = random.Random(3)
    labels = p.blind_round()
    assert labels == ["A", "B"], p.blind_status.value
    order = list(p._blind["order"])
    assert sorted(order) == ["base", "finetune"]
    shown = " ".join(box.children[0].value for box in p.blind_players.children)
    assert "base" not in shown and "fine" not in shown  # no names before the pick
    row = p.blind_choose("B")
    assert row["choice"] == order[1] and row["order"] == order and row["seed"] == 9
    assert f"B: {order[1]}" in p.blind_status.value.replace("&#x27;", "'") or order[1] in p.blind_status.value
    assert "1 blind round so far" in p.blind_status.value and "95 % interval" in p.blind_status.value
    assert "07's report will count them" in p.blind_status.value  # 07 has not run in this folder
    assert p.blind_choose("A") is None  # one pick per round
    # 07 ran since (its report, as 07 lays it out): the next pick rewrites its blind-listening section
    out = lora_run / "07_evaluate"
    out.mkdir(exist_ok=True)
    (out / "summary.md").write_text("# Summary\n\nmeans\n")
    (out / "report.md").write_text("# 07_evaluate\n\n## Summary\n\nmeans\n\n## Per prompt\n\ntables\n")
    # a new kernel: a new playground reads the same record, shows the tally, and adds to it
    q = pg.build({**FAST, "run_dir": str(lora_run)})
    assert "1 blind round so far" in q.blind_status.value
    assert q.blind_tally()["rounds"] == 1
    q.prompt.value = "a dark trap beat at 140 BPM"
    q.blind_round()
    q.blind_choose(q._blind["labels"][q._blind["order"].index("finetune")])
    assert "2 blind rounds so far" in q.blind_status.value and "07's report is updated" in q.blind_status.value
    report = (out / "report.md").read_text()
    assert "### Blind listening" in report and "2 blind rounds" in report
    assert report.index("### Blind listening") < report.index("## Per prompt") and "tables" in report
    assert "## Blind listening" in (out / "summary.md").read_text()
    rows = read_jsonl(blind_file)
    assert len(rows) == 2 and rows[1]["choice"] == "finetune"
    pref = evaluate_report.blind_preference(str(lora_run))
    ft = pref["models"]["finetune"]
    assert pref["rounds"] == 2 and ft["rounds"] == 2 and ft["chance"] == 0.5
    assert ft["chosen"] == (order[1] == "finetune") + 1
    assert ft["ci95"][0] < ft["rate"] < ft["ci95"][1] or ft["rate"] == 1.0
    assert "Blind listening" in evaluate_report.blind_md(pref)


def test_blind_round_needs_a_finetune(tmp_path):
    p = pg.build({**FAST, "run_dir": str(tmp_path)})
    assert p.blind_round() is None and "no fine-tune" in p.blind_status.value
    # a damaged record: the playground still opens, and says so
    (tmp_path / "06_generate").mkdir(exist_ok=True)
    (tmp_path / "06_generate" / gen.BLIND_FILE).write_text("not json\n")
    q = pg.build({**FAST, "run_dir": str(tmp_path)})
    assert "blind-test record cannot be read" in q.blind_status.value
