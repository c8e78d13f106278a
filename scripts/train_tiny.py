"""Train the tiny Stable Audio Open stand-in (``tiny:sao``) on CPU — WORK IN PROGRESS (issue 24, item 2).

    .venv/bin/python scripts/train_tiny.py --threads 1 --out /tmp/sao_weights.safetensors   # ~11 min

Why: with random weights the tiny model's VAE decoder does not invert its encoder, so whatever the
DiT learns in the demo's fine-tune is lost in the decoding and 07's audio columns cannot show it.
This script trains ``tiny:sao`` (architecture ``stablebeat_utils/data/tiny/sao_model_config.json``,
unchanged) in two stages, on CPU, seeded:

1. the VAE (encoder + decoder + bottleneck) on *generic* synthetic sound (pads, bells, plucked
   melodies, noise swells, drones) and on synthetic beats of the styles of
   :func:`stablebeat_utils.demo.make_style_beat` at seeds and tempi the demo does not use, with the
   engine's reconstruction loss (auraloss multi-resolution STFT), the bottleneck's KL at 1e-4 and a
   time-domain L1;
2. the DiT ("the base model") on the generic sound only, with generic prompts (the engine's
   v-objective): a base that knows nothing of beats, so that the demo's fine-tune on the producer's
   beats has somewhere to move *to*.

Nothing here reads the demo dataset's beats or recordings for training (the clips 05 fine-tunes
on): they are only used at the end to measure how well the VAE reconstructs them.

**Status (2026-12-02, measured, docs/benchmarks.md "Tiny SAO weights"): not good enough to ship.**
500 VAE steps (batch 4 × 0.37 s, ~7 min) do not yet reconstruct beats — 07's metrics of
decode(encode(beat)) stay far from the beat's — and 600 DiT steps leave its loss at ~0.97 (from
0.98). ``models._build_sao`` does not read the file this writes; the tiny model keeps random weights.
What was found on the way is in :func:`revive` (the engine's initialisation leaves this 4-channel
VAE's output independent of its input).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SR = 44100
SEED = 0
GENERIC_KINDS = {
    "pad": ["a warm ambient pad chord", "soft synth pad, slow and calm", "an airy sustained chord"],
    "bell": ["gentle bell tones", "a glassy bell melody", "soft chimes ringing"],
    "pluck": ["a plucked melody", "a gentle harp-like pluck line", "soft plucked notes"],
    "swell": ["a wind-like noise swell", "ocean waves, filtered noise", "a breathy noise texture"],
    "drone": ["a low drone", "a deep humming tone", "a slow evolving drone"],
}


# ---------------------------------------------------------------------------------------------
# material


def _tone(f0: float, n: int, partials: list[tuple[float, float]], rng) -> np.ndarray:
    t = np.arange(n) / SR
    out = np.zeros(n)
    for ratio, amp in partials:
        out += amp * np.sin(2 * np.pi * f0 * ratio * t + rng.uniform(0, 2 * np.pi))
    return out


def _notes(n: int, rng, every: float, decay: float, partials) -> np.ndarray:
    out = np.zeros(n)
    step = int(every * SR)
    root = rng.integers(48, 72)
    scale = [0, 2, 4, 7, 9, 12]
    for at in range(0, n, step):
        f0 = 440 * 2 ** ((root + rng.choice(scale) - 69) / 12)
        length = min(n - at, int(decay * 6 * SR))
        env = np.exp(-np.arange(length) / (decay * SR)) * np.minimum(1, np.arange(length) / (0.004 * SR))
        out[at : at + length] += _tone(f0, length, partials, rng) * env
    return out


def generic_sound(kind: str, seconds: float, rng) -> np.ndarray:
    """One stereo example of a generic, non-percussive sound (float32, (2, n), peak ~0.5)."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    if kind == "pad":
        root = rng.integers(40, 60)
        x = sum(
            _tone(440 * 2 ** ((root + iv - 69) / 12) * (1 + d), n, [(1, 1), (2, 0.4), (3, 0.2), (4, 0.1)], rng)
            for iv in (0, rng.choice([3, 4]), 7)
            for d in (-0.003, 0.003)
        )
        x *= np.minimum(1, t / rng.uniform(0.3, 1.0))
    elif kind == "bell":
        x = _notes(n, rng, rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.8), [(1, 1), (2.76, 0.5), (5.4, 0.25), (8.9, 0.1)])
    elif kind == "pluck":
        x = _notes(n, rng, rng.uniform(0.2, 0.5), rng.uniform(0.08, 0.25), [(k, 1 / k) for k in range(1, 9)])
    elif kind == "swell":
        from scipy.signal import butter, sosfilt

        lo, hi = sorted(rng.uniform(200, 6000, size=2))
        x = sosfilt(butter(2, [lo, hi + 200], btype="band", fs=SR, output="sos"), rng.standard_normal(n))
        x *= 0.6 + 0.4 * np.sin(2 * np.pi * t / rng.uniform(1.5, 4.0) + rng.uniform(0, 6))
    else:  # drone
        f0 = rng.uniform(40, 110)
        x = _tone(f0, n, [(1, 1), (2, 0.5), (3, 0.3), (5, 0.1)], rng)
        x *= 1 + 0.2 * np.sin(2 * np.pi * 0.3 * t)
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.3, 0.7)
    pan = rng.uniform(-0.5, 0.5)
    return np.stack([x * (1 - pan) / 1.5, x * (1 + pan) / 1.5]).astype(np.float32)


def generic_set(count: int, seconds: float, seed: int) -> list[tuple[np.ndarray, str]]:
    rng = np.random.default_rng(seed)
    kinds = sorted(GENERIC_KINDS)
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        out.append((generic_sound(kind, seconds, rng), str(rng.choice(GENERIC_KINDS[kind]))))
    return out


def beat_set(count: int, seconds: float, seed: int) -> list[np.ndarray]:
    """Synthetic beats of every style at seeds (>= 1000) and tempi the demo's beats do not use."""
    from stablebeat_utils import demo

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        style = demo.STYLES[i % len(demo.STYLES)]
        bpm = float(rng.choice([75, 88, 92, 100, 105, 118, 124, 135, 145, 160]))
        key = str(rng.choice(demo.KEYS))
        y = demo.make_style_beat(style, bpm, key, str(rng.choice(["major", "minor"])), seconds, 1000 + seed + i)
        out.append(np.asarray(y, dtype=np.float32).reshape(-1, y.shape[-1])[:2])
    return [np.repeat(y, 2, axis=0) if y.shape[0] == 1 else y for y in out]


def crops(pool: list[np.ndarray], batch: int, length: int, rng) -> np.ndarray:
    out = []
    for _ in range(batch):
        y = pool[rng.integers(len(pool))]
        at = rng.integers(0, y.shape[-1] - length)
        out.append(y[:, at : at + length])
    return np.stack(out)


# ---------------------------------------------------------------------------------------------
# training


def vae_losses(perceptual: bool = False, l1: float = 0.1, stereo: str = "lr"):
    """The engine's autoencoder reconstruction loss (stable-audio-tools training/autoencoders.py:
    auraloss's sum-and-difference multi-resolution STFT loss, perceptually weighted) without its
    smallest scale and its second (L/R) STFT loss, to fit 2 CPU cores; its KL of the VAE bottleneck at
    1e-4; a small time-domain L1. auraloss directly: the engine's ``training.losses`` package needs
    ``audiotools`` (descript-audiotools), which the course does not install."""
    import auraloss
    import torch

    scales = [2048, 1024, 512, 256, 128, 64]
    args = {"fft_sizes": scales, "hop_sizes": [s // 4 for s in scales], "win_lengths": scales}
    cls = auraloss.freq.SumAndDifferenceSTFTLoss if stereo == "sd" else auraloss.freq.MultiResolutionSTFTLoss
    sd = cls(sample_rate=SR, perceptual_weighting=perceptual, **args)

    def total(info):
        reals, decoded = info["reals"], info["decoded"]
        parts = {
            "mrstft": sd(reals, decoded),
            "kl": 1e-4 * info["kl"],
            "l1": l1 * torch.nn.functional.l1_loss(decoded, reals),
        }
        return sum(parts.values()), parts

    return total


#: weight-norm gain given to every conv of the untrained VAE (see :func:`revive`)
VAE_INIT_GAIN = 0.75
#: initial bias of the bottleneck's scale channels (softplus(-5) = 0.007: a nearly noise-free start)
SCALE_INIT_BIAS = -5.0


def revive(ae, gain: float = VAE_INIT_GAIN) -> int:
    """Set the weight-norm magnitude ``g`` of every conv of the VAE to ``gain``; return how many.

    The engine's initialisation (kaiming-uniform directions, ``g = |v|`` ≈ 0.58 per layer) leaves this
    4-channel oobleck's output nearly independent of its input: decode(encode(x)) is a constant DC
    whatever x (measured: 3 different beats → the same output, RMS 0.478, mean −0.416), and 80 training
    steps only moved that constant. At 0.7–0.8 the signal survives the five blocks; at 0.9 and above it
    grows without bound (measured: output std 7–12 for inputs of 0.05–0.3).
    """
    import torch

    n = 0
    with torch.no_grad():
        for name, p in ae.named_parameters():
            if name.endswith("weight_g"):
                p.fill_(gain)
                n += 1
        # the encoder's last conv gives the VAE bottleneck (mean, scale): start its noise small
        # (softplus(-5) = 0.007) so that the latent carries the mean from step one; the KL term
        # then decides how much noise the latent keeps
        last = [m for m in ae.encoder.modules() if isinstance(m, torch.nn.Conv1d)][-1]
        last.bias[last.out_channels // 2 :] = SCALE_INIT_BIAS
    return n


def train_vae(
    model, pool: list[np.ndarray], steps: int, batch: int, length: int, lr: float, log, **loss_args
) -> list[float]:
    import torch
    from tqdm.auto import tqdm

    ae = model.pretransform.model
    ae.train().requires_grad_(True)  # the config freezes the encoder (fine-tunes never touch the VAE)
    log(f"VAE: weight-norm gain {VAE_INIT_GAIN} on {revive(ae)} convs")
    losses_fn = vae_losses(**loss_args)
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, betas=(0.8, 0.99))
    rng = np.random.default_rng(SEED + 1)
    torch.manual_seed(SEED + 1)  # the bottleneck samples its latent: torch's own seed differs per process
    curve = []
    for step in tqdm(range(steps), desc="VAE", unit="step"):
        reals = torch.from_numpy(crops(pool, batch, length, rng))
        latents, info = ae.encode(reals, return_info=True)
        info.update(reals=reals, decoded=ae.decode(latents))
        loss, _ = losses_fn(info)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        curve.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            log(f"vae step {step}: loss {curve[-1]:.4f} (median of last 50: {np.median(curve[-50:]):.4f})")
    ae.eval().requires_grad_(False)
    return curve


def encode_all(model, items: list[tuple[np.ndarray, str]]) -> list[tuple]:
    import torch

    torch.manual_seed(SEED + 2)
    out = []
    with torch.no_grad():
        for y, prompt in items:
            out.append((model.pretransform.encode(torch.from_numpy(y)[None])[0], prompt, y.shape[-1] / SR))
    return out


def train_dit(model, latents: list[tuple], steps: int, batch: int, frames: int, lr: float, log) -> list[float]:
    """The engine's v-objective (training/diffusion.py) with its sampler's schedule, uniform t, 10 % CFG dropout."""
    import torch
    from stable_audio_tools.inference.sampling import get_alphas_sigmas
    from tqdm.auto import tqdm

    dit = model.model
    params = list(dit.parameters()) + list(model.conditioner.parameters())
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-3)
    rng = np.random.default_rng(SEED + 3)
    torch.manual_seed(SEED + 3)
    seconds_per_frame = model.pretransform.downsampling_ratio / SR
    curve = []
    dit.train()
    for step in tqdm(range(steps), desc="DiT", unit="step"):
        xs, meta = [], []
        for _ in range(batch):
            lat, prompt, total = latents[rng.integers(len(latents))]
            at = int(rng.integers(0, lat.shape[-1] - frames))
            xs.append(lat[:, at : at + frames])
            meta.append({"prompt": prompt, "seconds_start": at * seconds_per_frame, "seconds_total": total})
        x = torch.stack(xs)
        cond = model.conditioner(meta, "cpu")
        t = torch.rand(batch)
        alphas, sigmas = (v[:, None, None] for v in get_alphas_sigmas(t))
        noise = torch.randn_like(x)
        out = model(x * alphas + noise * sigmas, t, cond=cond, cfg_dropout_prob=0.1)
        loss = torch.nn.functional.mse_loss(out, noise * alphas - x * sigmas)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        curve.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"dit step {step}: loss {curve[-1]:.4f} (median of last 100: {np.median(curve[-100:]):.4f})")
    dit.eval()
    return curve


# ---------------------------------------------------------------------------------------------
# measuring


def recon_distance(model, clips: list[np.ndarray]) -> dict[str, float]:
    """07's four signal metrics of decode(encode(x)) vs x: mean |log ratio| per metric over ``clips``."""
    import torch
    from stablebeat_utils.evaluate_metrics import signal_metrics

    torch.manual_seed(SEED + 4)
    per = {}
    with torch.no_grad():
        for y in clips:
            rt = model.pretransform.model.decode(model.pretransform.model.encode(torch.from_numpy(y)[None]))[0].numpy()
            a, b = signal_metrics(y, SR), signal_metrics(rt, SR)
            for k in a:
                if a[k] > 0 and b[k] > 0:
                    per.setdefault(k, []).append(abs(math.log(b[k] / a[k])))
    return {k: round(float(np.mean(v)), 4) for k, v in per.items()}


def demo_clips(count: int, seconds: float) -> list[np.ndarray]:
    """Excerpts of the demo dataset (the beats 05 fine-tunes on): measured on, never trained on."""
    from stablebeat_utils import audio, demo

    folder = demo.ensure_demo_dataset()
    out = []
    for path in sorted(folder.glob("*.ogg")):
        y, _ = audio.load(path, sr=SR)
        y = audio.to_stereo(y)
        mid = y.shape[-1] // 2
        out.append(np.ascontiguousarray(y[:, mid : mid + int(seconds * SR)]))
    return out[:count]


# ---------------------------------------------------------------------------------------------


def untrained_tiny_sao(seed: int):
    """tiny:sao's network (its config, the engine's initial weights under ``seed``), as models._build_sao builds it."""
    import torch
    from stablebeat_utils import models

    models.ensure_tiny_models(["t5"])
    config = json.loads((models.TINY_DATA / "sao_model_config.json").read_text(encoding="utf-8"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.create_sao_model(config)


def main(argv=None) -> int:
    import torch
    from safetensors.torch import save_file
    from stablebeat_utils import models

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vae-steps", type=int, default=400)
    ap.add_argument("--dit-steps", type=int, default=1500)
    ap.add_argument("--out", default=str(models.TINY_DATA / "sao_weights.safetensors"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-before", action="store_true", help="skip measuring the untrained VAE")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", flush=True)

    model = untrained_tiny_sao(SEED)
    generic = generic_set(100, 2.5, SEED)
    beats = beat_set(12, 8.0, SEED)
    held_generic = [y for y, _ in generic_set(5, 1.5, SEED + 99)]
    held_beats = demo_clips(11, 1.5)
    log(f"material: {len(generic)} generic sounds x 2.5 s, {len(beats)} style beats x 8 s")
    if args.skip_before:
        before = {}
    else:
        before = {"generic": recon_distance(model, held_generic), "demo_beats": recon_distance(model, held_beats)}
    log(f"VAE round trip before (mean |log ratio| of 07's metrics): {before}")
    pool = [y for y, _ in generic] + beats
    vae_curve = train_vae(model, pool, args.vae_steps, 4, 16384, 1e-3, log, perceptual=False, l1=1.0, stereo="lr")
    after = {"generic": recon_distance(model, held_generic), "demo_beats": recon_distance(model, held_beats)}
    log(f"VAE round trip after: {after}")
    t_vae = time.perf_counter() - t0
    latents = encode_all(model, generic)
    std = float(torch.cat([lat.flatten() for lat, _, _ in latents]).std())
    dit_curve = train_dit(model, latents, args.dit_steps, 16, 22, 1e-3, log)
    figures = {
        "vae_steps": args.vae_steps,
        "dit_steps": args.dit_steps,
        "vae_loss_first50_median": float(np.median(vae_curve[:50])),
        "vae_loss_last50_median": float(np.median(vae_curve[-50:])),
        "dit_loss_first100_median": float(np.median(dit_curve[:100])),
        "dit_loss_last100_median": float(np.median(dit_curve[-100:])),
        "latent_std": round(std, 4),
        "recon_before": before,
        "recon_after": after,
        "vae_seconds": round(t_vae),
        "total_seconds": round(time.perf_counter() - t0),
        "torch": torch.__version__,
    }
    state = models._plain_state_dict(model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"stablebeat": json.dumps(figures)})
    log(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {json.dumps(figures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
