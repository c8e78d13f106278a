"""``make fullsize``: the recipe at the real size of Stable Audio Open 1.0, with random weights, on CPU.

The full SAO 1.0 architecture (``stablebeat_utils/data/sao-1.0-model_config.json``: 1.21 B
parameters, a 4.85 GB fp32 checkpoint) goes through what the course does with it, each phase in a
fresh process (so each peak is its own):

1. **build** from the config (stable-audio-tools' ``create_model_from_config``) and **save** it in
   the hub's layout (``model_config.json`` + ``model.safetensors``);
2. **load** it with ``models.load_sao`` — the loader every notebook uses; its peak RSS is compared
   with the checkpoint's size (target ≤ 1.3×: no second copy of the weights);
3. **train**: stage 05's ``train.run`` — one LoRA step on a short window (a 0.5-s clip in a 1-s
   window, so half of it is padding) and the **export** (base + adapters merged, fp32);
   the **padding weight** reaching the loss: with ``padding_loss_weight=1.0`` and batch 1 the loss
   trained on is the mean over the whole window, not the real frames' mean (``train/mse_signal``);
4. **reload** the export strictly with the engine's own functions (``create_model_from_config`` +
   ``load_ckpt_state_dict`` + ``load_state_dict(strict=True)``) and take one **sampler step** with
   the card's sampler (dpmpp-3m-sde, sigma 500 → 0.3, CFG 7; then the final step to sigma 0).
5. **a second base architecture**, stable-audio-open-small's (``modelspec.REGISTRY``; its config in
   ``data/sao-small-model_config.json``, random weights), through stage 05 (``train.run``: one LoRA step,
   export) and stage 06 (``generate.run``: base and fine-tune, with its own flow sampler) with the
   ``sao_small`` profile's values — the course's code reads every fact of the model from its config.

The text encoder is ``t5-base`` when it is in the local Hugging Face cache, else the tiny T5
(``tiny:t5``; said in the output) — the only part not at full size. Every step prints its wall time
and peak RSS (the kernel's high-water mark, reset per step); the whole run must stay within the CI
budget (``--max-seconds`` 720, ``--max-rss-gb`` 16) or it exits non-zero; the **load** phase must
also stay under ``--max-load-rss-gb`` (12 GB: free Colab's T4 runtime has 12.7 GB of RAM, and the
``colab_t4`` profile loads the model there). ``--baseline`` adds the
old loader (``load_state_dict(load_file(...))``) side by side with phase 2.

    python scripts/fullsize.py [--workdir DIR] [--keep] [--baseline]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MARK = "FULLSIZE-STEP "
GIB = 2**30


# -------------------------------------------------------------------------------------------------
# measuring (inside a phase)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) of this process; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def step(name: str, **info):
    reset = _reset_peak()
    t0 = time.perf_counter()
    yield info
    row = {
        "step": name,
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_gib": round(_status_kb("VmHWM") / 2**20, 2),
        "peak_since": "step" if reset else "process start",
        **info,
    }
    print(MARK + json.dumps(row), flush=True)


def _t5_source() -> tuple[str, str]:
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("t5-base", "config.json"), str):
        return "t5-base", "t5-base (from the local Hugging Face cache)"
    return "tiny:t5", "the tiny T5 (tiny:t5) — t5-base is not in the local Hugging Face cache"


# -------------------------------------------------------------------------------------------------
# phases (each run as `python scripts/fullsize.py --phase NAME --workdir DIR`)


def _build(cfg: dict, base: Path, t5: str) -> None:
    """Build ``cfg``'s network (random weights) and save it in the hub's layout in ``base``."""
    import torch
    from safetensors.torch import save_file

    from stablebeat_utils import layout, models

    with step("build from config") as info:
        torch.manual_seed(0)
        model = models.create_sao_model(cfg, t5_source=t5)
        info["parameters_m"] = round(sum(v.numel() for v in model.state_dict().values()) / 1e6, 1)
    base.mkdir(parents=True, exist_ok=True)
    with step("save checkpoint") as info:
        # the model's own tensors, no copies (safetensors 0.8 writes from their memory)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(base / layout.MODEL_WEIGHTS), metadata={"format": "pt"})
        (base / layout.MODEL_CONFIG).write_text(json.dumps(cfg, indent=4) + "\n", encoding="utf-8")
        info["checkpoint_gib"] = round((base / layout.MODEL_WEIGHTS).stat().st_size / GIB, 2)
        info["keys"] = len(state)


def phase_build(work: Path, t5: str) -> None:
    from stablebeat_utils import models

    _build(models.sao_full_config(), work / "base", t5)


def phase_load(work: Path, t5: str) -> None:
    from stablebeat_utils import models

    size = (work / "base" / "model.safetensors").stat().st_size
    with step("load (models.load_sao)"):
        model, _ = models.load_sao(str(work / "base"), t5_source=t5)
    info_peak = _status_kb("VmHWM") * 1024
    print(
        MARK
        + json.dumps(
            {"step": "load: peak RSS / checkpoint size", "ratio": round(info_peak / size, 2), "target": "<= 1.3"}
        ),
        flush=True,
    )


def phase_load_baseline(work: Path, t5: str) -> None:
    """The loader before issue 15: the whole file in memory beside the built model."""
    from stablebeat_utils import models

    size = (work / "base" / "model.safetensors").stat().st_size
    with step("baseline load (load_state_dict(load_file))"):
        model = models.create_sao_model(models.sao_full_config(), t5_source=t5)
        model.load_state_dict(models.load_state_dict_file(work / "base" / "model.safetensors"), strict=True)
    print(
        MARK
        + json.dumps(
            {"step": "baseline load: peak RSS / checkpoint size", "ratio": round(_status_kb("VmHWM") * 1024 / size, 2)}
        ),
        flush=True,
    )


def _make_run(run_dir: Path) -> None:
    """A run folder as 01_segment + 04_prompts leave it: one 0.5-s clip of a bundled demo beat."""
    from stablebeat_utils import audio

    src = sorted((REPO / "stablebeat_utils" / "data" / "demo_audio").glob("*.ogg"))[0]
    samples, sr = audio.load(src, sr=44100)
    samples = audio.to_stereo(samples)
    start, dur = 2.0, 0.5
    clip = samples[:, int(start * sr) : int((start + dur) * sr)]
    (run_dir / "01_segment" / "clips").mkdir(parents=True, exist_ok=True)
    (run_dir / "04_prompts").mkdir(parents=True, exist_ok=True)
    audio.write_wav(run_dir / "01_segment" / "clips" / "c0.wav", clip, sr, subtype="FLOAT")
    seg = {
        "clip_id": "c0",
        "source": src.name,
        "start": start,
        "duration": dur,
        "status": "ok",
        "path": "01_segment/clips/c0.wav",
        "source_duration": samples.shape[1] / sr,
    }
    row = {
        "clip_id": "c0",
        "filepath": seg["path"],
        "start": start,
        "duration": dur,
        "prompt": "A melancholic trap beat at 140 BPM, with synth bells",
    }
    (run_dir / "01_segment" / "segments.jsonl").write_text(json.dumps(seg) + "\n")
    (run_dir / "04_prompts" / "prompts.jsonl").write_text(json.dumps(row) + "\n")


# one LoRA step on the CPU (a 0.5-s clip in a 1-s window: half of it padding), exported merged (fp32)
CPU_TRAIN = dict(
    mode="lora",
    lora_rank=16,
    lora_alpha=16.0,
    batch_size=1,
    max_steps=1,
    sample_seconds=1.0,
    ema=False,
    precision="32-true",
    accelerator="cpu",
    devices=1,
    workers=0,
    checkpoint_every=1,
    keep_checkpoints=1,
    demo_every=0,
    log_every=1,
    padding_loss_weight=1.0,
    export_merged=True,
)


def phase_train(work: Path, t5: str) -> None:
    import csv

    from stablebeat_utils import train

    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    _make_run(run_dir)
    with step("train: load + 1 LoRA step (1-s window, half padding, batch 1) + export") as info:
        summary = train.run(run_dir=str(run_dir), base_model=str(work / "base"), t5_model=t5, **CPU_TRAIN)
        info.update(
            steps=summary["steps"],
            step_seconds=summary["median_step_seconds"],
            trainable_parameters_m=round(summary["trainable_parameters"] / 1e6, 2),
            export_files=summary["export_files"],
        )
    rows = []
    for path in summary["metrics_csv"]:
        with open(path, newline="") as fh:
            rows += [r for r in csv.DictReader(fh) if r.get("train/loss")]
    r = rows[-1]
    sig, pad, loss = float(r["train/mse_signal"]), float(r["train/mse_masked_loss"]), float(r["train/loss"])
    ok = min(sig, pad) < loss < max(sig, pad) and abs(loss - sig) > 1e-6
    print(
        MARK
        + json.dumps(
            {
                "step": "padding weight reaches the loss",
                "ok": ok,
                "train/loss": loss,
                "train/mse_signal": sig,
                "train/mse_masked_loss": pad,
                "note": "padding_loss_weight=1.0, batch 1: with 0.0 train/loss would equal train/mse_signal",
            }
        ),
        flush=True,
    )
    if not ok:
        raise SystemExit("padding_loss_weight did not reach the loss")


def phase_reload(work: Path, t5: str) -> None:
    import torch

    from stablebeat_utils import compat, models

    compat.apply()
    from stable_audio_tools.inference.generation import generate_diffusion_cond
    from stable_audio_tools.models.factory import create_model_from_config
    from stable_audio_tools.models.utils import load_ckpt_state_dict

    export = work / "run" / "05_train" / "export"
    with step("reload export (engine: create_model_from_config + load_ckpt_state_dict, strict)") as info:
        cfg = json.loads((export / "model_config.json").read_text())
        model = create_model_from_config(models._with_t5_paths(cfg, t5))
        state = load_ckpt_state_dict(str(export / "model.safetensors"))
        result = model.load_state_dict(state, strict=True)
        info["keys"] = f"{len(state)}/{len(model.state_dict())}"
        info["missing_unexpected"] = [len(result.missing_keys), len(result.unexpected_keys)]
        del state
    model.eval().requires_grad_(False)
    # steps=2: one dpmpp-3m-sde step (sigma 500 -> 0.3), then the final step to sigma 0 (with steps=1
    # the engine's k-diffusion copy fails: its 3M history is read before the first step sets it)
    with step("sampler: 1 dpmpp-3m-sde step + the final step to 0 (sigma 500 -> 0.3, CFG 7, 1 s)") as info:
        with torch.no_grad():
            out = generate_diffusion_cond(
                model,
                steps=2,
                cfg_scale=7.0,
                sample_size=2048 * 22,
                seed=0,
                device="cpu",
                apg_scale=0.0,
                conditioning=[{"prompt": "A dark trap beat at 140 BPM", "seconds_start": 0, "seconds_total": 1}],
                sampler_type="dpmpp-3m-sde",
                sigma_min=0.3,
                sigma_max=500,
                disable_tqdm=True,
            )
        info["shape"] = list(out.shape)
        info["finite"] = bool(torch.isfinite(out).all())
    if not info["finite"]:
        raise SystemExit("the sampler step gave non-finite audio")


# -------------------------------------------------------------------------------------------------
# a second base architecture through 05 -> 06: stable-audio-open-small's config (modelspec's registry)
# and the sao_small profile, nothing else (random weights)

SMALL = "stable-audio-open-small"


def phase_small_build(work: Path, t5: str) -> None:
    from stablebeat_utils import modelspec

    _build(modelspec.bundled_config(SMALL), work / "small" / "base", t5)


def phase_small_train(work: Path, t5: str) -> None:
    from stablebeat_utils import params, train

    run_dir = work / "small" / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    _make_run(run_dir)
    settings = {**params.profile_values(params.load_profile("sao_small"), "05_train"), **CPU_TRAIN}
    settings.update(run_dir=str(run_dir), base_model=str(work / "small" / "base"), t5_model=t5)
    with step("small: 05 train.run (profile sao_small): 1 LoRA step (1-s window) + export") as info:
        summary = train.run(**settings)
        info.update(steps=summary["steps"], trainable_parameters_m=round(summary["trainable_parameters"] / 1e6, 2))
        info["window_seconds"] = summary.get("window_seconds")


def phase_small_generate(work: Path, t5: str) -> None:
    import numpy as np

    from stablebeat_utils import audio, generate, layout, params

    run_dir = work / "small" / "run"
    settings = params.profile_values(params.load_profile("sao_small"), "06_generate")
    settings.update(
        run_dir=str(run_dir),
        base_model=str(work / "small" / "base"),
        finetune_model=str(layout.export_dir(run_dir / layout.TRAIN)),
        t5_model=t5,
        n_prompts=1,
        steps=2,
        seconds_total=1.0,
        device="cpu",
        dtype="float32",
    )
    with step(f"small: 06 generate.run (profile sao_small: {settings['sampler_type']}, CFG {settings['cfg_scale']})"):
        out = generate.run(**settings)
    rows = generate.load_generations(str(run_dir))
    waves = [audio.load(run_dir / r["path"])[0] for r in rows if r.get("path")]  # paths relative to the run
    ok = out["models"] == ["base", "finetune"] and len(waves) == 2 and all(np.isfinite(w).all() for w in waves)
    print(MARK + json.dumps({"step": "small: base and fine-tune generated, finite", "ok": ok}), flush=True)
    if not ok:
        raise SystemExit(f"the second architecture did not generate: {out}")


PHASES = {
    "build": phase_build,
    "load": phase_load,
    "load-baseline": phase_load_baseline,
    "train": phase_train,
    "reload": phase_reload,
    "small-build": phase_small_build,
    "small-train": phase_small_train,
    "small-generate": phase_small_generate,
}


# -------------------------------------------------------------------------------------------------
# the driver


def _run_phase(name: str, work: Path, t5: str) -> tuple[list[dict], float, float]:
    """Run one phase in a fresh process; (its step rows, wall seconds, peak RSS GB of the process)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--phase", name, "--workdir", str(work), "--t5", t5],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=str(REPO),
    )
    rows, tail = [], []
    for line in proc.stdout:
        if line.startswith(MARK):
            row = json.loads(line[len(MARK) :])
            rows.append(row)
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        else:
            tail = (tail + [line.rstrip()])[-40:]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    # the kernel's ru_maxrss is the same high-water mark the steps reset: the phase's peak is the
    # highest of the steps' peaks and what followed the last reset
    peak = max([usage.ru_maxrss / 2**20] + [r["peak_rss_gib"] for r in rows if "peak_rss_gib" in r])
    if proc.returncode != 0:
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"fullsize: phase {name!r} failed (exit {proc.returncode})")
    return rows, wall, peak


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="", help="where the 4.85 GB checkpoint and the run go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--baseline", action="store_true", help="also time the old loader (twice the model in RAM)")
    ap.add_argument("--max-seconds", type=float, default=720.0)
    ap.add_argument("--max-rss-gb", type=float, default=16.0, help="budget in GB (1e9 bytes)")
    ap.add_argument(
        "--max-load-rss-gb", type=float, default=12.0, help="the load's budget in GB (free Colab: 12.7 GB of RAM)"
    )
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--t5", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.phase:
        PHASES[args.phase](Path(args.workdir), args.t5)
        return 0

    t5, t5_note = _t5_source()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="stablebeat-fullsize-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"fullsize: SAO 1.0 architecture with random weights, CPU; text encoder: {t5_note}; work folder {work}",
        flush=True,
    )
    t_all = time.perf_counter()
    phases = ["build", "load"] + (["load-baseline"] if args.baseline else []) + ["train", "reload"]
    phases += ["small-build", "small-train", "small-generate"]
    report, peak_all = [], 0.0
    try:
        for name in phases:
            print(f"[{name}]", flush=True)
            rows, wall, peak = _run_phase(name, work, t5)
            peak_all = max(peak_all, peak)
            report.append(
                {"phase": name, "wall_seconds": round(wall, 1), "peak_rss_gib": round(peak, 2), "steps": rows}
            )
            print(f"  phase {name}: {wall:.1f} s wall (process start included), peak RSS {peak:.2f} GiB", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t_all
    peak_gb = peak_all * GIB / 1e9
    print(
        f"fullsize: total {total:.0f} s (budget {args.max_seconds:.0f} s), peak RSS {peak_all:.2f} GiB = "
        f"{peak_gb:.2f} GB (budget {args.max_rss_gb:g} GB); text encoder: {t5_note}"
    )
    if args.keep:
        (work / "fullsize.json").write_text(
            json.dumps(
                {"t5": t5, "total_seconds": round(total, 1), "peak_rss_gib": round(peak_all, 2), "phases": report},
                indent=1,
            )
        )
    load_gb = next((r["peak_rss_gib"] * GIB / 1e9 for r in report if r["phase"] == "load"), 0.0)
    print(
        f"fullsize: model load (models.load_sao) peak RSS {load_gb:.2f} GB (budget {args.max_load_rss_gb:g} GB: "
        "free Colab's T4 runtime has 12.7 GB of RAM)"
    )
    over = []
    if load_gb > args.max_load_rss_gb:
        over.append(f"load peak RSS {load_gb:.2f} GB > {args.max_load_rss_gb:g} GB")
    if total > args.max_seconds:
        over.append(f"{total:.0f} s > {args.max_seconds:.0f} s")
    if peak_gb > args.max_rss_gb:
        over.append(f"peak RSS {peak_gb:.2f} GB > {args.max_rss_gb:g} GB")
    if over:
        print("fullsize: OVER BUDGET: " + "; ".join(over), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
