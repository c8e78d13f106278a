"""Benchmark generation speed (notebook 06_generate) — a measurement, not a test.

Two modes:

``tiny`` (default; CPU, offline): the tiny SAO-architecture model, one 47-s clip at a time,
median of ``--repeats`` runs after a warm-up. Reports seconds per clip and per sampler step.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_generate.py --mode tiny --steps 20

``full`` (needs a CUDA GPU): the full-size SAO 1.0 network (``data/sao-1.0-model_config.json``,
random weights: speed does not depend on the values) at the card's settings — 200 steps of
dpmpp-3m-sde, CFG 7, 47 s — in bf16/fp16, batch 1 and 4. The card reports ≈ 0.37 s per step,
about 75 s per clip, on an RTX 4050 laptop GPU. T5 comes from the hub's ``t5-base`` (or
``--t5 <folder>``); its weights are random too where only the architecture is wanted
(``--t5 tiny:t5`` changes the text encoder's cost, a small part of the total).

    python benchmarks/bench_generate.py --mode full --steps 200 --batch 1 4 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stablebeat_utils import generate as gen  # noqa: E402
from stablebeat_utils import models  # noqa: E402

CARD_S_PER_CLIP = 75.0  # "about 1min15 for a good generation" (RTX 4050 laptop, 200 steps)
CARD_S_PER_STEP = 0.37


def _model(mode: str, device: str, dtype, t5: str):
    if mode == "tiny":
        return gen.load_model("tiny:sao", device, dtype)
    config = models.sao_full_config()
    model = models.create_sao_model(config, t5_source=t5 or None)
    model = model.to(device).eval().requires_grad_(False)
    if dtype is not None:
        model = model.to(dtype)
    return model, config


def bench(
    mode: str, steps: int, seconds_total: float, batches: list[int], repeats: int, device: str, dtype_name: str, t5: str
) -> dict:
    import torch

    device, dtype = gen._device_and_dtype(device, dtype_name)
    if mode == "full" and not str(device).startswith("cuda"):
        raise SystemExit("--mode full needs a CUDA GPU (the full-size model at 200 steps takes hours on a CPU)")
    t0 = time.perf_counter()
    model, config = _model(mode, device, dtype, t5)
    load_s = time.perf_counter() - t0
    settings = gen.Settings(steps=steps, seconds_total=seconds_total)
    prompt = gen.card_prompts()[0]
    results = {
        "mode": mode,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "steps": steps,
        "seconds_total": seconds_total,
        "load_s": round(load_s, 2),
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "torch_threads": torch.get_num_threads(),
        "batches": {},
    }
    for batch in batches:
        times, step_times, cpu_times = [], [], []
        for r in range(repeats + 1):  # the first run warms up (kernels, allocator) and is not counted
            marks = []
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            t, c = time.perf_counter(), time.process_time()
            gen.generate_audio(
                model,
                config,
                [prompt] * batch,
                42 + r,
                settings,
                device,
                callback=lambda _info: marks.append(time.perf_counter()),
            )
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            took = time.perf_counter() - t
            cpu = time.process_time() - c
            if r:
                times.append(took)
                cpu_times.append(cpu)
                if len(marks) > 1:
                    step_times.append((marks[-1] - marks[0]) / (len(marks) - 1))
        med = statistics.median(times)
        results["batches"][batch] = {
            "s_per_call": round(med, 3),
            "s_per_clip": round(med / batch, 3),
            "s_per_step": round(statistics.median(step_times), 4) if step_times else None,
            "cpu_s_per_call": round(statistics.median(cpu_times), 3),  # CPU time of all threads: a
            # load-independent figure on a shared machine (wall time suffers from other processes)
            "runs": [round(x, 3) for x in times],
        }
    if mode == "full":
        b1 = results["batches"].get(1)
        if b1:
            results["vs_card"] = {
                "card_s_per_clip": CARD_S_PER_CLIP,
                "card_s_per_step": CARD_S_PER_STEP,
                "speedup_per_clip": round(CARD_S_PER_CLIP / b1["s_per_clip"], 2),
            }
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (tiny: 20, full: 200)")
    ap.add_argument("--seconds-total", type=float, default=47.0)
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (tiny: 1, full: 1 4)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), float32, ...")
    ap.add_argument("--t5", default="", help="T5 source for --mode full ('' = hub t5-base)")
    a = ap.parse_args(argv)
    steps = a.steps or (20 if a.mode == "tiny" else 200)
    batches = a.batch or ([1] if a.mode == "tiny" else [1, 4])
    print(json.dumps(bench(a.mode, steps, a.seconds_total, batches, a.repeats, a.device, a.dtype, a.t5), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
