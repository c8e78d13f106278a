"""06_generate's GPU memory, measured: SAO 1.0 (random weights) loaded, sampled and decoded on CUDA.

Builds the full-size network from ``data/sao-1.0-model_config.json`` on the CPU (as
``models.load_sao`` does), moves it to the GPU in fp32 and casts it (the load's peak), then for
each batch runs the engine's ``generate_diffusion_cond`` with CFG (2 steps: memory does not
depend on the number of steps) and 06's :func:`stablebeat_utils.generate.decode` of a
``--seconds`` clip, recording ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` of
each phase. The T5 conditioner gets a T5-base-shaped encoder with random weights (built here:
no hub), which the conditioner keeps in fp16 as it does the real one.

    python benchmarks/bench_gpu_memory_sao.py --json out.json [--batch 1 2 4 8] [--config tiny]

``--config tiny`` runs the same code on ``tiny:sao`` (a CPU check of the script; no CUDA figures).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GB = 1e9


def t5_base_shaped(dest: Path, tiny: bool) -> Path:
    """A T5 encoder folder: t5-base's published shape (or the tiny one's), random weights, tiny's tokenizer."""
    import shutil

    from transformers import T5Config, T5EncoderModel

    from stablebeat_utils import models

    src = Path(models.resolve("tiny:t5"))
    if tiny:
        return src
    cfg = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
    T5EncoderModel(cfg).save_pretrained(dest)
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.suffix == ".model" or f.name == "special_tokens_map.json":
            shutil.copy(f, dest / f.name)
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--seconds", type=float, default=47.0)
    ap.add_argument("--config", choices=("full", "tiny"), default="full")
    ap.add_argument("--fp32-batch", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)

    import torch

    from stablebeat_utils import compat, models
    from stablebeat_utils.generate import decode

    compat.apply()
    from stable_audio_tools.inference.generation import generate_diffusion_cond

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    rows = []

    def rec(**k):
        if cuda:
            torch.cuda.synchronize()
            k.update(
                alloc_gb=round(torch.cuda.memory_allocated() / GB, 3),
                peak_alloc_gb=round(torch.cuda.max_memory_allocated() / GB, 3),
                peak_reserved_gb=round(torch.cuda.max_memory_reserved() / GB, 3),
            )
        rows.append(k)
        print(json.dumps(k), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))

    def reset():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    tiny = args.config == "tiny"
    cfg = json.loads((models.TINY_DATA / "sao_model_config.json").read_text()) if tiny else models.sao_full_config()
    with tempfile.TemporaryDirectory() as tmp:
        t5 = t5_base_shaped(Path(tmp) / "t5", tiny)
        torch.manual_seed(0)
        model = models.create_sao_model(cfg, t5_source=str(t5)).eval().requires_grad_(False)
        n = sum(p.numel() for p in model.parameters())
        reset()
        model = model.to(dev)  # models.load_sao: fp32 onto the device, then the cast
        rec(phase="load fp32", params=n)
        model = model.to(torch.bfloat16)
        rec(phase="cast bf16")
        sr, size = int(cfg["sample_rate"]), int(cfg["sample_size"])
        n_samples = int(round(min(args.seconds, size / sr) * sr))

        def one(batch, dtype_name):
            cond = [{"prompt": "A dark trap beat at 140 BPM", "seconds_start": 0.0, "seconds_total": args.seconds}]
            reset()
            with torch.inference_mode():
                latents = generate_diffusion_cond(
                    model,
                    steps=2,
                    cfg_scale=7.0,
                    conditioning=cond * batch,
                    batch_size=batch,
                    sample_size=size,
                    seed=0,
                    device=dev,
                    sampler_type="dpmpp-3m-sde",
                    sigma_min=0.3,
                    sigma_max=500.0,
                    return_latents=True,
                )
            rec(phase="sample", dtype=dtype_name, batch=batch, frames=int(latents.shape[-1]))
            reset()
            with torch.inference_mode():
                out = decode(model, latents, n_samples)
            rec(phase="decode", dtype=dtype_name, batch=batch, seconds=args.seconds, samples=int(out.shape[-1]))
            del latents, out

        for b in args.batch:
            one(b, "bfloat16")
        model = model.to(torch.float16)
        one(args.batch[0], "float16")
        model = model.to(torch.float32)
        for b in args.fp32_batch:
            one(b, "float32")
    if cuda:
        print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
