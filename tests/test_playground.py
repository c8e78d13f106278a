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
