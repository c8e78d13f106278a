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
