"""Train the tiny Stable Audio Open stand-in (``tiny:sao``) on CPU: the weights the demo ships (issue 24).

    .venv/bin/python scripts/train_tiny.py                # writes stablebeat_utils/data/tiny/sao_weights.safetensors
    .venv/bin/python scripts/train_tiny.py --work /tmp/tt  # keeps each stage's result: a re-run resumes

Why: with random weights the tiny model's VAE decoder does not invert its encoder, so whatever the
DiT learns in the demo's fine-tune is lost in the decoding, and 07 cannot show that the fine-tune
moved toward the producer's beats. This trains ``tiny:sao`` (architecture
``stablebeat_utils/data/tiny/sao_model_config.json``, unchanged; loaded by ``models._build_sao``
through the same strict loader as real checkpoints) on one CPU thread, seeded, in three stages:

1. **VAE, stage a** — encoder + decoder + bottleneck from :func:`revive`'s initialisation on random
   crops (8 x 8192 samples) of the demo's own beats (the issue allows it: the VAE is what a
   producer's real SAO has already learned), generic synthetic sounds (pads, bells, plucks, noise
   swells, drones) and synthetic beats of every style at other seeds and tempi; the engine's
   multi-resolution STFT loss, a time-domain L1, the bottleneck's KL at 1e-6; AdamW, cosine lr.
2. **VAE, stage b** — the same, continued at a lower lr, plus an L1 between log RMS envelopes (the
   decoder otherwise smears attacks) and an L1 between log-mel spectra on CLAP's front end (it
   otherwise fills the quiet between hits, which CLAP's dB scale magnifies: 07's Fréchet CLAP
   distance could not fall).
3. **DiT** ("the base model") on the generic sounds only, with generic prompts (the engine's
   v-objective): a base that knows nothing of beats, so that the demo's fine-tune on the producer's
   beats has somewhere to move *to*.

The figures of a run (round trip of the demo beats on 07's metrics before and after each VAE stage,
the Fréchet CLAP distance of the round trip, losses, seconds) are printed and stored in the file's
metadata (``safetensors`` ``__metadata__["stablebeat"]``); docs/benchmarks.md, "Tiny SAO weights",
quotes them. One torch thread: on this 2-core machine two threads made a VAE step 20-30x slower.
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


def vae_losses(
    perceptual: bool = False,
    l1: float = 0.1,
    stereo: str = "sd",
    kl: float = 1e-4,
    envelope: float = 0.0,
    mel: float = 0.0,
):
    """The engine's autoencoder reconstruction loss (stable-audio-tools training/autoencoders.py:
    auraloss's sum-and-difference multi-resolution STFT loss: with per-channel magnitudes alone this
    VAE answered every beat with one steady anti-phase L/R pair that cancels in the mono mix 07 and
    CLAP hear) on 6 scales, a small time-domain L1, the KL of the VAE
    bottleneck weighted ``kl`` (at the engine's 1e-4 this VAE's posterior collapsed once: latent
    noise 4x its signal, every input decoded to the same sound; both stages use 1e-6); optionally (the second
    VAE stage) an L1 between log RMS envelopes (``envelope``: 07's transient frames — the decoder otherwise smears attacks) and an L1 between
    log-mel spectrograms on CLAP's front end (``mel``: 64 Slaney mel bands 50 Hz-14 kHz, 1024-point
    window — what 02 and 07 embed; the decoder otherwise fills the quiet between hits with a noise
    floor that CLAP's dB scale magnifies). auraloss directly: the engine's ``training.losses``
    package needs ``audiotools`` (descript-audiotools), which the course does not install."""
    import auraloss
    import torch
    import torchaudio

    scales = [2048, 1024, 512, 256, 128, 64]
    args = {"fft_sizes": scales, "hop_sizes": [s // 4 for s in scales], "win_lengths": scales}
    cls = auraloss.freq.SumAndDifferenceSTFTLoss if stereo == "sd" else auraloss.freq.MultiResolutionSTFTLoss
    sd = cls(sample_rate=SR, perceptual_weighting=perceptual, **args)
    melspec = torchaudio.transforms.MelSpectrogram(
        SR, n_fft=1024, hop_length=441, n_mels=64, f_min=50, f_max=14000, norm="slaney", mel_scale="slaney"
    )

    def log_env(y):  # log mean square of the mono mix over 512-sample frames, hop 128
        ms = torch.nn.functional.avg_pool1d(y.mean(dim=1, keepdim=True) ** 2, 512, 128)
        return torch.log10(ms + 1e-7)

    def log_mel(y):  # of the mono mix, as CLAP hears it; log10 power floored at -70 dB (CLAP's: -100 dB)
        return torch.log10(melspec(y.mean(dim=1)) + 1e-7)

    def total(info):
        reals, decoded = info["reals"], info["decoded"]
        parts = {
            "mrstft": sd(reals, decoded),
            "kl": kl * info["kl"],
            "l1": l1 * torch.nn.functional.l1_loss(decoded, reals),
        }
        if envelope:
            parts["envelope"] = envelope * torch.nn.functional.l1_loss(log_env(decoded), log_env(reals))
        if mel:
            parts["mel"] = mel * torch.nn.functional.l1_loss(log_mel(decoded), log_mel(reals))
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
    model,
    pool: list[np.ndarray],
    steps: int,
    lr: float,
    log,
    seed: int,
    fresh: bool,
    batch: int = 8,
    length: int = 8192,
    **loss_args,
) -> list[float]:
    """``steps`` AdamW steps on random crops of ``pool`` (``batch`` x ``length`` samples), the learning
    rate on a cosine from ``lr`` to 3 % of it. ``fresh``: start from :func:`revive`'s initialisation."""
    import torch
    from tqdm.auto import tqdm

    ae = model.pretransform.model
    ae.train().requires_grad_(True)  # the config freezes the encoder (fine-tunes never touch the VAE)
    if fresh:
        log(f"VAE: weight-norm gain {VAE_INIT_GAIN} on {revive(ae)} convs")
    losses_fn = vae_losses(**loss_args)
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, betas=(0.8, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * i / steps)))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # the bottleneck samples its latent: torch's own seed differs per process
    curve = []
    for step in tqdm(range(steps), desc="VAE", unit="step"):
        reals = torch.from_numpy(crops(pool, batch, length, rng))
        latents, info = ae.encode(reals, return_info=True)
        info.update(reals=reals, decoded=ae.decode(latents))
        loss, parts = losses_fn(info)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        sched.step()
        curve.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            detail = ", ".join(f"{k} {v.item():.4f}" for k, v in parts.items())
            with torch.no_grad():  # posterior collapse shows as noise (softplus(scale)) >> the means' spread
                mean, scale = ae.encoder(reals).chunk(2, dim=1)
                noise = torch.nn.functional.softplus(scale).mean().item()
                a, b = reals.mean(dim=1).flatten(), info["decoded"].mean(dim=1).flatten()  # the mono mix
                corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
            log(
                f"vae step {step}: loss {curve[-1]:.4f} ({detail}; median of last 100: {np.median(curve[-100:]):.4f}); "
                f"latent means' std {mean.std().item():.3f}, noise std {noise:.3f}; mono mix: "
                f"correlation {corr:.3f}, RMS out/in {b.std().item() / a.std().item():.2f}"
            )
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
    from stablebeat_utils.evaluate_metrics import signal_metrics

    per = {}
    for y, rt in zip(clips, round_trip(model, clips)):
        a, b = signal_metrics(y, SR), signal_metrics(rt, SR)
        for k in a:
            if a[k] > 0 and b[k] > 0:
                per.setdefault(k, []).append(abs(math.log(b[k] / a[k])))
    return {k: round(float(np.mean(v)), 4) for k, v in per.items()}


def demo_clips(count: int, seconds: float) -> list[np.ndarray]:
    """The middle ``seconds`` of each beat of the demo dataset (the beats 05 fine-tunes on)."""
    from stablebeat_utils import audio, demo

    folder = demo.ensure_demo_dataset()
    out = []
    for path in sorted(folder.glob("*.ogg")):
        y, _ = audio.load(path, sr=SR)
        y = audio.to_stereo(y)
        mid = y.shape[-1] // 2
        out.append(np.ascontiguousarray(y[:, mid - int(seconds * SR) // 2 : mid + int(seconds * SR) // 2]))
    return out[:count]


def round_trip(model, clips: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    torch.manual_seed(SEED + 4)
    ae = model.pretransform.model
    with torch.no_grad():
        return [ae.decode(ae.encode(torch.from_numpy(y)[None]))[0].numpy() for y in clips]


def clap_check(originals: list[np.ndarray], copies: list[np.ndarray]) -> dict[str, float]:
    """07's Fréchet CLAP distance (tiny:clap, one window per clip) of ``copies`` to ``originals``, and
    of ``originals`` at -6 dB to themselves (how much level alone moves it): the VAE must keep what
    CLAP hears before any fine-tune can bring generations closer to the training clips."""
    import librosa
    from stablebeat_utils import clap
    from stablebeat_utils.evaluate_metrics import frechet_distance

    backend = clap.make_backend("transformers", "tiny:clap")

    def embed(ys):
        mono = [librosa.resample(y.mean(axis=0), orig_sr=SR, target_sr=backend.sampling_rate) for y in ys]
        return backend.embed_audio(mono)

    ref = embed(originals)
    return {
        "frechet_round_trip": round(frechet_distance(embed(copies), ref), 4),
        "frechet_minus_6db": round(frechet_distance(embed([y * 0.5 for y in originals]), ref), 4),
    }


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


def _stage(work: Path | None, name: str, model, train, log) -> dict:
    """Run one training stage, or load its result from ``work`` when a previous run saved it."""
    import torch

    ae = model.pretransform.model
    saved = work / f"{name}.pt" if work else None
    if saved and saved.exists():
        ae.load_state_dict(torch.load(saved, weights_only=True))
        log(f"{name}: loaded {saved}")
        return {}
    t = time.perf_counter()
    curve = train()
    if saved:
        saved.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ae.state_dict(), saved)
    return {
        f"{name}_loss_first100_median": round(float(np.median(curve[:100])), 4),
        f"{name}_loss_last100_median": round(float(np.median(curve[-100:])), 4),
        f"{name}_seconds": round(time.perf_counter() - t),
    }


def main(argv=None) -> int:
    import torch
    from safetensors.torch import save_file
    from stablebeat_utils import models

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vae-a-steps", type=int, default=2000, help="VAE stage a: spectra and samples")
    ap.add_argument("--vae-a-lr", type=float, default=1e-3, help="2e-3 drifted toward a collapsed posterior (measured)")
    ap.add_argument("--vae-b-steps", type=int, default=1500, help="VAE stage b: + envelopes and CLAP's mel bands")
    ap.add_argument("--vae-b-lr", type=float, default=7e-4)
    ap.add_argument("--vae-a-kl", type=float, default=1e-6, help="KL weight, stage a")
    ap.add_argument("--vae-b-kl", type=float, default=1e-6, help="KL weight, stage b")
    ap.add_argument("--envelope", type=float, default=1.0, help="weight of the log-envelope loss (stage b)")
    ap.add_argument("--mel", type=float, default=1.0, help="weight of the log-mel loss (stage b)")
    ap.add_argument("--dit-steps", type=int, default=800)
    ap.add_argument("--out", default=str(models.TINY_DATA / "sao_weights.safetensors"))
    ap.add_argument("--work", default=None, help="folder for each stage's result: a re-run resumes from them")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: 2 threads run ~30x slower here)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    work = Path(args.work) if args.work else None
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", flush=True)

    model = untrained_tiny_sao(SEED)
    demo_beats = demo_clips(11, 8.0)
    generic = generic_set(60, 2.5, SEED)
    pool = demo_beats + [y for y, _ in generic] + beat_set(12, 8.0, SEED)
    log(f"material: {len(demo_beats)} demo beats x 8 s, {len(generic)} generic sounds x 2.5 s, 12 style beats x 8 s")
    figures = {"recon_before": recon_distance(model, demo_beats)}
    figures.update(
        _stage(
            work,
            "vae_a",
            model,
            lambda: train_vae(model, pool, args.vae_a_steps, args.vae_a_lr, log, SEED + 1, True, kl=args.vae_a_kl),
            log,
        )
    )
    figures["recon_a"] = recon_distance(model, demo_beats)
    log(f"VAE round trip after a (mean |log ratio| of 07's metrics): {figures['recon_a']}")
    b_args = {"kl": args.vae_b_kl, "envelope": args.envelope, "mel": args.mel}
    figures.update(
        _stage(
            work,
            "vae_b",
            model,
            lambda: train_vae(model, pool, args.vae_b_steps, args.vae_b_lr, log, SEED + 5, False, **b_args),
            log,
        )
    )
    figures["recon_b"] = recon_distance(model, demo_beats)
    figures.update(clap_check(demo_beats, round_trip(model, demo_beats)))
    log(
        f"VAE round trip after b: {figures['recon_b']}; CLAP: {figures['frechet_round_trip']} (-6 dB: {figures['frechet_minus_6db']})"
    )
    latents = encode_all(model, generic)
    figures["latent_std"] = round(float(torch.cat([lat.flatten() for lat, _, _ in latents]).std()), 4)
    t = time.perf_counter()
    dit_curve = train_dit(model, latents, args.dit_steps, 16, 22, 1e-3, log)
    figures.update(
        dit_loss_first100_median=round(float(np.median(dit_curve[:100])), 4),
        dit_loss_last100_median=round(float(np.median(dit_curve[-100:])), 4),
        dit_seconds=round(time.perf_counter() - t),
        args=vars(args) | {"out": None, "work": None},
        total_seconds=round(time.perf_counter() - t0),
        torch=torch.__version__,
    )
    state = models._plain_state_dict(model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"stablebeat": json.dumps(figures)})
    log(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {json.dumps(figures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
