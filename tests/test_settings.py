"""Every stage's settings defined once (settings.py): validation, profiles as overlays, run(settings), stages."""

import dataclasses
import subprocess
import sys

import pytest

from stablebeat_utils import STAGES, params, settings, stage
from stablebeat_utils.params import ParameterError


def _bad_values():
    """One value per (stage, setting) that its choices or bounds refuse, with what the message must say."""
    out = []
    for st in STAGES:
        for name, f in settings.spec(st).items():
            m = f.metadata
            if m["choices"]:
                bad = 3 if f.type is int else "nope"
            elif "ge" in m:
                bad = m["ge"] - (1 if f.type is int else 0.5)
            elif "gt" in m:
                bad = f.type(m["gt"])
            elif "le" in m:
                bad = m["le"] + 1
            elif "lt" in m:
                bad = f.type(m["lt"])
            else:
                continue
            out.append(pytest.param(st, name, bad, settings.allowed(f), id=f"{st}.{name}"))
    return out


@pytest.mark.parametrize("st, name, bad, allowed", _bad_values())
def test_a_value_outside_a_settings_choices_or_bounds_is_refused_naming_it(st, name, bad, allowed):
    """The runner and the notebooks (params.resolve / settled_values) refuse it before any work."""
    with pytest.raises(ParameterError) as err:
        params.resolve(st, "demo", overrides={name: bad})
    assert name in str(err.value) and allowed in str(err.value) and repr(bad) in str(err.value)


def test_every_default_and_every_profile_is_allowed():
    for st in STAGES:
        settings.check(st, settings.defaults(st), AssertionError)
        for profile in params.list_profiles():
            settings.check(st, params.resolve(st, profile), AssertionError)


@pytest.mark.parametrize("profile", params.list_profiles())
def test_a_profile_lists_only_what_differs_from_the_defaults(profile):
    overlay = params.load_profile(profile)
    for st in STAGES:
        same = {k: v for k, v in params.profile_values(overlay, st).items() if v == settings.defaults(st)[k]}
        assert not same, f"{profile}.yaml repeats {st}'s defaults: {same}"


@pytest.mark.parametrize(
    "text, named",
    [
        ("stages:\n  05_train:\n    lora_rnak: 4\n", "lora_rnak"),
        ("wrokers: 2\n", "wrokers"),
        ("stages:\n  09_mix:\n    workers: 2\n", "09_mix"),
    ],
)
def test_a_profile_key_no_stage_has_is_an_error_naming_it(tmp_path, text, named):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ParameterError, match=named):
        params.resolve("05_train", str(path))


def test_a_stage_refuses_a_bad_setting_with_its_own_error_before_any_work(tmp_path):
    from stablebeat_utils import evaluate, segment, tempo_key, train

    run = tmp_path / "run"
    with pytest.raises(train.TrainError, match=r"05_train: lora_rank must be >= 1, got 0"):
        train.run(run_dir=str(run), lora_rank=0)
    with pytest.raises(segment.SegmentError, match="clip_format 'mp3' is unknown: choose one of wav, flac"):
        segment.run(str(run), clip_format="mp3")
    with pytest.raises(tempo_key.TempoKeyError, match="key_profile 'nope' is unknown: choose one of edma"):
        tempo_key.run(run_dir=str(run), key_profile="nope")
    with pytest.raises(evaluate.EvaluateError, match="workers must be >= 1"):
        evaluate.run(run_dir=str(run), workers=0)
    with pytest.raises(ParameterError, match="'lora_rank' must be int"):
        train.run(run_dir=str(run), lora_rank="16")
    with pytest.raises(ParameterError, match="05_train has no setting.*lora_rnak"):
        train.run(run_dir=str(run), lora_rnak=16)
    assert not run.exists()


def test_run_takes_a_settings_object_or_names_and_the_profile_fills_the_rest(tmp_path):
    from stablebeat_utils import prompts

    s = settings.PromptsSettings(run_dir=str(tmp_path / "run"), batch_size=0)
    with pytest.raises(prompts.PromptsError, match="batch_size must be >= 1, got 0"):
        prompts.run(s)
    built = stage.settings_for("05_train", settings.TrainSettings(), {"max_steps": 3})
    assert (built.max_steps, built.base_model) == (3, settings.SAO_1)  # the card's, with one override
    demo = stage.settings_for("05_train", None, {"max_steps": 3})
    assert (demo.max_steps, demo.base_model, demo.batch_size) == (3, "tiny:sao", 2)  # the demo profile's
    a100 = stage.settings_for("05_train", None, {"profile": "colab_a100"})
    assert dataclasses.asdict(a100) == params.resolve("05_train", "colab_a100")


def test_stages_lists_every_setting_with_its_type_default_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "stablebeat_utils", "stages"], capture_output=True, text=True, check=True
    ).stdout
    for st in STAGES:
        for name, f in settings.spec(st).items():
            assert f"      {name} = {f.default!r}  ({f.type.__name__}" in out and f.metadata["help"] in out
    assert "lora_rank = 16  (int  >= 1)" in out and "[demo: 'tiny:sao']" in out
