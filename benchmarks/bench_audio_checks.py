"""The defect detectors of :mod:`stablebeat_utils.audio_checks` on clean and damaged audio.

For each bundled demo beat (2 s excerpts at 44.1 kHz, as the demos are) and for synthetic signals
(a sine, pink-ish noise, a synthetic drum loop), each detector's value without the defect and with
it injected at several strengths. Thresholds sit between the two. Run:

    .venv/bin/python benchmarks/bench_audio_checks.py

Prints a markdown table (the one in docs/benchmarks.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stablebeat_utils import audio, audio_checks as ac  # noqa: E402

SR = 44100
DEMO = Path(__file__).resolve().parents[1] / "stablebeat_utils" / "data" / "demo_audio"


def drum_loop(seconds=2.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = np.zeros_like(t)
    for beat in np.arange(0, seconds, 0.25):  # 8ths at 120 BPM: kick on beats, hats between
        n = int(beat * SR)
        k = np.arange(min(int(0.2 * SR), len(t) - n)) / SR
        if int(beat / 0.25) % 2 == 0:
            y[n : n + len(k)] += 0.8 * np.sin(2 * np.pi * (50 + 100 * np.exp(-k * 30)) * k) * np.exp(-k * 12)
        else:
            y[n : n + len(k)] += 0.2 * rng.standard_normal(len(k)) * np.exp(-k * 60)
    return np.stack([y, y])


def clean_signals():
    out = {}
    for path in sorted(DEMO.glob("*.ogg")):
        a, _ = audio.load(path, sr=SR)
        a = audio.to_stereo(a)
        length = a.shape[1] / SR
        for start in (0.2 * length, 0.5 * length, 0.8 * length - 2):
            seg = a[:, int(start * SR) : int((start + 2) * SR)]
            out[f"{path.stem[:18]}@{start:.0f}s"] = seg / max(1e-9, np.abs(seg).max()) * 0.9
    t = np.arange(2 * SR) / SR
    out["sine 440 Hz"] = np.stack([0.5 * np.sin(2 * np.pi * 440 * t)] * 2)
    out["white noise"] = 0.3 * np.random.default_rng(1).standard_normal((2, 2 * SR))
    out["synthetic drums"] = drum_loop()
    return out


def inject_clicks(y, per_second, amp, seed=0):
    y = y.copy()
    rng = np.random.default_rng(seed)
    n = int(per_second * y.shape[1] / SR)
    for i in rng.choice(y.shape[1], size=n, replace=False):
        y[:, i] += amp * rng.choice([-1, 1])
    return y


def main():
    rows = []
    clean = clean_signals()
    for name, y in clean.items():
        vals = {c.name: c.value for c in ac.check(y, SR)}
        rows.append((name, "none", vals))
        rows.append((name, "3 clicks/s of 0.1", {c.name: c.value for c in [ac.clicks(inject_clicks(y, 3, 0.1), SR)]}))
        rows.append((name, "3 clicks/s of 0.03", {c.name: c.value for c in [ac.clicks(inject_clicks(y, 3, 0.03), SR)]}))
        rows.append((name, "gain x3, hard clip", {c.name: c.value for c in [ac.clipping(np.clip(3 * y, -1, 1))]}))
        rows.append((name, "+0.1 DC", {c.name: c.value for c in [ac.dc_offset(y + 0.1)]}))
    print(
        "| signal | defect | " + " | ".join(["non_finite", "silence dBFS", "clipping", "dc_offset", "clicks/s"]) + " |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, defect, vals in rows:
        cells = [
            f"{vals[k]:.4g}" if k in vals else "" for k in ("non_finite", "silence", "clipping", "dc_offset", "clicks")
        ]
        print(f"| {name} | {defect} | " + " | ".join(cells) + " |")
    spectra = {k: ac.band_spectrum(v, SR) for k, v in clean.items()}
    names = [k for k in spectra if "@" in k]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    same = [ac.spectrum_distance(spectra[a], spectra[b]) for a, b in pairs if a.split("@")[0] == b.split("@")[0]]
    diff = [ac.spectrum_distance(spectra[a], spectra[b]) for a, b in pairs if a.split("@")[0] != b.split("@")[0]]
    rng = np.random.default_rng(3)
    noises = [ac.band_spectrum(0.3 * rng.standard_normal((2, 2 * SR)), SR) for _ in range(4)]
    nn = [ac.spectrum_distance(a, b) for i, a in enumerate(noises) for b in noises[i + 1 :]]
    print()
    print("collapse: spectrum distance (dB RMS over 32 bands)")
    print(f"- different beats: min {min(diff):.2f}, median {np.median(diff):.2f}")
    print(f"- the same beat, other 2 s: min {min(same):.2f}, median {np.median(same):.2f}")
    print(f"- white noises (different seeds; a collapse to noise): max {max(nn):.2f}")


if __name__ == "__main__":
    main()
