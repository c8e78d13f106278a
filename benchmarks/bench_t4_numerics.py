"""GPU check (not a test) of the free-T4 path, profile ``colab_t4`` (notebook 05_train): LoRA at
``precision="16-mixed"`` on the full-size SAO 1.0 architecture.

fp16 overflows where bf16 does not. Lightning's ``16-mixed`` scales the loss with torch's
GradScaler and skips every optimizer step whose gradients overflowed, halving the scale; a run
whose scale keeps falling trains nothing while its loss looks fine. This runs stage 05's own
``train.run`` (the engine's training wrapper, LoRA r16, pre-encoded latents) at the T4 profile's
batch (4 × grad_accum 4, SAO's 47.55 s window) for ``--steps`` optimizer steps (default 50) and
checks:

- **finite loss** at every logged step (the run's metrics.csv);
- **the loss scaler not stuck**: at most ``--max-skipped`` (default 20 %) of the optimizer steps after
  the first ``--settle`` (default 10; the scale starts at 65,536 and halves until it fits) were
  skipped, and the final scale is >= 1;
- **peak GPU memory** at the T4 batch (``torch.cuda.max_memory_allocated``, plus the caching
  allocator's reserve) against a T4's budget (15 GB × the preflight's 92 % headroom) and the
  preflight's estimate.

Weights are random (no hub): the numerics of real weights may differ (a real checkpoint's
activations are larger); a second run on the real model is the next step. On a GPU other than a
T4 the seconds per step are that GPU's, not a T4's. Call :func:`main` (h27's GPU script does), or::

    HF_HUB_OFFLINE=1 python benchmarks/bench_t4_numerics.py [--steps 50] [--scratch DIR] [--json OUT]

Needs CUDA (exits 2 without it), ~20 GB of disk for the scratch folder, ~5 minutes on an H200
(estimate: build + save 1-2 min, 50 × 4 micro-steps of batch 4).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

T4_FREE_GB = 15.0  # a T4's mem_get_info on Colab, about


def _spy_on_the_loss_scaler(record: list) -> None:
    """Record the GradScaler's scale around every optimizer step Lightning's 16-mixed plugin takes."""
    from pytorch_lightning.plugins.precision import MixedPrecision

    real = MixedPrecision.optimizer_step
    if getattr(real, "_t4_spy", False):
        return

    def optimizer_step(self, optimizer, model, closure, **kw):
        before = float(self.scaler.get_scale()) if self.scaler is not None else None
        out = real(self, optimizer, model, closure, **kw)
        after = float(self.scaler.get_scale()) if self.scaler is not None else None
        # GradScaler.update() halves the scale (backoff 0.5) exactly when the step was skipped
        record.append({"scale_before": before, "scale_after": after, "skipped": bool(before and after < before)})
        return out

    optimizer_step._t4_spy = True
    MixedPrecision.optimizer_step = optimizer_step


def run_numerics(
    scratch: Path,
    steps: int = 50,
    batch_size: int = 4,
    grad_accum: int = 4,
    clips: int = 32,
    clip_seconds: float = 30.0,
    settle: int = 10,
    max_skipped: float = 0.2,
) -> dict:
    """The check; returns a JSON-able report with ``ok`` and the reasons when not."""
    import torch
    from bench_train import full_size_model, make_run, step_times

    from stablebeat_utils import params, preflight, train

    if not torch.cuda.is_available():
        raise SystemExit("bench_t4_numerics: needs a CUDA GPU")
    prof = params.resolve("05_train", "colab_t4")
    scales: list[dict] = []
    _spy_on_the_loss_scaler(scales)
    base = full_size_model(scratch / "sao-random")
    run_dir = make_run(scratch / "run-t4", clips, clip_seconds)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    summary = train.run(
        run_dir=str(run_dir),
        base_model=base,
        t5_model="tiny:t5",
        mode="lora",
        lora_rank=prof["lora_rank"],
        lora_alpha=prof["lora_alpha"],
        lr=prof["lr"],
        precision="16-mixed",
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_steps=steps,
        sample_seconds=0.0,
        pre_encode=True,
        accelerator="gpu",
        devices=1,
        workers=2,
        checkpoint_every=10**9,
        keep_checkpoints=1,
        demo_every=0,
        demo_minutes=0.0,
        log_every=1,
        export_merged=False,
    )
    wall = time.perf_counter() - t0
    curves = train.read_curves(summary["metrics_csv"])
    losses = [c["loss"] for c in curves]
    later = scales[settle:]
    skipped = sum(s["skipped"] for s in later) / max(1, len(later))
    peak_alloc = torch.cuda.max_memory_allocated() / 1e9
    peak_reserved = torch.cuda.max_memory_reserved() / 1e9
    est = preflight.estimate(
        "lora", "16-mixed", batch_size, summary["window_seconds"], "adamw", False, prof["lora_rank"]
    )
    budget = T4_FREE_GB * preflight.HEADROOM
    times = step_times(summary["metrics_csv"])[2:]
    problems = []
    if len(losses) < steps or not all(math.isfinite(x) for x in losses):
        problems.append(
            f"loss not finite at every step ({len(losses)} logged, {sum(map(math.isfinite, losses))} finite)"
        )
    if len(scales) < steps:
        problems.append(f"the loss scaler saw {len(scales)} optimizer steps of {steps}")
    if skipped > max_skipped:
        problems.append(f"{skipped:.0%} of the optimizer steps after the first {settle} were skipped (overflow)")
    if scales and scales[-1]["scale_after"] < 1:
        problems.append(f"the loss scale fell to {scales[-1]['scale_after']:g}")
    if peak_reserved > budget:
        problems.append(f"peak GPU memory reserved {peak_reserved:.2f} GB > a T4's budget {budget:.2f} GB")
    return {
        "ok": not problems,
        "problems": problems,
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "precision": summary["precision"],
        "batch": f"{batch_size} x grad_accum {grad_accum}, window {summary['window_seconds']:.2f} s",
        "optimizer_steps": summary["steps"],
        "loss_first_last": [losses[0], losses[-1]] if losses else None,
        "skipped_after_settle": round(skipped, 3),
        "skipped_total": sum(s["skipped"] for s in scales),
        "scale_final": scales[-1]["scale_after"] if scales else None,
        "peak_gpu_allocated_gb": round(peak_alloc, 2),
        "peak_gpu_reserved_gb": round(peak_reserved, 2),
        "t4_budget_gb": round(budget, 2),
        "preflight_estimate_gb": est.gb,
        "median_step_s_this_gpu": round(statistics.median(times), 3) if times else None,
        "stage_wall_s": round(wall, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps (>= 50 for the check)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--settle", type=int, default=10)
    ap.add_argument("--max-skipped", type=float, default=0.2)
    ap.add_argument("--scratch", default=None, help="folder for the model and the run (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args(argv)
    try:
        import torch

        if not torch.cuda.is_available():
            print("bench_t4_numerics: no CUDA GPU here; nothing run", file=sys.stderr)
            return 2
    except ImportError:
        return 2
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench_t4_"))
    report = run_numerics(
        scratch,
        args.steps,
        args.batch_size,
        args.grad_accum,
        args.clips,
        settle=args.settle,
        max_skipped=args.max_skipped,
    )
    print(json.dumps(report, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
