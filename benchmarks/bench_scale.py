"""Card-scale rehearsal (issue 16), a benchmark, not a test: N synthetic tracks through 01-05 on CPU
with the tiny models; wall time, disk written and peak memory per stage; projected to 20,000 tracks.

    .venv/bin/python benchmarks/bench_scale.py --sizes 100 300 --seconds 60 --workers 2

Per size: ``bench_segment.make_input`` renders the tracks (44.1 kHz WAV, no duplicates), then each
stage runs in a fresh Python process (imports excluded from nothing: a stage's whole cost),
sampled by ``common.TreeSampler`` (peak PSS of the process tree):

- 01_segment ``clip_format="flac"`` (the Colab profiles' choice), 2 workers;
- 02_tag with the tiny CLAP; 03_tempo_key with the real TempoCNN graph ($STABLEBEAT_MODEL_MIRROR);
- 04_prompts with ``use_llm=False`` (the template path: the tiny LLM's cost says nothing about the
  real one, which belongs on a GPU); 05_train ``pre_encode=True`` (every clip through the tiny VAE,
  whose latents have SAO's real shape: 64 channels at sr/2048) + 4 steps on the latents.

Disk written = bytes under the stage's folder afterwards. The projection fits
``wall = per_track * tracks + fixed`` through the sizes (numpy.polyfit via common.fit_line) and
extrapolates to ``--project`` tracks; with two sizes the fit is exact, so linearity is judged by
the per-track cost of each size (printed) and the flat peak memory.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import TreeSampler, fit_line, machine_info  # noqa: E402

STAGES = {
    "01_segment": "from stablebeat_utils import segment; segment.run(run_dir=R, input_dir=I, workers=W, "
    "clip_format='flac', progress=False)",
    "02_tag": "from stablebeat_utils import tag; tag.run(run_dir=R, clap_model='tiny:clap')",
    "03_tempo_key": "from stablebeat_utils import tempo_key; tempo_key.run(run_dir=R, workers=W)",
    "04_prompts": "from stablebeat_utils import prompts; prompts.run(run_dir=R, use_llm=False)",
    "05_train": "from stablebeat_utils import train; train.run(run_dir=R, pre_encode=True, max_steps=4, "
    "sample_seconds=1.0, batch_size=2, demo_every=0, checkpoint_every=1000, keep_checkpoints=1, "
    "export_merged=False)",
}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def run_stage(stage: str, run_dir: Path, input_dir: Path, workers: int, log: Path) -> dict:
    code = f"R={str(run_dir)!r}; I={str(input_dir)!r}; W={workers}; " + STAGES[stage]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=str(REPO), env=env, stdout=fh, stderr=fh)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
        sampler.stop()
    wall = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"{stage} failed (rc {rc}); see {log}:\n{log.read_text()[-3000:]}")
    return {
        "wall_s": round(wall, 2),
        "disk_bytes": folder_bytes(run_dir / stage),
        "peak_pss_mib": round(sampler.peak_pss / 2**20),
        "peak_rss_tree_mib": round(sampler.peak_rss / 2**20),
        "cpu_s": round(sampler.cpu_total(), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--project", type=int, default=20000)
    ap.add_argument("--json", default="")
    ap.add_argument(
        "--train-max-size",
        type=int,
        default=10**9,
        help="run 05_train only for sizes up to this (the tiny VAE's pre-encoding on CPU is slow)",
    )
    args = ap.parse_args()
    from bench_segment import make_input

    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    results = {"machine": machine_info(), "args": vars(args), "sizes": {}}
    try:
        src = tmp / "in"
        src.mkdir()
        t = time.time()
        make_input(src, max(args.sizes), args.seconds)
        print(f"rendered {max(args.sizes)} tracks in {time.time() - t:.0f} s", flush=True)
        for n in sorted(args.sizes):
            sub = tmp / f"in_{n}"
            sub.mkdir()
            for p in sorted(src.iterdir())[:n]:
                os.link(p, sub / p.name)
            run_dir = tmp / f"run_{n}"
            row = {}
            for stage in STAGES:
                if stage == "05_train" and n > args.train_max_size:
                    continue
                row[stage] = run_stage(stage, run_dir, sub, args.workers, tmp / f"{n}_{stage}.log")
                print(f"{n} tracks {stage}: {json.dumps(row[stage])}", flush=True)
                results["sizes"][n] = row
                if args.json:  # after every stage: a rehearsal of hours keeps what it measured if stopped
                    Path(args.json).write_text(json.dumps(results, indent=1))
            segs = [json.loads(x) for x in (run_dir / "01_segment" / "segments.jsonl").read_text().splitlines()]
            row["clips"] = sum(1 for r in segs if r["status"] == "ok")
            row["clip_hours"] = round(sum(r["duration"] for r in segs if r["status"] == "ok") / 3600, 3)
            row["latents_bytes"] = folder_bytes(run_dir / "05_train" / "latents")
            row["wav_equivalent_bytes"] = round(row["clip_hours"] * 3600 * 176400)
            results["sizes"][n] = row
            shutil.rmtree(run_dir, ignore_errors=True)
        proj = {}
        for stage in STAGES:
            sizes = [n for n in sorted(results["sizes"]) if stage in results["sizes"][n]]
            walls = [results["sizes"][n][stage]["wall_s"] for n in sizes]
            disks = [results["sizes"][n][stage]["disk_bytes"] for n in sizes]
            fit = fit_line(sizes, walls) if len(sizes) > 1 else {"slope": walls[0] / sizes[0], "intercept": 0.0}
            dfit = fit_line(sizes, disks) if len(sizes) > 1 else {"slope": disks[0] / sizes[0], "intercept": 0.0}
            cpus = [results["sizes"][n][stage]["cpu_s"] for n in sizes]
            cfit = fit_line(sizes, cpus) if len(sizes) > 1 else {"slope": cpus[0] / sizes[0], "intercept": 0.0}
            proj[stage] = {
                "sizes": sizes,
                "per_track_s": round(fit["slope"], 4),
                "fixed_s": round(fit["intercept"], 1),
                "r2": round(fit.get("r2", 1.0), 4),
                "cpu_per_track_s": round(cfit["slope"], 4),
                "projected_cpu_h": round((cfit["slope"] * args.project + cfit["intercept"]) / 3600, 2),
                "per_track_s_each_size": [round(w / n, 4) for w, n in zip(walls, sizes)],
                "projected_wall_h": round((fit["slope"] * args.project + fit["intercept"]) / 3600, 2),
                "disk_per_track_bytes": round(dfit["slope"]),
                "projected_disk_gb": round((dfit["slope"] * args.project + dfit["intercept"]) / 1e9, 2),
                "peak_pss_mib_each_size": [results["sizes"][n][stage]["peak_pss_mib"] for n in sizes],
            }
        results["projection"] = proj
        print(json.dumps(proj, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
