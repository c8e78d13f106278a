"""Fine-tune Stable Audio Open 1.0 on the run's prompts — notebook ``05_train``.

The StableBeaT card's recipe, driven through stable-audio-tools 0.0.20 and PyTorch Lightning:

- **model**: :func:`stablebeat_utils.models.load_sao` — SAO 1.0 from the hub (gated; token from the
  environment or Colab's secrets), an exported folder, or ``"tiny:sao"`` offline. Same code path.
- **data**: ``RUN_DIR/04_prompts/prompts.jsonl`` clips; each sample carries its own conditioning
  (:func:`conditioning_for`): ``prompt``, ``seconds_start`` = the clip's start in its source track
  plus the crop offset inside the clip, ``seconds_total`` (see below). Rows are held in a list and
  looked up by index (O(1)); a bad row or an undecodable clip raises :class:`TrainDataError`
  naming the clip (our own ``Dataset``: the engine's ``SampleDataset`` swallows exceptions and
  retries another file, and reads audio with ``torchaudio.load``, which we do not use).
- **recipe**: the engine's training wrapper (``create_training_wrapper_from_config``): AdamW
  lr 5e-5, InverseLR, EMA of the DiT, classifier-free-guidance dropout 0.1; Lightning handles mixed
  precision (bf16 where the GPU has it), devices/strategy, and the engine's DiT runs its transformer
  blocks under gradient checkpointing (``ContinuousTransformer(use_checkpointing=True)``, its default).
- **LoRA / DoRA**: the engine's own ``training.lora_config`` (base frozen, no EMA); adapters are
  exported with the engine's ``save_lora_safetensors`` (loadable with ``load_and_apply_loras``).
- **pre-encoded latents** (``pre_encode=True``): every clip is encoded once by the VAE into
  ``05_train/latents/<clip_id>.safetensors`` (float16 latents + conditioning; ~83 KB per 30 s
  clip); training then runs the wrapper with ``pre_encoded=True`` and the VAE never runs in the
  training loop (it still sits on the GPU: stable-audio-tools 0.0.20's training step moves it there
  every step — 0.62 GB for SAO). The Colab profiles turn it on.
- **several GPUs** (``devices`` > 1): in a notebook Lightning starts the ranks by fork
  (``ddp_notebook``), so nothing here initialises CUDA before ``fit`` (pre-encoding then runs in a
  spawned process); the ranks checkpoint the last step, and the summary reads the step from it.
- **checkpoints**: every ``checkpoint_every`` steps, every ``checkpoint_minutes`` and at every
  epoch's end into ``05_train/checkpoints`` (written atomically, the last ``keep_checkpoints``
  kept; with ``local_checkpoint_dir`` written to local disk first and copied atomically to the
  run folder by a background thread while training goes on — the end of fit waits for the copy);
  running the stage again resumes from the newest complete one in either folder
  (optimizer, scheduler, EMA, step), loaded with ``torch.load(weights_only=True)``.
- **before loading**: a storage plan (:mod:`stablebeat_utils.storage`) and, on CUDA, a GPU-memory
  preflight (:mod:`stablebeat_utils.preflight`); each STOPs naming a setting that fits.
- **export**: ``05_train/export/model.safetensors`` (EMA weights for a full fine-tune; LoRA merged
  into the base for LoRA, fp32) + ``model_config.json`` (a custom ``t5_model`` kept as the T5
  conditioner's ``model_path``); LoRA runs also write ``lora.safetensors`` (the adapters alone, fp32).
  Load it with ``models.load_sao(export_dir)``. The engine's ``get_pretrained_model`` takes hub ids
  only; with the engine alone it is ``create_model_from_config(json)`` + ``load_ckpt_state_dict`` +
  ``load_state_dict(strict=True)`` — which works as is when ``model_path`` is a real T5 folder or hub
  id, not ``"tiny:<name>"`` (ours).
- **logs**: loss and learning rate per step to CSV (``05_train/logs/version_N/metrics.csv``),
  TensorBoard when installed, W&B when ``wandb_project`` is set; demo WAVs every ``demo_every``
  steps and every ``demo_minutes`` of training in ``05_train/demos`` (the card's prompts, generated
  with ``generate_diffusion_cond``).

``seconds_total``: the number the model reads as "where the audio ends". SAO was pre-trained with
``seconds_total`` = the length of the file the window came from, and windows past a file's end
zero-padded. We keep that meaning: when the training window is completely filled by audio, the
track really goes on, so ``seconds_total`` is the source track's duration (``source_duration`` in
``segments.jsonl``; when unknown, the clip's end in its source); when the window runs past the
clip's end (a 20–35 s clip in SAO's 47.5 s window), the audio stops there and is padded, so
``seconds_total`` is the clip's end in its source track (``start + duration``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import layout, modelspec
from . import audio as audio_io
from .clipstore import ClipFolder
from .checkpoints import (  # noqa: F401  (train.newest_checkpoint & co.: the names 05b and the tests use)
    _CKPT_RE,
    RESUME_KEYS,
    DivergedError as _Diverged,
    nonfinite_tensors,
    checkpoint_problem,
    local_checkpoint_folder,
    mirror_checkpoint,
    newest_checkpoint,
    prune_checkpoints,
)
from .runs import Run, atomic_path, atomic_write_json, read_jsonl
from .settings import TrainSettings
from . import stage
from .stage import begin

STAGE = layout.TRAIN
MIN_HOLDOUT_CLIPS = 10  # a catalogue under this trains on every clip, without a held-out split


class TrainError(RuntimeError):
    """A training run that cannot start or continue; the message says what to change."""


class DivergedError(TrainError, _Diverged):
    """Training diverged: a NaN/inf loss or weight. The message names the step, the last good
    checkpoint and what to try; nothing is exported."""


class TrainDataError(TrainError):
    """A clip whose row or audio cannot be used; the message names the clip and its file."""


# --------------------------------------------------------------------------------------------
# the training set: rows of prompts.jsonl joined with segments.jsonl (by clip_id)


@dataclass(frozen=True)
class Clip:
    clip_id: str
    path: Path  # absolute
    prompt: str
    start: float  # seconds into its source track
    duration: float  # seconds
    source_duration: float | None  # the whole source track, when 01_segment recorded it


def _number(row: dict, key: str, where: str, required: bool = True) -> float | None:
    value = row.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise TrainDataError(f"{where}: field {key!r} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def read_clips(run_dir: str | os.PathLike, check_audio: bool = True) -> list[Clip]:
    """The training clips of a run, sorted by ``clip_id``; every row checked, errors raised together.

    A row's ``filepath`` becomes a file through :class:`stablebeat_utils.clipstore.ClipFolder` (the
    run folder, or 01_segment's ``clip_dir``). ``check_audio=False``: the files are not looked at
    (:func:`run` checks only the clips it will read: none whose latents are already encoded).
    """
    run = Run(run_dir)
    folder = ClipFolder(run.root)
    prompts_path = run.path(layout.PROMPTS, layout.PROMPT_ROWS)
    if not prompts_path.is_file():
        raise TrainError(f"{prompts_path}: missing — run 04_prompts first (training reads its prompts.jsonl)")
    segments = {r.get("clip_id"): r for r in read_jsonl(run.path(layout.SEGMENT, layout.SEGMENTS))}
    clips, problems, seen = [], [], set()
    for n, row in enumerate(read_jsonl(prompts_path), 1):
        cid = row.get("clip_id")
        where = f"{prompts_path} line {n} (clip {cid!r})"
        try:
            if not isinstance(cid, str) or not cid:
                raise TrainDataError(f"{where}: no clip_id")
            if cid in seen:
                raise TrainDataError(f"{where}: clip_id appears twice")
            seen.add(cid)
            prompt = row.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise TrainDataError(f"{where}: empty or missing 'prompt'")
            rel = row.get("filepath")
            if not isinstance(rel, str) or not rel:
                raise TrainDataError(f"{where}: missing 'filepath'")
            path = folder.path(rel)
            if check_audio and not folder.outside and not path.is_file():
                raise TrainDataError(f"{where}: audio file {path} not found")
            seg = segments.get(cid) or {}
            src = _number(seg, "source_duration", f"{where} (segments.jsonl)", required=False)
            clips.append(
                Clip(cid, path, prompt.strip(), _number(row, "start", where), _number(row, "duration", where), src)
            )
        except TrainDataError as exc:
            problems.append(str(exc))
    if problems:
        more = f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise TrainDataError(
            f"{len(problems)} unusable row(s) in the training set:\n  " + "\n  ".join(problems[:10]) + more
        )
    if not clips:
        raise TrainError(f"{prompts_path}: no clips to train on")
    if check_audio:
        folder.require(STAGE, [c.path for c in clips])  # clips gone from a wiped clip_dir: STOP, naming the fix
    return sorted(clips, key=lambda c: c.clip_id)


def require_audio(run_dir: str | os.PathLike, clips: list[Clip], stage: str = STAGE) -> None:
    """Stop before any work when clips that will be read are gone: from a wiped ``clip_dir``
    (:class:`~stablebeat_utils.clipstore.MissingClipsError`, naming the fix: re-run 01_segment), or
    from the run folder (:class:`TrainDataError`, naming them)."""
    ClipFolder(run_dir).require(stage, [c.path for c in clips])
    gone = [c for c in clips if not c.path.is_file()]
    if gone:
        more = f" … and {len(gone) - 10} more" if len(gone) > 10 else ""
        raise TrainDataError(
            f"{len(gone)} training clip(s) not found: " + ", ".join(f"{c.clip_id} ({c.path})" for c in gone[:10]) + more
        )


def holdout_unit(clip_id: str) -> float:
    """Where a clip falls in [0, 1): a hash of its id, so the split never depends on the order, the
    run or the stage (05 and 05b hold out the same clips)."""
    return int(hashlib.sha256(f"holdout:{clip_id}".encode()).hexdigest()[:12], 16) / 16**12


def split_holdout(clips: list[Clip], fraction: float, stage: str = STAGE) -> tuple[list[Clip], list[Clip]]:
    """``(training clips, held-out clips)``: the clips whose :func:`holdout_unit` is under ``fraction``
    are never trained on (repeats of a clip go together); their loss is logged beside the training
    loss. A catalogue under :data:`MIN_HOLDOUT_CLIPS` distinct clips, or a split that would leave
    one side empty, says so and trains on every clip without a held-out split."""
    if fraction <= 0:
        return clips, []
    ids = {c.clip_id for c in clips}
    held_ids = {i for i in ids if holdout_unit(i) < fraction}
    if len(ids) < MIN_HOLDOUT_CLIPS or not held_ids or held_ids == ids:
        print(
            f"{stage}: the catalogue is too small for a held-out split ({len(ids)} clips, holdout_fraction="
            f"{fraction:g}: {len(held_ids)} would be held out; it takes {MIN_HOLDOUT_CLIPS} clips or more). "
            "Training on every clip, without a held-out loss."
        )
        return clips, []
    print(
        f"{stage}: {len(held_ids)} of {len(ids)} clips held out (never trained on): their loss is logged as val/avg_loss"
    )
    return [c for c in clips if c.clip_id not in held_ids], [c for c in clips if c.clip_id in held_ids]


def conditioning_for(
    clip: Clip, offset_s: float, window_s: float, real_s: float, ids: Sequence[str] | None = None
) -> dict:
    """The conditioning of one training window (see the module docstring for ``seconds_total``).

    ``offset_s``: where the window starts inside the clip; ``window_s``: the window's length;
    ``real_s``: how much of the window is the clip's audio (less than ``window_s`` when padded).
    ``ids``: the model's conditioning ids (``modelspec``): a number it is not conditioned on is left
    out (SAO small has no ``seconds_start``); None keeps all (SAO 1.0's).
    """
    seconds_start = clip.start + offset_s
    clip_end = clip.start + clip.duration
    padded = real_s < window_s - 1e-6
    if padded or clip.source_duration is None:
        seconds_total = clip_end
    else:
        seconds_total = max(clip.source_duration, clip_end)
    out = {
        "prompt": clip.prompt,
        "seconds_start": float(seconds_start),
        "seconds_total": float(seconds_total),
        "clip_id": clip.clip_id,
    }
    return out if ids is None else {k: v for k, v in out.items() if k in ids or k == "clip_id"}


def _crop(n_have: int, n_window: int, random_crop: bool, rng: random.Random) -> tuple[int, int]:
    """(offset, real length) of a window of ``n_window`` frames over ``n_have``.

    Written here rather than using the engine's ``PadCrop_Normalized_T`` because we need the exact
    offset (it only returns it rounded down to whole seconds) and the same rule for audio samples
    and latent frames.
    """
    if n_have > n_window:
        offset = rng.randint(0, n_have - n_window) if random_crop else 0
        return offset, n_window
    return 0, n_have


class ClipDataset:
    """Raw audio windows: ``(audio (2, sample_size) float32, metadata)`` — a ``torch`` map-style dataset."""

    cond_ids: tuple[str, ...] | None = None  # the model's conditioning ids (None: all of conditioning_for's)

    def __init__(self, clips: list[Clip], sample_rate: int, sample_size: int, random_crop: bool = True, seed: int = 0):
        self.clips, self.sr, self.n, self.random_crop, self.seed = clips, sample_rate, sample_size, random_crop, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.clips)

    def _rng(self, idx: int) -> random.Random:
        return random.Random(f"{self.seed}:{idx}:{random.getrandbits(32)}")

    def __getitem__(self, idx: int):
        import torch

        clip = self.clips[idx]  # O(1): a list indexed by the sampler
        try:
            samples, _ = audio_io.load(clip.path, sr=self.sr)
        except audio_io.AudioError as exc:
            raise TrainDataError(f"clip {clip.clip_id} ({clip.path}): {exc}") from exc
        samples = audio_io.to_stereo(samples)
        offset, real = _crop(samples.shape[1], self.n, self.random_crop, self._rng(idx))
        window = np.zeros((2, self.n), dtype=np.float32)
        window[:, :real] = samples[:, offset : offset + real]
        mask = torch.zeros(self.n, dtype=torch.bool)
        mask[:real] = True
        md = conditioning_for(clip, offset / self.sr, self.n / self.sr, real / self.sr, self.cond_ids)
        md["padding_mask"] = [mask]
        return torch.from_numpy(np.clip(window, -1.0, 1.0)), md


class LatentDataset:
    """Pre-encoded windows: ``(latents (C, frames), metadata)`` read from ``latents/<clip_id>.safetensors``."""

    cond_ids: tuple[str, ...] | None = None  # as ClipDataset's

    def __init__(
        self,
        clips: list[Clip],
        latents_dir: Path,
        frames: int,
        frame_seconds: float,
        random_crop: bool = True,
        seed: int = 0,
    ):
        self.clips, self.dir, self.frames, self.frame_s = clips, Path(latents_dir), frames, frame_seconds
        self.random_crop, self.seed = random_crop, seed

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, idx: int):
        import torch
        from safetensors.torch import load_file

        clip = self.clips[idx]
        path = self.dir / f"{clip.clip_id}.safetensors"
        try:
            lat = load_file(str(path))["latents"]
        except Exception as exc:
            raise TrainDataError(
                f"clip {clip.clip_id}: pre-encoded latents {path} unreadable ({exc}); "
                "delete the file and run the stage again"
            ) from exc
        have = int(lat.shape[-1])
        offset, real = _crop(
            have, self.frames, self.random_crop, random.Random(f"{self.seed}:{idx}:{random.getrandbits(32)}")
        )
        window = torch.zeros(lat.shape[0], self.frames, dtype=torch.float32)
        window[:, :real] = lat[:, offset : offset + real].float()
        mask = torch.zeros(self.frames, dtype=torch.bool)
        mask[:real] = True
        # the crop offset in latent frames, converted back to seconds: seconds_start stays exact
        md = conditioning_for(
            clip,
            offset * self.frame_s,
            self.frames * self.frame_s,
            min(real * self.frame_s, clip.duration - offset * self.frame_s),
            self.cond_ids,
        )
        md["padding_mask"] = [mask]
        return window, md


def make_loader(dataset, batch_size: int, workers: int = 0, shuffle: bool = True, seed: int = 0):
    """A plain ``DataLoader`` with the engine's ``collation_fn`` (metadata stay a tuple of dicts)."""
    import torch
    from stable_audio_tools.data.dataset import collation_fn

    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=g,
        persistent_workers=workers > 0,
        pin_memory=False,
        drop_last=len(dataset) >= batch_size,
        collate_fn=collation_fn,
    )


# --------------------------------------------------------------------------------------------
# pre-encoding


def _vae_fingerprint(model_config: dict, base_model: str) -> str:
    pt = json.dumps(model_config.get("model", {}).get("pretransform", {}), sort_keys=True)
    return hashlib.sha256(f"{base_model}|{model_config.get('sample_rate')}|{pt}".encode()).hexdigest()[:16]


def _latent_is_fresh(path: Path, fingerprint: str) -> bool:
    from safetensors import safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as fh:
            return (fh.metadata() or {}).get("vae") == fingerprint
    except Exception:
        return False  # unreadable: encode again


def latents_todo(clips: list[Clip], latents_dir: Path, fingerprint: str) -> list[Clip]:
    """The clips whose latents are missing, unreadable or made by another VAE."""
    return [c for c in clips if not _latent_is_fresh(Path(latents_dir) / f"{c.clip_id}.safetensors", fingerprint)]


def _pre_encode_worker(
    base_model: str, t5_model: str, clips: list[Clip], latents_dir: str, fingerprint: str, device: str, seed: int, queue
) -> None:
    try:
        from . import models

        model, _ = models.load_sao(base_model, device="cpu", t5_source=t5_model or None)
        queue.put(("ok", pre_encode_clips(model, clips, Path(latents_dir), fingerprint, device=device, seed=seed)))
    except BaseException as exc:  # reported by the parent, with its message
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def _pre_encode_in_child(base_model, t5_model, clips, latents_dir, fingerprint, device, seed) -> dict:
    """:func:`pre_encode_clips` in a fresh (spawned) process: this one never initialises CUDA."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_pre_encode_worker,
        args=(base_model, t5_model, clips, str(latents_dir), fingerprint, str(device), seed, queue),
    )
    proc.start()
    try:
        status, value = queue.get()
    finally:
        proc.join()
    if status != "ok":
        raise TrainError(f"pre-encoding (in its own process, {device}) failed: {value}")
    return value


def compact_latents(lat):
    """Latents as stored on disk: float16 (half the bytes of float32), float32 where fp16 would overflow.

    float16 rather than bfloat16: the same 2 bytes, but 11 significant bits instead of 8, so ~8x
    less rounding (relative error <= 2^-11 vs 2^-8) for values in fp16's range (|x| < 65504; VAE
    latents are O(1)). Measured on the tiny model in docs/benchmarks.md (bench_latent_dtype.py).
    LatentDataset reads either dtype (older float32 files stay valid) and trains in float32.
    """
    import torch

    lat = lat.detach().float().cpu().contiguous()
    half = lat.to(torch.float16)
    return half if bool(torch.isfinite(half).all()) else lat


def pre_encode_clips(
    model, clips: list[Clip], latents_dir: Path, fingerprint: str, device: str = "cpu", seed: int = 0
) -> dict:
    """Encode each clip once with the model's VAE into ``latents_dir/<clip_id>.safetensors``.

    Stores the *unscaled* latents (as the engine's ``pre_encoded`` path expects: it divides by the
    pretransform's scale itself), in float16 (:func:`compact_latents`), with the clip's
    conditioning fields as metadata. A file with the
    same VAE fingerprint is kept (resumable); each write is atomic. Sampling from the VAE posterior
    is seeded per clip, so the latents do not depend on the order or on a restart.
    """
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    latents_dir.mkdir(parents=True, exist_ok=True)
    pt = model.pretransform
    sr = int(model.sample_rate)
    done = encoded = 0
    pt.to(device)
    for clip in tqdm(clips, desc="pre-encode (VAE)", unit="clip"):
        path = latents_dir / f"{clip.clip_id}.safetensors"
        if _latent_is_fresh(path, fingerprint):  # unreadable or another VAE's: encode again
            done += 1
            continue
        try:
            samples, _ = audio_io.load(clip.path, sr=sr)
        except audio_io.AudioError as exc:
            raise TrainDataError(f"clip {clip.clip_id} ({clip.path}): {exc}") from exc
        x = torch.from_numpy(audio_io.to_stereo(samples)).unsqueeze(0).to(device)
        pad = (-x.shape[-1]) % pt.downsampling_ratio
        if pad:
            x = torch.nn.functional.pad(x, (0, pad))
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(hashlib.sha256(f"{seed}:{clip.clip_id}".encode()).hexdigest()[:8], 16))
            lat = pt.encode(x) * pt.scale
        stored = compact_latents(lat[0])
        meta = {
            "vae": fingerprint,
            "clip_id": clip.clip_id,
            "prompt": clip.prompt,
            "start": repr(clip.start),
            "duration": repr(clip.duration),
            "sample_rate": str(sr),
            "dtype": str(stored.dtype),
            "source_duration": "" if clip.source_duration is None else repr(clip.source_duration),
        }
        with atomic_path(path) as tmp:
            save_file({"latents": stored}, str(tmp), metadata=meta)
        encoded += 1
    return {"encoded": encoded, "reused": done}


# --------------------------------------------------------------------------------------------
# Lightning pieces


def _lightning():
    import pytorch_lightning as pl

    # trainer.fit(..., weights_only=True) (resume without arbitrary pickles) arrived in Lightning 2.6
    major_minor = tuple(int(x) for x in re.findall(r"\d+", pl.__version__)[:2])
    if major_minor < (2, 6):
        raise TrainError(
            f"05_train needs pytorch-lightning >= 2.6 (found {pl.__version__}): pip install 'pytorch-lightning>=2.6'"
        )
    return pl


def _lightning_classes():
    """:mod:`stablebeat_utils.train_lightning`, imported on first use: importing Lightning and the
    engine takes seconds, so ``import stablebeat_utils.train`` does not (the version check first)."""
    from . import compat

    compat.apply()
    compat.stub_training_only_imports()
    _lightning()
    from . import train_lightning

    return train_lightning


# --------------------------------------------------------------------------------------------
# configuration


def training_config(
    model_config: dict,
    *,
    lr: float,
    mode: str,
    lora_rank: int,
    lora_alpha: float,
    lora_adapter: str,
    pre_encode: bool,
    ema: bool,
    sample_size: int,
    log_every: int,
    padding_loss_weight: float = 1.0,
    optimizer: str = "adamw",
) -> dict:
    """The engine's ``model_config`` with our ``training`` section (the card's recipe).

    Optimizer and scheduler come from the model's own config where it has them (SAO 1.0's are
    AdamW 5e-5, betas 0.9/0.999, weight decay 1e-3, InverseLR inv_gamma 1e6 power 0.5 warmup 0.99);
    only the learning rate is replaced by ``lr``.

    ``padding_loss_weight`` becomes the engine's ``mask_loss_weight`` (stable-audio-tools 0.0.20,
    ``training.utils.compute_masked_loss``; its default is 0.0): the loss per sample is
    ``(sum over real frames + w * sum over padded frames) / (n_real + w * n_padded)``. ``1.0`` is a
    plain mean over the whole window — how SAO 1.0 was trained (silence after ``seconds_total``
    included); ``0.0`` trains on the real audio only.
    """
    cfg = copy.deepcopy(model_config)
    cfg["sample_size"] = int(sample_size)
    train = cfg.setdefault("training", {})
    opt = copy.deepcopy(
        train.get("optimizer_configs")
        or {
            "diffusion": {
                "optimizer": {"type": "AdamW", "config": {"betas": [0.9, 0.999], "weight_decay": 1e-3}},
                "scheduler": {"type": "InverseLR", "config": {"inv_gamma": 1000000, "power": 0.5, "warmup": 0.99}},
            }
        }
    )
    opt["diffusion"]["optimizer"].setdefault("config", {})["lr"] = float(lr)
    if optimizer == "adamw8bit":  # the engine's own bitsandbytes.optim.AdamW8bit, same betas / decay
        opt["diffusion"]["optimizer"]["type"] = "AdamW8bit"
    train.update(
        {
            "optimizer_configs": opt,
            "use_ema": bool(ema),
            "pre_encoded": bool(pre_encode),
            "log_every_n_steps": int(log_every),
            "cfg_dropout_prob": train.get("cfg_dropout_prob", 0.1),
            "mask_loss_weight": float(padding_loss_weight),
        }
    )
    train.pop("learning_rate", None)
    train.pop("lora_config", None)
    if mode == "lora":
        train["lora_config"] = {"rank": int(lora_rank), "alpha": float(lora_alpha), "adapter_type": lora_adapter}
    return cfg


def pick_precision(precision: str, device: str, devices: int = 1) -> str:
    """``"auto"`` → bf16-mixed on GPUs with bf16, 16-mixed on other GPUs, 32-true on CPU (models.pick_dtype).

    With several GPUs the question is asked in a child process: asking here would initialise CUDA
    in this process, and Lightning's notebook-friendly multi-GPU launcher (``ddp_notebook``, what
    ``strategy="auto"`` picks in Jupyter/Colab) forks and refuses an initialised CUDA.
    """
    if precision != "auto":
        return precision
    import subprocess
    import sys

    import torch

    from .models import pick_dtype

    if str(device).startswith("cuda") and devices != 1:
        out = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.is_bf16_supported())"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        return "bf16-mixed" if out.stdout.strip() == "True" else "16-mixed"
    dtype = pick_dtype(device)
    return {torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}.get(dtype, "32-true")


def card_prompts() -> list[str]:
    import yaml

    path = Path(__file__).parent / "data" / "card_prompts.yaml"
    return list(yaml.safe_load(path.read_text(encoding="utf-8"))["prompts"])


def _validate(p: dict) -> None:
    """What the settings' own choices and bounds (checked before ``run``'s body) cannot say."""
    if not (p["epochs"] >= 1 or p["max_steps"] >= 1):
        raise TrainError("05_train: set epochs >= 1 or max_steps >= 1")


# --------------------------------------------------------------------------------------------
# the stage


@stage.entry(STAGE, TrainError)
def run(
    run_dir: str,
    profile: str,
    base_model: str,
    t5_model: str,
    mode: str,
    lora_rank: int,
    lora_alpha: float,
    lora_adapter: str,
    batch_size: int,
    lr: float,
    epochs: int,
    max_steps: int,
    sample_seconds: float,
    random_crop: bool,
    ema: bool,
    precision: str,
    accelerator: str,
    devices: int,
    strategy: str,
    workers: int,
    checkpoint_every: int,
    keep_checkpoints: int,
    demo_every: int,
    num_demos: int,
    demo_steps: int,
    demo_cfg: float,
    demo_seconds: float,
    pre_encode: bool,
    log_every: int,
    wandb_project: str,
    seed: int,
    export_merged: bool,
    padding_loss_weight: float,
    grad_accum: int,
    checkpoint_minutes: float,
    local_checkpoint_dir: str,
    optimizer: str,
    demo_minutes: float,
    export_from: str,
    holdout_fraction: float,
    *,
    stage: str = STAGE,
    clips: list[Clip] | None = None,
) -> dict:
    """Fine-tune (or resume fine-tuning) SAO on ``RUN_DIR/04_prompts``; export; return a summary.

    ``max_steps`` > 0 stops after that many optimizer steps (counted across resumes); otherwise
    ``epochs`` passes over the clips. ``sample_seconds`` is the training window (0 = the model's
    own ``sample_size``, 47.55 s for SAO 1.0). ``t5_model`` overrides the T5 weights ("" = the
    model config's own). Running again with the same parameters after it finished only reports;
    after a kill (or with a larger ``max_steps``/``epochs``) it resumes from the newest checkpoint.
    A resumed run continues the checkpoint's optimizer, EMA and schedule; a changed ``lr`` applies
    from the resumed step (the schedule's base is replaced: how a run that diverged goes on with a
    lower ``lr`` from its last good checkpoint); changed model/mode settings are refused.

    **Divergence**: a NaN/inf loss stops training (:class:`DivergedError`, naming the step, the last
    good checkpoint and what to try); the checkpoints whose weights gave it are removed, no
    checkpoint and no export ever holds a NaN/inf weight. **Watching the sound**: every demo is
    scored as it is made (:mod:`stablebeat_utils.train_watch`: ``demo_scores.csv``, warnings).
    ``export_from``: ``"last"`` (the final EMA weights, the card's recipe) or ``"best"`` (the demo
    step with the lowest :func:`~stablebeat_utils.train_watch.step_score`: mean distance of its
    demos to the training clips, none unscored, no detector fired). ``holdout_fraction``: clips held
    out by a hash of their id (:func:`split_holdout`), never trained on; their loss is logged as
    ``val/avg_loss`` every ``checkpoint_every`` steps (:func:`read_val_curve`).
    ``padding_loss_weight``: how much the padded frames of a window (after a short clip's end) count
    in the loss — 1.0 trains them as SAO 1.0 was trained, 0.0 ignores them (see :func:`training_config`).

    ``grad_accum``: optimizer steps every ``grad_accum`` batches (Lightning's
    ``accumulate_grad_batches``): the effective batch is ``batch_size * grad_accum * devices``, so
    the card's 16 holds on a smaller GPU (steps, ``checkpoint_every`` and ``demo_every`` count
    optimizer steps). ``checkpoint_minutes`` > 0 also checkpoints every that many minutes, and
    every epoch ends with one; ``demo_minutes`` > 0 also renders demos every that many minutes. ``local_checkpoint_dir`` (e.g. ``/content/stablebeat_checkpoints``
    on Colab): checkpoints are written there first (fast local disk) and copied atomically into
    ``05_train/checkpoints`` (Drive) in the background, ``keep_checkpoints`` in each; resume takes the newest complete
    checkpoint of either folder (a copy cut by a disconnect is skipped, named).

    ``optimizer``: "adamw" (the card) or "adamw8bit" (bitsandbytes' 8-bit AdamW, the engine's
    ``AdamW8bit``: ~6 GB less GPU memory and checkpoints of ~10.6 GB instead of ~16.9 GB for a full
    fine-tune; CUDA only). Before the model is loaded the stage prints a storage plan
    (:mod:`stablebeat_utils.storage`, kept in ``RUN_DIR/storage_plan.json``) and a GPU-memory
    preflight (:mod:`stablebeat_utils.preflight`), and stops when either does not fit.

    ``stage`` and ``clips`` are the hooks of the second stage (:mod:`stablebeat_utils.focus`):
    its own folder ``RUN_DIR/<stage>`` and its subset of the clips (repeats as repeated entries).
    """
    run_, params = begin(STAGE, locals())  # a wrong type or an incompatible run folder: refused by name
    _validate(params)
    t_start = time.perf_counter()
    stage_dir = run_.stage_dir(stage)
    if run_.is_done(stage, params) and (layout.exported_weights(stage_dir)).is_file():
        return dict(run_.stage_record(stage)["summary"], skipped=True)
    clips = read_clips(run_dir, check_audio=False) if clips is None else clips
    clips, held_out = split_holdout(clips, holdout_fraction, stage)
    p = TrainSettings(**params)  # the settings by name, as recorded (a path as str)
    if not p.pre_encode:
        require_audio(
            run_dir, clips + held_out, stage
        )  # every clip is read; with pre_encode only those not yet encoded

    tl = _lightning_classes()
    folders = _checkpoint_folders(run_, stage_dir, local_checkpoint_dir)
    # a resumed session draws new crops, noise and shuffles (not a replay of the first session's)
    session_seed = seed + (folders.resumed_step or 0)
    tl.pl.seed_everything(session_seed, workers=True, verbose=False)
    device, prec, gpu_estimate = _plans_and_preflight(run_, p, clips, folders.local, stage)
    model, model_config, cfg, window = _load_for_training(p)
    enc, loader = _training_data(p, model, model_config, clips, stage, window, device, session_seed)
    val_loader = (
        _training_data(p, model, model_config, held_out, stage, window, device, p.seed, False)[1] if held_out else None
    )
    wrapper = _training_wrapper(p, tl, cfg, model, folders.drive)
    cond_ids = modelspec.from_config(model_config).conditioning_ids  # SAO small has no seconds_start
    trainer, curves, demos = _trainer(p, tl, prec, stage_dir, folders, clips, bool(held_out), cond_ids)
    facts = {  # what the summary reports from before training
        "clips": len({c.clip_id for c in clips}),  # distinct clips; 05b repeats some (samples_per_epoch)
        "samples_per_epoch": len(clips),
        "trainable_parameters": int(sum(q.numel() for q in wrapper.diffusion.parameters() if q.requires_grad)),
        "gpu_estimate_gb": gpu_estimate,
        "resumed_from_step": folders.resumed_step,
        "window_seconds": round(window / int(model_config["sample_rate"]), 3),
        "pre_encoded": enc,
        "held_out_clips": sorted({c.clip_id for c in held_out}),
    }
    trainer.fit(
        wrapper, train_dataloaders=loader, val_dataloaders=val_loader, ckpt_path=folders.resume_path, weights_only=True
    )
    if not trainer.is_global_zero:
        return {}
    export_cfg = export_config(model_config, t5_model)
    summary = _finish(p, trainer, wrapper, curves, demos, export_cfg, stage_dir, folders, facts, t_start)
    run_.mark_done(stage, params=params, **summary)
    return summary


# --------------------------------------------------------------------------------------------
# the steps of run()


@dataclass(frozen=True)
class _CheckpointFolders:
    """Where a session's checkpoints go, and the one it resumes from."""

    drive: Path  # RUN_DIR/<stage>/checkpoints: the run folder (on Colab, Drive)
    local: Path | None  # under local_checkpoint_dir: written there first, then mirrored to ``drive``
    resume: Path | None  # the newest complete checkpoint of either folder
    resumed_step: int | None

    @property
    def both(self) -> list[Path]:
        return [d for d in (self.local, self.drive) if d is not None]

    @property
    def resume_path(self) -> str | None:
        return str(self.resume) if self.resume else None


def _checkpoint_folders(run_, stage_dir: Path, local_checkpoint_dir: str) -> _CheckpointFolders:
    """The checkpoint folders (a write cut by a kill cleared away) and the checkpoint to resume from."""
    ckpt_dir = layout.checkpoint_dir(stage_dir)
    local_dir = local_checkpoint_folder(local_checkpoint_dir, run_.root)
    ckpt_dirs = [d for d in (local_dir, ckpt_dir) if d is not None]
    for d in ckpt_dirs:
        for stale in d.glob(".step=*.tmp.ckpt"):  # a write cut by a kill (never renamed into place)
            stale.unlink(missing_ok=True)
    resume = newest_checkpoint(*ckpt_dirs)
    resumed_step = int(_CKPT_RE.match(resume.name).group(1)) if resume is not None else None
    return _CheckpointFolders(ckpt_dir, local_dir, resume, resumed_step)


def _plans_and_preflight(
    run_, p, clips: list[Clip], local_dir: Path | None, stage: str = STAGE
) -> tuple[str, str, float | None]:
    """``(device, precision, GPU estimate)`` — after the storage plan, the GPU-memory preflight and the
    optimizer's needs are checked: each STOPs here, before the model is loaded."""
    from . import models

    accelerator = p.accelerator
    device = models.pick_device("auto" if accelerator == "auto" else ("cuda" if accelerator == "gpu" else accelerator))
    _plan_storage(
        run_,
        p.base_model,
        clips,
        stage=stage,
        mode=p.mode,
        ema=p.ema,
        optimizer=p.optimizer,
        lora_rank=p.lora_rank,
        pre_encode=p.pre_encode,
        keep_checkpoints=p.keep_checkpoints,
        local_dir=local_dir,
        export_merged=p.export_merged,
    )
    prec = pick_precision(p.precision, device, p.devices)
    gpu_estimate = _preflight_gpu(
        device,
        p.base_model,
        stage=stage,
        mode=p.mode,
        precision=prec,
        batch_size=p.batch_size,
        grad_accum=p.grad_accum,
        sample_seconds=p.sample_seconds,
        optimizer=p.optimizer,
        ema=p.ema,
        lora_rank=p.lora_rank,
        pre_encode=p.pre_encode,
    )
    _check_optimizer(p.optimizer, device)
    return device, prec, gpu_estimate


def _check_optimizer(optimizer: str, device: str) -> None:
    if optimizer == "adamw8bit":
        import importlib.util

        if not str(device).startswith("cuda"):
            raise TrainError(
                f"optimizer='adamw8bit' needs a CUDA GPU (bitsandbytes' 8-bit AdamW); this run is on "
                f"{device}: use optimizer='adamw'"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise TrainError("optimizer='adamw8bit' needs the bitsandbytes package: pip install bitsandbytes")


def _downsampling(model) -> int:
    return model.pretransform.downsampling_ratio if model.pretransform is not None else 1


def _load_for_training(p):
    """``(model, model_config, training config, window in samples)``: the base model made trainable."""
    from . import models

    model, model_config = models.load_sao(p.base_model, device="cpu", t5_source=p.t5_model or None)
    sr = int(model_config["sample_rate"])
    ratio = _downsampling(model)
    window = int(model_config["sample_size"]) if p.sample_seconds == 0 else int(round(p.sample_seconds * sr))
    window = max(1, math.ceil(window / ratio)) * ratio  # whole latent frames
    cfg = training_config(
        model_config,
        lr=p.lr,
        mode=p.mode,
        lora_rank=p.lora_rank,
        lora_alpha=p.lora_alpha,
        lora_adapter=p.lora_adapter,
        pre_encode=p.pre_encode,
        ema=p.ema,
        sample_size=window,
        log_every=p.log_every,
        padding_loss_weight=p.padding_loss_weight,
        optimizer=p.optimizer,
    )

    # load_sao hands back an inference model (all frozen); trainable again as a freshly built
    # engine model is: the DiT and the conditioners' own layers (T5 and the VAE stay frozen)
    model.train()
    model.model.requires_grad_(True)
    model.conditioner.requires_grad_(True)
    if model.pretransform is not None:
        model.pretransform.eval().requires_grad_(False)
    return model, model_config, cfg, window


def _training_data(
    p, model, model_config, clips, stage: str, window: int, device: str, session_seed: int, shuffle: bool = True
):
    """``(pre-encoding summary or None, DataLoader)``: raw audio windows, or latents encoded once
    (``shuffle=False``: the held-out clips, read in order, each from its start)."""
    stage_dir = Run(p.run_dir).stage_dir(stage)
    sr, ratio = int(model_config["sample_rate"]), _downsampling(model)
    if p.pre_encode:
        latents_dir = stage_dir / layout.LATENTS
        fingerprint = _vae_fingerprint(model_config, p.base_model)
        require_audio(p.run_dir, latents_todo(clips, latents_dir, fingerprint), stage)  # fresh latents: no clip read
        if str(device).startswith("cuda") and p.devices != 1 and latents_todo(clips, latents_dir, fingerprint):
            # several GPUs: Lightning starts its processes by fork (in a notebook) and refuses a
            # parent whose CUDA is initialised, so the GPU encoding runs in a fresh process
            enc = _pre_encode_in_child(p.base_model, p.t5_model, clips, latents_dir, fingerprint, device, p.seed)
        else:
            enc = pre_encode_clips(model, clips, latents_dir, fingerprint, device=device, seed=p.seed)
        model.pretransform.to("cpu")
        dataset = LatentDataset(clips, latents_dir, window // ratio, ratio / sr, p.random_crop and shuffle, p.seed)
    else:
        enc = None
        dataset = ClipDataset(clips, sr, window, p.random_crop and shuffle, p.seed)
    dataset.cond_ids = modelspec.from_config(model_config).conditioning_ids
    return enc, make_loader(dataset, p.batch_size, p.workers, shuffle=shuffle, seed=session_seed)


def _training_wrapper(p, tl, cfg: dict, model, ckpt_dir: Path):
    """The engine's training wrapper (the card's recipe) with our checkpoint hooks (``train_lightning.Wrapper``)."""
    from stable_audio_tools.training.factory import create_training_wrapper_from_config

    wrapper = create_training_wrapper_from_config(cfg, model)
    wrapper.__class__ = tl.Wrapper  # same object, our checkpoint hooks (see Wrapper)
    wrapper.parent_pid = os.getpid()
    wrapper.settings_error = TrainError
    wrapper.diverged_error = DivergedError
    wrapper.stage = Path(ckpt_dir).parent.name
    lora = p.mode == "lora"
    wrapper.stablebeat_info = {
        "base_model": p.base_model,
        "mode": p.mode,
        "lora_rank": p.lora_rank if lora else None,
        "lora_alpha": p.lora_alpha if lora else None,
        "lora_adapter": p.lora_adapter if lora else None,
        "pre_encode": p.pre_encode,
        "ema": bool(p.ema) and p.mode == "full",
        "lr": float(p.lr),  # not a resume key: a re-run with another lr resumes with it (Wrapper._apply_new_lr)
        "checkpoint_dir": str(ckpt_dir),
    }
    return wrapper


def _loggers(p, stage_dir: Path) -> list:
    """CSV always; TensorBoard when installed; W&B when ``wandb_project`` is set."""
    import importlib.util

    from pytorch_lightning.loggers import CSVLogger

    loggers = [CSVLogger(str(stage_dir), name=layout.LOGS)]
    if importlib.util.find_spec("tensorboard") is not None:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(stage_dir), name="tensorboard"))
    if p.wandb_project:
        from pytorch_lightning.loggers import WandbLogger

        loggers.append(WandbLogger(project=p.wandb_project, save_dir=str(stage_dir)))
    return loggers


def _trainer(
    p, tl, prec: str, stage_dir: Path, folders: _CheckpointFolders, clips: list, validate: bool = False, cond_ids=None
):
    """``(Trainer, CurveLogger, DemoCallback)``: checkpoints, curves, demos (each scored against the
    training ``clips``; conditioned on ``cond_ids``, the model's conditioning ids — None: all), the
    held-out loss (``validate``, every ``checkpoint_every`` steps) and loggers wired in."""
    from pytorch_lightning.callbacks import TQDMProgressBar

    from .train_watch import DemoWatch

    checkpointer = tl.KeepNewest(
        p.keep_checkpoints,
        minutes=p.checkpoint_minutes,
        dirpath=str(folders.local or folders.drive),
        filename="step={step}",
        every_n_train_steps=p.checkpoint_every,
        save_top_k=-1,
        auto_insert_metric_name=False,
        save_on_train_epoch_end=False,
    )
    curves = tl.CurveLogger()
    guard = tl.FiniteGuard(
        stage_dir.name, p.lr, folders.both, patience=8 if prec == "16-mixed" else 1, error=DivergedError
    )
    callbacks = [checkpointer, curves, guard, TQDMProgressBar(refresh_rate=1)]
    prompts = card_prompts()[: max(0, p.num_demos)]
    watch = DemoWatch(stage_dir, sorted({c.path for c in clips}), stage=stage_dir.name)
    best = tl.BestWeights(stage_dir / "best") if p.export_from == "best" else None
    demos = tl.DemoCallback(
        p.demo_every,
        prompts,
        p.demo_steps,
        p.demo_cfg,
        p.demo_seconds,
        stage_dir / layout.DEMOS,
        p.seed,
        p.demo_minutes,
        watch=watch,
        best=best,
        cond_ids=cond_ids,
    )
    if _demos_on(p) and prompts:
        callbacks.append(demos)
    trainer = tl.pl.Trainer(
        accelerator=p.accelerator,
        devices=p.devices,
        strategy=p.strategy,
        precision=prec,
        max_epochs=p.epochs if p.max_steps <= 0 else -1,
        max_steps=p.max_steps if p.max_steps > 0 else -1,
        accumulate_grad_batches=p.grad_accum,
        callbacks=callbacks,
        logger=_loggers(p, stage_dir),
        plugins=[tl.AtomicCheckpointIO(folders.drive if folders.local is not None else None, p.keep_checkpoints)],
        log_every_n_steps=max(1, p.log_every),
        enable_checkpointing=True,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None if validate else 1,
        val_check_interval=max(1, p.checkpoint_every * p.grad_accum) if validate else None,
        default_root_dir=str(stage_dir),
        gradient_clip_val=None,
        deterministic=False,
    )
    return trainer, curves, demos


def _demos_on(p) -> bool:
    return p.demo_every > 0 or p.demo_minutes > 0


def _final_step_and_epoch(trainer, folders: _CheckpointFolders) -> tuple[int, int]:
    """The step and epoch the training reached.

    Under DDP by fork (ddp_notebook, what a notebook gets with devices > 1) the training runs in
    child processes: this trainer's step and epoch stay 0 and its wrapper gets rank 0's weights
    back; the step and epoch are then the newest checkpoint's (the last step is always checkpointed).
    """
    import torch

    steps, epoch = int(trainer.global_step), int(trainer.current_epoch)
    newest = newest_checkpoint(*folders.both)
    if steps == 0 and newest is not None:
        steps = int(_CKPT_RE.match(newest.name).group(1))
        epoch = int(torch.load(str(newest), map_location="cpu", mmap=True, weights_only=True).get("epoch", 0))
    return steps, epoch


def _finish(p, trainer, wrapper, curves, demos, export_cfg, stage_dir: Path, folders, facts: dict, t_start: float):
    """After fit, on rank 0: a demo of the final weights, the export, and the summary the stage records."""
    import torch

    steps, epoch = _final_step_and_epoch(trainer, folders)
    step_seconds = curves.step_seconds or _session_step_seconds(stage_dir / layout.LOGS)  # the CSV's under DDP by fork
    if _demos_on(p) and demos.prompts and demos.last != steps and steps > 0:  # a demo of the final weights too
        demos.generate(trainer, wrapper, steps)
    exported_step = steps
    if p.export_from == "best":
        best = demos.best.restore(wrapper) if demos.best is not None else None
        if best is None:
            print(
                f"{stage_dir.name}: export_from='best': no demo step scored cleanly, so the last weights are exported"
            )
        else:
            exported_step = best
            print(
                f"{stage_dir.name}: exporting the best demo step's weights (step {best}, score {demos.best.score:.4f})"
            )
    files = export(wrapper, export_cfg, layout.export_dir(stage_dir), export_merged=p.export_merged)
    from .train_watch import CSV_NAME, read_scores, warnings_of

    scores = read_scores(stage_dir / CSV_NAME)
    csvs = sorted(str(q) for q in (stage_dir / layout.LOGS).glob(layout.LOG_CSVS))
    return {
        "mode": p.mode,
        "base_model": p.base_model,
        "clips": facts["clips"],
        "samples_per_epoch": facts["samples_per_epoch"],
        "steps": steps,
        "trainable_parameters": facts["trainable_parameters"],
        "effective_batch": p.batch_size * p.grad_accum * max(1, int(p.devices)),
        "gpu_estimate_gb": facts["gpu_estimate_gb"],
        "epoch": epoch,
        "resumed_from_step": facts["resumed_from_step"],
        "devices": p.devices,
        "precision": trainer.precision,
        "window_seconds": facts["window_seconds"],
        "pre_encoded": facts["pre_encoded"],
        "median_step_seconds": round(statistics.median(step_seconds), 4) if step_seconds else None,
        "peak_gpu_memory_gb": (
            round(torch.cuda.max_memory_allocated() / 2**30, 2)
            # the trainer's device, not the module's: Lightning's teardown has moved the module back to
            # the CPU by now (on an H200 this read None after every GPU run)
            if torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda"
            else None
        ),
        "last_loss": _last_loss(csvs),
        "checkpoints": sorted(q.name for q in folders.drive.glob("step=*.ckpt")),
        "export_dir": str(layout.export_dir(stage_dir)),
        "export_files": files,
        "metrics_csv": csvs,
        "demos": [
            str(stage_dir / layout.DEMOS / r["file"]) for r in read_jsonl(stage_dir / layout.DEMOS / layout.DEMOS_LOG)
        ],
        "export_from": p.export_from,
        "exported_step": exported_step,
        "held_out_clips": facts["held_out_clips"],
        "demo_scores_csv": str(stage_dir / CSV_NAME) if scores else None,
        "demo_warnings": warnings_of(scores),
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def _session_step_seconds(logs_dir: Path) -> list[float]:
    """Seconds per step of the newest session, from its CSV log (``version_N``, highest N)."""
    import csv

    versions = sorted(
        (int(m.group(1)), p) for p in Path(logs_dir).glob(layout.LOG_CSVS) if (m := re.search(r"version_(\d+)", str(p)))
    )
    if not versions:
        return []
    with open(versions[-1][1], newline="", encoding="utf-8") as fh:
        return [float(r["step_seconds"]) for r in csv.DictReader(fh) if r.get("step_seconds") not in (None, "")]


def _config_for_plan(base_model: str) -> dict | None:
    """``base_model``'s model_config.json when it is on this machine (tiny, a local folder), else None."""
    from . import models

    if base_model.startswith("tiny:"):
        name = base_model.split(":", 1)[1]
        cfg_path = models.ensure_tiny_models([name])[name] / layout.MODEL_CONFIG
    else:
        cfg_path = Path(base_model).expanduser() / layout.MODEL_CONFIG
    return json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else None


def _plan_counts(base_model: str) -> dict | None:
    """Parameter counts of ``base_model``'s config for the storage plan (None: SAO 1.0's, computed)."""
    from . import storage

    cfg = _config_for_plan(base_model)
    return storage.param_counts(cfg) if cfg is not None else None


def _preflight_gpu(
    device: str,
    base_model: str,
    *,
    mode: str,
    precision: str,
    batch_size: int,
    grad_accum: int,
    sample_seconds: float,
    optimizer: str,
    ema: bool,
    lora_rank: int,
    pre_encode: bool = True,
    stage: str = STAGE,
) -> float | None:
    """The GPU-memory preflight (:mod:`stablebeat_utils.preflight`) on CUDA; None elsewhere."""
    from . import models, preflight

    free = preflight.gpu_free(device)
    if free is None:
        return None
    cfg = _config_for_plan(base_model) or models.sao_full_config()
    window_s = sample_seconds or int(cfg["sample_size"]) / int(cfg["sample_rate"])
    try:
        est = preflight.check(
            mode,
            precision,
            batch_size,
            grad_accum,
            window_s,
            optimizer,
            ema and mode == "full",
            lora_rank,
            free[0],
            free[1],
            pre_encode=pre_encode,
        )
    except preflight.GPUMemoryError as exc:
        raise TrainError(str(exc)) from exc
    print(f"{stage}: GPU preflight: ~{est.gb:.1f} GB ({est.basis}) of {free[0] / 1e9:.1f} GB free")
    return est.gb


def _plan_storage(run_, base_model: str, clips: list, stage: str = STAGE, **kw) -> None:
    """Print the storage plan, keep it in RUN_DIR/storage_plan.json (``stage``'s entry), STOP when it won't fit."""
    from . import storage

    distinct = {c.clip_id: c for c in clips}  # 05b repeats clips: one latent file each all the same
    plan = storage.train_plan(
        run_.root,
        sum(c.duration for c in distinct.values()),
        len(distinct),
        counts=_plan_counts(base_model),
        stage=stage,
        **kw,
    )
    if len(distinct) != len(clips):
        plan.facts["clips"] = f"{len(distinct)} ({len(clips)} samples an epoch, repeats counted)"
    print(plan.text())
    storage.record(run_.root, plan)
    storage.refuse(plan)


def _last_loss(csvs: list[str]) -> float | None:
    curves = read_curves(csvs)
    return round(curves[-1]["loss"], 6) if curves else None


def read_curves(csvs) -> list[dict]:
    """``{step, loss, lr}`` per step from the run's CSV logs; a step redone after a resume keeps its last value."""
    import csv

    by_step: dict[int, dict] = {}
    for path in sorted(
        csvs,
        key=lambda p: int(re.search(r"version_(\d+)", str(p)).group(1)) if re.search(r"version_(\d+)", str(p)) else 0,
    ):
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("loss") not in (None, ""):
                    step = int(float(row["step"]))
                    by_step[step] = {"step": step, "loss": float(row["loss"]), "lr": float(row["lr"])}
    return [by_step[k] for k in sorted(by_step)]


def read_val_curve(csvs) -> list[dict]:
    """``{step, val_loss}`` of the held-out clips (the engine's ``val/avg_loss``) from the run's CSV logs."""
    import csv

    by_step: dict[int, float] = {}
    for path in sorted(csvs, key=lambda q: int(m.group(1)) if (m := re.search(r"version_(\d+)", str(q))) else 0):
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("val/avg_loss") not in (None, ""):
                    by_step[int(float(row["step"]))] = float(row["val/avg_loss"])
    return [{"step": k, "val_loss": by_step[k]} for k in sorted(by_step)]


def export_config(model_config: dict, t5_model: str = "") -> dict:
    """The ``model_config.json`` of an export: the base's, with a custom ``t5_model`` kept.

    A fine-tune trained with another T5 than the config's (``t5_model``) only works with that T5:
    it is written as each T5 conditioner's ``model_path`` — a local folder as an absolute path
    (what the engine's own T5 conditioner reads too), a hub id or ``"tiny:<name>"`` as given.
    """
    cfg = copy.deepcopy(model_config)
    if not t5_model:
        return cfg
    src = os.path.abspath(os.path.expanduser(t5_model)) if Path(t5_model).expanduser().is_dir() else t5_model
    for cond in cfg.get("model", {}).get("conditioning", {}).get("configs", []):
        if cond.get("type") == "t5":
            cond.setdefault("config", {})["model_path"] = src
    return cfg


def export(wrapper, model_config: dict, export_dir: Path, export_merged: bool = True) -> list[str]:
    """Write the fine-tuned model as ``model.safetensors`` + ``model_config.json`` (and ``lora.safetensors``).

    Full fine-tune: the EMA weights of the DiT with the rest of the model (conditioners as trained,
    VAE as loaded) — the engine's own ``export_model`` does the same swap, but mutates the wrapper.
    LoRA: the adapters with the engine's ``export_lora_safetensors``, and (``export_merged``) the
    base with the adapters merged in, so ``load_sao(export_dir)`` reads either kind of run.
    """
    import torch
    from safetensors.torch import save_file

    export_dir.mkdir(parents=True, exist_ok=True)
    files = []
    diffusion = wrapper.diffusion
    if wrapper.lora_config is not None:
        _export_adapters(diffusion, wrapper.lora_config, export_dir / layout.LORA_WEIGHTS)
        files.append(layout.LORA_WEIGHTS)
        if not export_merged:
            (export_dir / layout.MODEL_WEIGHTS).unlink(missing_ok=True)
        else:
            _merge_adapters_in_place(diffusion)
            state = diffusion.state_dict()
    else:
        state = diffusion.state_dict()
        if wrapper.diffusion_ema is not None:
            for k, v in wrapper.diffusion_ema.ema_model.state_dict().items():
                state[f"model.{k}"] = v
    if wrapper.lora_config is None or export_merged:
        _refuse_nonfinite(state, export_dir)
        # fp32 CPU tensors as they are (safetensors writes from their memory: no second copy of a
        # 4.85 GB model); a copy only where a tensor is converted or shares memory with another
        plain, seen = {}, set()
        for k, v in state.items():
            v = v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
            ptr = v.untyped_storage().data_ptr()
            plain[k] = v.clone() if ptr in seen else v
            seen.add(ptr)
        with atomic_path(export_dir / layout.MODEL_WEIGHTS) as tmp:
            save_file(plain, str(tmp), metadata={"format": "pt", "stablebeat": "05_train export"})
        files.append(layout.MODEL_WEIGHTS)
    atomic_write_json(export_dir / layout.MODEL_CONFIG, model_config)
    files.append(layout.MODEL_CONFIG)
    return sorted(files)


def _refuse_nonfinite(state: dict, export_dir: Path) -> None:
    """No export ever holds a NaN/inf weight: refuse, naming the tensors, before a file is written."""
    bad = nonfinite_tensors(state)
    if bad:
        more = f" … and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DivergedError(
            f"{export_dir.parent.name}: refusing to export to {export_dir}: {len(bad)} of {len(state)} weight "
            f"tensors hold NaN/inf ({', '.join(bad[:3])}{more}). The training diverged: run the stage again "
            "with a lower lr (it resumes from the last good checkpoint with it), or start over in a new run_dir."
        )


def _export_adapters(diffusion, lora_config: dict, path: Path) -> None:
    """The LoRA/DoRA adapters alone, in the engine's format (its ``get_lora_state_dict``; ``lora_config``
    in the metadata, what its ``load_and_apply_loras`` reads) but in fp32: its
    ``save_lora_safetensors`` halves them, up to 3 % off per weight — 06's strength slider would not
    play what was trained."""
    import torch
    from safetensors.torch import save_file
    from stable_audio_tools.models.lora import get_lora_state_dict

    adapters = {**get_lora_state_dict(diffusion.model), **get_lora_state_dict(diffusion.conditioner)}
    adapters = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
        for k, v in adapters.items()
    }
    _refuse_nonfinite(adapters, path.parent)
    with atomic_path(path) as tmp:
        save_file(
            adapters,
            str(tmp),
            metadata={"lora_config": json.dumps(lora_config), "format": "pt", "stablebeat": "05_train export (fp32)"},
        )


def _merge_adapters_in_place(diffusion) -> None:
    """Fold the adapters into the base weights, in place: training is over (its last checkpoint is
    written); a deepcopy of the model fails on the VAE's old-style weight_norm once it has run.
    The engine's ``merge_lora`` iterates a dict it shrinks (a RuntimeError on torch 2.13), so each
    parametrization is folded in with torch's own ``remove_parametrizations``."""
    from torch.nn.utils import parametrize

    diffusion.eval()
    for module in [*diffusion.model.modules(), *diffusion.conditioner.modules()]:
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
