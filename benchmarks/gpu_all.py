"""One prepared GPU run: every GPU stage measured in under 10 minutes, appended to the measurements file.

Benchmark, not a test. Random weights everywhere (speed and memory do not depend on the values).
Each phase runs in its own process (its own CUDA peak, its own time limit), in this order, and is
skipped when the time left (``--budget``) is shorter than its planned cost:

- ``env``      GPU, driver, versions, bf16, the SDPA backends torch enables.
- ``train``    05 at batch 4 and 8, LoRA and full, pre-encoded latents, full-size SAO 1.0
               (``bench_train.measure``: the stage's own ``train.run``). Refits the 05 preflight.
- ``generate`` 06 at the card's settings (200 steps of dpmpp-3m-sde, CFG 7, 47 s), batch 1 and 4,
               bf16 and fp16: the course's ``generate.generate_audio`` beside the engine's own
               ``generate_diffusion_cond`` (the baseline), peak memory, the attention kernels the
               profiler sees; then the knobs at batch 1 (50 steps): each SDPA backend alone.
- ``t4``       16-mixed LoRA at full size for 50 steps (a T4's numerics: finite losses?):
               ``benchmarks/bench_t4_numerics.py``'s ``main`` where it exists, else ``bench_train``.
- ``tag``      02 with laion/larger_clap_music's architecture: the stage (``bench_tag``) in clips/s
               at batch 16 and 32, and the audio tower's peak (``bench_gpu_memory_llm_clap``).
- ``prompts``  04 with Llama-3.2-3B's architecture: prompts/min and peak at batch 8 and 16.
- ``raw``      05 on raw audio (the VAE in every step) at batch 4, LoRA and full.
- ``compile``  06 at batch 1 with ``torch.compile`` on the DiT (compile time apart), when time is left.

Every measured point is appended to ``stablebeat_utils/data/gpu_measurements.csv`` (``--data``;
the preflights read it at import, so the next import is refitted) and the file is copied to
``$OUT`` with ``results.jsonl`` (every phase's raw results) and ``summary.md`` (the table printed
last). ``--smoke`` runs the same code on the CPU with the tiny models at tiny sizes and writes to a
copy of the file under ``--out``, never to the package's.

    python3 benchmarks/gpu_all.py --out "$OUT"              # on the GPU machine (scripts: gpu_all.sh)
    .venv/bin/python benchmarks/gpu_all.py --smoke --out /tmp/gpu_all_smoke
    .venv/bin/python benchmarks/gpu_all.py --report          # the preflight against the measurements
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

#: planned seconds of each phase on an H100/H200 (model builds, loads and imports included), in the
#: order they run: the preflight's refit first, then 06's targets, then the rest
PLAN = {"env": 15, "train": 170, "generate": 150, "t4": 60, "tag": 45, "prompts": 40, "raw": 85, "compile": 120}
SAO = "sao-1.0 architecture, random weights"


# --------------------------------------------------------------------------------------------
# the parent: phases in child processes, rows into the measurements file


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny models, tiny sizes: the code path only")
    ap.add_argument("--report", action="store_true", help="print the 05 preflight against every measured point")
    ap.add_argument("--phases", nargs="+", default=list(PLAN), choices=list(PLAN))
    ap.add_argument("--budget", type=float, default=0.0, help="seconds for all phases (default 540; smoke 3600)")
    ap.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for results (default $OUT)")
    ap.add_argument("--data", default="", help="measurements file to append to (default: the package's)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.report:
        from stablebeat_utils import preflight

        print("\n".join(preflight.report()))
        return 0
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_all_"))
    out.mkdir(parents=True, exist_ok=True)
    if args.child:
        return child(args.child, out, args.smoke)
    args.budget = args.budget or (3600.0 if args.smoke else 540.0)
    return parent(args, out)


def parent(args, out: Path) -> int:
    from stablebeat_utils import preflight

    data = Path(args.data) if args.data else (out / "gpu_measurements.csv" if args.smoke else preflight.DATA)
    if args.smoke and not data.exists():
        shutil.copy(preflight.DATA, data)
    results = out / "results.jsonl"
    t0, done, appended = time.perf_counter(), {}, len([r for r in read_results(results) if "row" in r])
    for phase in args.phases:
        left = args.budget - (time.perf_counter() - t0)
        if left < (PLAN[phase] if not args.smoke else 5):
            done[phase] = f"skipped: {left:.0f} s left, {PLAN[phase]} s planned"
            print(f"== {phase}: {done[phase]}", flush=True)
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", phase, "--out", str(out)]
        cmd += ["--smoke"] if args.smoke else []
        print(f"== {phase} (planned {PLAN[phase]} s, {left:.0f} s left)", flush=True)
        t = time.perf_counter()
        try:
            rc = subprocess.run(cmd, timeout=max(left, 5)).returncode
            done[phase] = f"rc {rc}, {time.perf_counter() - t:.0f} s"
        except subprocess.TimeoutExpired:
            done[phase] = f"stopped at the budget after {time.perf_counter() - t:.0f} s"
        print(f"== {phase}: {done[phase]}", flush=True)
        rows = [r["row"] for r in read_results(results) if "row" in r]
        append_rows(data, rows[appended:])  # after every phase: a run stopped later keeps these
        appended = len(rows)
        if data != out / "gpu_measurements.csv":
            shutil.copy(data, out / "gpu_measurements.csv")
    table = summary(read_results(results), done, time.perf_counter() - t0)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    return 0


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_rows(data: Path, rows: list[dict]) -> None:
    """Append measured points to the measurements file (its columns, in its order)."""
    import csv

    from stablebeat_utils.preflight import COLUMNS

    with open(data, "a", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        for row in rows:
            w.writerow({c: row.get(c, "") for c in COLUMNS})
    print(f"{len(rows)} measured points appended to {data}", flush=True)


def summary(results: list[dict], done: dict, wall: float) -> str:
    lines = [f"gpu_all: {wall:.0f} s in all", "", "| phase | status |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in done.items()]
    lines += [
        "",
        "| stage | mode | precision | batch | s/step | rate | peak GB | note |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in (x["row"] for x in results if "row" in x):
        rate = f"{r.get('rate', '')} {r.get('rate_unit', '')}".strip()
        lines.append(
            f"| {r['stage']} | {r.get('mode', '')}-{r.get('input', '')} | {r.get('precision', '')} | {r.get('batch', '')} "
            f"| {r.get('s_per_step', '')} | {rate} | {r.get('peak_gb', '')} {r.get('peak_kind', '')} | {r.get('source', '')[:90]} |"
        )
    for x in results:
        if "info" in x and "modules" not in x["info"]:
            lines.append(f"- {x['phase']}: {json.dumps(x['info'])[:400]}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the children


class Ctx:
    """What a phase needs: where to write, CPU smoke or GPU, the device's name, the date."""

    def __init__(self, phase: str, out: Path, smoke: bool):
        import datetime

        import torch

        self.phase, self.out, self.smoke = phase, out, smoke
        self.device = "cpu" if smoke or not torch.cuda.is_available() else "cuda"
        if not smoke and self.device == "cpu":
            raise SystemExit("no CUDA GPU here: run with --smoke for the CPU check")
        self.gpu = "cpu (smoke)" if self.device == "cpu" else torch.cuda.get_device_name()
        self.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        self.scratch = Path(tempfile.gettempdir()) / "gpu_all_scratch"
        self.scratch.mkdir(exist_ok=True)

    def emit(self, row: dict | None = None, **info) -> None:
        """One measured point (a row of the measurements file) or raw results, to results.jsonl."""
        rec = {"phase": self.phase}
        if row is not None:
            cmd = f"python3 benchmarks/gpu_all.py --phases {self.phase}" + (" --smoke" if self.smoke else "")
            rec["row"] = {"gpu": self.gpu, "date": self.date, "command": cmd} | row
        if info:
            rec["info"] = info
        with open(self.out / "results.jsonl", "a") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")
        print(json.dumps(rec, default=str), flush=True)

    def reset(self) -> None:
        from bench_gpu_memory_llm_clap import reset

        reset(self.device)

    def peaks(self) -> dict:
        from bench_gpu_memory_llm_clap import peaks

        return peaks(self.device)


def child(phase: str, out: Path, smoke: bool) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    ctx = Ctx(phase, out, smoke)
    import gpu_phases

    try:
        getattr(gpu_phases, f"phase_{phase}")(ctx)
    finally:  # what the phase imported: the packages a GPU machine must have (or be carried)
        tops = sorted({m.split(".")[0] for m in sys.modules if not m.startswith("_")} - set(sys.stdlib_module_names))
        ctx.emit(modules=tops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
