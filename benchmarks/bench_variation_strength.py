"""Does 06's variation strength show on 07's metrics? Each clip varied at five strengths by the trained tiny:sao.

For each clip and prompt, 06's own :func:`generate.generate_variation` (CFG 7, 8 steps, seed 42, 6 s) at
strengths 0.02-0.9, each variation measured five ways: 07's metrics over the whole clip against the clip and
against its playback (:func:`generate.playback`: the model's VAE alone), window by window against the playback
(:func:`generate.aligned_distance`, 0.5 s and 1 s windows) and the latent distance. Run:

    .venv/bin/python benchmarks/bench_variation_strength.py      # ~10 min on 2 cores

Prints one line per variation (the table in docs/benchmarks.md, "Variations measured against the playback").
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stablebeat_utils import audio, demo, generate as gen  # noqa: E402

SR = 44100
DEMO = Path(__file__).resolve().parents[1] / "stablebeat_utils" / "data" / "demo_audio"
STRENGTHS = (0.02, 0.1, 0.3, 0.6, 0.9)
OTHER_PROMPT = "Soft ambient pads and bells."


def clips() -> dict[str, tuple[np.ndarray, str]]:
    """Two synthetic beats the tiny model never trained on, and 6 s of a real recording (the demo's kind)."""
    import soundfile as sf

    y, sr = sf.read(str(DEMO / "admiralbob77_-_Choice_-_Drum-bass.ogg"), always_2d=True, dtype="float32")
    y = audio.resample(y.T, sr, SR) if sr != SR else y.T
    return {
        "boombap90": (demo.make_style_beat("boombap", 90, "C", "minor", 6.0, 4321), "A boom bap beat at 90 BPM."),
        "trap140": (demo.make_style_beat("trap", 140, "F", "minor", 6.0, 77), "A trap beat at 140 BPM."),
        "admiral": (np.ascontiguousarray(y[:, 10 * SR : 16 * SR]), "A drum and bass beat at 174 BPM."),
    }


def main() -> None:
    model, config = gen.load_model("tiny:sao", "cpu")
    s = gen.Settings(steps=8, cfg_scale=7.0, seconds_total=6.0)
    for name, (beat, own_prompt) in clips().items():
        beat = beat.astype(np.float32)
        heard = gen.playback(model, config, beat)
        print(f"== {name}: VAE floor {gen.variation_distance(beat, heard, SR)['distance']}", flush=True)
        for prompt in (own_prompt, OTHER_PROMPT):
            for k in STRENGTHS:
                out, info = gen.generate_variation(model, config, beat, prompt, 42, s, k, "cpu")
                n = min(out.shape[1], beat.shape[1])
                a, b, h = beat[:, :n], out[:, :n], heard[:, :n]
                row = {
                    "whole_vs_clip": gen.variation_distance(a, b, SR)["distance"],
                    "whole_vs_playback": gen.variation_distance(h, b, SR)["distance"],
                    "windows_0.5s_vs_playback": gen.aligned_distance(h, b, SR)["distance"],
                    "windows_1s_vs_playback": gen.aligned_distance(h, b, SR, window_s=1.0)["distance"],
                    "latent": info["latent_distance"],
                }
                print(f"{name} | {prompt} | strength {k:g} | {row}", flush=True)


if __name__ == "__main__":
    main()
