"""The storage plan: what a run will write, where, against the free space there (01_segment, 05_train).

Used by ``segment.run`` and ``train.run`` before any work: they print the plan, keep it in
``RUN_DIR/storage_plan.json`` (one entry per stage), and STOP with the numbers when it does not fit,
naming the option that would (FLAC clips, the clips on local disk with ``clip_dir`` — "latents only
on Drive" —, fewer kept checkpoints, 8-bit AdamW, LoRA).

The sizes are arithmetic, not guesses from a sample:

- **clips**: 44.1 kHz stereo 16-bit = 176,400 B/s as WAV. FLAC is lossless, so its size depends on
  the music: measured 0.35-0.59 of the WAV on the three real recordings in ``shared/audio`` at
  -14 LUFS; the plan uses :data:`FLAC_RATIO` = 0.65, a conservative figure for loud, full-band
  masters.
- **latents**: SAO's VAE gives 64 channels at sr / 2048 frames per second; stored in float16
  (:func:`stablebeat_utils.train.compact_latents`) that is 2,756 B/s (+ a small header per file).
- **checkpoints**: computed from the parameter counts of ``data/sao-1.0-model_config.json``
  (the DiT and the two number conditioners are trained; built on PyTorch's meta device, no weights
  — :func:`param_counts`, checked by a test): per trained parameter 4 B weights + 4 B EMA + 8 B
  AdamW moments (2 B with 8-bit AdamW, bitsandbytes' block-wise states). LoRA checkpoints hold the
  adapters and their AdamW moments only.
- **exports**: the whole model (DiT, conditioners, VAE) in float32.

Free space is ``shutil.disk_usage`` of the nearest existing folder; needs on the same filesystem
(the same ``st_dev``) are added up. Both are parameters, so tests pass fake numbers through the
real arithmetic.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import layout
from .clipstore import COLAB_CLIP_DIR, run_subfolder
from .modelspec import SAO
from .runs import Run, atomic_write_json

WAV_BYTES_PER_SECOND = 44100 * 2 * 2
FLAC_RATIO = 0.65  # planning figure; measured 0.35-0.59 on real beats (module docstring)
LATENT_CHANNELS, LATENT_DOWNSAMPLING = SAO.latent_channels, SAO.downsampling_ratio  # SAO 1.0's VAE (modelspec)
LATENT_BYTES = 2  # float16 on disk
SAFETENSORS_HEADER = 1024  # metadata of one latent file (measured ~600-900 B)
MARGIN = 0.05  # keep 5 % of the free space (logs, temp files of atomic writes)
GB = 1e9

#: SAO 1.0's counts (modelspec's registry; computed from its config on the meta device, tests/test_storage.py)
SAO_TRAINED_PARAMS = SAO.known.trained_params
SAO_VAE_PARAMS = SAO.known.vae_params
SAO_LORA_PARAMS_PER_RANK = SAO.known.lora_params_per_rank


class StorageError(RuntimeError):
    """The run will not fit where it writes; the message has the numbers and the way out."""


def clip_bytes(seconds: float, clip_format: str = "wav") -> int:
    return int(seconds * WAV_BYTES_PER_SECOND * (FLAC_RATIO if clip_format == "flac" else 1.0))


def latent_bytes(seconds: float, n_files: int = 0, sample_rate: int = SAO.sample_rate) -> int:
    frames = seconds * sample_rate / LATENT_DOWNSAMPLING
    return int(frames * LATENT_CHANNELS * LATENT_BYTES + n_files * SAFETENSORS_HEADER)


def checkpoint_bytes(
    mode: str = "full",
    ema: bool = True,
    optimizer: str = "adamw",
    lora_rank: int = 16,
    trained_params: int = SAO_TRAINED_PARAMS,
) -> int:
    """One checkpoint of 05_train (the VAE is left out; LoRA keeps the adapters only)."""
    if mode == "lora":
        n = SAO_LORA_PARAMS_PER_RANK * lora_rank if trained_params == SAO_TRAINED_PARAMS else trained_params
        return int(n * (4 + 8))
    moments = 2 + 2 * 4 / 256 if optimizer == "adamw8bit" else 8  # bitsandbytes: uint8 + fp32 absmax / block
    return int(trained_params * (4 + (4 if ema else 0) + moments))


def export_bytes(
    mode: str = "full",
    export_merged: bool = True,
    lora_rank: int = 16,
    trained_params: int = SAO_TRAINED_PARAMS,
    vae_params: int = SAO_VAE_PARAMS,
) -> int:
    full = (trained_params + vae_params) * 4
    if mode == "lora":
        return (full if export_merged else 0) + SAO_LORA_PARAMS_PER_RANK * lora_rank * 4
    return full


def param_counts(model_config: dict) -> dict:
    """Trained (DiT + number conditioners) and VAE parameter counts of an SAO ``model_config``,
    built on the meta device (no memory, no weights, no T5 download)."""
    import torch

    from . import compat

    compat.apply()
    from stable_audio_tools.models.conditioners import NumberConditioner
    from stable_audio_tools.models.dit import DiffusionTransformer
    from stable_audio_tools.models.factory import create_pretransform_from_config

    m = model_config["model"]
    with torch.device("meta"):
        dit = DiffusionTransformer(**m["diffusion"]["config"])
        pt = create_pretransform_from_config(m["pretransform"], model_config["sample_rate"])
        numbers = [
            NumberConditioner(m["conditioning"]["cond_dim"], **c.get("config", {}))
            for c in m["conditioning"]["configs"]
            if c["type"] == "number"
        ]
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    lora = sum(x.in_features + x.out_features for x in dit.modules() if isinstance(x, torch.nn.Linear))
    lora += sum(
        x.in_channels * x.kernel_size[0] + x.out_channels for x in dit.modules() if isinstance(x, torch.nn.Conv1d)
    )
    return {"trained": count(dit) + sum(count(n) for n in numbers), "vae": count(pt), "lora_per_rank": lora}


# --------------------------------------------------------------------------------------------
# the plan


@dataclass
class Need:
    what: str
    bytes: int
    folder: Path


@dataclass
class Plan:
    stage: str
    needs: list[Need]
    facts: dict = field(default_factory=dict)  # source hours, clips … (for the record)
    disks: list[dict] = field(default_factory=list)  # per filesystem: folders, need, free, fits
    options: list[str] = field(default_factory=list)  # what would fit, when it does not

    @property
    def fits(self) -> bool:
        return all(d["fits"] for d in self.disks)

    def text(self) -> str:
        lines = [f"{self.stage}: storage plan"]
        for k, v in self.facts.items():
            lines.append(f"  {k}: {v}")
        for n in self.needs:
            lines.append(f"  {n.what:<38} {n.bytes / GB:9.2f} GB  -> {n.folder}")
        for d in self.disks:
            mark = "fits" if d["fits"] else "DOES NOT FIT"
            lines.append(
                f"  disk of {d['folders'][0]}: needs {d['need'] / GB:.2f} GB, free {d['free'] / GB:.2f} GB "
                f"(keeping {MARGIN:.0%}) — {mark}"
            )
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "stage": self.stage,
            "fits": self.fits,
            "facts": self.facts,
            "needs": [{"what": n.what, "bytes": n.bytes, "folder": str(n.folder)} for n in self.needs],
            "disks": self.disks,
            "options": self.options,
        }


def _existing(path: Path) -> Path:
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _device(path: Path) -> int:
    return os.stat(_existing(path)).st_dev


def assess(
    stage: str,
    needs: list[Need],
    facts: dict | None = None,
    disk_usage: Callable | None = None,
    device_of: Callable = _device,
) -> Plan:
    """Add the needs up per filesystem and compare with the free space there."""
    plan = Plan(stage, [n for n in needs if n.bytes > 0], dict(facts or {}))
    groups: dict = {}
    for n in plan.needs:
        groups.setdefault(device_of(n.folder), []).append(n)
    for items in groups.values():
        free = int((disk_usage or shutil.disk_usage)(str(_existing(items[0].folder))).free)
        need = sum(n.bytes for n in items)
        plan.disks.append(
            {
                "folders": sorted({str(n.folder) for n in items}),
                "need": need,
                "free": free,
                "fits": need <= free * (1 - MARGIN),
            }
        )
    return plan


def check(
    plan: Plan,
    alternatives: list[tuple[str, list[Need]]],
    disk_usage: Callable | None = None,
    device_of: Callable = _device,
) -> Plan:
    """``plan`` if it fits; else a :class:`StorageError` with the numbers and the alternatives that fit."""
    if plan.fits:
        return plan
    for label, needs in alternatives:
        if assess(plan.stage, needs, disk_usage=disk_usage, device_of=device_of).fits:
            plan.options.append(label)
    return plan


def refuse(plan: Plan) -> None:
    if plan.fits:
        return
    short = [d for d in plan.disks if not d["fits"]]
    where = "; ".join(
        f"{d['folders'][0]} needs {d['need'] / GB:.2f} GB but has {d['free'] / GB:.2f} GB free" for d in short
    )
    fix = (
        ("Options that fit: " + "; ".join(plan.options) + ".")
        if plan.options
        else "No setting of this stage fits: free space, or put run_dir on a larger disk."
    )
    raise StorageError(f"STOP — {plan.stage} will not fit: {where}.\n{plan.text()}\n{fix}")


def record(run_dir, plan: Plan) -> Path:
    """Keep the plan in ``RUN_DIR/storage_plan.json`` (one entry per stage)."""
    run = Run(run_dir)
    path = run.root / layout.STORAGE_PLAN
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        data = {}
    data[plan.stage] = plan.to_json()
    atomic_write_json(path, data)
    return path


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    folder = Path(folder)
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file()) if folder.is_dir() else 0


# --------------------------------------------------------------------------------------------
# the two stages


def source_seconds(paths) -> tuple[float, int]:
    """Total seconds of the files whose header libsndfile reads (fast: headers only), and how many it could not."""
    import soundfile as sf

    total, unknown = 0.0, 0
    for p in paths:
        try:
            info = sf.info(str(p))
            total += info.frames / info.samplerate
        except Exception:
            unknown += 1
    return total, unknown


def segment_plan(
    run_dir,
    source_paths,
    segments_per_track: int,
    min_seconds: float,
    max_seconds: float,
    clip_format: str,
    disk_usage: Callable | None = None,
    device_of: Callable = _device,
    clip_folder: Path | None = None,
    clip_dir: str = "",
    local_clip_dir: str = COLAB_CLIP_DIR,
) -> Plan:
    """01_segment: the clips of every source, against the disk of their folder (``clip_folder``: the
    run folder's ``01_segment/clips``, or this run's folder under ``clip_dir``).

    With the clips in the run folder and a ``local_clip_dir`` whose parent exists (``/content`` on
    Colab), putting them there — "latents only on Drive" — is an option when it fits."""
    paths = list(source_paths)
    seconds, unknown = source_seconds(paths)
    mean_clip = (min_seconds + max_seconds) / 2
    known = len(paths) - unknown
    per_known = min(segments_per_track * mean_clip, seconds / known) if known else segments_per_track * mean_clip
    clip_s = per_known * len(paths)  # unreadable headers (mp3, m4a): as many clips as a readable file gives
    clips_dir = Path(clip_folder) if clip_folder else Run(run_dir).root / layout.SEGMENT / layout.CLIPS

    def needs(fmt, folder=clips_dir):
        have = folder_bytes(folder)
        return [Need(f"clips ({fmt}, ~{clip_s / 3600:.1f} h)", max(0, clip_bytes(clip_s, fmt) - have), folder)]

    facts = {
        "sources": len(paths),
        "source_hours": round(seconds / 3600, 2),
        "sources_without_readable_header": unknown,
        "clip_hours_estimate": round(clip_s / 3600, 2),
        "clips_wav_gb": round(clip_bytes(clip_s, "wav") / GB, 2),
        "clips_flac_gb": round(clip_bytes(clip_s, "flac") / GB, 2),
        "clip_format": clip_format,
        "clip_folder": str(clips_dir),
    }
    plan = assess(layout.SEGMENT, needs(clip_format), facts, disk_usage, device_of)
    alts = [("clip_format='flac' (lossless, about half the bytes)", needs("flac"))] if clip_format == "wav" else []
    if not clip_dir and Path(local_clip_dir).expanduser().parent.is_dir():  # the machine's local disk
        local = run_subfolder(local_clip_dir, Run(run_dir).root)
        for fmt in dict.fromkeys((clip_format, "flac")):
            disks = assess(layout.SEGMENT, needs(fmt, local), disk_usage=disk_usage, device_of=device_of).disks
            if not disks:
                continue
            disk = disks[0]
            also = "clip_format='flac' and " if fmt != clip_format else ""
            label = (
                f"{also}clip_dir='{local_clip_dir}' (latents only on Drive: {disk['need'] / GB:.2f} GB of "
                f"{fmt} clips on this machine's local disk, {disk['free'] / GB:.2f} GB free there; rows, tags, "
                "latents and checkpoints stay in run_dir; re-run 01_segment after a disconnect to rebuild them)"
            )
            alts.append((label, needs(fmt, local)))
    return check(plan, alts, disk_usage, device_of)


def train_plan(
    run_dir,
    clip_seconds: float,
    n_clips: int,
    *,
    mode: str,
    ema: bool,
    optimizer: str,
    lora_rank: int,
    pre_encode: bool,
    keep_checkpoints: int,
    local_dir: Path | None,
    export_merged: bool,
    counts: dict | None = None,
    disk_usage: Callable | None = None,
    device_of: Callable = _device,
    stage: str = layout.TRAIN,
) -> Plan:
    """05_train (or ``stage``, 05b's own folder): latents, checkpoints (local and run-folder copy), the export."""
    counts = counts or {"trained": SAO_TRAINED_PARAMS, "vae": SAO_VAE_PARAMS, "lora_per_rank": SAO_LORA_PARAMS_PER_RANK}
    stage_dir = Run(run_dir).root / stage
    ckpt_dir = layout.checkpoint_dir(stage_dir)

    def ckpt(m=mode, opt=optimizer):
        trained = counts["lora_per_rank"] * lora_rank if m == "lora" else counts["trained"]
        return checkpoint_bytes(m, ema and m == "full", opt, lora_rank, trained)

    def needs(keep=keep_checkpoints, m=mode, opt=optimizer, local=local_dir):
        one = ckpt(m, opt)
        # while a new checkpoint is written the oldest kept one is still there: keep + 1
        out = [
            Need(
                "latents (float16)",
                max(0, latent_bytes(clip_seconds, n_clips) - folder_bytes(stage_dir / layout.LATENTS))
                if pre_encode
                else 0,
                stage_dir / layout.LATENTS,
            )
        ]
        out.append(
            Need(
                f"checkpoints ({keep} kept, {one / GB:.2f} GB each)",
                max(0, (keep + 1) * one - folder_bytes(ckpt_dir, "step=*.ckpt")),
                ckpt_dir,
            )
        )
        if local is not None:
            out.append(
                Need(
                    f"local checkpoints ({keep} kept)",
                    max(0, (keep + 1) * one - folder_bytes(local, "step=*.ckpt")),
                    local,
                )
            )
        exp = export_bytes(m, export_merged, lora_rank, counts["trained"], counts["vae"])
        out.append(
            Need("export", max(0, exp - folder_bytes(layout.export_dir(stage_dir))), layout.export_dir(stage_dir))
        )
        return out

    facts = {
        "clips": n_clips,
        "clip_hours": round(clip_seconds / 3600, 2),
        "mode": mode,
        "optimizer": optimizer,
        "checkpoint_gb": round(ckpt() / GB, 2),
        "checkpoint_gb_adamw": round(ckpt(opt="adamw") / GB, 2),
        "checkpoint_gb_adamw8bit": round(ckpt(opt="adamw8bit") / GB, 2) if mode == "full" else None,
        "trained_params": counts["lora_per_rank"] * lora_rank if mode == "lora" else counts["trained"],
        "sizes": "computed from parameter counts (not measured files)",
    }
    plan = assess(stage, needs(), facts, disk_usage, device_of)
    alts = []
    if keep_checkpoints > 1:
        alts.append(("keep_checkpoints=1", needs(keep=1)))
    if mode == "full" and optimizer != "adamw8bit":
        alts.append(
            (
                "optimizer='adamw8bit' (smaller checkpoints; needs CUDA + bitsandbytes)",
                needs(keep=1 if keep_checkpoints > 1 else keep_checkpoints, opt="adamw8bit"),
            )
        )
    if mode == "full":
        alts.append(("mode='lora' (checkpoints of the adapters only)", needs(keep=1, m="lora")))
    return check(plan, alts, disk_usage, device_of)
