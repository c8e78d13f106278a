"""Benchmark (not a test) of stage 02_tag (notebook 02_tag): times real time of ``tag.run``.

Two CLAPs, both run through the stage's real loading path (``models.load_clap``):

- ``tiny``: ``tiny:clap``, the demo's random tiny CLAP;
- ``large``: the architecture of ``laion/larger_clap_music`` with random weights (timing only),
  saved to a temporary folder and loaded from it like a downloaded checkpoint. Its ``ClapConfig``
  is reconstructed, not read from the hub (offline): an unfused HTSAT-base audio tower
  (patch_embeds_hidden_size 128, hidden_size 1024, depths 2-2-12-2, heads 4-8-16-32, window 8,
  spec_size 256, 64 mel bins — the HTSAT-base values that diffusers' MusicLDM/AudioLDM2 converters
  set for LAION's music CLAP) and a RoBERTa-base text tower (ClapTextConfig's defaults), both
  projected to 512. The feature extractor is the tiny model's, which already uses the real one's
  front end (48 kHz, 10 s, 64 mels, 50–14000 Hz, rand_trunc / repeatpad); the tokenizer is the
  tiny one (text time is paid once per run and cached, so it does not matter for throughput).

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_tag.py [--clips 6] [--seconds 30] \
        [--models tiny large] [--device cpu] [--batch-size 8]

Prints one line per model: audio seconds, loop seconds, times real time (audio seconds / seconds
of the clip loop: decode + resample + CLAP; model load and text embeddings reported apart).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stablebeat_utils import models, tag  # noqa: E402
from stablebeat_utils.audio import write_wav  # noqa: E402

SR = 44100


def make_run(root: Path, clips: int, seconds: float) -> Path:
    """A run folder with ``clips`` synthetic 44.1 kHz stereo clips, as 01_segment leaves it."""
    rng = np.random.default_rng(0)
    clip_dir = root / "01_segment" / "clips"
    clip_dir.mkdir(parents=True)
    rows = []
    t = np.arange(int(seconds * SR)) / SR
    for i in range(clips):
        f0 = 55.0 * 2 ** (i / 12)
        x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.05 * rng.standard_normal(t.size)
        x *= (np.sin(2 * np.pi * 2 * t) > 0) * 0.5 + 0.5
        audio = np.stack([x, np.roll(x, 100)]).astype(np.float32)
        write_wav(clip_dir / f"c{i:03d}.wav", audio, SR)
        rows.append(
            {
                "clip_id": f"c{i:03d}",
                "source": f"c{i}.wav",
                "start": 0.0,
                "duration": seconds,
                "path": f"01_segment/clips/c{i:03d}.wav",
                "status": "ok",
                "reason": None,
            }
        )
    (root / "01_segment" / "segments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def build_large(dest: Path) -> Path:
    """``laion/larger_clap_music``'s architecture, random weights, saved like a checkpoint."""
    from transformers import ClapConfig, ClapModel, ClapProcessor

    tiny = Path(models.resolve("tiny:clap"))
    processor = ClapProcessor.from_pretrained(tiny)
    config = ClapConfig(text_config=models.LARGER_CLAP_TEXT, audio_config=models.LARGER_CLAP_AUDIO, projection_dim=512)
    model = ClapModel(config).eval()
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    print(f"large: built {n / 1e6:.1f} M parameters into {dest}", flush=True)
    return dest


def bench(name: str, clap_model: str, run_dir: Path, device: str, batch_size: int) -> dict:
    t0 = time.perf_counter()
    summary = tag.run(run_dir=str(run_dir), clap_model=clap_model, device=device, batch_size=batch_size)
    total = time.perf_counter() - t0
    loop = summary["audio_seconds"] / summary["times_real_time"]
    line = {
        "model": name,
        "device": summary["device"],
        "clips": summary["clips"],
        "audio_s": summary["audio_seconds"],
        "loop_s": round(loop, 2),
        "load_and_text_s": round(total - loop, 2),
        "times_real_time": summary["times_real_time"],
    }
    print(json.dumps(line), flush=True)
    return line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--models", nargs="+", default=["tiny", "large"], choices=["tiny", "large"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    import torch

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_tag_") as tmp:
        tmp = Path(tmp)
        for name in args.models:
            run_dir = make_run(tmp / f"run_{name}", args.clips, args.seconds)
            source = "tiny:clap" if name == "tiny" else str(build_large(tmp / "large_clap"))
            bench(name, source, run_dir, args.device, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
