"""Generate beats with the base model and the fine-tune, same prompts, same seeds (notebook 06_generate).

The card's settings are the defaults: 200 steps of the ``dpmpp-3m-sde`` sampler over SAO's noise
range (sigma 500 → 0.3), classifier-free guidance 7, ``seconds_start`` 0 and ``seconds_total`` 47.
They are passed to stable-audio-tools explicitly: 0.0.20 changed ``generate_diffusion_cond``'s
defaults to the ``euler`` sampler and APG guidance (``apg_scale=1.0``), which is not how SAO 1.0
or the card generated; ``apg_scale=0.0`` is plain CFG.

What :func:`run` writes, under ``RUN_DIR/06_generate/``:

- ``audio/<model>/<prompt_idx>-seed<seed>.wav`` — 44.1 kHz stereo, cut to ``seconds_total`` and
  with true trailing silence trimmed (the model always generates its whole window,
  ``sample_size`` samples ≈ 47.5 s for SAO, and is told by ``seconds_total`` where to stop);
- ``generations.jsonl`` — one row per output, keyed ``f"{model}-{prompt_idx}-{seed}"`` (model is
  ``base``, ``finetune`` or ``focus``), with the prompt, seed, settings, duration and ``path`` relative to
  RUN_DIR;
- ``loops/<model>/<prompt_idx>-seed<seed>-loop-<n>bars-<bpm>bpm-<key>.wav`` (``loops`` on, the
  default) — a bar-aligned, click-free 24-bit loop of each generation at its prompted tempo, on the
  beat grid found in the audio (``loops.py`` says how); a tempo the audio does not have is
  flagged (``bpm-unsure`` in the name), a clip too short for one bar gets none and the reason;
  ``loops.jsonl`` holds one row per generation (its loop, or why there is none);
- ``stage.json`` — the stage record.

When ``05b_focus`` exported a second stage (``RUN_DIR/05b_focus/export``), it is a third model,
``focus``, and the prompts gain one training prompt per tag it focused on (``05b_focus/focus.json``).

Both models see the same prompt with the same seed, so the starting noise is identical and any
difference comes from the weights. Models are loaded once each (a LoRA fine-tune is applied onto
the already-loaded base model, with ``lora_strength`` through the engine's own
``set_lora_strength``). The stage is resumable: a re-run skips outputs whose row exists, and the
batches are formed from the whole prompt list, so an interrupted batch regenerates identically.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from . import layout
from . import modelspec, preflight_inference
from .runs import JsonlLog, Run, read_jsonl
from . import stage
from .settings import DTYPES
from .stage import begin

log = logging.getLogger(__name__)

STAGE = layout.GENERATE
HUB_ID = modelspec.SAO.known.hub_id
CARD_PROMPTS_FILE = Path(__file__).parent / "data" / "card_prompts.yaml"
BLIND_FILE = layout.BLIND
MODELS = ("base", "finetune", "focus")  # focus: 05b_focus's second stage, when exported
# samplers per diffusion objective: modelspec (SAO 1.0, a "v" model: k-diffusion's and v-ddim)
SAMPLERS = modelspec.V_SAMPLERS


class GenerateError(ValueError):
    """Input that cannot be generated from; the message is meant for a person."""


@dataclass(frozen=True)
class Settings:
    """How one generation is sampled; the defaults are the StableBeaT card's."""

    steps: int = 200
    cfg_scale: float = 7.0
    sampler_type: str = "dpmpp-3m-sde"
    sigma_min: float = 0.3
    sigma_max: float = 500.0
    seconds_start: float = 0.0
    seconds_total: float = 47.0
    apg_scale: float = 0.0  # 0 = plain CFG as SAO 1.0 was used; 0.0.20's default is 1.0 (APG)

    def as_dict(self) -> dict:
        return asdict(self)


CARD_SETTINGS = Settings()


# -- prompts ----------------------------------------------------------------------------------


def card_prompts() -> list[str]:
    """The seven prompts of the StableBeaT card, verbatim."""
    return list(yaml.safe_load(CARD_PROMPTS_FILE.read_text(encoding="utf-8"))["prompts"])


def read_prompts(prompts_file: str = "") -> list[str]:
    """Prompts from ``prompts_file`` ("" = the card's seven).

    ``.yaml``/``.yml``: a list, or a mapping with a ``prompts`` list; ``.jsonl``: rows with a
    ``prompt`` field (e.g. ``04_prompts/prompts.jsonl``); anything else: one prompt per line,
    blank lines and ``#`` comments skipped.
    """
    if not prompts_file:
        return card_prompts()
    path = Path(prompts_file).expanduser()
    if not path.is_file():
        raise GenerateError(f"prompts_file {str(path)!r}: file not found (leave it empty for the card's prompts)")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
            items = data.get("prompts") if isinstance(data, dict) else data
            if not isinstance(items, list):
                raise GenerateError(f"{path}: expected a list of prompts or a mapping with a 'prompts' list")
        elif path.suffix == ".jsonl":
            items = [row.get("prompt") for row in read_jsonl(path)]
        else:
            items = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise GenerateError(f"{path}: cannot be read ({exc})") from exc
    prompts = [str(p).strip() for p in items if isinstance(p, str) and p.strip()]
    if len(prompts) != len(items):
        raise GenerateError(
            f"{path}: {len(items) - len(prompts)} of {len(items)} entries are not non-empty text prompts"
        )
    if not prompts:
        raise GenerateError(f"{path}: no prompts in the file")
    return prompts


# -- checks -----------------------------------------------------------------------------------


def max_seconds(model_config: dict) -> float:
    """The longest audio the model makes: its window, ``sample_size / sample_rate``."""
    return model_config["sample_size"] / model_config["sample_rate"]


def check_prompt(prompt: str) -> str:
    prompt = (prompt or "").strip()
    if not prompt:
        raise GenerateError("the prompt is empty: describe the beat (genre, mood, instruments, BPM, key)")
    return prompt


def check_settings(settings: Settings, model_config: dict | None = None) -> None:
    """Raise :class:`GenerateError` naming the setting that cannot be used."""
    s = settings
    if int(s.steps) < 1:
        raise GenerateError(f"steps must be at least 1 (got {s.steps})")
    if s.cfg_scale < 0:
        raise GenerateError(f"cfg_scale must be 0 or more (got {s.cfg_scale}); the card uses 7")
    samplers = modelspec.from_config(model_config).samplers if model_config is not None else modelspec.ALL_SAMPLERS
    if s.sampler_type not in samplers:
        raise GenerateError(f"sampler_type {s.sampler_type!r} is not one of {', '.join(samplers)}")
    if not 0 < s.sigma_min < s.sigma_max:
        raise GenerateError(f"need 0 < sigma_min < sigma_max (got {s.sigma_min}, {s.sigma_max}); SAO uses 0.3 and 500")
    if s.seconds_start < 0:
        raise GenerateError(f"seconds_start must be 0 or more (got {s.seconds_start})")
    if s.seconds_total <= 0:
        raise GenerateError(f"the duration (seconds_total) must be more than 0 s (got {s.seconds_total})")
    if model_config is not None and s.seconds_total > max_seconds(model_config) + 1e-6:
        raise GenerateError(
            f"the duration {s.seconds_total:g} s is longer than this model can make: at most "
            f"{max_seconds(model_config):.2f} s (sample_size {model_config['sample_size']} / sample_rate "
            f"{model_config['sample_rate']})"
        )


# -- models -----------------------------------------------------------------------------------


def _lora_config_of(path: Path) -> dict | None:
    """The ``lora_config`` a stable-audio-tools 0.0.20 LoRA safetensors carries, else None."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
    except Exception:
        return None
    return json.loads(meta["lora_config"]) if "lora_config" in meta else None


@dataclass
class FinetuneSpec:
    """Where the fine-tune is: a full model folder, or LoRA adapters for the base model."""

    kind: str  # "full" or "lora"
    path: Path  # the folder (full) or the adapter file (lora)


def default_finetune_path(run_dir: str) -> Path:
    return layout.export_dir(Run(run_dir).path(layout.TRAIN))


def find_finetune(
    run_dir: str, finetune_model: str = "", lora_strength: float = 1.0
) -> tuple[FinetuneSpec | None, str]:
    """Resolve the fine-tune ("" = ``RUN_DIR/05_train/export``): ``(spec or None, message)``.

    A folder with ``model_config.json`` + ``model.safetensors`` is a full model — for a LoRA run,
    05_train's export of the base with the adapters merged in, fp32: what 06 plays as "finetune"
    at ``lora_strength`` 1. At any other strength, the folder's one LoRA file (05_train writes
    ``lora.safetensors`` beside the merged model, in fp32) is applied onto the base model at that
    strength; a folder with only a LoRA file, or a ``.safetensors`` file with stable-audio-tools'
    ``lora_config`` metadata given directly, is always applied that way.
    """
    path = Path(finetune_model).expanduser() if finetune_model else default_finetune_path(run_dir)
    if path.is_file():
        if path.suffix == ".safetensors" and _lora_config_of(path) is not None:
            return FinetuneSpec("lora", path), f"LoRA adapters {path}"
        return None, (
            f"{path}: not a fine-tune — give a folder with model_config.json + model.safetensors, "
            "or a LoRA .safetensors written by 05_train"
        )
    if path.is_dir():
        loras = sorted(p for p in path.glob("*.safetensors") if _lora_config_of(p) is not None)
        full = (path / layout.MODEL_CONFIG).is_file() and (path / layout.MODEL_WEIGHTS).is_file()
        if full and (float(lora_strength) == 1.0 or not loras):  # exactly what 05_train exported
            return FinetuneSpec("full", path), f"fine-tuned model {path}"
        if len(loras) == 1:  # a LoRA run at another strength: the adapters onto the base model
            return FinetuneSpec("lora", loras[0]), f"LoRA adapters {loras[0]}"
        if len(loras) > 1:
            return None, (
                f"{path}: {len(loras)} LoRA files ({', '.join(p.name for p in loras)}); "
                "set finetune_model to the one to use"
            )
        return None, (
            f"{path}: no fine-tune in this folder (it needs model_config.json + model.safetensors, "
            "or a LoRA .safetensors) — run 05_train first, or set finetune_model"
        )
    return None, (
        f"{path}: the fine-tune was not found — run 05_train first (it exports there), "
        "or set finetune_model to a model folder or LoRA file"
    )


def load_model(source: str, device: str, dtype=None, t5_source: str = ""):
    """``(model, model_config)`` from the models module, in eval mode without gradients."""
    from . import models

    model, config = models.load_sao(source, device, t5_source=t5_source or None, dtype=dtype)
    model.eval().requires_grad_(False)
    return model, config


def apply_lora(model, model_config: dict, path: str | Path, strength: float = 1.0) -> list[str]:
    """Attach stable-audio-tools 0.0.20 LoRA adapters to ``model`` and set their strength.

    Loading is the engine's ``load_and_apply_loras`` (the same adapters 05_train saves);
    ``strength`` goes through the engine's ``set_lora_strength`` (a buffer each LoRA layer
    multiplies its update by: 0 gives the base model exactly, 1 the fine-tune as trained).
    """
    from . import compat

    compat.apply()
    from stable_audio_tools.models.lora import load_and_apply_loras, set_lora_strength

    names = load_and_apply_loras(model, [str(path)], model_config["model_type"])
    dtype = next(model.model.parameters()).dtype
    device = next(model.model.parameters()).device
    model.to(device=device, dtype=dtype)  # adapters arrive as float32 on the CPU
    model.eval().requires_grad_(False)
    set_lora_strength(model, float(strength))
    return names


def set_lora_strength(model, strength: float) -> None:
    from stable_audio_tools.models.lora import set_lora_strength as _set

    _set(model, float(strength))


# -- generation -------------------------------------------------------------------------------


def trim_audio(audio: np.ndarray, sr: int, seconds_total: float, silence_db: float = 60.0) -> tuple[np.ndarray, dict]:
    """Cut ``(channels, n)`` audio to ``seconds_total``, then trim true trailing silence.

    Silence is absolute: frames below ``-silence_db`` dBFS (librosa's RMS framing with
    ``ref=1.0``), so a quiet ending is kept and only digital near-silence goes. Audio that is all
    silence is kept at the cut length (and reported ``silent``).
    """
    import librosa

    keep = min(audio.shape[1], int(round(seconds_total * sr)))
    cut = audio[:, :keep]
    info = {"silent": False, "trimmed_s": 0.0}
    if keep == 0:
        return cut, info
    _, (_start, end) = librosa.effects.trim(np.abs(cut).max(axis=0), top_db=silence_db, ref=1.0)
    if end == 0:
        info["silent"] = True
        return cut, info
    info["trimmed_s"] = round(float(keep - end) / sr, 3)
    return cut[:, :end], info


DECODE_CONTEXT_LATENTS = 32  # latent frames decoded past the cut (1.5 s for SAO): the decoder's context


def decode(model, latents, n_samples: int):
    """Decode the latents that make the first ``n_samples`` audio samples (plus context), like the engine.

    The engine decodes the whole window (47.5 s for SAO) even when 10 s are asked for. The
    decoder is convolutional, so decoding the needed latent frames plus
    ``DECODE_CONTEXT_LATENTS`` of context gives the same first ``n_samples`` (measured on the
    tiny model: |difference| < 1e-6, under 16-bit resolution) for a fraction of the time; this
    is written here because stable-audio-tools 0.0.20 has no option for it.
    """
    pretransform = model.pretransform
    if pretransform is None:
        return latents[..., :n_samples]
    ratio = pretransform.downsampling_ratio
    keep = min(latents.shape[-1], -(-n_samples // ratio) + DECODE_CONTEXT_LATENTS)
    latents = latents[..., :keep].to(next(pretransform.parameters()).dtype)
    return pretransform.decode(latents)[..., :n_samples]


def conditioning_of(prompts: list[str], s: Settings, model_config: dict) -> list[dict]:
    """One conditioning dict per prompt: ``seconds_start`` only where the model is conditioned on it."""
    start = (
        {"seconds_start": float(s.seconds_start)}
        if modelspec.from_config(model_config).conditions("seconds_start")
        else {}
    )
    return [{"prompt": p, **start, "seconds_total": float(s.seconds_total)} for p in prompts]


def _sample(model, model_config: dict, s: Settings, conditioning: list[dict], seed, device, callback, **init):
    """The engine's sampler over the model's whole window with the course's settings; latents back.
    ``init``: ``init_audio`` and ``init_noise_level`` for a variation."""
    from stable_audio_tools.inference.generation import generate_diffusion_cond

    return generate_diffusion_cond(
        model,
        steps=int(s.steps),
        cfg_scale=float(s.cfg_scale),
        conditioning=conditioning,
        batch_size=len(conditioning),
        sample_size=int(model_config["sample_size"]),
        seed=int(seed),
        device=device,
        sampler_type=s.sampler_type,
        sigma_min=float(s.sigma_min),
        sigma_max=float(s.sigma_max),
        apg_scale=float(s.apg_scale),
        callback=callback,
        return_latents=True,
        **init,
    )


def generate_audio(
    model,
    model_config: dict,
    prompts: list[str],
    seed: int,
    settings: Settings,
    device: str,
    callback: Callable[[dict], None] | None = None,
    silence_db: float = 60.0,
) -> list[tuple[np.ndarray, dict]]:
    """Generate one output per prompt in one batch from ``seed``: ``[(audio (2, n) float32, info)]``.

    The engine draws the batch's starting noise right after ``torch.manual_seed(seed)``, so the
    same prompts, seed and settings give the same audio on the same device and dtype.
    ``callback`` gets the sampler's per-step dict (``i`` is the step).
    """
    from . import compat

    compat.apply()
    import torch

    prompts = [check_prompt(p) for p in prompts]
    check_settings(settings, model_config)
    if not 0 <= int(seed) < 2**32:
        raise GenerateError(f"seed must be between 0 and 2**32 - 1 (got {seed})")
    s = settings
    sr = int(model_config["sample_rate"])
    with torch.inference_mode():
        # the whole window is sampled (as SAO does); only the part we keep is decoded — see decode()
        latents = _sample(model, model_config, s, conditioning_of(prompts, s, model_config), seed, device, callback)
        out = decode(model, latents, int(round(s.seconds_total * sr)))
    audio = out.float().cpu().numpy()
    return [trim_audio(a, sr, s.seconds_total, silence_db) for a in audio]


# -- variations of the producer's own beat (audio-to-audio) -------------------------------------

VARIATION_MIN_SECONDS = 1.0  # shorter init audio is refused: too little for the model to vary
SILENT_DBFS = -60.0  # init audio whose sample peak is below this is refused as silent
K_SAMPLERS = tuple(s for s in SAMPLERS if s != "v-ddim")


def strength_to_noise(strength: float, settings: Settings) -> float:
    """The engine's ``init_noise_level`` for a variation ``strength`` in (0, 1].

    k-diffusion samplers start from ``init + noise × sigma``: the strength walks sigma from
    ``sigma_min`` (0: the input back) to ``sigma_max`` (1: pure noise, the input forgotten) on a
    log scale, as the sampler's own schedule spaces its steps — 0.25 is sigma ≈ 2 for SAO (clearly
    the input, re-played), 0.5 ≈ 12 (its groove, new sounds), 0.75 ≈ 76. ``v-ddim`` takes a noise
    level in 0–1 directly: the strength itself.
    """
    if not 0 < float(strength) <= 1:
        raise GenerateError(f"the variation strength must be more than 0 and at most 1 (got {strength})")
    if settings.sampler_type not in K_SAMPLERS:
        return float(strength)
    lo, hi = float(settings.sigma_min), float(settings.sigma_max)
    return float(lo * (hi / lo) ** float(strength))


def load_init_audio(path: str | Path, sr: int, max_seconds: float | None = None) -> tuple[np.ndarray, list[str]]:
    """The producer's clip as init audio: ``((2, n) float32 at ``sr``, what was converted)``.

    Mono is made stereo and another sample rate resampled (both said in the notes); unreadable,
    silent (peak under -60 dBFS) or shorter than 1 s is refused with a :class:`GenerateError`
    naming the file. Longer than ``max_seconds`` (the model's window) is cut, and said so.
    """
    from . import audio as audio_mod

    path = Path(path).expanduser()
    if not path.is_file():
        raise GenerateError(f"{path}: the init audio was not found")
    try:
        y, file_sr = audio_mod.load(path)
    except (audio_mod.AudioError, OSError, ValueError) as exc:
        raise GenerateError(f"{path}: the init audio cannot be read ({exc})") from exc
    notes = []
    if y.shape[1] / file_sr < VARIATION_MIN_SECONDS:
        raise GenerateError(
            f"{path}: the init audio is too short ({y.shape[1] / file_sr:.2f} s; a variation needs "
            f"at least {VARIATION_MIN_SECONDS:g} s)"
        )
    if audio_mod.non_finite_count(y) or audio_mod.peak_dbfs(y) < SILENT_DBFS:
        raise GenerateError(f"{path}: the init audio is silent (or holds NaN): nothing to make a variation of")
    if y.shape[0] != 2:
        notes.append(f"{y.shape[0]} channel(s) made stereo")
        y = audio_mod.to_stereo(y)
    if file_sr != sr:
        notes.append(f"resampled {file_sr} → {sr} Hz")
        y = audio_mod.resample(y, file_sr, sr)
    if max_seconds is not None and y.shape[1] > int(max_seconds * sr):
        notes.append(f"cut to the model's {max_seconds:.2f} s")
        y = y[:, : int(max_seconds * sr)]
    return np.ascontiguousarray(y, dtype=np.float32), notes


def generate_variation(
    model,
    model_config: dict,
    init_audio: np.ndarray,
    prompt: str,
    seed: int,
    settings: Settings,
    strength: float,
    device: str,
    callback: Callable[[dict], None] | None = None,
    silence_db: float = 60.0,
) -> tuple[np.ndarray, dict]:
    """A variation of ``init_audio`` ((2, n) at the model's rate): the engine's init audio + noise level.

    ``seconds_total`` is the shorter of the settings' and the init audio's length; the info has
    ``init_noise_level`` besides :func:`trim_audio`'s.
    """
    from . import compat

    compat.apply()
    import torch

    prompt = check_prompt(prompt)
    sr = int(model_config["sample_rate"])
    seconds = min(float(settings.seconds_total), init_audio.shape[1] / sr, max_seconds(model_config))
    s = Settings(**{**settings.as_dict(), "seconds_total": round(seconds, 3)})
    check_settings(s, model_config)
    noise_level = strength_to_noise(strength, s)
    with torch.inference_mode():
        latents = _sample(
            model,
            model_config,
            s,
            conditioning_of([prompt], s, model_config),
            seed,
            device,
            callback,
            init_audio=(sr, torch.from_numpy(init_audio)),
            init_noise_level=noise_level,
        )
        n = int(round(s.seconds_total * sr))
        out = decode(model, latents, n)
        moved = _latent_distance(model, model_config, init_audio, latents, n, device)
    audio, info = trim_audio(out[0].float().cpu().numpy(), sr, s.seconds_total, silence_db)
    return audio, {
        **info,
        "init_noise_level": round(noise_level, 4),
        "seconds_total": s.seconds_total,
        "latent_distance": round(moved, 4),
    }


def _encode_init(model, model_config: dict, init_audio: np.ndarray, device):
    """``init_audio`` as the model encodes it: its latents over the model's window (as the engine prepares it)."""
    import torch
    from stable_audio_tools.inference.utils import prepare_audio

    pre = model.pretransform
    io = pre.io_channels if pre is not None else model.io_channels
    sr = int(model_config["sample_rate"])
    x = prepare_audio(
        torch.from_numpy(init_audio), in_sr=sr, target_sr=sr, target_length=int(model_config["sample_size"]),
        target_channels=io, device=device,
    )  # fmt: skip
    return pre.encode(x.to(next(pre.parameters()).dtype)) if pre is not None else x


def playback(model, model_config: dict, init_audio: np.ndarray, device: str = "cpu") -> np.ndarray:
    """``init_audio`` as the model plays it back: through its VAE alone (encode → decode, no sampling), as long
    as the input. What a variation departs from: the sampler starts from your clip as the VAE encodes it, so this
    is the most of your clip any strength can give back (the tiny demo model's VAE puts a real recording ~2 from
    itself on 07's metrics; SAO's VAE is far more faithful)."""
    import torch

    with torch.inference_mode():
        out = decode(model, _encode_init(model, model_config, init_audio, device), init_audio.shape[1])
    return out[0].float().cpu().numpy()


def _latent_distance(model, model_config: dict, init_audio: np.ndarray, latents, n_samples: int, device) -> float:
    """``‖z_out − z_in‖ / ‖z_in‖`` over the latent frames kept: how far the sampler moved from the
    init audio *as the model encodes it* (independent of how well its decoder plays it back)."""
    import torch

    pre = model.pretransform
    ratio = pre.downsampling_ratio if pre is not None else 1
    z_in = _encode_init(model, model_config, init_audio, device)
    k = -(-n_samples // ratio)
    a, b = z_in[0, :, :k].float(), latents[0, :, :k].float()
    return float(torch.linalg.vector_norm(b - a) / torch.linalg.vector_norm(a).clamp_min(1e-9))


def variation_distance(reference: np.ndarray, output: np.ndarray, sr: int) -> dict:
    """How far ``output`` is from ``reference`` on 07's signal metrics: per metric ``|ln(output / reference)|``
    (0 = the same, 0.69 = a factor 2 either way), and their mean, ``distance``."""
    from .evaluate_metrics import SIGNAL_METRICS, signal_metrics

    a, b = signal_metrics(reference, sr), signal_metrics(output, sr)
    tiny = 1e-12
    logs = {m: abs(float(np.log(max(b[m], tiny) / max(a[m], tiny)))) for m in SIGNAL_METRICS}
    return {"distance": round(float(np.mean(list(logs.values()))), 4), **{m: round(v, 4) for m, v in logs.items()}}


#: :func:`aligned_distance`'s window: 07's metrics on 0.5 s of both, side by side (about a beat at 120 BPM)
ALIGN_WINDOW_S = 0.5


def aligned_distance(reference: np.ndarray, output: np.ndarray, sr: int, window_s: float = ALIGN_WINDOW_S) -> dict:
    """How far ``output`` is from ``reference`` moment by moment: 07's four signal metrics on each ``window_s``
    window of both, side by side in time, ``|ln(output / reference)|`` per metric averaged over the windows where
    both have sound (``windows``: how many), and their mean, ``distance`` (``None`` when no window has sound in
    both).

    :func:`variation_distance` gives one figure per clip, so a new beat *of the same kind* (its hits elsewhere,
    its sounds alike on average) can come out as close as your beat itself: measured on the trained tiny:sao, a
    strength-0.9 variation of a boom-bap beat prompted "a boom bap beat" was 0.26 from the beat's playback on the
    whole clip against 0.42 at strength 0.1. Window by window it is 0.63 against 0.37 (issue 29; the windows
    are the ones 07's metrics need at least: a full STFT context and HPSS kernel in each)."""
    from .evaluate_metrics import SIGNAL_METRICS, EvaluateError, signal_metrics

    n, w = min(reference.shape[-1], output.shape[-1]), int(round(window_s * sr))
    logs = {m: [] for m in SIGNAL_METRICS}
    for a in range(0, n - w + 1, w):
        try:
            ref, out = signal_metrics(reference[..., a : a + w], sr), signal_metrics(output[..., a : a + w], sr)
        except EvaluateError:  # digital silence in either: nothing to compare in this window
            continue
        for m in SIGNAL_METRICS:
            logs[m].append(abs(float(np.log(max(out[m], 1e-12) / max(ref[m], 1e-12)))))
    count = len(logs[SIGNAL_METRICS[0]])
    if not count:
        return {"distance": None, "windows": 0, **{m: None for m in SIGNAL_METRICS}}
    per = {m: round(float(np.mean(v)), 4) for m, v in logs.items()}
    return {"distance": round(float(np.mean(list(per.values()))), 4), "windows": count, **per}


def measure_variation(init: np.ndarray, heard: np.ndarray, output: np.ndarray, sr: int) -> dict:
    """A variation measured two ways: ``distance`` (and one figure per metric) from your clip over the whole
    clip (:func:`variation_distance`), and ``playback_distance`` (``playback_metrics`` per metric) from your clip
    as the model plays it back, ``heard`` (:func:`playback`), window by window (:func:`aligned_distance`) —
    the one that measures the strength — with ``vae_floor``, how far that playback is from your clip."""
    n = min(output.shape[1], init.shape[1], heard.shape[1])
    aligned = aligned_distance(heard[:, :n], output[:, :n], sr)
    return {
        **variation_distance(init[:, :n], output[:, :n], sr),
        "playback_distance": aligned.pop("distance"),
        "playback_metrics": aligned,
        "vae_floor": variation_distance(init[:, :n], heard[:, :n], sr)["distance"],
    }


def _device_and_dtype(device: str, dtype: str):
    from . import models

    import torch

    dev = models.pick_device(device)
    if dtype in ("", "auto", None):
        return dev, models.pick_dtype(dev)  # bf16 / fp16 on GPUs, fp32 on the CPU
    if dtype not in DTYPES:
        raise GenerateError(f"dtype {dtype!r}: expected 'auto' or one of {', '.join(DTYPES)}")
    return dev, getattr(torch, dtype)


def _free(model) -> None:
    del model
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def _fingerprint(source) -> str:
    """Which weights a source means: a hub id or tiny name as is; a local file/folder by size and mtime."""
    path = Path(str(source)).expanduser()
    if path.is_dir():
        path = path / layout.MODEL_WEIGHTS if (path / layout.MODEL_WEIGHTS).exists() else path / layout.MODEL_CKPT
    if not path.is_file():
        return str(source)
    st = path.stat()
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


def _key(model: str, prompt_idx: int, seed: int) -> str:
    return f"{model}-{prompt_idx}-{seed}"


def _check_run_args(settings: Settings, base_model: str) -> None:
    """What the settings' own choices and bounds (checked before ``run``'s body) cannot say."""
    check_settings(settings)  # the sampler's settings together (also the playground's check)
    if not base_model:
        raise GenerateError(f"base_model is empty: use {HUB_ID!r}, a local model folder, or 'tiny:sao'")


def _check_loop_args(loop_lufs: float) -> None:
    if not (loop_lufs == 0 or -60 <= loop_lufs <= -5):
        raise GenerateError(f"loop_lufs must be 0 (loudness as generated) or between -60 and -5 LUFS (got {loop_lufs})")


def _prompt_list(run_dir: str, prompts_file: str, n_prompts: int) -> tuple[list[str], Path | None]:
    """The prompts to generate, and 05b_focus's export (None when there is none)."""
    all_prompts = read_prompts(prompts_file)
    prompts = all_prompts[:n_prompts] if n_prompts else all_prompts
    from . import (
        focus_results as focus,
    )  # the second stage (05b_focus), when exported: a third model and one prompt per chosen tag

    focus_path, focus_prompts = focus.for_generation(run_dir)
    return prompts + [p for p in focus_prompts if p not in prompts], focus_path


def _finetune_or_base_only(
    run_dir: str, finetune_model: str, lora_strength: float, allow_missing_finetune: bool
) -> tuple[FinetuneSpec | None, str]:
    ft_spec, ft_message = find_finetune(run_dir, finetune_model, lora_strength)
    if ft_spec is None and not allow_missing_finetune:
        raise GenerateError(ft_message + " (set allow_missing_finetune=True to generate with the base model only)")
    if ft_spec is None:
        print(f"NOTE: {ft_message} — generating with the base model only.")
    return ft_spec, ft_message


@dataclass
class _Generation:
    """One run of the stage: what it generates (fixed before the first model loads) and the model in memory."""

    run_: Run
    gens: JsonlLog  # RUN_DIR/06_generate/generations.jsonl
    prompts: list[str]
    settings: Settings
    seed: int
    batch_size: int
    silence_db: float
    base_model: str
    t5_model: str
    lora_strength: float
    ft_spec: FinetuneSpec | None
    focus_path: Path | None
    model: object = None
    config: dict | None = None
    dev: object = None
    torch_dtype: object = None

    @property
    def stage_dir(self) -> Path:
        return self.gens.path.parent

    def models_todo(self) -> list[str]:
        return ["base"] + (["finetune"] if self.ft_spec is not None else []) + (["focus"] if self.focus_path else [])

    def fingerprints(self) -> dict:
        """Which weights each model's rows must have been made with (see :func:`_fingerprint`)."""
        return {
            "base": _fingerprint(self.base_model),
            "finetune": _fingerprint(self.ft_spec.path) if self.ft_spec else None,
            "focus": _fingerprint(self.focus_path) if self.focus_path else None,
        }

    def recipe(self) -> dict:
        return {"settings": self.settings.as_dict(), "run_seed": int(self.seed), "batch_size": int(self.batch_size)}

    def chunk_seed(self, chunk: list[int]) -> int:
        return self.seed + chunk[0]


def _check_same_recipe(g: _Generation) -> None:
    """Refuse rows made with other settings, seed or prompts than this run asks for."""
    recipe = g.recipe()
    for row in g.gens.rows():  # one folder, one recipe: never mix two in one table
        i = row.get("prompt_idx", 0)
        same_prompt = i >= len(g.prompts) or row.get("prompt") == g.prompts[i]
        if {k: row.get(k) for k in recipe} != recipe or not same_prompt:
            raise GenerateError(
                f"{g.gens.path} holds generations made with other settings, seed or prompts (row {row['key']}: "
                f"{ {k: row.get(k) for k in recipe} }); use a new run_dir, or delete {g.stage_dir} to start "
                "this stage over"
            )


def _check_same_models(g: _Generation) -> None:
    """Refuse rows made with another model file than each model's source now holds."""
    fingerprints = g.fingerprints()
    for row in g.gens.rows():  # a re-trained fine-tune (or another base) must not be mixed with old clips
        want = fingerprints.get(row.get("model"))
        if want is not None and row.get("model_fingerprint") != want:
            raise GenerateError(
                f"{g.gens.path}: the {row['model']} clips were made with another model file than "
                f"{ {'base': g.base_model, 'finetune': g.ft_spec and g.ft_spec.path}.get(row['model'], g.focus_path) } now holds (re-trained or replaced); "
                f"use a new run_dir, or delete {g.stage_dir} to generate again"
            )


def _load_model_for(g: _Generation, which: str) -> str:
    """Put the model that generates ``which`` in ``g.model``; returns its source, as the rows record it.

    Loaded once per model; a LoRA fine-tune goes onto the base model already in memory; a whole
    model replaces the one in memory (freed first).
    """
    if which == "base":
        g.model, g.config = load_model(g.base_model, g.dev, g.torch_dtype, g.t5_model)
        return g.base_model
    if which == "focus":  # a whole model (its merged export): LoRA adapters of it fit 05's export, not the base
        if g.model is not None:
            _free(g.model)
            g.model = None
        g.model, g.config = load_model(str(g.focus_path), g.dev, g.torch_dtype, g.t5_model)
        return str(g.focus_path)
    if g.ft_spec.kind == "lora":
        if g.model is None:
            g.model, g.config = load_model(g.base_model, g.dev, g.torch_dtype, g.t5_model)
        apply_lora(g.model, g.config, g.ft_spec.path, g.lora_strength)
        return f"{g.base_model} + LoRA {g.ft_spec.path} @ {g.lora_strength:g}"
    if g.model is not None:
        _free(g.model)
        g.model = None
    g.model, g.config = load_model(str(g.ft_spec.path), g.dev, g.torch_dtype, g.t5_model)
    return str(g.ft_spec.path)


def _generate_chunk(g: _Generation, which: str, chunk: list[int], source: str, fingerprint) -> tuple[list[dict], float]:
    """Generate one batch of prompts with the model in memory, write its WAVs; ``(new rows, seconds per clip)``."""
    cseed = g.chunk_seed(chunk)
    sr = int(g.config["sample_rate"])
    t0 = time.perf_counter()
    outs = generate_audio(
        g.model, g.config, [g.prompts[i] for i in chunk], cseed, g.settings, g.dev, silence_db=g.silence_db
    )
    took = time.perf_counter() - t0
    rows = []
    for b, (i, (audio, info)) in enumerate(zip(chunk, outs)):
        key = _key(which, i, cseed)
        if key in g.gens:
            continue
        path = g.stage_dir / "audio" / which / f"{i:02d}-seed{cseed}.wav"
        _write_wav(path, audio, sr)
        rows.append(
            {
                "key": key,
                "model": which,
                "prompt_idx": i,
                "prompt": g.prompts[i],
                "seed": cseed,
                "batch_index": b,
                "run_seed": int(g.seed),
                "batch_size": int(g.batch_size),
                "settings": g.settings.as_dict(),
                "model_source": source,
                "model_fingerprint": fingerprint,
                "lora_strength": float(g.lora_strength) if which == "finetune" and g.ft_spec.kind == "lora" else None,
                "sample_rate": sr,
                "duration": round(audio.shape[1] / sr, 3),
                "requested_seconds": g.settings.seconds_total,
                "trimmed_s": info["trimmed_s"],
                "silent": info["silent"],
                "path": g.run_.rel(path),
                "device": str(g.dev),
                "dtype": str(g.torch_dtype).replace("torch.", ""),
            }
        )
    return rows, took / len(chunk)


def _generate_all(g: _Generation, todo: dict[str, list[list[int]]], device: str, dtype: str) -> tuple[int, list]:
    """Every chunk still to do, model by model; ``(clips generated now, seconds per clip of each chunk)``."""
    from tqdm.auto import tqdm

    generated = 0
    timings = []
    fingerprints = g.fingerprints()
    bar = tqdm(total=sum(len(c) for chunks in todo.values() for c in chunks), desc=layout.GENERATE, unit="clip")
    try:
        for which, chunks in todo.items():
            if not chunks:
                continue
            if g.dev is None:
                g.dev, g.torch_dtype = _device_and_dtype(device, dtype)
            source = _load_model_for(g, which)
            check_settings(g.settings, g.config)
            for chunk in chunks:
                bar.set_postfix_str(f"{which} prompt {chunk[0]}")
                rows, per_clip = _generate_chunk(g, which, chunk, source, fingerprints[which])
                timings.append(per_clip)
                g.gens.append(*rows)
                generated += len(rows)
                bar.update(len(chunk))
    finally:
        bar.close()
        if g.model is not None:
            _free(g.model)
            g.model = None
    return generated, timings


@stage.entry(STAGE, GenerateError)
def run(
    run_dir: str,
    profile: str,
    base_model: str,
    finetune_model: str,
    allow_missing_finetune: bool,
    lora_strength: float,
    t5_model: str,
    prompts_file: str,
    n_prompts: int,
    steps: int,
    cfg_scale: float,
    sampler_type: str,
    sigma_min: float,
    sigma_max: float,
    seconds_start: float,
    seconds_total: float,
    apg_scale: float,
    seed: int,
    batch_size: int,
    silence_db: float,
    loops: bool,
    loop_bars: int,
    loop_lufs: float,
    variation_of: str,
    variation_strengths: str,
    device: str,
    dtype: str,
) -> dict:
    """Generate every prompt with the base model and the fine-tune, same seeds; see the module doc.

    Output ``i`` of the prompt list uses seed ``seed + i`` (with ``batch_size`` > 1, a batch uses
    the seed of its first prompt, recorded on each row with ``batch_index``).
    """
    run_, params = begin(STAGE, locals())  # a wrong type or an incompatible run folder: refused by name
    settings = Settings(
        steps=int(steps),
        cfg_scale=float(cfg_scale),
        sampler_type=sampler_type,
        sigma_min=float(sigma_min),
        sigma_max=float(sigma_max),
        seconds_start=float(seconds_start),
        seconds_total=float(seconds_total),
        apg_scale=float(apg_scale),
    )
    # 1. validate everything before any work
    _check_run_args(settings, base_model)
    _check_loop_args(loop_lufs)
    strengths = parse_strengths(variation_strengths)
    prompts, focus_path = _prompt_list(run_dir, prompts_file, n_prompts)
    var_source, var_message = find_variation_source(run_dir, variation_of, prompts)
    if var_source is not None:
        load_init_audio(var_source["path"], 44100)  # a bad init audio is refused before any work
    ft_spec, ft_message = _finetune_or_base_only(run_dir, finetune_model, lora_strength, allow_missing_finetune)
    g = _Generation(
        run_=run_,
        gens=JsonlLog(run_.stage_dir(STAGE) / layout.GENERATIONS, key="key"),
        prompts=prompts,
        settings=settings,
        seed=seed,
        batch_size=batch_size,
        silence_db=silence_db,
        base_model=base_model,
        t5_model=t5_model,
        lora_strength=lora_strength,
        ft_spec=ft_spec,
        focus_path=focus_path,
    )
    _check_same_recipe(g)
    _check_same_models(g)

    # 2. generate what is not done yet, in batches formed from the whole prompt list
    chunks = [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]
    todo = {
        m: [c for c in chunks if any(_key(m, i, g.chunk_seed(c)) not in g.gens for i in c)] for m in g.models_todo()
    }
    n_todo = sum(len(c) for chunks in todo.values() for c in chunks)
    preflight_inference.check_generate(  # a GPU too small for SAO at this batch: STOP before any load
        device, dtype, base_model, min(batch_size, len(prompts), n_todo), seconds_total, error=GenerateError
    )
    generated, timings = _generate_all(g, todo, device, dtype)

    # 3. the table, sorted, and the stage record
    rows = g.gens.finalize(sort_key=lambda r: (r["prompt_idx"], MODELS.index(r["model"]), r["seed"]))
    summary = {
        "generations": len(rows),
        "generated_now": generated,
        "prompts": len(prompts),
        "models": g.models_todo(),
        "finetune": str(ft_spec.path) if ft_spec else None,
        "finetune_kind": ft_spec.kind if ft_spec else None,
        "finetune_message": None if ft_spec else ft_message,
        "seconds_per_clip": round(float(np.median(timings)), 3) if timings else None,
        "generations_jsonl": run_.rel(g.gens.path),
    }
    if loops:
        summary.update(make_loops(run_, list(rows), int(loop_bars), float(loop_lufs)))
    summary["variations_message"] = var_message
    if var_source is not None:
        summary.update(make_variations(g, var_source, strengths, device, dtype))
    run_.mark_done(STAGE, params=params, **summary)
    return summary


def _write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    from .audio import write_wav
    from .runs import atomic_path

    with atomic_path(path) as tmp:
        write_wav(tmp, audio, sr)


def _loop_of(run_: Run, row: dict, bars: int, lufs: float) -> dict:
    """Cut and write the loop of one generation row; the loops table's row (with ``reason`` when none)."""
    from . import audio as audio_mod
    from . import clipfacts, loops

    out = {"key": row["key"], "model": row["model"], "prompt_idx": row["prompt_idx"], "generation": row["path"]}
    try:
        y, sr = audio_mod.load(run_.root / row["path"])
        loop = loops.cut_loop(y, sr, clipfacts.parse_bpm(row["prompt"]), bars, lufs or None)
    except (audio_mod.AudioError, loops.LoopError, OSError, ValueError) as exc:
        return {**out, "path": None, "reason": f"{row['path']}: {exc}"}
    out.update(loops.loop_row(loop))
    if loop.audio is None:
        return {**out, "path": None}
    stem = Path(row["path"]).stem
    path = (
        run_.stage_dir(STAGE)
        / layout.LOOPS
        / row["model"]
        / loops.loop_name(stem, loop, clipfacts.parse_key(row["prompt"]))
    )
    loops.write_loop(path, loop)
    return {**out, "path": run_.rel(path)}


def make_loops(run_: Run, rows: list[dict], bars: int = 4, lufs: float = 0.0) -> dict:
    """A loop of every generation (``RUN_DIR/06_generate/loops/``, ``loops.jsonl``); resumable: a re-run
    cuts the generations with no row yet, and again those whose loop file is missing.

    ``lufs`` 0 leaves the loudness as generated; otherwise the loops' integrated loudness target.
    """
    from tqdm.auto import tqdm

    table = JsonlLog(run_.stage_dir(STAGE) / layout.LOOPS_TABLE, key="key")
    recipe = {"loop_bars": int(bars), "loop_lufs": float(lufs)}
    for old in table.rows():  # one folder, one recipe
        if {k: old.get(k) for k in recipe} != recipe:
            raise GenerateError(
                f"{table.path} holds loops cut with other settings ({ {k: old.get(k) for k in recipe} }); delete it "
                f"and {run_.stage_dir(STAGE) / 'loops'} to cut them again with loop_bars={bars}, loop_lufs={lufs}"
            )
    # a loop whose file went missing (deleted, a copy that lost it) is cut again, not left as a dead row
    table.discard({r["key"] for r in table.rows() if r.get("path") and not (run_.root / r["path"]).is_file()})
    todo = [r for r in rows if r["key"] not in table]
    for row in tqdm(todo, desc="06_generate loops", unit="loop", disable=not todo):
        table.append({**_loop_of(run_, row, bars, lufs), **recipe})
    done = table.finalize(sort_key=lambda r: (r["prompt_idx"], MODELS.index(r["model"]), r["key"]))
    return {
        "loops": sum(1 for r in done if r.get("path")),
        "loops_flagged": sum(1 for r in done if r.get("path") and r.get("tempo_flagged")),
        "loops_none": sum(1 for r in done if not r.get("path")),
        "loops_jsonl": run_.rel(table.path),
    }


def load_loops(run_dir: str) -> list[dict]:
    """The rows of ``RUN_DIR/06_generate/loops.jsonl``."""
    path = Run(run_dir).path(STAGE, layout.LOOPS_TABLE)
    return read_jsonl(path) if path.exists() else []


def parse_strengths(text: str) -> list[float]:
    """``"0.1, 0.9"`` → ``[0.1, 0.9]``; each in (0, 1], else a :class:`GenerateError`."""
    try:
        values = [float(v) for v in str(text).replace(";", ",").split(",") if v.strip()]
    except ValueError as exc:
        raise GenerateError(
            f"variation_strengths {text!r}: expected numbers separated by commas, e.g. '0.1, 0.9'"
        ) from exc
    if not values or any(not 0 < v <= 1 for v in values):
        raise GenerateError(f"variation_strengths {text!r}: give one or more strengths, each more than 0 and at most 1")
    return values


AUTO_VARIATION_TRIES = 10  # "auto" tries this many of 04's clips for one usable as init audio


def find_variation_source(run_dir: str, variation_of: str, prompts: list[str]) -> tuple[dict | None, str]:
    """Which clip to vary, and with which prompt: ``({"path", "prompt", "clip_id"} or None, message)``.

    ``"auto"``: the first usable clip of 04_prompts (with its own training prompt; a clip too short
    or silent is passed over, and with none usable there are no variations, said why); a ``clip_id`` of
    04_prompts; or an audio file (with the first prompt of the list).
    """
    from .clipstore import ClipFolder

    if not variation_of:
        return None, "no variations (variation_of is empty)"
    path = Path(variation_of).expanduser()
    if path.suffix and (path.is_file() or "/" in variation_of or "\\" in variation_of):
        return {"path": path, "prompt": prompts[0], "clip_id": None}, f"a variation of {path}"
    table = Run(run_dir).path(layout.PROMPTS, layout.PROMPT_ROWS)
    rows = read_jsonl(table) if table.exists() else []
    if variation_of != "auto":
        rows = [r for r in rows if r.get("clip_id") == variation_of]
    if not rows:
        where = (
            "04_prompts has no clips yet (run 01-04)"
            if variation_of == "auto"
            else f"no clip {variation_of!r} in {table}"
        )
        return None, f"no variations: {where}; set variation_of to an audio file or a clip_id"
    refused = []
    for row in rows[:AUTO_VARIATION_TRIES] if variation_of == "auto" else rows[:1]:
        clip = ClipFolder(run_dir).path(row.get("filepath") or row.get("path"))
        if variation_of == "auto":  # the first clip that makes a usable init audio; a named one is refused in run
            try:
                load_init_audio(clip, 44100)
            except GenerateError as exc:
                refused.append(str(exc))
                continue
        return {"path": clip, "prompt": row["prompt"], "clip_id": row.get("clip_id")}, (
            f"a variation of clip {row.get('clip_id')}"
        )
    return None, f"no variations: none of the first {len(refused)} clips of 04_prompts is usable ({refused[0]})"


def _variation_rows(g: _Generation, source: dict, strengths: list[float], which: str, model_source: str) -> list[dict]:
    """Variations of ``source`` with the model in memory, at each strength; their WAVs and rows."""
    sr = int(g.config["sample_rate"])
    init, notes = load_init_audio(source["path"], sr, max_seconds(g.config))
    heard = playback(g.model, g.config, init, g.dev)  # what the variations depart from (measure_variation)
    rows = []
    for k, strength in enumerate(strengths):
        key = f"{which}-{strength:g}-{g.seed}"
        out, info = generate_variation(
            g.model, g.config, init, source["prompt"], g.seed, g.settings, strength, g.dev, silence_db=g.silence_db
        )
        path = g.stage_dir / "variations" / which / f"{Path(source['path']).stem}-strength{strength:g}-seed{g.seed}.wav"
        _write_wav(path, out, sr)
        rows.append(
            {
                "key": key,
                "model": which,
                "strength": strength,
                "init_noise_level": info["init_noise_level"],
                "init_audio": str(source["path"]),
                "clip_id": source["clip_id"],
                "converted": notes,
                "prompt": source["prompt"],
                "seed": int(g.seed),
                "settings": {**g.settings.as_dict(), "seconds_total": info["seconds_total"]},
                "model_source": model_source,
                "sample_rate": sr,
                "duration": round(out.shape[1] / sr, 3),
                "latent_distance": info["latent_distance"],
                **measure_variation(init, heard, out, sr),
                "path": g.run_.rel(path),
            }
        )
    return rows


def make_variations(g: _Generation, source: dict, strengths: list[float], device: str, dtype: str) -> dict:
    """Variations of one of the producer's clips with every model, at each strength (``variations.jsonl``).

    Resumable (a row per model and strength); an init audio that cannot be used is refused
    before any model loads, with a message naming the file.
    """
    table = JsonlLog(g.stage_dir / layout.VARIATIONS_TABLE, key="key")
    todo = [m for m in g.models_todo() if any(f"{m}-{s:g}-{g.seed}" not in table for s in strengths)]
    for which in todo:
        if g.dev is None:
            g.dev, g.torch_dtype = _device_and_dtype(device, dtype)
        model_source = _load_model_for(g, which)
        left = [s for s in strengths if f"{which}-{s:g}-{g.seed}" not in table]
        table.append(*_variation_rows(g, source, left, which, model_source))
    if g.model is not None:
        _free(g.model)
        g.model = None
    done = table.finalize(sort_key=lambda r: (MODELS.index(r["model"]), r["strength"]))
    return {"variations": len(done), "variations_jsonl": g.run_.rel(table.path)}


def load_variations(run_dir: str) -> list[dict]:
    """The rows of ``RUN_DIR/06_generate/variations.jsonl``."""
    path = Run(run_dir).path(STAGE, layout.VARIATIONS_TABLE)
    return read_jsonl(path) if path.exists() else []


# -- does a variation stay closer to your beat at a low strength? (issue 29) ------------------


def variation_closeness(
    model,
    config: dict,
    init_audio: np.ndarray,
    prompt: str,
    seed: int,
    settings: Settings,
    strengths=(0.1, 0.3, 0.6, 1.0),
    device: str = "cpu",
):
    """Variations of ``init_audio`` at each strength (06's :func:`generate_variation`, the same seed), each
    measured as 06 measures them (:func:`measure_variation`): :func:`closeness_table`."""
    sr = int(config["sample_rate"])
    heard = playback(model, config, init_audio, device)
    rows = []
    for strength in strengths:
        out, _ = generate_variation(model, config, init_audio, prompt, seed, settings, strength, device)
        rows.append({"strength": float(strength), **measure_variation(init_audio, heard, out, sr)})
    return closeness_table(rows)


#: variation_closeness.csv's columns (closeness_table)
CLOSENESS_COLUMNS = ["model", "strength", "metric", "distance", "reference", "vae_floor"]


def closeness_table(rows: list[dict]):
    """Rows with a ``strength`` and 07's signal metrics (:func:`variation_closeness`'s, or ``variations.jsonl``'s)
    as a tidy DataFrame: ``[model,] strength, metric, distance, reference, vae_floor``, ``distance`` per metric
    ``|ln(variation / beat)|``. ``reference`` says against what: ``"playback"`` — your clip as the model plays it
    back, window by window (``playback_metrics``: :func:`measure_variation`; ``vae_floor`` is that playback's
    distance from your clip) — when every row has it; ``"clip"`` — your clip itself, one figure per clip —
    for rows written before 06 measured the playback."""
    import pandas as pd

    from .evaluate_metrics import SIGNAL_METRICS

    rows = list(rows)
    columns = (["model"] if any("model" in r for r in rows) else []) + CLOSENESS_COLUMNS[1:]
    playback_ = bool(rows) and all(r.get("playback_metrics") for r in rows)

    def value(r, m):
        return (r["playback_metrics"] if playback_ else r).get(m)

    tidy = [
        {**({"model": r.get("model")} if columns[0] == "model" else {}), "strength": float(r["strength"]),
         "metric": m, "distance": float(value(r, m)), "reference": "playback" if playback_ else "clip",
         "vae_floor": float(r["vae_floor"]) if playback_ else float("nan")}
        for r in rows
        for m in SIGNAL_METRICS
        if value(r, m) is not None
    ]  # fmt: skip
    return pd.DataFrame(tidy, columns=columns)


def closeness_sentence(table) -> str:
    """What :func:`closeness_table` says in one sentence (one per model): the mean distance from the beat at
    the lowest and the highest strength, and whether the low strength stays closer; against the playback, also
    how far the model's VAE alone is from your beat."""
    if table is None or len(table) == 0:
        return "No variations to measure yet."
    groups = table.groupby("model", sort=False) if "model" in table.columns else [(None, table)]
    sentences = []
    for which, t in groups:
        means = t.groupby("strength")["distance"].mean().sort_index()
        lo, hi = means.index[0], means.index[-1]
        playback_ = "reference" in t.columns and (t["reference"] == "playback").all()
        how = (
            f"from your beat as the model plays it back, moment by moment (07's metrics on {ALIGN_WINDOW_S:g} s "
            "windows side by side, |ln(variation / beat)|, 0.69 = a factor of 2)"
            if playback_
            else "from your beat on 07's metrics (|ln(variation / beat)|, 0.69 = a factor of 2)"
        )
        text = f"At strength {lo:g} the variation is on average {means[lo]:.2f} {how}"
        if lo != hi:
            closer = "stays closer" if means[lo] < means[hi] else "does not stay closer"
            text += f"; at {hi:g}, {means[hi]:.2f}: the low strength {closer} to your beat"
        text += "."
        if playback_:
            text += (
                f" The model's VAE alone (encode, decode, no sampling) gives your beat back "
                f"{t['vae_floor'].mean():.2f} from itself over the whole clip: that playback is where every "
                "strength starts from."
            )
        sentences.append((f"{which}: " if which is not None and len(groups) > 1 else "") + text)
    return "\n".join(sentences)


def closeness_of_run(run_dir: str):
    """:func:`closeness_table` of the variations 06 already made (``variations.jsonl``; nothing is re-rendered),
    also written to ``06_generate/variation_closeness.csv``."""
    table = closeness_table(load_variations(run_dir)).reindex(columns=CLOSENESS_COLUMNS)
    path = Run(run_dir).path(STAGE, layout.VARIATION_CLOSENESS_CSV)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return table


# -- using what was made (06's last section) ---------------------------------------------------

RUN_FOLDER_GUIDE = {  # what each folder of a run holds, for a producer looking for a file
    layout.SEGMENT: "your beats cut into clips (clips/), segments.jsonl",
    layout.TAG: "the tags of each clip (tags.jsonl)",
    layout.TEMPO_KEY: "tempo and key of each clip (tempo_key.jsonl)",
    layout.PROMPTS: "the training prompts (prompts.jsonl, metadata.json)",
    layout.TRAIN: "checkpoints; export/ = your fine-tune (model.safetensors + model_config.json, or lora.safetensors)",
    layout.FOCUS: "the second stage's subset and its export/",
    layout.GENERATE: "audio/ generations, loops/ for your DAW, variations/, takes/ from the playground, blind.jsonl",
    layout.EVALUATE: "report.md, metrics.csv, plots/",
    "publish": "the model card and upload list (python -m stablebeat_utils publish)",
}


def where_files_are(run_dir: str) -> list[dict]:
    """Every folder of the run with what it holds, its file count and size (MB)."""
    run_ = Run(run_dir)
    rows = []
    for name, what in RUN_FOLDER_GUIDE.items():
        folder = run_.root / name
        files = [f for f in folder.rglob("*") if f.is_file()] if folder.is_dir() else []
        rows.append(
            {
                "folder": str(folder),
                "holds": what,
                "files": len(files),
                "MB": round(sum(f.stat().st_size for f in files) / 1e6, 1),
            }
        )
    return rows


def loudness_table(run_dir: str) -> list[dict]:
    """Integrated loudness (LUFS) and sample peak (dBFS) of every generation and loop of 06."""
    from . import audio as audio_mod

    run_ = Run(run_dir)
    rows = []
    for kind, table in (("generation", load_generations(run_dir)), ("loop", load_loops(run_dir))):
        for r in table:
            if not r.get("path"):
                continue
            try:
                y, sr = audio_mod.load(run_.root / r["path"])
            except (audio_mod.AudioError, OSError) as exc:
                rows.append({"kind": kind, "path": r["path"], "error": str(exc)})
                continue
            lufs = audio_mod.integrated_loudness(y, sr)
            rows.append(
                {
                    "kind": kind,
                    "model": r.get("model"),
                    "lufs": round(lufs, 1) if np.isfinite(lufs) else None,
                    "peak_dbfs": round(audio_mod.peak_dbfs(y), 1) if np.any(y) else None,
                    "path": r["path"],
                }
            )
    return rows


def load_generations(run_dir: str) -> list[dict]:
    """The rows of ``RUN_DIR/06_generate/generations.jsonl`` (for the notebook's table)."""
    return read_jsonl(Run(run_dir).path(STAGE, layout.GENERATIONS))
