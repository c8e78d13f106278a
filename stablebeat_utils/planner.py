"""The catalogue planner of notebooks 01_segment and 05_train: what *your* catalogue will cost.

From the clips 01 found (:func:`from_run`) or a number of beats the producer types
(:func:`plan`'s ``beats``), a profile's training settings give the optimizer steps, the wall-clock
time per GPU, the GPU memory per GPU, the Drive and local disk, the checkpoint sizes and the
epochs scaled to the catalogue. No number here has a second formula:

- **disk** is :func:`stablebeat_utils.storage.train_plan` (the plan 05 prints before it trains)
  and :func:`stablebeat_utils.storage.clip_bytes` (01's clips) — computed, not measured;
- **GPU memory** is :func:`stablebeat_utils.preflight.estimate` (05's preflight), against each
  GPU's memory with the preflight's headroom;
- **time per step** comes through one function, :func:`step_seconds`, from the one file of measured
  points (``data/gpu_measurements.csv``, read by :func:`measured_step_seconds`): the H200's 05 runs
  (batch 16 × 47.55 s, pre-encoded latents, full and LoRA; the median of each). Every other GPU
  is **estimated**: the H200's seconds per sample × the ratio of the GPUs' dense bf16/fp16 tensor
  throughput (vendor datasheets: H200 989, A100 312, L4 121, T4 65 TFLOPS). Smaller GPUs are often
  slower than that ratio says (memory bandwidth), so read these as the fastest you can expect.
  The card's own figure (42 h for 35,000 steps on an A100, audio encoded in the loop: ~4.3 s a
  step) is shown beside them.

**Epochs scaled to the catalogue** (:func:`scaled_epochs`). The card trained 14 epochs of 40,000
clips (35,000 steps at batch 16). The rule — a heuristic of this course, not a measurement: keep
at least the profile's epochs; when that gives fewer optimizer steps than one of the card's epochs
(2,500 steps), raise the epochs until it does, but never past 100 passes over each clip (so few
clips seen so often are likely memorised: listen to the demos before training further).
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from . import layout, preflight, storage
from .modelspec import SAO

CARD_CLIPS, CARD_EPOCHS, CARD_STEPS, CARD_HOURS = 40_000, 14, 35_000, 42.0  # the StableBeaT card
MIN_STEPS = CARD_STEPS // CARD_EPOCHS  # 2,500: one of the card's epochs
MAX_EPOCHS = 100
SAO_WINDOW_S = SAO.window_seconds  # 47.55 s: SAO's training window (clips are padded to it)


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gb: float  # total memory in GB = 1e9 bytes (as torch reports it: 40 GiB = 42.9 GB)
    tflops: float  # dense bf16 (fp16 on a T4, which has no bf16) tensor throughput, vendor datasheet
    precision: str  # what precision="auto" picks there


GPUS = {
    "H200": GPU("H200", 150.8, 989.0, "bf16-mixed"),  # 143,771 MiB (the lent H200, docs/benchmarks.md)
    "A100 40 GB": GPU("A100 40 GB", 42.9, 312.0, "bf16-mixed"),  # 40,960 MiB
    "L4": GPU("L4", 24.2, 121.0, "bf16-mixed"),  # 23,034 MiB
    "T4": GPU("T4", 16.1, 65.0, "16-mixed"),  # 15,360 MiB
}


def measured_step_seconds() -> dict[tuple[str, str, int, bool], float]:
    """(gpu, mode, batch, pre_encode) -> median measured seconds per optimizer step, read from the one
    file of measured points (``data/gpu_measurements.csv``, :func:`stablebeat_utils.preflight.load_measurements`)."""
    found: dict[tuple[str, str, int, bool], list[float]] = {}
    for r in preflight.load_measurements(layout.TRAIN):
        if not r.get("s_per_step"):
            continue
        gpu = next((g for g in GPUS if g in r["gpu"]), r["gpu"])
        key = (gpu, r["mode"], int(float(r["batch"])), r["input"] == "latents")
        found.setdefault(key, []).append(float(r["s_per_step"]))
    return {k: round(statistics.median(v), 3) for k, v in found.items()}


REFERENCE_GPU = "H200"


def step_seconds(gpu: str, mode: str = "full", effective_batch: int = 16, pre_encode: bool = True) -> tuple[float, str]:
    """Seconds per optimizer step on ``gpu`` and where the figure comes from ("measured"/"estimated").

    The one place step times come from (a file of measured points can replace the table)."""
    measured = measured_step_seconds()
    key = (gpu, mode, effective_batch, pre_encode)
    if key in measured:
        return measured[key], "measured"
    ref = measured.get((REFERENCE_GPU, mode, 16, True), measured[(REFERENCE_GPU, "full", 16, True)])
    per_sample = ref / 16 * GPUS[REFERENCE_GPU].tflops / GPUS[gpu].tflops
    return round(per_sample * effective_batch, 3), "estimated"


def steps_per_epoch(n_clips: int, batch_size: int, grad_accum: int = 1) -> int:
    """Optimizer steps in one pass over ``n_clips`` (05's loader drops a last partial batch)."""
    batches = n_clips // batch_size if n_clips >= batch_size else (1 if n_clips else 0)
    return math.ceil(batches / max(1, grad_accum))


def scaled_epochs(
    n_clips: int, batch_size: int, grad_accum: int = 1, profile_epochs: int = CARD_EPOCHS
) -> tuple[int, str]:
    """The profile's epochs scaled to the catalogue, and why (the rule is the module docstring's)."""
    per_epoch = steps_per_epoch(n_clips, batch_size, grad_accum)
    if per_epoch == 0:
        return profile_epochs, "no clips"
    need = math.ceil(MIN_STEPS / per_epoch)
    if need <= profile_epochs:
        return profile_epochs, f"the profile's {profile_epochs} (already ≥ {MIN_STEPS:,} steps)"
    if need > MAX_EPOCHS:
        return MAX_EPOCHS, f"capped at {MAX_EPOCHS} passes ({MIN_STEPS:,} steps would need {need})"
    return need, f"raised from {profile_epochs} to reach {MIN_STEPS:,} steps (one of the card's epochs)"


def train_settings(profile: str = "colab_a100") -> dict:
    """05_train's and 01_segment's values in ``profile`` (the settings' defaults fill what it leaves out)."""
    from . import params

    return params.profile_resolved(layout.SEGMENT, profile) | params.profile_resolved(layout.TRAIN, profile)


def from_run(run_dir: str | os.PathLike) -> dict:
    """``{"clips", "clip_seconds"}`` of the ok clips 01_segment wrote in ``run_dir``."""
    import json

    path = Path(run_dir) / layout.SEGMENT / layout.SEGMENTS
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    ok = [r for r in rows if r.get("status") == "ok"]
    return {"clips": len(ok), "clip_seconds": sum(float(r.get("duration", 0)) for r in ok)}


def _disk(s: dict, n_clips: int, clip_seconds: float) -> dict:
    """Drive and local bytes from 01's and 05's own storage formulas (no disk is read)."""
    # folders that do not exist: nothing already there is subtracted, and no disk is read
    local = Path("/nonexistent/planner-local") if s.get("local_checkpoint_dir") else None
    plan = storage.train_plan(
        "/nonexistent/planner-run",
        clip_seconds,
        n_clips,
        mode=s["mode"],
        ema=bool(s["ema"]),
        optimizer=s["optimizer"],
        lora_rank=int(s["lora_rank"]),
        pre_encode=bool(s["pre_encode"]),
        keep_checkpoints=int(s["keep_checkpoints"]),
        local_dir=local,
        export_merged=bool(s["export_merged"]),
        disk_usage=lambda _p: type("U", (), {"free": 10**18})(),
        device_of=lambda p: 1 if local is not None and Path(p).is_relative_to(local) else 0,
    )
    on_local = sum(n.bytes for n in plan.needs if local is not None and n.folder.is_relative_to(local))
    clips = storage.clip_bytes(clip_seconds, s.get("clip_format", "wav"))
    return {
        "drive": clips + sum(n.bytes for n in plan.needs) - on_local,
        "local": on_local,
        "clips": clips,
        "checkpoint": plan.facts["checkpoint_gb"],
        "needs": plan.needs,
    }


def plan(
    clips: int | None = None,
    clip_seconds: float | None = None,
    beats: int | None = None,
    profile: str = "colab_a100",
    gpus=("A100 40 GB", "L4", "T4", "H200"),
) -> dict:
    """The plan for a catalogue: ``clips`` (+ their total ``clip_seconds``), or ``beats`` typed by the
    producer (× the profile's ``segments_per_track`` clips of the mean clip length)."""
    s = train_settings(profile)
    if clips is None:
        if beats is None:
            raise ValueError("give clips (from_run) or beats (a number of tracks)")
        clips = int(beats) * int(s["segments_per_track"])
    if clip_seconds is None:
        clip_seconds = clips * (float(s["min_seconds"]) + float(s["max_seconds"])) / 2
    batch, accum = int(s["batch_size"]), int(s["grad_accum"])
    effective = batch * accum
    epochs, why = scaled_epochs(clips, batch, accum, int(s["epochs"]))
    steps = steps_per_epoch(clips, batch, accum) * epochs
    window = float(s["sample_seconds"]) or SAO_WINDOW_S
    disk = _disk(s, clips, clip_seconds)
    rows = []
    for name in gpus:
        g = GPUS[name]
        sec, basis = step_seconds(name, s["mode"], effective, bool(s["pre_encode"]))
        est = preflight.estimate(
            s["mode"], g.precision, batch, window, s["optimizer"], bool(s["ema"]), int(s["lora_rank"])
        )
        budget = g.memory_gb * preflight.HEADROOM
        fix = preflight.alternatives(
            s["mode"], g.precision, batch, accum, window, s["optimizer"], bool(s["ema"]), int(s["lora_rank"]), budget
        )
        fits = "yes" if est.gb <= budget else ("no; fits with " + fix[0] if fix else "no")
        rows.append(
            {
                "GPU": name,
                "s / step": sec,
                "step time is": basis,
                "hours": round(steps * sec / 3600, 1),
                "GPU memory (GB)": f"{est.gb:.1f} of {g.memory_gb:g}",
                "fits (05's preflight)": fits,
            }
        )
    return {
        "profile": profile,
        "mode": s["mode"],
        "clips": clips,
        "clip_hours": round(clip_seconds / 3600, 2),
        "batch": f"{batch} x {accum} = {effective}",
        "steps_per_epoch": steps_per_epoch(clips, batch, accum),
        "profile_epochs": int(s["epochs"]),
        "epochs": epochs,
        "epochs_rule": why,
        "steps": steps,
        "drive_gb": round(disk["drive"] / storage.GB, 2),
        "local_gb": round(disk["local"] / storage.GB, 2),
        "clips_gb": round(disk["clips"] / storage.GB, 2),
        "checkpoint_gb": disk["checkpoint"],
        "gpus": rows,
        "card": f"the card: {CARD_STEPS:,} steps in ~{CARD_HOURS:g} h on an A100 "
        f"(~{CARD_HOURS * 3600 / CARD_STEPS:.1f} s a step, audio encoded in the loop)",
    }


def text(p: dict) -> str:
    """The plan's facts in a few lines (the GPU rows are a table: ``p["gpus"]``)."""
    return "\n".join(
        [
            f"{p['clips']:,} clips ({p['clip_hours']} h of audio), profile {p['profile']} ({p['mode']} fine-tune), "
            f"batch {p['batch']}",
            f"epochs: {p['epochs']} — {p['epochs_rule']}; {p['steps_per_epoch']:,} steps an epoch, "
            f"{p['steps']:,} steps in all",
            f"Drive (run folder): {p['drive_gb']} GB, of which clips {p['clips_gb']} GB; "
            f"local disk: {p['local_gb']} GB; one checkpoint: {p['checkpoint_gb']} GB",
            p["card"],
        ]
    )
