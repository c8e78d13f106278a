"""Does training through 05 -> 06 learn?  Two sets of clips, two prompts, the stages' own code.

A small model of tiny:sao's architecture (the tiny build itself, its window cut to 1.5 s so that
06 samples 32 latent frames instead of 1,024) is fine-tuned by ``train.run`` on two synthetic sets
of clips that differ on purpose -- "dark": slow low sine thumps; "bright": dense noise ticks over a
5 kHz tone -- each set with its own prompt. ``generate.run`` then generates both prompts from 05's
export with the base model and the fine-tune, same seeds.

The distance is measured in the VAE's latent space, at the VAE's door: the test watches the latents
06 hands to its decoder (a spy on ``generate.decode`` that calls the real one). Why not on the
audio: the tiny VAE has random weights, so its decoder does not invert its encoder, and both sets
come out of an encode -> decode round trip nearly alike (measured once, 100 steps at lr 1e-3: the
mean of 07's four log distances from the fine-tune's "dark" generations to the two round-tripped
sets was 0.19 and 0.21; from its "bright" ones 0.22 and 0.25 -- no set told apart). What the DiT
learns is latents, and 05 keeps the very latents it trained on (``pre_encode``): those are the sets.

Feature of a clip: per latent channel, the mean and standard deviation over its frames (128
numbers). Distance of generations G to a set S: mean over G of the Euclidean distance to S's mean
feature. Pass, for each prompt: the fine-tune's generations are closer to their own set than to
the other set by MARGIN_OTHER, and closer to their own set than the base model's generations by
MARGIN_BASE (both measured in a run of 200 steps at lr 5e-3 under a sampler loop of our own: see
the constants).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stablebeat_utils import audio, generate, models, train

SR = 44100
CLIP_S = 1.2
N_CLIPS = 4  # per set
SEEDS = 3  # generations per prompt (each prompt appears SEEDS times in 06's prompt list)
MARGIN_OTHER = 0.10  # own set at least 10 % closer than the other set (measured once: 17 % and 16 %)
MARGIN_BASE = 0.25  # own set at least 25 % closer than the base's generations (measured: 63 % and 52 %)
PROMPTS = {"dark": "a slow dark sub bass beat", "bright": "a fast bright hi-hat beat"}
WINDOW = 65536  # the small model's sample_size: 32 latent frames (1.49 s)
TRAIN = dict(
    max_steps=200,
    batch_size=4,
    sample_seconds=1.0,
    pre_encode=True,
    demo_every=0,
    workers=0,
    log_every=20,
    seed=0,
    checkpoint_every=200,
    keep_checkpoints=1,
)
LR = {"full": 5e-3, "lora": 5e-3}


def synth_clip(kind: str, i: int) -> np.ndarray:
    """One stereo clip of a set: "dark" = 55-65 Hz sine thumps at 80 BPM; "bright" = noise ticks in
    16ths at 160 BPM over a 5-5.5 kHz tone. Peak 0.5."""
    rng = np.random.default_rng(i + (100 if kind == "bright" else 0))
    n = int(CLIP_S * SR)
    t = np.arange(n) / SR
    y = np.zeros(n)
    if kind == "dark":
        period, f = 60 / 80, 55 + 10 * rng.random()
        for k in range(int(CLIP_S / period) + 1):
            s = int((k * period + 0.05 * rng.random()) * SR)
            m = min(n - s, int(0.5 * SR))
            if m > 0:
                y[s : s + m] += np.sin(2 * np.pi * f * t[:m]) * np.exp(-t[:m] * 6)
    else:
        period = 60 / 160 / 4
        for k in range(int(CLIP_S / period) + 1):
            s = int(k * period * SR)
            m = min(n - s, int(0.03 * SR))
            if m > 0:
                y[s : s + m] += rng.standard_normal(m) * np.exp(-t[:m] * 150) * 0.7
        y += 0.1 * np.sin(2 * np.pi * (5000 + 500 * rng.random()) * t)
    y = 0.5 * y / np.abs(y).max()
    return np.stack([y, y]).astype(np.float32)


def make_run(root: Path) -> Path:
    """A run folder as 01 + 04 leave it: both sets' clips, each clip with its set's prompt."""
    clips = root / "01_segment" / "clips"
    clips.mkdir(parents=True)
    (root / "04_prompts").mkdir(parents=True)
    segs, rows = [], []
    for kind in PROMPTS:
        for i in range(N_CLIPS):
            cid = f"{kind}{i}"
            path = f"01_segment/clips/{cid}.wav"
            audio.write_wav(root / path, synth_clip(kind, i), SR, subtype="FLOAT")
            segs.append(
                dict(clip_id=cid, source=f"{cid}.wav", start=0.0, duration=CLIP_S, source_duration=CLIP_S, path=path)
            )
            segs[-1]["status"] = "ok"
            rows.append(dict(filepath=path, start=0.0, duration=CLIP_S, prompt=PROMPTS[kind], clip_id=cid))
    (root / "01_segment" / "segments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in segs))
    (root / "04_prompts" / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def small_base(tmp_path_factory) -> Path:
    """tiny:sao's weights and architecture with a 1.49 s window (06 samples the model's whole window)."""
    src = models.ensure_tiny_models(["sao"])["sao"]
    dst = tmp_path_factory.mktemp("small_sao")
    shutil.copy(src / "model.safetensors", dst / "model.safetensors")
    cfg = json.loads((src / "model_config.json").read_text())
    cfg["sample_size"] = WINDOW
    (dst / "model_config.json").write_text(json.dumps(cfg))
    return dst


def feature(lat) -> np.ndarray:
    lat = np.asarray(lat, dtype=np.float64)
    return np.concatenate([lat.mean(-1), lat.std(-1)])


def train_and_generate(root: Path, base: Path, mode: str, monkeypatch) -> dict:
    """05 then 06 on the two sets; returns the features of the sets and of each model's generations."""
    from safetensors.torch import load_file

    make_run(root)
    kw = dict(mode=mode, lora_rank=8, lora_alpha=8.0, export_merged=False) if mode == "lora" else dict(mode=mode)
    summary = train.run(run_dir=str(root), base_model=str(base), lr=LR[mode], **TRAIN, **kw)
    frames = -(-int(CLIP_S * SR) // 2048)
    sets = {
        kind: np.stack(
            [
                feature(load_file(str(root / "05_train" / "latents" / f"{kind}{i}.safetensors"))["latents"][:, :frames])
                for i in range(N_CLIPS)
            ]
        )
        for kind in PROMPTS
    }

    seen, current = [], {}
    real_decode, real_load = generate.decode, generate._load_model_for

    def spy_load(g, which):
        current["model"] = which
        return real_load(g, which)

    def spy_decode(model, latents, n_samples):
        seen.append((current["model"], latents[..., :frames].detach().cpu().numpy().copy()))
        return real_decode(model, latents, n_samples)

    monkeypatch.setattr(generate, "_load_model_for", spy_load)
    monkeypatch.setattr(generate, "decode", spy_decode)
    prompt_list = [PROMPTS[k] for _ in range(SEEDS) for k in PROMPTS]
    (root / "prompts.txt").write_text("\n".join(prompt_list) + "\n")
    gen = generate.run(
        run_dir=str(root),
        base_model=str(base),
        prompts_file=str(root / "prompts.txt"),
        n_prompts=0,
        steps=8,
        seconds_total=CLIP_S,
        batch_size=len(prompt_list),
        device="cpu",
        dtype="float32",
    )
    assert gen["finetune_kind"] == ("lora" if mode == "lora" else "full")
    gens = {}
    for model, lat in seen:
        for prompt, one in zip(prompt_list, lat):
            kind = next(k for k, p in PROMPTS.items() if p == prompt)
            gens.setdefault((model, kind), []).append(feature(one))
    return {"summary": summary, "sets": sets, "gens": {k: np.stack(v) for k, v in gens.items()}}


def distance(gens: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(gens - ref.mean(axis=0), axis=1).mean())


def check_learned(out: dict) -> dict:
    sets, gens = out["sets"], out["gens"]
    table = {
        (model, kind, to): distance(gens[(model, kind)], sets[to])
        for model in ("base", "finetune")
        for kind in PROMPTS
        for to in PROMPTS
    }
    print("distance of generations to each set (model, prompt's set, to set):")
    for k, v in table.items():
        print(f"  {k}: {v:.3f}")
    for kind in PROMPTS:
        other = next(k for k in PROMPTS if k != kind)
        own = table[("finetune", kind, kind)]
        assert own < (1 - MARGIN_OTHER) * table[("finetune", kind, other)], (
            f"{kind}: not closer to its own set than to {other}"
        )
        assert own < (1 - MARGIN_BASE) * table[("base", kind, kind)], (
            f"{kind}: the fine-tune is not closer than the base"
        )
    return table


@pytest.mark.parametrize("mode", ["full"])
def test_fine_tune_moves_each_prompt_toward_its_own_clips(tmp_path, small_base, monkeypatch, mode):
    out = train_and_generate(tmp_path / "run", small_base, mode, monkeypatch)
    check_learned(out)
