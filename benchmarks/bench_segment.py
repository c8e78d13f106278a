"""Benchmark (not a test) of stage 01_segment (notebook 01_segment): throughput and peak memory.

    .venv/bin/python benchmarks/bench_segment.py --tracks 200 --seconds 60 --workers 1 2

Renders ``--tracks`` synthetic beats (stablebeat_utils.demo.make_beat, a few distinct ones tiled
under different gains/rates so that rendering stays cheap yet no two files are duplicates) as
44.1 kHz WAV into a temp folder, then times ``segment.run`` per worker count. Reports times real
time (seconds of source audio per wall second) and peak resident memory of the main process and of
the workers (ru_maxrss).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stablebeat_utils import audio, demo, segment  # noqa: E402


def make_input(folder: Path, tracks: int, seconds: float) -> float:
    """Distinct tracks: rendered beats (8 tempi × as many seeds as needed), each shifted in
    pitch/tempo by resampling (a different length and spectrum for every track, so the duplicate
    detector sees no copies). At most 25 shifts per beat, so no track is shortened by more than
    ~9 % — until 2026-11-26 the shifts grew with the number of tracks, and at 2,000 tracks half of
    them came out under 01's 20-s minimum (the 2,000-track rehearsal in docs/benchmarks.md)."""
    bpms = (90, 100, 110, 120, 130, 140, 150, 160)
    seeds = max(1, -(-tracks // (25 * len(bpms))))
    bases = [
        demo.make_beat(bpm, "C", "minor", seconds, 1000 + i + 100 * k, melody=True)
        for k in range(seeds)
        for i, bpm in enumerate(bpms)
    ]
    total = 0.0
    for i in range(tracks):
        base = bases[i % len(bases)]
        factor = 1.0 + 0.004 * (i // len(bases))  # at most 25 steps of 0.4 %: tempo, pitch and length all move
        x = audio.resample(base, int(round(44100 * factor)), 44100, quality="LQ") if factor != 1 else base
        x = x * np.float32(10 ** (-2 * (i % 7) / 20))  # 2 dB steps: neighbours differ clearly
        audio.write_wav(folder / f"track_{i:04d}.wav", x, 44100)
        total += x.shape[1] / 44100
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracks", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_segment_"))
    try:
        src = tmp / "in"
        src.mkdir()
        t = time.time()
        total = make_input(src, args.tracks, args.seconds)
        print(f"input: {args.tracks} tracks, {total / 60:.1f} min of audio, rendered in {time.time() - t:.0f} s")
        for w in args.workers:
            run_dir = tmp / f"run_w{w}"
            t = time.perf_counter()
            summary = segment.run(run_dir=run_dir, input_dir=src, workers=w, progress=False)
            wall = time.perf_counter() - t
            main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            print(
                f"workers={w}: {wall:.1f} s wall, {total / wall:.1f}x real time, "
                f"{summary['clips']} clips, {summary['rejected']} rejected ({summary['duplicates']} duplicates); "
                f"peak RSS main {main_rss:.0f} MiB, largest child {child_rss:.0f} MiB; "
                f"load average {os.getloadavg()[0]:.1f}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
