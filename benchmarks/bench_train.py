"""Benchmark (not a test) of stage 05_train (notebook 05_train): seconds per training step.

Runs the stage itself (``train.run``: the engine's training wrapper under Lightning, real
checkpoint and export code) on a run folder of synthetic 44.1 kHz stereo clips, once per variant:

- ``full-raw``      full fine-tune, audio encoded by the VAE inside every step (the card's recipe);
- ``full-latent``   full fine-tune on pre-encoded latents (the VAE runs once per clip, before);
- ``lora-raw`` / ``lora-latent``  the same with the engine's LoRA (rank 16).

and reports the median seconds per optimizer step (the first ``--warmup`` steps dropped, read from
the run's ``metrics.csv``), the one-off pre-encoding time, and on a GPU the peak memory
(``torch.cuda.max_memory_allocated``).

Models:

- ``--model tiny`` (default): ``tiny:sao``, the demo model — CPU timings.
- ``--model full``: the full-size SAO 1.0 architecture (``stablebeat_utils/data/sao-1.0-model_config.json``)
  with random weights, saved to a temporary folder in the hub's layout and loaded from it by
  ``models.load_sao`` like a download. The prompt encoder is the tiny T5 (``t5_model="tiny:t5"``;
  its width is t5-base's 768, so the DiT is exactly SAO's; real T5-base would add a frozen
  ~0.1 B-parameter forward per step). For a GPU, e.g. (H100/A100, about 10 minutes)::

      HF_HUB_OFFLINE=1 python benchmarks/bench_train.py --model full --device cuda \\
          --batch-size 16 --seconds 0 --clips 32 --clip-seconds 30 --steps 6 --warmup 2 \\
          --variants full-raw full-latent lora-raw lora-latent

  (``--seconds 0`` = SAO's own 47.55 s window.) A full-size checkpoint (DiT + EMA + AdamW) is
  about 17 GB and the export 4.9 GB: the scratch folder needs ~25 GB of disk.

CPU (this machine), the demo model::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_train.py --model tiny --steps 5 \\
        --batch-size 2 --seconds 1 --clips 4 --clip-seconds 6 --variants full-raw full-latent
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stablebeat_utils import models, train  # noqa: E402
from stablebeat_utils.audio import write_wav  # noqa: E402

SR = 44100
VARIANTS = ("full-raw", "full-latent", "lora-raw", "lora-latent")


def make_run(root: Path, clips: int, seconds: float) -> Path:
    """A run folder as 01_segment + 04_prompts leave it: synthetic beats (kick + hats + chord), rows."""
    rng = np.random.default_rng(0)
    (root / "01_segment" / "clips").mkdir(parents=True)
    (root / "04_prompts").mkdir(parents=True)
    t = np.arange(int(seconds * SR)) / SR
    segs, rows = [], []
    for i in range(clips):
        bpm = 80 + 5 * i
        beat = (t * bpm / 60) % 1.0
        kick = np.sin(2 * np.pi * 55 * t) * np.exp(-beat * 12)
        hats = rng.standard_normal(t.size) * np.exp(-((t * bpm / 30) % 1.0) * 40) * 0.2
        chord = sum(np.sin(2 * np.pi * f * t) for f in (220, 277.2, 329.6)) * 0.1
        mono = (0.6 * kick + hats + chord).astype(np.float32)
        cid = f"clip{i:03d}"
        write_wav(root / "01_segment" / "clips" / f"{cid}.wav", np.stack([mono, mono * 0.9]), SR)
        start = float(10 * i)
        segs.append(
            {
                "clip_id": cid,
                "source": f"beat{i}.wav",
                "start": start,
                "duration": seconds,
                "path": f"01_segment/clips/{cid}.wav",
                "status": "ok",
                "source_duration": start + seconds + 60,
            }
        )
        rows.append(
            {
                "filepath": segs[-1]["path"],
                "start": start,
                "duration": seconds,
                "clip_id": cid,
                "prompt": f"A melancholic cloud trap beat at {bpm} BPM, with synth bells and deep sub.",
            }
        )
    (root / "01_segment" / "segments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in segs))
    (root / "04_prompts" / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def full_size_model(folder: Path) -> str:
    """SAO 1.0's architecture with random weights, saved as the hub lays it out; returns the folder."""
    import torch
    from safetensors.torch import save_file

    if (folder / "model.safetensors").is_file() and (folder / "model_config.json").is_file():
        return str(folder)  # built by an earlier call (benchmarks/gpu_all.py runs several)
    cfg = models.sao_full_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = models.create_sao_model(cfg, t5_source="tiny:t5")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(folder / "model.safetensors")
    )
    (folder / "model_config.json").write_text(json.dumps(cfg, indent=2))
    n = sum(p.numel() for p in model.model.parameters())
    print(f"full-size SAO: DiT {n / 1e9:.3f} B parameters, saved to {folder}", flush=True)
    return str(folder)


def step_times(csvs: list[str], column: str = "step_seconds") -> list[float]:
    """One value of ``column`` per step from the run's metrics.csv files (the loss with ``"loss"``)."""
    import csv

    out = {}
    for path in csvs:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get(column) not in (None, ""):
                    out[int(float(row["step"]))] = float(row[column])
    return [out[k] for k in sorted(out)]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=["full-raw", "full-latent"])
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0, help="training window (0 = the model's own)")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--clip-seconds", type=float, default=6.0)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--scratch", default=None, help="folder for runs/model (default: a temporary one)")
    ap.add_argument("--precision", default="auto", help="05's precision (auto, bf16-mixed, 16-mixed, 32-true)")
    ap.add_argument("--cleanup", action="store_true", help="delete each run folder once measured (disk)")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    results = measure(args)
    print(
        "\nvariant       median s/step  peak GPU GB  (model %s, batch %d, window %.2f s, %s)"
        % (args.model, args.batch_size, results[0]["window_s"], args.device)
    )
    for r in results:
        print(f"{r['variant']:<13} {r['median_step_s']!s:>13}  {r['peak_gpu_gb']!s:>11}")
    return 0


def measure(args) -> list[dict]:
    """Run each variant through ``train.run`` and return one result dict per variant."""
    import math
    import shutil

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench_train_"))
    base = "tiny:sao" if args.model == "tiny" else full_size_model(scratch / "sao-random")
    t5 = "" if args.model == "tiny" else "tiny:t5"
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    results = []
    for variant in args.variants:
        mode, data = variant.split("-")
        run_dir = scratch / f"run-{variant}-b{args.batch_size}-{args.precision}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a run stopped earlier (a fresh measurement every time)
        run_dir = make_run(run_dir, args.clips, args.clip_seconds)
        if accelerator == "gpu":  # each variant's own peak (train.run's summary reads the process's peak)
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        summary = train.run(
            run_dir=str(run_dir),
            base_model=base,
            t5_model=t5,
            mode=mode,
            batch_size=args.batch_size,
            max_steps=args.warmup + args.steps,
            sample_seconds=args.seconds,
            pre_encode=data == "latent",
            accelerator=accelerator,
            devices=1,
            workers=args.workers,
            checkpoint_every=10**9,
            keep_checkpoints=1,
            demo_every=0,
            log_every=10,
            export_merged=False,
            precision=args.precision,
        )
        wall = time.perf_counter() - t0
        times = step_times(summary["metrics_csv"])[args.warmup :]
        losses = step_times(summary["metrics_csv"], "loss")
        results.append(
            {
                "variant": variant,
                "model": args.model,
                "device": args.device,
                "batch_size": args.batch_size,
                "window_s": summary["window_seconds"],
                "median_step_s": round(statistics.median(times), 3) if times else None,
                "timed_steps": len(times),
                "precision": summary["precision"],
                "pre_encoded": summary["pre_encoded"],
                "peak_gpu_gb": summary["peak_gpu_memory_gb"],  # GiB (train.run's summary: 2**30 bytes)
                "stage_wall_s": round(wall, 1),
                "losses": len(losses),
                "finite_losses": sum(math.isfinite(x) for x in losses),
                "last_loss": losses[-1] if losses else None,
            }
        )
        print(json.dumps(results[-1]), flush=True)
        if args.cleanup:
            shutil.rmtree(run_dir, ignore_errors=True)
    return results


if __name__ == "__main__":
    sys.exit(main())
