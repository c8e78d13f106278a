"""Does training through 05 -> 06 learn?  Two sets of clips, two prompts, the stages' own code.

A small model of tiny:sao's architecture (the tiny build itself, its window cut to 1.5 s so that
06 samples 32 latent frames instead of 1,024) is fine-tuned by ``train.run`` on two synthetic sets
of clips that differ on purpose -- "dark": slow low sine thumps; "bright": dense noise ticks over a
5 kHz tone -- each set with its own prompt. ``generate.run`` then generates both prompts from 05's
export with the base model and the fine-tune, same seeds. Two ways to fine-tune, the two 06 reads:
``full`` (05 exports the EMA weights of the DiT as a whole model) and ``lora`` (05 exports the
adapters alone, ``export_merged=False``; 06 applies ``lora.safetensors`` to the base itself).

The distance is measured in the VAE's latent space, at the VAE's door: the test watches the latents
06 hands to its decoder (a spy on ``generate.decode`` that calls the real one). What the DiT learns
is latents, and 05 keeps the very latents it trained on (``pre_encode``): those are the sets.

Feature of a clip: per latent channel, the mean and standard deviation over its frames. Distance of
generations G to a set S: the Euclidean distance between G's mean feature and S's mean feature (the
mean term of a Frechet distance). Where G lies between the sets: ``t``, the projection of G's mean
feature on the line from the dark set's mean (t = 0) to the bright set's (t = 1).

Pass, for each way to fine-tune: along that line the fine-tune's two prompts lie at least ``apart``
further apart than the base's (in the right order), and each prompt's generations are closer to
their own set than to the other. Why not "closer to its own set than the base": tiny:sao's trained
base (pads, bells, drones) already sits near the dark set (t 0.33 for the dark prompt, 0.56 for the
bright one: separation 0.23), and CFG 7 carries the fine-tune's bright prompt past its set (t 1.3
full, 2.2 LoRA), so a per-prompt distance to the base can rise while the model learned exactly what
it should. Measured (2026-12-03, seeds 0/42): separation 0.23 (base) -> 1.00 (full), 1.91 (LoRA);
with learning rate ~0 or LoRA adapters not applied in 06, 0.23 -> 0.23 (the test fails).
Besides: the full export's DiT is the checkpoint's EMA weights (not the online ones), and the
padded frames of a short clip count in the engine's loss with ``padding_loss_weight``.
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
N_CLIPS = 8  # per set
SEEDS = 8  # generations per prompt (each prompt appears SEEDS times in 06's prompt list)
# see check_learned and the module doc: separation gained over the base's, in set-distances (measured
# +0.78 full, +1.68 LoRA; 0.00 with lr ~0 or the adapters not applied)
MARGINS = {"full": dict(apart=0.5), "lora": dict(apart=0.5)}
PROMPTS = {"dark": "a slow dark sub bass beat", "bright": "a fast bright hi-hat beat"}
WINDOW = 65536  # the small model's sample_size: 32 latent frames (1.49 s)
WARMUP = 0.9  # the InverseLR warm-up of the small model's own training config (SAO's 0.99 ramps over ~300 steps)
TRAIN = dict(
    max_steps=120,
    batch_size=4,
    sample_seconds=1.0,
    pre_encode=True,
    demo_every=0,
    workers=0,
    log_every=20,
    seed=0,
    checkpoint_every=1000,
    keep_checkpoints=1,
    holdout_fraction=0.0,
)
LR = {"full": 5e-3, "lora": 5e-3}
LORA = dict(lora_rank=16, lora_alpha=32.0, export_merged=False)
GENERATE = dict(steps=25, cfg_scale=7.0, seed=42)


def synth_clip(kind: str, i: int, seconds: float = CLIP_S) -> np.ndarray:
    """One stereo clip of a set: "dark" = 55-65 Hz sine thumps at 80 BPM; "bright" = noise ticks in
    16ths at 160 BPM over a 5-5.5 kHz tone. Peak 0.5."""
    rng = np.random.default_rng(i + (100 if kind == "bright" else 0))
    n = int(seconds * SR)
    t = np.arange(n) / SR
    y = np.zeros(n)
    if kind == "dark":
        period, f = 60 / 80, 55 + 10 * rng.random()
        for k in range(int(seconds / period) + 1):
            s = int((k * period + 0.05 * rng.random()) * SR)
            m = min(n - s, int(0.5 * SR))
            if m > 0:
                y[s : s + m] += np.sin(2 * np.pi * f * t[:m]) * np.exp(-t[:m] * 6)
    else:
        period = 60 / 160 / 4
        for k in range(int(seconds / period) + 1):
            s = int(k * period * SR)
            m = min(n - s, int(0.03 * SR))
            if m > 0:
                y[s : s + m] += rng.standard_normal(m) * np.exp(-t[:m] * 150) * 0.7
        y += 0.1 * np.sin(2 * np.pi * (5000 + 500 * rng.random()) * t)
    y = 0.5 * y / np.abs(y).max()
    return np.stack([y, y]).astype(np.float32)


def make_run(root: Path, n_clips: int = 0, seconds: float | dict = CLIP_S) -> Path:
    """A run folder as 01 + 04 leave it: both sets' clips (``n_clips`` each, 0 = N_CLIPS), each with its set's prompt."""
    n_clips = n_clips or N_CLIPS
    clips = root / "01_segment" / "clips"
    clips.mkdir(parents=True)
    (root / "04_prompts").mkdir(parents=True)
    segs, rows = [], []
    for kind in PROMPTS:
        dur = seconds[kind] if isinstance(seconds, dict) else seconds
        for i in range(n_clips):
            cid = f"{kind}{i}"
            path = f"01_segment/clips/{cid}.wav"
            audio.write_wav(root / path, synth_clip(kind, i, dur), SR, subtype="FLOAT")
            segs.append(
                dict(
                    clip_id=cid,
                    source=f"{cid}.wav",
                    start=0.0,
                    duration=dur,
                    source_duration=dur,
                    path=path,
                    status="ok",
                )
            )
            rows.append(dict(filepath=path, start=0.0, duration=dur, prompt=PROMPTS[kind], clip_id=cid))
    (root / "01_segment" / "segments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in segs))
    (root / "04_prompts" / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def make_small_base(dst: Path, window: int = WINDOW, warmup: float = WARMUP) -> Path:
    """tiny:sao's weights and architecture with a short window (06 samples the model's whole window)
    and a shorter warm-up in its own training config (05 takes the optimizer and schedule from it)."""
    src = models.ensure_tiny_models(["sao"])["sao"]
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "model.safetensors", dst / "model.safetensors")
    cfg = json.loads((src / "model_config.json").read_text())
    cfg["sample_size"] = window
    sched = cfg["training"]["optimizer_configs"]["diffusion"]["scheduler"]
    assert sched["type"] == "InverseLR", sched  # the schedule this test shortens is the card's
    sched["config"]["warmup"] = warmup
    (dst / "model_config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def small_base(tmp_path_factory) -> Path:
    return make_small_base(tmp_path_factory.mktemp("small_sao"))


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the tiny model's operations are too small to share, and on a busy 2-core box
    two threads waiting on each other made training 5x slower (30 steps: 44 s of CPU vs 9 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def feature(lat) -> np.ndarray:
    lat = np.asarray(lat, dtype=np.float64)
    return np.concatenate([lat.mean(-1), lat.std(-1)])


def latent_frames(seconds: float = CLIP_S) -> int:
    return -(-int(seconds * SR) // 2048)


def spy_on_06(monkeypatch) -> list:
    """``[(model, latents of the first clip frames)]`` of every batch 06 decodes (the real decode runs)."""
    seen, current = [], {}
    real_decode, real_load = generate.decode, generate._load_model_for

    def spy_load(g, which):
        current["model"] = which
        return real_load(g, which)

    def spy_decode(model, latents, n_samples):
        seen.append((current["model"], latents[..., : latent_frames()].detach().cpu().numpy().copy()))
        return real_decode(model, latents, n_samples)

    monkeypatch.setattr(generate, "_load_model_for", spy_load)
    monkeypatch.setattr(generate, "decode", spy_decode)
    return seen


def train_and_generate(root: Path, base: Path, mode: str, monkeypatch, **over) -> dict:
    """05 then 06 on the two sets; the features of the sets and of each model's generations."""
    from safetensors.torch import load_file

    make_run(root)
    kw = dict(mode=mode, **LORA) if mode == "lora" else dict(mode=mode)
    summary = train.run(run_dir=str(root), base_model=str(base), lr=LR[mode], **(TRAIN | kw | over))
    lat_dir = root / "05_train" / "latents"
    frames = latent_frames()
    sets = {
        kind: np.stack(
            [feature(load_file(str(lat_dir / f"{kind}{i}.safetensors"))["latents"][:, :frames]) for i in range(N_CLIPS)]
        )
        for kind in PROMPTS
    }
    seen = spy_on_06(monkeypatch)
    prompt_list = [PROMPTS[k] for _ in range(SEEDS) for k in PROMPTS]
    (root / "prompts.txt").write_text("\n".join(prompt_list) + "\n")
    gen = generate.run(
        run_dir=str(root),
        base_model=str(base),
        prompts_file=str(root / "prompts.txt"),
        n_prompts=0,
        seconds_total=CLIP_S,
        batch_size=len(prompt_list),
        loops=False,
        variation_of="",
        device="cpu",
        dtype="float32",
        **GENERATE,
    )
    assert gen["finetune_kind"] == mode and gen["generations"] == 2 * len(prompt_list)
    gens = {}
    for model, lat in seen:
        for prompt, one in zip(prompt_list, lat):
            kind = next(k for k, p in PROMPTS.items() if p == prompt)
            gens.setdefault((model, kind), []).append(feature(one))
    return {"summary": summary, "sets": sets, "gens": {k: np.stack(v) for k, v in gens.items()}}


def distance(gens: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(gens.mean(axis=0) - ref.mean(axis=0)))


def measure(out: dict) -> dict:
    """Distances of each model's generations of each prompt to each set, and where they lie between
    the sets: ``t`` = the projection of their mean feature on the line from the dark set's mean (0)
    to the bright set's (1)."""
    sets, gens = out["sets"], out["gens"]
    dark, bright = sets["dark"].mean(axis=0), sets["bright"].mean(axis=0)
    axis = bright - dark
    table = {
        (model, kind, to): distance(gens[(model, kind)], sets[to])
        for model in ("base", "finetune")
        for kind in PROMPTS
        for to in PROMPTS
    }
    for model in ("base", "finetune"):
        for kind in PROMPTS:
            table[(model, kind, "t")] = float((gens[(model, kind)].mean(axis=0) - dark) @ axis / (axis @ axis))
    table["sets apart"] = float(np.linalg.norm(axis))
    return table


def check_learned(table: dict, apart: float) -> None:
    """The fine-tune tells the prompts apart toward their own sets: along the line from the dark set
    (t = 0) to the bright set (t = 1) its two prompts' generations lie at least ``apart`` further
    apart than the base's, in the right order, and each prompt's generations are closer to their own
    set than to the other."""
    print("distances of generations to each set, and t along dark (0) -> bright (1):")
    for k, v in table.items():
        print(f"  {k}: {v:.3f}")
    sep = {m: table[(m, "bright", "t")] - table[(m, "dark", "t")] for m in ("base", "finetune")}
    assert sep["finetune"] - sep["base"] >= apart, (
        f"the fine-tune does not tell the prompts apart toward their sets: separation along dark -> bright "
        f"{sep['finetune']:.3f} vs the base's {sep['base']:.3f} (needs {apart} more)"
    )
    for kind in PROMPTS:
        other = next(k for k in PROMPTS if k != kind)
        own, to_other = table[("finetune", kind, kind)], table[("finetune", kind, other)]
        assert own < to_other, (
            f"{kind}: the fine-tune's generations are closer to {other} ({to_other:.3f}) than to their own set ({own:.3f})"
        )


def check_ema_exported(run: Path) -> None:
    """The full export's DiT is the last checkpoint's EMA weights -- and those differ from the online ones."""
    import torch
    from safetensors.torch import load_file

    ckpt = train.newest_checkpoint(run / "05_train" / "checkpoints")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    ema = {
        k[len("diffusion_ema.ema_model.") :]: v for k, v in state.items() if k.startswith("diffusion_ema.ema_model.")
    }
    exported = load_file(str(run / "05_train" / "export" / "model.safetensors"))
    assert ema and set(f"model.{k}" for k in ema) <= set(exported)
    differs = [k for k in ema if not torch.equal(ema[k], state[f"diffusion.model.{k}"])]
    assert len(differs) > len(ema) // 2, "the EMA weights hardly differ from the online ones: nothing to tell apart"
    not_ema = [k for k in ema if not torch.equal(exported[f"model.{k}"], ema[k])]
    assert not not_ema, f"{len(not_ema)} of {len(ema)} exported DiT tensors are not the EMA weights: {not_ema[:3]}"


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_fine_tune_moves_each_prompt_toward_its_own_clips(tmp_path, small_base, monkeypatch, mode):
    out = train_and_generate(tmp_path / "run", small_base, mode, monkeypatch)
    export = tmp_path / "run" / "05_train" / "export"
    if mode == "lora":  # 06 has only the adapters to apply
        assert (export / "lora.safetensors").is_file() and not (export / "model.safetensors").exists()
    check_learned(measure(out), **MARGINS[mode])
    if mode == "full":
        check_ema_exported(tmp_path / "run")


def test_padded_frames_count_in_the_loss_with_padding_loss_weight(tmp_path, small_base, monkeypatch):
    """Two clips shorter than the 1-s window (0.5 s and 0.3 s: 11 and 7 of 22 latent frames real).
    The engine's loss, seen at its ``compute_masked_loss``, must be what ``padding_loss_weight`` says
    from the clips' own lengths (known truth, not the mask the engine was handed):
    ``(sum over real frames + w * sum over padded frames) / (n_real + w * n_padded)`` per sample,
    averaged over the batch. 0.5 is neither the engine's default (0.0) nor SAO's whole-window mean
    (1.0), so a weight that does not reach the loss shows."""
    import torch

    train._lightning_classes()  # the engine's training modules, importable with the course's shims
    import stable_audio_tools.training.diffusion as engine

    w, seconds = 0.5, {"dark": 0.5, "bright": 0.3}
    real = {k: -(-int(round(s * SR)) // 2048) for k, s in seconds.items()}  # 11 and 7 frames
    seen, real_loss = [], engine.compute_masked_loss

    def spy(loss_full, loss_mask, mask_padding_attention, mask_loss_weight=0.0):
        out = real_loss(loss_full, loss_mask, mask_padding_attention, mask_loss_weight)
        seen.append((loss_full.detach().clone(), loss_mask.clone(), out[0].detach().clone()))
        return out

    monkeypatch.setattr(engine, "compute_masked_loss", spy)
    root = make_run(tmp_path / "run", n_clips=1, seconds=seconds)
    kw = dict(TRAIN, max_steps=2, batch_size=2, random_crop=False, ema=False)
    train.run(run_dir=str(root), base_model=str(small_base), lr=5e-3, padding_loss_weight=w, **kw)
    assert len(seen) == 2
    for loss_full, loss_mask, loss in seen:
        frames = loss_full.shape[-1]
        assert frames == 22 and sorted(int(n) for n in loss_mask.sum(dim=1)) == sorted(real.values())
        truth = torch.zeros_like(loss_mask)
        for b, n in enumerate(int(n) for n in loss_mask.sum(dim=1)):
            truth[b, :n] = True  # the real frames are the first ones: a short clip is padded at its end
        assert torch.equal(loss_mask, truth), "the padded frames are not the ones after each clip's end"
        sig = (loss_full * truth[:, None]).sum(dim=(1, 2))
        pad = (loss_full * ~truth[:, None]).sum(dim=(1, 2))
        n_sig, n_pad = truth.sum(dim=1) * loss_full.shape[1], (~truth).sum(dim=1) * loss_full.shape[1]
        expected = ((sig + w * pad) / (n_sig + w * n_pad)).mean()
        plain = loss_full.mean()
        assert abs(float(expected) - float(plain)) > 1e-3 * float(plain)  # the weight changes the loss here
        assert float(loss) == pytest.approx(float(expected), rel=1e-5), (
            f"the engine's loss {float(loss):.6f} is not the loss with padding weight {w} "
            f"({float(expected):.6f}; padded frames ignored: "
            f"{float((sig / n_sig).mean()):.6f}, whole window: {float(plain):.6f})"
        )
