"""stablebeat_utils.models: tiny models build offline, reload through the public loaders, and run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from stablebeat_utils import models
from stablebeat_utils.models import ModelSourceError

#: the shipped VAE's round trip of an unseen beat, mean |ln ratio| over 07's 4 signal metrics (see the test)
ROUND_TRIP_MAX = 1.5
PROMPT = "A dark and melancholic cloud trap beat, with nostalgic piano, plucked bass and synth bells, at 110 BPM."


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One STABLEBEAT_HOME for the module: the tiny models are built once and shared by the tests."""
    root = tmp_path_factory.mktemp("stablebeat-home")
    old = os.environ.get("STABLEBEAT_HOME")
    os.environ["STABLEBEAT_HOME"] = str(root)
    yield root
    if old is None:
        os.environ.pop("STABLEBEAT_HOME", None)
    else:
        os.environ["STABLEBEAT_HOME"] = old


@pytest.fixture(scope="module")
def tiny(home):
    return models.ensure_tiny_models()


# ---------------------------------------------------------------------------------------------
# sources


def test_resolve_sources(tiny, tmp_path):
    assert models.resolve("tiny:t5") == str(tiny["t5"])
    assert models.resolve(str(tmp_path)) == str(tmp_path.resolve())
    assert models.resolve("laion/larger_clap_music") == "laion/larger_clap_music"
    assert models.resolve("t5-base") == "t5-base"
    with pytest.raises(ModelSourceError, match="tiny:nope"):
        models.resolve("tiny:nope")
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ModelSourceError, match=str(missing)):
        models.resolve(str(missing))
    with pytest.raises(ModelSourceError, match="no such model folder"):
        models.resolve("./relative/missing-model")
    with pytest.raises(ModelSourceError, match="unknown tiny model"):
        models.ensure_tiny_models(["gpt5"])


def test_tiny_layout_matches_the_real_repos(tiny):
    t5, clap, llm, sao = (tiny[n] for n in ("t5", "clap", "llm", "sao"))
    for d in (t5, clap, llm):
        assert (d / "config.json").is_file() and (d / "model.safetensors").is_file()
        assert (d / "tokenizer.json").is_file() and (d / "tokenizer_config.json").is_file()
    assert (clap / "processor_config.json").is_file() or (clap / "preprocessor_config.json").is_file()
    assert (llm / "generation_config.json").is_file()
    assert sorted(p.name for p in sao.iterdir() if not p.name.startswith("stablebeat")) == [
        "model.safetensors",
        "model_config.json",
    ]
    for name, d in tiny.items():
        marker = json.loads((d / "stablebeat-tiny.json").read_text())
        assert marker["name"] == name and marker["stands_in_for"] == models.REAL_MODELS[name]
        size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        assert size < 40 * 2**20, f"tiny {name} is {size / 2**20:.1f} MB"
    # no half-built folders left beside them
    assert not [p for p in models.tiny_root().iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]


def test_tiny_sao_config_mirrors_sao_1_0(tiny):
    tiny_cfg = json.loads((tiny["sao"] / "model_config.json").read_text())
    full = models.sao_full_config()
    for cfg in (tiny_cfg, full):
        assert cfg["model_type"] == "diffusion_cond"
        assert cfg["sample_rate"] == 44100 and cfg["sample_size"] == 2097152 and cfg["audio_channels"] == 2
        pre = cfg["model"]["pretransform"]["config"]
        assert pre["downsampling_ratio"] == 2048 == int(np.prod(pre["encoder"]["config"]["strides"]))
        assert pre["latent_dim"] == 64 and cfg["model"]["io_channels"] == 64
        conds = cfg["model"]["conditioning"]["configs"]
        assert [(c["id"], c["type"]) for c in conds] == [
            ("prompt", "t5"),
            ("seconds_start", "number"),
            ("seconds_total", "number"),
        ]
        assert conds[0]["config"]["t5_model_name"] == "t5-base"
        dit = cfg["model"]["diffusion"]
        assert dit["global_cond_ids"] == ["seconds_start", "seconds_total"]
        assert dit["config"]["global_cond_dim"] == 2 * cfg["model"]["conditioning"]["cond_dim"]
        assert dit["config"]["embed_dim"] // dit["config"]["num_heads"] >= 32
    assert tiny_cfg["model"]["conditioning"]["configs"][0]["config"]["model_path"] == "tiny:t5"
    assert "model_path" not in full["model"]["conditioning"]["configs"][0]["config"]
    assert full["model"]["diffusion"]["config"]["embed_dim"] == 1536


def test_reuse_and_determinism(tiny, tmp_path):
    from safetensors.torch import load_file

    before = {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in tiny.items()}
    again = models.ensure_tiny_models()
    assert again == tiny
    assert {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in again.items()} == before  # reused
    for name in ("t5", "clap", "llm", "sao"):
        other = models.build_tiny(name, tmp_path / name)
        a, b = load_file(str(tiny[name] / "model.safetensors")), load_file(str(other / "model.safetensors"))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"tiny {name}: weights differ between builds"
        if name != "sao":
            assert (tiny[name] / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_tiny_sao_holds_the_shipped_trained_weights_and_its_vae_inverts(tiny):
    """tiny:sao is the config's network filled with data/tiny/sao_weights.safetensors, tensor for
    tensor, and its VAE gives a beat back: decode(encode(beat)) near the beat on 07's signal metrics
    (mean |ln ratio| over the 4: shipped weights 1.05, the config's random weights 3.30, measured)."""
    from safetensors.torch import load_file

    from stablebeat_utils import demo
    from stablebeat_utils.evaluate_metrics import signal_metrics

    shipped = load_file(str(models.TINY_SAO_WEIGHTS))
    built = load_file(str(tiny["sao"] / "model.safetensors"))
    assert shipped.keys() == built.keys() and all(torch.equal(shipped[k], built[k]) for k in shipped)
    model, config = models.load_sao("tiny:sao")
    sr = config["sample_rate"]
    beat = demo.make_style_beat("boombap", 90.0, "D", "minor", 6.0, 4321)  # a beat of seeds never trained on
    beat = np.asarray(beat, dtype=np.float32).reshape(-1, beat.shape[-1])
    beat = np.repeat(beat, 2, axis=0) if beat.shape[0] == 1 else beat[:2]
    torch.manual_seed(0)
    with torch.no_grad():
        back = model.pretransform.decode(model.pretransform.encode(torch.from_numpy(beat)[None]))[0].numpy()
    a, b = signal_metrics(beat, sr), signal_metrics(back, sr)
    ratios = {k: abs(np.log(b[k] / a[k])) for k in a if a[k] > 0 and b[k] > 0}
    assert len(ratios) == 4, (a, b)
    assert np.mean(list(ratios.values())) < ROUND_TRIP_MAX, ratios


def test_tiny_sao_weights_that_do_not_fit_stop_naming_the_file(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    missing = tmp_path / "gone.safetensors"
    monkeypatch.setattr(models, "TINY_SAO_WEIGHTS", missing)
    with pytest.raises(ModelSourceError, match=r"gone\.safetensors.*missing.*train_tiny\.py"):
        models.build_tiny("sao", tmp_path / "a")
    state = load_file(str(models.DATA / "tiny" / "sao_weights.safetensors"))
    first = sorted(state)[0]
    short = tmp_path / "short.safetensors"
    save_file({k: v for k, v in state.items() if k != first}, str(short))
    monkeypatch.setattr(models, "TINY_SAO_WEIGHTS", short)
    with pytest.raises(ModelSourceError, match=r"short\.safetensors: weights do not fit the model \(1 missing"):
        models.build_tiny("sao", tmp_path / "b")
    reshaped = tmp_path / "reshaped.safetensors"
    save_file({**state, first: torch.zeros(3, 1)}, str(reshaped))
    monkeypatch.setattr(models, "TINY_SAO_WEIGHTS", reshaped)
    with pytest.raises(ModelSourceError, match=r"reshaped\.safetensors: 1 tensor\(s\) of another shape"):
        models.build_tiny("sao", tmp_path / "c")


def test_tiny_t5_is_the_shipped_encoder_and_vocabulary(tiny, tmp_path, monkeypatch):
    """tiny:t5 holds data/tiny/t5_weights.safetensors and t5_vocab.json, not a fresh random init: the
    trained tiny:sao must hear every prompt as it did in training, on every runtime (a fresh build on Colab's
    default runtime differed in 8 of 11 tensors and in its vocabulary, measured). A misfit file names itself."""
    from safetensors.torch import load_file, save_file

    shipped = load_file(str(models.TINY_T5_WEIGHTS))
    built = load_file(str(tiny["t5"] / "model.safetensors"))
    assert shipped.keys() == built.keys() and all(torch.equal(shipped[k], built[k]) for k in shipped)
    vocab = json.loads(models.TINY_T5_VOCAB.read_text(encoding="utf-8"))
    tok = json.loads((tiny["t5"] / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    assert [list(v) for v in tok] == vocab
    monkeypatch.setattr(models, "TINY_T5_WEIGHTS", tmp_path / "gone.safetensors")
    with pytest.raises(ModelSourceError, match=r"gone\.safetensors: tiny:t5's shipped file is missing"):
        models.build_tiny("t5", tmp_path / "a")
    short = tmp_path / "short.safetensors"
    save_file({k: v for k, v in shipped.items() if k != "shared.weight"}, str(short))
    monkeypatch.setattr(models, "TINY_T5_WEIGHTS", short)
    with pytest.raises(ModelSourceError, match=r"short\.safetensors: does not fit tiny:t5 \(1 missing"):
        models.build_tiny("t5", tmp_path / "b")


def test_incomplete_build_is_replaced(tiny, home):
    d = models.tiny_root() / "llm"
    (d / "stablebeat-tiny.json").unlink()  # as if killed before the marker was written
    assert models.ensure_tiny_models(["llm"])["llm"] == d
    assert (d / "stablebeat-tiny.json").is_file() and (d / "model.safetensors").is_file()


def test_offline_hub_id_fails_fast_with_a_hint(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with pytest.raises(ModelSourceError, match=r"offline.*tiny:clap"):
        models.load_clap("laion/larger_clap_music")
    with pytest.raises(ModelSourceError, match=r"offline.*tiny:sao"):
        models.load_sao("stabilityai/stable-audio-open-1.0")
    with pytest.raises(ModelSourceError, match=r"t5-base.*offline.*tiny:t5"):
        models.load_t5_encoder("t5-base")


def test_hub_token_from_env(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert models.hub_token() is None
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_b")
    assert models.hub_token() == "hf_b"
    monkeypatch.setenv("HF_TOKEN", "hf_a")
    assert models.hub_token() == "hf_a"


def test_device_and_dtype():
    assert models.pick_device("cpu") == "cpu"
    assert models.pick_device("auto") in ("cpu", "cuda", "mps")
    assert models.pick_dtype("cpu") == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(ModelSourceError, match="no CUDA"):
            models.pick_device("cuda")
    with pytest.raises(ModelSourceError, match="tpu"):
        models.pick_device("tpu")


# ---------------------------------------------------------------------------------------------
# each tiny model through its public loader


def test_t5_encoder(tiny):
    tokenizer, encoder = models.load_t5_encoder("tiny:t5")
    ids = tokenizer([PROMPT], return_tensors="pt")
    distinct = set(ids.input_ids[0].tolist())
    assert len(tokenizer) > 200 and len(distinct) >= 15, "tokenizer collapsed to a handful of ids"
    assert tokenizer.unk_token_id not in distinct
    assert ids.input_ids[0, -1].item() == tokenizer.eos_token_id
    with torch.no_grad():
        out = encoder(**ids).last_hidden_state
    assert out.shape == (1, ids.input_ids.shape[1], 768)  # t5-base's width
    assert torch.isfinite(out).all()


def test_clap_audio_and_text_features(tiny):
    model, processor = models.load_clap("tiny:clap")
    assert processor.feature_extractor.sampling_rate == 48000
    cfg = model.config.audio_config
    assert cfg.num_mel_bins == cfg.spec_size // 4
    rng = np.random.default_rng(0)
    clips = [
        0.1 * rng.standard_normal(48000 * 3).astype(np.float32),
        0.1 * rng.standard_normal(48000).astype(np.float32),
    ]
    tags = ["synth bells", "deep sub bass", "melancholic"]
    tok = processor.tokenizer(tags)
    assert all(len(set(ids)) >= 3 for ids in tok.input_ids)
    assert processor.tokenizer.unk_token_id not in {i for ids in tok.input_ids for i in ids}
    with torch.no_grad():
        audio = model.get_audio_features(**processor(audio=clips, sampling_rate=48000, return_tensors="pt"))
        text = model.get_text_features(**processor(text=tags, return_tensors="pt", padding=True))
    a = audio.pooler_output if hasattr(audio, "pooler_output") else audio
    t = text.pooler_output if hasattr(text, "pooler_output") else text
    assert a.shape == (2, model.config.projection_dim) and t.shape == (3, model.config.projection_dim)
    sims = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T
    assert sims.shape == (2, 3) and torch.isfinite(sims).all()


def test_chat_llm_generates(tiny):
    tokenizer, model = models.load_chat_llm("tiny:llm", device="cpu")
    assert model.dtype == torch.float32
    messages = [
        {"role": "system", "content": "You write short prompts for music."},
        {"role": "user", "content": "Tags: trap, synth bells, 140 BPM"},
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|begin_of_text|>") and text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    assert len(set(enc.input_ids[0].tolist())) > 15
    assert tokenizer.decode(enc.input_ids[0]) == text  # byte-level BPE round-trips
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out.shape[0] == 1 and enc.input_ids.shape[1] < out.shape[1] <= enc.input_ids.shape[1] + 8
    assert isinstance(tokenizer.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True), str)
    with pytest.raises(ModelSourceError, match="CUDA"):
        models.load_chat_llm("tiny:llm", device="cpu", quantization="4bit")
    with pytest.raises(ModelSourceError, match="quantization"):
        models.load_chat_llm("tiny:llm", quantization="3bit")


# ---------------------------------------------------------------------------------------------
# Stable Audio Open: generate and train


@pytest.fixture(scope="module")
def sao(tiny):
    return models.load_sao("tiny:sao")


def test_sao_generates(sao):
    from stable_audio_tools.inference.generation import generate_diffusion_cond

    model, cfg = sao
    sample_size = 2048 * 8
    audio = generate_diffusion_cond(
        model,
        steps=3,
        cfg_scale=7,
        sampler_type="dpmpp-3m-sde",
        sigma_min=0.3,
        sigma_max=500,
        conditioning=[{"prompt": PROMPT, "seconds_start": 0, "seconds_total": 47}],
        sample_size=sample_size,
        sample_rate=cfg["sample_rate"],
        seed=123,
        device="cpu",
    )
    assert audio.shape == (1, 2, sample_size)
    assert torch.isfinite(audio).all() and audio.abs().max() > 0


def test_sao_t5_override_and_local_dir(tiny):
    model, cfg = models.load_sao(str(tiny["sao"]), t5_source=str(tiny["t5"]))
    assert cfg["model"]["conditioning"]["configs"][0]["config"]["model_path"] == "tiny:t5"  # as read
    cond = model.conditioner.conditioners["prompt"]
    emb, mask = cond([PROMPT], "cpu")
    assert emb.shape == (1, 128, 768) and mask.shape == (1, 128)


def test_sao_bad_folder(tmp_path):
    (tmp_path / "model_config.json").write_text("{}")
    with pytest.raises(ModelSourceError, match="model.safetensors"):
        models.load_sao(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelSourceError, match="diffusion_cond"):
        models.load_sao(str(tmp_path))


def test_sao_one_training_step(tiny):
    import pytorch_lightning as pl

    from stablebeat_utils import compat

    compat.apply()
    compat.stub_training_only_imports()  # wandb / descript-audiotools, when not installed
    from stable_audio_tools.training.factory import create_training_wrapper_from_config

    model, cfg = models.load_sao("tiny:sao")
    model.train()  # load_sao returns an inference-ready (eval) model; Lightning keeps the mode it finds
    wrapper = create_training_wrapper_from_config(cfg, model)
    params = [p for p in model.model.parameters() if p.requires_grad]
    assert params, "the DiT must be trainable"
    before = [p.detach().clone() for p in params]

    n = 2048 * 8
    reals = 0.1 * torch.randn(2, 2, n, generator=torch.Generator().manual_seed(0))
    meta = [
        {"prompt": PROMPT, "seconds_start": 3.0, "seconds_total": 47.0},
        {"prompt": "lo-fi jazz rap at 85 BPM", "seconds_start": 0.0, "seconds_total": 30.0},
    ]
    loader = torch.utils.data.DataLoader([(reals, meta)], batch_size=None)
    losses = []

    class KeepLoss(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[KeepLoss()],
    )
    trainer.fit(wrapper, train_dataloaders=loader)
    assert trainer.global_step == 1
    assert len(losses) == 1 and np.isfinite(losses[0]) and losses[0] > 0
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, params)), "no weight changed"


def test_t5_conditioner_runs_outside_the_trainers_autocast():
    """On a GPU under Lightning's bf16-mixed, stable-audio-tools' float16 T5 crashed in transformers
    5.x ("value cannot be converted to type c10::Half without overflow", seen on an H200): the
    conditioner built by our loading code must run T5 with autocast off, whatever autocast the
    training step is in."""
    import json

    import torch

    from stablebeat_utils import models

    config = json.loads((models.TINY_DATA / "sao_model_config.json").read_text())
    model = models.create_sao_model(config, t5_source="tiny:t5")
    t5 = next(c for c in model.conditioner.conditioners.values() if type(c).__name__ == "T5Conditioner")
    seen = []
    t5.model.register_forward_pre_hook(lambda *a: seen.append(torch.is_autocast_enabled("cpu")))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t5(["a trap beat at 140 BPM"], "cpu")
    assert seen == [False], "T5 ran inside the training step's autocast"
