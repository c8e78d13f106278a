"""How much storing pre-encoded latents in float16 or bfloat16 changes them (issue 16).

Encodes the bundled demo beats with the VAE of ``--model`` (default ``tiny:sao``; ``stabilityai/
stable-audio-open-1.0`` on a GPU runtime), exactly as 05_train's pre-encoding does, then compares
for float16 and bfloat16: the relative error of the latents (max and RMS, against float32) and of
the audio decoded from them (RMS of the difference / RMS of the float32 decode), and the bytes of a
safetensors file per second of audio.

    python benchmarks/bench_latent_dtype.py [--model tiny:sao] [--seconds 10]
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny:sao")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import torch
    from safetensors.torch import save

    from stablebeat_utils import audio, compat, models, train

    compat.apply()
    model, cfg = models.load_sao(args.model, device=args.device)
    pt = model.pretransform
    sr = int(cfg["sample_rate"])
    files = sorted((Path(train.__file__).parent / "data" / "demo_audio").glob("*.ogg"))
    rows = []
    for f in files:
        a, _ = audio.load(f, sr=sr)
        a = audio.to_stereo(a)[:, : int(args.seconds * sr)]
        x = torch.from_numpy(a).unsqueeze(0).to(args.device)
        x = torch.nn.functional.pad(x, (0, (-x.shape[-1]) % pt.downsampling_ratio))
        with torch.no_grad():
            torch.manual_seed(0)
            lat = (pt.encode(x) * pt.scale).float()
            ref = pt.decode(lat / pt.scale).float()
            row = {"file": f.name, "latent_shape": list(lat.shape[1:]), "latent_abs_max": float(lat.abs().max())}
            for name, dt in (("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)):
                q = lat.to(dt).float()
                dec = pt.decode(q / pt.scale).float()
                blob = save({"latents": lat[0].to(dt).cpu().contiguous()})
                row[name] = {
                    "latent_rel_max": float((q - lat).abs().max() / lat.abs().max()),
                    "latent_rel_rms": float((q - lat).pow(2).mean().sqrt() / lat.pow(2).mean().sqrt()),
                    "audio_rel_rms": float((dec - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()),
                    "bytes_per_second": len(blob) / (x.shape[-1] / sr),
                }
        rows.append(row)
    out = {"model": args.model, "seconds": args.seconds, "clips": rows, "median": {}}
    for name in ("float32", "float16", "bfloat16"):
        out["median"][name] = {k: float(np.median([r[name][k] for r in rows])) for k in rows[0][name]}
    print(json.dumps(out["median"], indent=1))
    print(json.dumps(out, indent=None)[:2000])


if __name__ == "__main__":
    main()
