"""The model spec (issue 28): SAO 1.0's facts read from its model_config.json, a second architecture's too."""

import json

import pytest

from stablebeat_utils import generate, modelspec, storage, train
from stablebeat_utils.train import Clip


def test_sao_facts_come_from_its_config():
    s = modelspec.SAO
    assert (s.sample_rate, s.sample_size, s.downsampling_ratio, s.latent_channels) == (44100, 2097152, 2048, 64)
    assert s.window_seconds == pytest.approx(47.554, abs=1e-3) and s.window_frames == 1024
    assert s.latent_rate == pytest.approx(21.533, abs=1e-3)
    assert s.conditions("seconds_start") and s.diffusion_objective == "v" and "dpmpp-3m-sde" in s.samplers
    assert s.known.hub_id == "stabilityai/stable-audio-open-1.0"
    # the registry's counts are the config's (counted on the meta device)
    assert storage.param_counts(modelspec.bundled_config(modelspec.SAO_NAME)) == {
        "trained": s.known.trained_params,
        "vae": s.known.vae_params,
        "lora_per_rank": s.known.lora_params_per_rank,
    }
    assert storage.SAO_TRAINED_PARAMS == s.known.trained_params and generate.HUB_ID == s.known.hub_id


def test_the_small_model_is_known_by_its_architecture_not_its_name(tmp_path):
    cfg = modelspec.bundled_config("stable-audio-open-small")
    cfg["model"]["conditioning"]["configs"][0]["config"]["t5_model_name"] = str(tmp_path / "t5")  # a local T5
    s = modelspec.from_config(cfg)
    assert s.known is not None and s.known.name == "stable-audio-open-small"
    assert s.sample_size == 524288 and s.window_seconds == pytest.approx(11.889, abs=1e-3)
    assert not s.conditions("seconds_start") and s.conditions("seconds_total")
    assert s.diffusion_objective == "rf_denoiser" and s.samplers[0] == "pingpong"
    tiny = json.loads((modelspec.DATA / "tiny" / "sao_model_config.json").read_text())
    assert modelspec.from_config(tiny).known is None  # another architecture: facts from its config only


def test_conditioning_leaves_out_what_the_model_is_not_conditioned_on():
    clip = Clip("c0", "x.wav", "a trap beat", start=10.0, duration=20.0, source_duration=60.0)
    full = train.conditioning_for(clip, 2.0, 10.0, 10.0)
    assert full == {"prompt": "a trap beat", "seconds_start": 12.0, "seconds_total": 60.0, "clip_id": "c0"}
    small = modelspec.of("stable-audio-open-small")
    assert train.conditioning_for(clip, 2.0, 10.0, 10.0, small.conditioning_ids) == {
        "prompt": "a trap beat",
        "seconds_total": 60.0,
        "clip_id": "c0",
    }
    assert train.conditioning_for(clip, 2.0, 10.0, 10.0, modelspec.SAO.conditioning_ids) == full


def test_samplers_follow_the_models_objective():
    small = modelspec.bundled_config("stable-audio-open-small")
    sao = modelspec.bundled_config(modelspec.SAO_NAME)
    flow = generate.Settings(sampler_type="pingpong", sigma_min=0.01, sigma_max=1.0, cfg_scale=1.0, seconds_total=11.0)
    generate.check_settings(flow, small)
    with pytest.raises(generate.GenerateError, match="'pingpong' is not one of dpmpp-3m-sde"):
        generate.check_settings(flow, sao)
    with pytest.raises(generate.GenerateError, match="'dpmpp-3m-sde' is not one of pingpong"):
        generate.check_settings(generate.Settings(seconds_total=11.0), small)


def test_demos_during_training_send_only_the_models_conditioners():
    """05's demo conditioning follows the model spec: SAO small has no seconds_start (it was always sent)."""
    from stablebeat_utils import train_lightning as tl

    small = modelspec.of("stable-audio-open-small").conditioning_ids
    demo = tl.DemoCallback(4, ["a beat"], 4, 7.0, 2.0, "/tmp/unused", cond_ids=small)
    assert demo.conditioning("a beat") == {"prompt": "a beat", "seconds_total": 2.0}
    sao = tl.DemoCallback(4, ["a beat"], 4, 7.0, 2.0, "/tmp/unused", cond_ids=modelspec.SAO.conditioning_ids)
    assert sao.conditioning("a beat") == {"prompt": "a beat", "seconds_start": 0, "seconds_total": 2.0}


def test_the_report_names_the_base_model_by_the_spec():
    from stablebeat_utils import evaluate_report

    assert (
        evaluate_report.model_labels({"base": "stabilityai/stable-audio-open-1.0"})["base"] == "Stable Audio Open 1.0"
    )
    small = evaluate_report.model_labels({"base": "stabilityai/stable-audio-open-small"})["base"]
    assert small == "Stable Audio Open Small"
    assert evaluate_report.model_labels({"base": "me/my-model"})["base"] == "base model (me/my-model)"
    assert evaluate_report.model_labels({"base": "tiny:sao"})["base"].startswith("tiny stand-in")
