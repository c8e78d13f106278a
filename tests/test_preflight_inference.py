"""stablebeat_utils.preflight_inference: 02/04/06's GPU-memory estimates, their sources, the STOPs.

GPUs are simulated by replacing the free-memory function (``gpu_free``, ``torch.cuda.mem_get_info``
on CUDA) with the free/total bytes of a Colab T4, L4 and A100 40 GB; every STOP must name a
setting that, fed back into the estimate, fits that GPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from stablebeat_utils import generate, models, preflight_inference as pi, prompts, tag
from stablebeat_utils.preflight import GB, HEADROOM, GPUMemoryError

sys.path.insert(0, str(Path(__file__).parent))

# (free, total) bytes as torch.cuda.mem_get_info reports them after the CUDA context is made
T4 = (int(15.0 * GB), int(15.8 * GB))
L4 = (int(22.0 * GB), int(23.7 * GB))
A100_40 = (int(39.4 * GB), int(42.4 * GB))
LLAMA_8B, LLAMA_3B = "meta-llama/Llama-3.1-8B-Instruct", pi.DEFAULT_LLM
CLAP, SAO = "laion/larger_clap_music", "stabilityai/stable-audio-open-1.0"


def gpu(monkeypatch, free):
    monkeypatch.setattr(pi, "gpu_free", lambda device: free if str(device).startswith("cuda") else None)
    return free[0] / GB * HEADROOM


def stop(call) -> str:
    with pytest.raises(GPUMemoryError) as err:
        call()
    msg = str(err.value)
    assert msg.startswith("STOP — ") and "Settings that fit: " in msg
    return msg


# --------------------------------------------------------------------------------------------
# where the figures come from


def test_clap_parameters_are_computed_from_its_config():
    """laion/larger_clap_music's published config.json, built on the meta device."""
    import torch
    from transformers import ClapConfig, ClapModel

    from stablebeat_utils import models

    config = ClapConfig(audio_config=models.LARGER_CLAP_AUDIO, text_config=models.LARGER_CLAP_TEXT, projection_dim=512)
    with torch.device("meta"):
        model = ClapModel(config)
    assert sum(p.numel() for p in model.parameters()) == pi.CLAP_PARAMS[CLAP] == 193_913_882


def test_llm_parameters_match_the_published_totals(tmp_path):
    for name, arch in pi.LLMS.items():
        assert arch.params() == pytest.approx(pi.PUBLISHED_LLM_PARAMS[name], rel=0.006), name
    assert pi.LLMS[LLAMA_3B].params() == 3_212_749_824  # also counted on the H100's random-weight build
    assert pi.LLMS[LLAMA_8B].params() == 8_030_261_248
    # a local model folder: the same numbers read from its config.json
    a = pi.LLMS[LLAMA_8B]
    cfg = dict(
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        vocab_size=a.vocab,
        tie_word_embeddings=False,
        model_type="llama",
    )
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert pi.llm_arch(str(tmp_path)) == a
    assert pi.llm_arch("tiny:llm") is None and pi.llm_arch("someone/unknown-7b") is None


def test_estimates_reproduce_the_measurements():
    # 04: the measured H100 peaks (weights included), and the formula close to them: never more
    # than 1 % below a measured peak (the headroom covers that), at most 5 % above it
    assert len(pi.MEASURED_LLM) == 11
    for (model, batch, tokens), peak in pi.MEASURED_LLM.items():
        est = pi.estimate_prompts(model, "", batch, 96, t5_model="", prompt_tokens=tokens)
        assert (est.gb, est.basis) == (pytest.approx(peak, abs=0.01), "measured")
        formula = pi.estimate_prompts(model, "", batch, 96, "", prompt_tokens=tokens, use_measurements=False)
        assert formula.basis == "estimated" and 0.99 * peak <= formula.gb <= 1.05 * peak, (model, batch, tokens)
    # 02: likewise for the CLAP audio tower
    for batch, peak in pi.MEASURED_CLAP.items():
        assert pi.estimate_tag(CLAP, batch).gb == pytest.approx(peak + pi.CLAP_TEXT_GB, abs=0.01)
        assert pi.estimate_tag(CLAP, batch + 1).gb == pytest.approx(peak + pi.CLAP_TEXT_GB, rel=0.08)
    assert pi.estimate_tag(CLAP, 33).basis == "estimated" and pi.estimate_tag("someone/clap", 8) is None


def test_what_each_setting_costs():
    a = pi.LLMS[LLAMA_8B]
    assert pi.llm_weight_gb(a) == pytest.approx(16.06, abs=0.01)
    assert pi.llm_weight_gb(a, "8bit") == pytest.approx(9.08, abs=0.01)  # embeddings + lm_head stay 16-bit
    assert pi.llm_weight_gb(a, "4bit") == pytest.approx(6.03, abs=0.01)
    assert pi.llm_weight_gb(pi.LLMS[LLAMA_3B], "4bit") == pytest.approx(2.37, abs=0.01)  # the profile's "~2.5 GB"
    # KV cache: 2 x 32 layers x 8 KV heads x 128 x 2 B per token
    assert a.kv_bytes_per_token() == 131_072
    # 06: the 47-s decode is the peak and grows with the batch; fp32 doubles weights and decode
    one, four = pi.estimate_generate(1, 47.0), pi.estimate_generate(4, 47.0)
    assert pi.decode_frames(47.0) == 1024 and pi.decode_frames(10.0) == 248
    assert any(k.startswith("VAE decode") for k in four.parts)
    assert four.gb - one.gb == pytest.approx(3 * 1024 * pi.DECODE_BYTES_PER_FRAME_FP32 / 2 * 1.25 / GB, abs=0.01)
    assert pi.estimate_generate(1, 47.0, "float32").gb > 1.9 * one.gb
    # a short clip in 16-bit: loading the fp32 model before the cast is the peak
    assert list(pi.estimate_generate(1, 5.0).parts) == ["loading: the fp32 DiT + VAE before the cast"]


# --------------------------------------------------------------------------------------------
# the STOPs on simulated GPUs


def test_prompts_8b_in_16_bit_stops_on_a_t4_and_names_what_fits(monkeypatch):
    budget = gpu(monkeypatch, T4)
    msg = stop(lambda: pi.check_prompts("cuda", LLAMA_8B, "", 16, 96, "t5-base"))
    assert "04_prompts needs ~18.2 GB of GPU memory (measured)" in msg and "15.0 GB free of 15.8 GB" in msg
    assert "quantization='4bit' (bitsandbytes)" in msg and f"llm_model={LLAMA_3B!r}" in msg
    fits = pi.prompts_alternatives(LLAMA_8B, "", 16, 96, "t5-base", budget)
    assert {"quantization": "4bit"} in fits and {"llm_model": LLAMA_3B, "quantization": ""} in fits
    for f in fits:  # every named setting, fed back, fits the T4
        s = {"llm_model": LLAMA_8B, "quantization": "", "batch_size": 16} | f
        assert pi.estimate_prompts(s["llm_model"], s["quantization"], s["batch_size"], 96, "t5-base").gb <= budget
    # the colab_lora profile's own setting (3B, 4-bit, batch 8) fits the T4
    assert pi.check_prompts("cuda", LLAMA_3B, "4bit", 8, 96, "t5-base").gb < 5


def test_prompts_on_an_l4_and_an_a100(monkeypatch):
    budget = gpu(monkeypatch, L4)
    assert pi.check_prompts("cuda", LLAMA_8B, "", 16, 96, "t5-base").gb < budget  # 8B bf16 fits 24 GB
    msg = stop(lambda: pi.check_prompts("cuda", LLAMA_8B, "", 128, 96, "t5-base"))
    fits = pi.prompts_alternatives(LLAMA_8B, "", 128, 96, "t5-base", budget)
    assert fits[0] == {"batch_size": 32} and "batch_size=32;" in msg
    for f in fits:
        s = {"llm_model": LLAMA_8B, "quantization": "", "batch_size": 128} | f
        assert pi.estimate_prompts(s["llm_model"], s["quantization"], s["batch_size"], 96, "t5-base").gb <= budget
    gpu(monkeypatch, A100_40)
    assert pi.check_prompts("cuda", LLAMA_3B, "", 16, 96, "t5-base").basis == "measured"  # colab_a100


def test_tag_stops_naming_a_batch_that_fits(monkeypatch):
    for free, batch in ((T4, 1024), (L4, 1024), (A100_40, 4096)):
        budget = gpu(monkeypatch, free)
        msg = stop(lambda: pi.check_tag("cuda", CLAP, batch))
        (fit,) = pi.tag_alternatives(CLAP, batch, "transformers", budget)
        assert f"Settings that fit: batch_size={fit['batch_size']}." in msg
        assert pi.estimate_tag(CLAP, fit["batch_size"]).gb <= budget < pi.estimate_tag(CLAP, batch).gb
    assert pi.check_tag("cuda", CLAP, 32).gb < 2  # colab_a100's batch 32 is far from any limit


def test_generate_stops_naming_a_batch_that_fits(monkeypatch):
    for free, batch, named in ((T4, 4, 3), (L4, 8, 5), (A100_40, 16, 10)):
        budget = gpu(monkeypatch, free)
        msg = stop(lambda: pi.check_generate("cuda", "auto", SAO, batch, 47.0))
        assert f"Settings that fit: batch_size={named}." in msg and "VAE decode" in msg
        assert pi.estimate_generate(named, 47.0).gb <= budget < pi.estimate_generate(named + 1, 47.0).gb
    budget = gpu(monkeypatch, T4)
    msg = stop(lambda: pi.check_generate("cuda", "float32", SAO, 2, 47.0))
    assert "batch_size=1; dtype='auto' (bf16/fp16), batch_size=2." in msg
    assert pi.estimate_generate(2, 47.0).gb <= budget and pi.estimate_generate(1, 47.0, "float32").gb <= budget
    # nothing to generate, a tiny model, or another architecture: not checked
    assert pi.check_generate("cuda", "auto", SAO, 0, 47.0) is None
    assert pi.check_generate("cuda", "auto", "tiny:sao", 64, 47.0) is None


def test_nothing_is_checked_off_cuda(monkeypatch):
    assert pi.check_generate("cpu", "auto", SAO, 64, 47.0) is None  # the real gpu_free: not CUDA
    assert pi.check_tag("cpu", CLAP, 100_000) is None
    assert pi.check_prompts("cpu", LLAMA_8B, "", 512) is None
    gpu(monkeypatch, T4)
    assert pi.check_prompts("cuda", "tiny:llm", "", 512) is None and pi.check_tag("cuda", "tiny:clap", 10**6) is None
    assert pi.check_prompts("cuda", "someone/unknown-70b", "", 8) is None  # no figures: says so, not checked


# --------------------------------------------------------------------------------------------
# each stage stops BEFORE its model is loaded, with its own error class


def _no_load(*a, **k):
    raise AssertionError("a model was loaded before the preflight")


def test_stages_stop_before_loading(monkeypatch, tmp_path, shared_dir):
    gpu(monkeypatch, T4)
    from test_prompts import make_run as prompts_run
    from test_tag import _make_run as tag_run

    monkeypatch.setattr(models, "load_t5_encoder", _no_load)
    monkeypatch.setattr(models, "load_chat_llm", _no_load)
    with pytest.raises(prompts.PromptsError, match=r"(?s)STOP — 04_prompts.*quantization='4bit'"):
        prompts.run(run_dir=str(prompts_run(tmp_path / "p")), llm_model=LLAMA_8B, t5_model="t5-base", device="cuda")

    monkeypatch.setattr(tag, "make_backend", _no_load)
    monkeypatch.setattr(models, "pick_device", lambda device="auto": "cuda")
    with pytest.raises(tag.TagError, match=r"(?s)STOP — 02_tag.*batch_size=512"):
        tag.run(run_dir=str(tag_run(tmp_path / "t", shared_dir)), clap_model=CLAP, batch_size=1024, device="cuda")

    monkeypatch.setattr(generate, "load_model", _no_load)
    with pytest.raises(generate.GenerateError, match=r"(?s)STOP — 06_generate.*Settings that fit: batch_size=3\."):
        generate.run(
            run_dir=str(tmp_path / "g"), base_model=SAO, n_prompts=4, batch_size=4, seconds_total=47.0, device="cuda"
        )


def test_measured_constants_come_from_the_measurements_file(monkeypatch):
    """02/04's measured peaks are the rows of data/gpu_measurements.csv; a measured 06 point replaces
    the decode arithmetic (benchmarks/gpu_all.py appends such rows)."""
    from stablebeat_utils import preflight

    rows = preflight.load_measurements()
    clap = {int(r["batch"]): float(r["peak_gb"]) for r in rows if r["stage"] == "02_tag" and r["mode"] == "audio"}
    llm = {(r["model"], int(r["batch"]), int(r["tokens"])) for r in rows if r["stage"] == "04_prompts"}
    assert pi.MEASURED_CLAP == clap and set(pi.MEASURED_LLM) == llm
    assert all(r["gpu"] and r["date"] and r["command"] for r in rows if r["stage"] in ("02_tag", "04_prompts"))
    assert pi.estimate_generate(1, 47.0).basis == "estimated"
    monkeypatch.setitem(pi.MEASURED_GENERATE, (1, 47.0, "16-bit"), 7.5)
    est = pi.estimate_generate(1, 47.0)
    assert (est.gb, est.basis) == (7.5, "measured")
