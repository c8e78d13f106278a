"""Tests for stablebeat_utils.focus (notebook 05b_focus): the second-stage fine-tune on chosen tags.

Real code paths: clips cut from the bundled demo beats (test_train.make_run), the tiny SAO model,
05's own training code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stablebeat_utils import focus, params, runs, train

from test_train import FAST, make_run  # noqa: E402

#: tags per clip of make_run(n_sources=3): boom bap and rimshot are rare, trap is everywhere
TAGS = {
    "s0_c0": {"instruments_tags": ["808", "rimshot"], "genres_tags": ["boom bap"], "moods_tags": ["dark"]},
    "s0_c1": {"instruments_tags": ["808"], "genres_tags": ["trap"], "moods_tags": ["dark"]},
    "s1_c0": {"instruments_tags": ["808", "piano"], "genres_tags": ["trap"], "moods_tags": ["calm"]},
    "s1_c1": {"instruments_tags": ["piano"], "genres_tags": ["trap", "boom bap"], "moods_tags": ["calm"]},
    "s2_c0": {"instruments_tags": ["808"], "genres_tags": ["trap"], "moods_tags": ["dark"]},
    "s2_c1": {"instruments_tags": ["rimshot", "piano"], "genres_tags": ["trap"], "moods_tags": ["dark"]},
}


def tagged_run(root: Path) -> Path:
    """make_run + the files 04_prompts writes that this stage reads (metadata.json, tag_space.json)."""
    run = make_run(root, n_sources=3)
    rows = runs.read_jsonl(run / "04_prompts" / "prompts.jsonl")
    meta = {Path(r["filepath"]).name: TAGS[r["clip_id"]] for r in rows}
    (run / "04_prompts" / "metadata.json").write_text(json.dumps(meta))
    under = [
        {"family": "genres", "tag": "boom bap", "clips": 2, "percent": 33.3, "never_chosen": False},
        {"family": "genres", "tag": "lo-fi", "clips": 0, "percent": 0.0, "never_chosen": True},
        {"family": "instruments", "tag": "rimshot", "clips": 2, "percent": 33.3, "never_chosen": False},
    ]
    (run / "04_prompts" / "tag_space.json").write_text(json.dumps({"under_represented": under}))
    return run


def fake_export(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_config.json").write_text(json.dumps(config))
    return folder


def tiny_config() -> dict:
    from stablebeat_utils import models

    path = models.ensure_tiny_models(["sao"])["sao"] / "model_config.json"
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------
# choosing the subset


def test_settings_derive_from_05s_and_the_first_stage_settings_are_05s_fields(tmp_path):
    """05b's lr, epochs, max_steps and batch_size are 05's settings (type, bounds, help) with 05b's own
    defaults; what 05b trains with is every field of 05's settings (no signature read)."""
    from stablebeat_utils import settings

    mine, first = settings.spec("05b_focus"), settings.spec("05_train")
    for name in ("lr", "epochs", "max_steps", "batch_size"):
        assert mine[name].type is first[name].type
        assert {k: v for k, v in mine[name].metadata.items() if k != "help"} == {
            k: v for k, v in first[name].metadata.items() if k != "help"
        }
    assert (mine["lr"].default, first["lr"].default) == (1e-5, 5e-5)
    values, source = focus.first_stage_settings(tmp_path / "run")
    assert list(values) == list(first) and source == "profile 'demo'"
    assert values == params.schema("05_train")
    assert params.canonical_stage("5b") == params.canonical_stage("focus") == "05b_focus"


def test_parse_tags_families_and_errors():
    assert focus.parse_tags("genres: Boom Bap, trap; instruments: 808") == [
        ("genres", "boom bap"),
        ("genres", "trap"),
        ("instruments", "808"),
    ]
    assert focus.parse_tags("boom bap, 808") == [(None, "boom bap"), (None, "808")]
    assert focus.parse_tags("") == []
    with pytest.raises(focus.FocusError, match="unknown tag family 'genre'"):
        focus.parse_tags("genre: trap")


def test_rare_tags_from_04_choose_the_clips_and_say_why(tmp_path):
    run = tagged_run(tmp_path)
    fake_export(run / "05_train" / "export", tiny_config())
    (run / "05_train" / "export" / "model.safetensors").write_bytes(b"")
    p = focus.plan(str(run), rare_percent=0.0, rebalance=False)
    assert p["chosen"] == [{"family": "genres", "tag": "boom bap"}, {"family": "instruments", "tag": "rimshot"}]
    assert [r["clip_id"] for r in p["subset"]] == ["s0_c0", "s1_c1", "s2_c1"]
    why = {r["clip_id"]: r["reason"] for r in p["subset"]}
    assert "boom bap (genres)" in why["s0_c0"] and "rimshot (instruments)" in why["s0_c0"]
    assert "rimshot" not in why["s1_c1"]
    assert [r["tag"] for r in p["never_chosen"]] == ["lo-fi"]  # flagged, but no clip to train on
    assert p["before"]["genres"] == {"trap": 5, "boom bap": 2}
    assert p["after"]["genres"] == {"boom bap": 2, "trap": 2}
    assert p["init_model"] == str(run / "05_train" / "export")


def test_rebalance_by_repeats_evens_out_the_chosen_tags():
    tags = {
        c: {"instruments": t["instruments_tags"], "moods": t["moods_tags"], "genres": t["genres_tags"]}
        for c, t in TAGS.items()
    }
    chosen = [("genres", "trap"), ("genres", "boom bap")]
    plain = focus.choose(tags, chosen, rebalance=False)
    assert focus.tag_counts(tags, plain.repeats | {k: 0 for k in tags if k not in plain.repeats})["genres"] == {
        "trap": 5,
        "boom bap": 2,
    }
    even = focus.choose(tags, chosen, rebalance=True, max_repeats=4)
    seen = focus.tag_counts({k: tags[k] for k in even.repeats}, even.repeats)["genres"]
    assert seen["boom bap"] == seen["trap"] or abs(seen["boom bap"] - seen["trap"]) <= 1, seen
    # boom bap's clip without trap (s0_c0) is the one repeated: it adds no trap
    assert even.repeats["s0_c0"] > 1 and even.repeats["s0_c1"] == 1
    assert "repeated" in next(r["reason"] for r in even.rows if r["clip_id"] == "s0_c0")
    capped = focus.choose(tags, chosen, rebalance=True, max_repeats=2)
    assert max(capped.repeats.values()) == 2


def test_named_tags_and_exclusions(tmp_path):
    run = tagged_run(tmp_path)
    init = fake_export(tmp_path / "published", tiny_config())
    p = focus.plan(str(run), init_model=str(init), focus_tags="piano", exclude_tags="moods: dark", rebalance=False)
    assert p["chosen"] == [{"family": "instruments", "tag": "piano"}]
    assert [r["clip_id"] for r in p["subset"]] == ["s1_c0", "s1_c1"] and p["excluded_clips"] == ["s2_c1"]


# ------------------------------------------------------------------------------------------
# bad input: a clear message before any model loads


def test_a_tag_no_clip_carries_is_named(tmp_path):
    run = tagged_run(tmp_path)
    with pytest.raises(focus.FocusError) as err:
        focus.plan(str(run), focus_tags="genres: boom bap, drill")
    assert "no clip of the run carries genres: 'drill'" in str(err.value) and "boom bap" in str(err.value)
    with pytest.raises(focus.FocusError, match="exclude_tags: no clip of the run carries 'harp'"):
        focus.plan(str(run), focus_tags="trap", exclude_tags="harp")


def test_a_subset_smaller_than_a_batch_is_refused(tmp_path):
    run = tagged_run(tmp_path)
    with pytest.raises(focus.FocusError) as err:
        focus.plan(str(run), focus_tags="boom bap", batch_size=4)
    assert "2 clip(s) (s0_c0, s1_c1), fewer than one batch (batch_size=4)" in str(err.value)


def test_an_export_of_another_architecture_is_refused(tmp_path, monkeypatch):
    run = tagged_run(tmp_path)
    cfg = tiny_config()
    cfg["model"]["diffusion"]["config"]["depth"] = cfg["model"]["diffusion"]["config"]["depth"] + 1
    other = fake_export(tmp_path / "other", cfg)
    from stablebeat_utils import models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the check")

    monkeypatch.setattr(models, "load_sao", no_load)
    with pytest.raises(focus.FocusError) as err:
        focus.run(str(run), init_model=str(other), focus_tags="trap")
    msg = str(err.value)
    assert "not the run's architecture" in msg and "diffusion.config.depth" in msg and str(other) in msg
    assert not (run / "05b_focus" / "checkpoints").exists()
    # the same architecture with another T5 path is the same network
    cfg = tiny_config()
    for c in cfg["model"]["conditioning"]["configs"]:
        c["config"]["model_path"] = "/somewhere/t5"
    focus.check_architecture(str(fake_export(tmp_path / "same", cfg)), "tiny:sao")


def test_no_first_stage_export_is_named(tmp_path):
    run = tagged_run(tmp_path)
    with pytest.raises(focus.FocusError, match="05_train/export: no exported model"):
        focus.plan(str(run), rare_percent=0.0)


# ------------------------------------------------------------------------------------------
# the second stage end to end on the tiny model


def _sha(folder: Path) -> dict:
    return {p.name: runs.file_sha256(p) for p in sorted(folder.iterdir())}


def test_second_stage_trains_from_the_export_into_its_own_folder(tmp_path):
    run = tagged_run(tmp_path)
    first = train.run(run_dir=str(run), max_steps=1, checkpoint_every=1, seed=3, **FAST)
    export1 = Path(first["export_dir"])
    before = _sha(export1)

    out = focus.run(run_dir=str(run), max_steps=1, lr=1e-5, rare_percent=0.0)
    stage = run / "05b_focus"
    assert out["chosen"] == ["genres:boom bap", "instruments:rimshot"] and out["clips"] == 3
    assert (stage / "export" / "model.safetensors").is_file() and (stage / "checkpoints" / "step=1.ckpt").is_file()
    assert out["train"]["base_model"] == str(export1) and out["train"]["steps"] == 1
    assert _sha(export1) == before  # the first stage's export is never overwritten
    rows = runs.read_jsonl(stage / "subset.jsonl")
    assert [r["clip_id"] for r in rows] == ["s0_c0", "s1_c1", "s2_c1"] and all(r["reason"] for r in rows)
    info = focus.read(run)
    assert info["first_stage"]["sample_seconds"] == FAST["sample_seconds"]  # 05's settings, inherited
    assert info["first_stage"]["seed"] == 3
    assert {p["tag"]: p["clips"] for p in info["prompts"]} == {
        "boom bap": ["s0_c0", "s1_c1"],
        "rimshot": ["s0_c0", "s2_c1"],
    }
    assert (stage / "tag_counts.png").stat().st_size > 1000
    plans = runs.read_json(run / "storage_plan.json")  # 05b plans its own folder, beside 05's entry
    assert {"05_train", "05b_focus"} <= set(plans)
    assert all("05b_focus" in n["folder"] for n in plans["05b_focus"]["needs"])
    assert train.run.__defaults__ is not None and runs.read_json(run / "05_train" / "stage.json")["status"] == "done"

    again = focus.run(run_dir=str(run), max_steps=1, lr=1e-5, rare_percent=0.0)
    assert again.get("skipped")
    more = focus.run(run_dir=str(run), max_steps=2, lr=1e-5, rare_percent=0.0)  # resumes from its own checkpoint
    assert more["train"]["resumed_from_step"] == 1 and more["train"]["steps"] == 2
    assert _sha(export1) == before

    with pytest.raises(focus.FocusError, match="checkpoints of another focus subset"):
        focus.run(run_dir=str(run), max_steps=3, focus_tags="piano", rare_percent=0.0)
    import os

    st = (export1 / "model.safetensors").stat()  # the first stage re-trained: its second stage is stale
    os.utime(export1 / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(focus.FocusError, match="another focus subset or init_model"):
        focus.run(run_dir=str(run), max_steps=2, lr=1e-5, rare_percent=0.0)

    # 06: a third model, "focus", and one training prompt per chosen tag, same seeds for all three
    from stablebeat_utils import generate

    g = generate.run(run_dir=str(run), n_prompts=1, steps=2, seconds_total=2.0)
    assert g["models"] == ["base", "finetune", "focus"]
    gens = generate.load_generations(str(run))
    tag_prompts = [p["prompt"] for p in info["prompts"]]
    prompts = list(dict.fromkeys(r["prompt"] for r in gens))
    assert (
        prompts[0] == generate.card_prompts()[0] and prompts[1] in tag_prompts and len(prompts) == 2
    )  # compare_prompts=1
    for pr in prompts:
        rows = [r for r in gens if r["prompt"] == pr]
        assert sorted(r["model"] for r in rows) == ["base", "finetune", "focus"]
        assert len({r["seed"] for r in rows}) == 1
    assert all(r["model_source"] == str(stage / "export") for r in gens if r["model"] == "focus")


def test_for_generation_waits_for_the_export_and_takes_the_rarest_tags_first(tmp_path):
    assert focus.for_generation(tmp_path) == (None, [])
    exp = fake_export(tmp_path / "05b_focus" / "export", tiny_config())
    (exp / "model.safetensors").write_bytes(b"")
    tags = [
        {"family": "genres", "tag": "a", "clips": ["x", "y", "z"], "prompt": "pa"},
        {"family": "genres", "tag": "b", "clips": ["x"], "prompt": "pb"},
        {"family": "moods", "tag": "c", "clips": ["y", "z"], "prompt": "pc"},
    ]
    (tmp_path / "05b_focus" / "focus.json").write_text(json.dumps({"prompts": tags, "compare_prompts": 2}))
    assert focus.for_generation(tmp_path) == (exp, ["pb", "pc"])
    (tmp_path / "05b_focus" / "focus.json").write_text(json.dumps({"prompts": tags, "compare_prompts": 0}))
    assert focus.for_generation(tmp_path)[1] == ["pb", "pc", "pa"]


def _tables(focus_centroid: float, focus_clap: float):
    import pandas as pd

    df = pd.DataFrame(
        [
            {"model": "finetune", "prompt": "p boom", "clap_score": 0.2, "spectral_centroid": 4000.0},
            {"model": "focus", "prompt": "p boom", "clap_score": focus_clap, "spectral_centroid": focus_centroid},
            {"model": "base", "prompt": "p boom", "clap_score": 0.9, "spectral_centroid": 1000.0},
        ]
    )
    return df


def test_tag_moves_says_whether_the_second_stage_moved_toward_the_tag(tmp_path):
    import pandas as pd

    run = tagged_run(tmp_path)
    (run / "05b_focus").mkdir()
    (run / "05b_focus" / "focus.json").write_text(
        json.dumps(
            {"prompts": [{"family": "genres", "tag": "boom bap", "clips": ["s0_c0", "s1_c1"], "prompt": "p boom"}]}
        )
    )
    segs = runs.read_jsonl(run / "01_segment" / "segments.jsonl")
    centroid = {"s0_c0": 900.0, "s1_c1": 1100.0}  # the tag's clips; the others are bright
    ref = pd.DataFrame(
        [{"path": str(run / s["path"]), "spectral_centroid": centroid.get(s["clip_id"], 6000.0)} for s in segs]
    )
    toward = focus.tag_moves(run, _tables(1200.0, 0.5), ref, ("spectral_centroid",))
    (r,) = toward
    assert r["clap_moved"] == "up" and r["metrics_closer"] == 1 and r["verdict"] == "moved toward the tag"
    assert r["spectral_centroid_dist_focus"] < r["spectral_centroid_dist_finetune"]
    away = focus.tag_moves(run, _tables(8000.0, 0.1), ref, ("spectral_centroid",))
    assert away[0]["clap_moved"] == "down" and away[0]["verdict"] == "moved away"
    md = focus.tag_moves_md(toward, ("spectral_centroid",))
    assert "boom bap (genres)" in md and "moved toward the tag" in md
    same = focus.tag_moves(run, _tables(4000.0 * (1 + 1e-5), 0.2 * (1 - 1e-5)), ref, ("spectral_centroid",))
    assert same[0]["clap_moved"] == "same" and same[0]["verdict"] == "no change"  # under 0.1 %: a tie


def test_a_diverging_second_stage_stops_naming_itself_and_exports_nothing(tmp_path):
    """05b trains with 05's code: lr=1e8 blows up within a few steps; the stage stops naming
    05b_focus and the step, exports nothing, and the first stage's export is left as it was."""
    run = tagged_run(tmp_path)
    first = train.run(run_dir=str(run), max_steps=1, checkpoint_every=1, **FAST)
    before = _sha(Path(first["export_dir"]))
    with pytest.raises(train.DivergedError, match=r"05b_focus: training diverged at step \d+: the loss is nan"):
        focus.run(run_dir=str(run), max_steps=8, lr=1e8, rare_percent=0.0)
    assert not (run / "05b_focus" / "export" / "model.safetensors").exists()
    assert _sha(Path(first["export_dir"])) == before
    out = focus.run(run_dir=str(run), max_steps=2, lr=1e-5, rare_percent=0.0)  # a sane lr: trains cleanly
    assert out["train"]["steps"] == 2 and (run / "05b_focus" / "export" / "model.safetensors").is_file()
