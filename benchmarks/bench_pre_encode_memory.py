"""05_train's pre-encoding on CPU: does process memory grow with the clips, or with their lengths?

    .venv/bin/python benchmarks/bench_pre_encode_memory.py            # 20-35 s clips, varying
    .venv/bin/python benchmarks/bench_pre_encode_memory.py --seconds 27   # every clip 27 s

Encodes ``--clips`` synthetic stereo clips with the tiny SAO's VAE through
``train.pre_encode_clips`` (the stage's own code), in blocks of ``--block``, and prints the
process's resident memory after each block. On 2026-11-26 (2-core machine, torch 2.13 CPU):
varying lengths 5,591 → 5,797 MiB after 60 → 120 clips; a fixed 27 s 851 → 852 MiB — the growth
follows the variety of input shapes (allocator / oneDNN per-shape caches), not the clip count.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stablebeat_utils import models, train  # noqa: E402
from stablebeat_utils.audio import write_wav  # noqa: E402


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=240)
    ap.add_argument("--block", type=int, default=60)
    ap.add_argument("--seconds", type=float, default=0.0, help="0 = each clip 20-35 s at random")
    args = ap.parse_args()
    model, _ = models.load_sao("tiny:sao")
    tmp = Path(tempfile.mkdtemp(prefix="bench_pre_encode_"))
    rng = np.random.default_rng(0)
    clips = []
    for i in range(args.clips):
        sec = args.seconds or float(rng.uniform(20, 35))
        path = tmp / f"c{i:04d}.wav"
        write_wav(path, (rng.standard_normal((2, int(44100 * sec))) * 0.1).astype(np.float32), 44100)
        clips.append(train.Clip(f"c{i:04d}", path, "a beat", 0.0, sec, None))
    print(f"rss after writing the clips: {rss_mib():.0f} MiB", flush=True)
    for k in range(0, args.clips, args.block):
        train.pre_encode_clips(model, clips[k : k + args.block], tmp / "latents", "bench")
        print(f"encoded {min(k + args.block, args.clips)} clips: rss {rss_mib():.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
