"""Peak memory of SAO 1.0's VAE decode per latent frame, measured on the CPU (06_generate's preflight).

The decode of a 47-s clip is 06_generate's memory peak. Without a GPU, this measures the same
engine code (stable-audio-tools' Oobleck decoder, built from ``data/sao-1.0-model_config.json``
with random weights) on the CPU: the peak resident memory (``VmHWM``, reset through
``/proc/self/clear_refs`` before each decode) minus the resident memory before it, for a few
latent lengths and dtypes. The decoder is convolutional, so the peak grows linearly with the
frames; the slope (bytes per latent frame per batch item) is what
:mod:`stablebeat_utils.preflight_inference` scales to 1,024 frames (47.55 s). On CUDA the caching
allocator and cuDNN workspaces differ from the CPU's malloc, so the preflight calls its figure
"measured on CPU, scaled" and adds a margin.

    .venv/bin/python benchmarks/bench_vae_decode_memory.py [--frames 32 64 128] [--batch 1 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)

    import torch

    from stablebeat_utils import compat, models

    compat.apply()
    from stable_audio_tools.models.factory import create_pretransform_from_config

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = models.sao_full_config()
    vae = create_pretransform_from_config(cfg["model"]["pretransform"], cfg["sample_rate"]).eval()
    rows = []
    for dtype_name in args.dtypes:
        vae = vae.to(getattr(torch, dtype_name))
        for batch in args.batch:
            for frames in args.frames:
                z = torch.randn(batch, 64, frames, dtype=next(vae.parameters()).dtype)
                with torch.inference_mode():
                    vae.decode(z[:, :, :4])  # warm-up: lazy initialisations are not the decode's
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                before = _kb("VmRSS")
                with torch.inference_mode():
                    out = vae.decode(z)
                peak = _kb("VmHWM") - before
                row = {
                    "dtype": dtype_name,
                    "batch": batch,
                    "frames": frames,
                    "samples": int(out.shape[-1]),
                    "peak_bytes": peak,
                    "bytes_per_frame_per_item": round(peak / frames / batch),
                }
                del out
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
