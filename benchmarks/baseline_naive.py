"""The naive baseline for stages 01_segment + 03_tempo_key (notebooks 01/03): what a notebook author writes.

A benchmark reference, not part of the pipeline. One process, one file after another, librosa
all the way, doing the same work as 01 + 03:

1. ``librosa.load(path, sr=44100, mono=False)`` — decode (and resample, if needed) at 44.1 kHz;
2. ``librosa.beat.beat_track`` on the mono mix at 44.1 kHz — the track's tempo and beats;
3. pick 2 segments of ``clip_seconds`` (25 s, inside the card's 20–35 s), one in each half of the
   track, each starting on the first beat of its half (fewer when the track is too short), and
   write them as 16-bit WAV with ``soundfile``;
4. for each segment: ``librosa.feature.chroma_cqt`` (what most key-finding tutorials use),
   averaged over time and correlated with the 24 rotations of the Krumhansl–Kessler profiles
   (Krumhansl 1990) — the key; the track's tempo is the clip's tempo.

No loudness normalisation, no duplicate detection, no confidence, no resumability: it is the
reference for speed, not for quality. Run alone::

    .venv/bin/python benchmarks/baseline_naive.py INPUT_DIR OUT_DIR [--limit N]

prints one JSON line (tracks, audio seconds, wall seconds, times real time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SR = 44100
# Krumhansl–Kessler key profiles (Krumhansl, "Cognitive Foundations of Musical Pitch", 1990),
# C major / C minor; rotated for the other tonics.
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
NOTES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3")


def krumhansl_key(chroma: np.ndarray) -> tuple[str, str, float]:
    """The key whose rotated Krumhansl–Kessler profile correlates best with the mean chroma."""
    mean = chroma.mean(axis=1)
    best = ("C", "major", -2.0)
    for scale, profile in (("major", KK_MAJOR), ("minor", KK_MINOR)):
        for tonic in range(12):
            r = float(np.corrcoef(mean, np.roll(profile, tonic))[0, 1])
            if r > best[2]:
                best = (NOTES[tonic], scale, r)
    return best


def process_track(path: Path, out_dir: Path, clip_seconds: float = 25.0, segments: int = 2) -> list[dict]:
    import librosa
    import soundfile as sf

    y, sr = librosa.load(path, sr=SR, mono=False)
    y = np.atleast_2d(y)
    mono = librosa.to_mono(y)
    tempo, beats = librosa.beat.beat_track(y=mono, sr=sr, units="samples")
    tempo = float(np.atleast_1d(tempo)[0])
    n = int(clip_seconds * sr)
    rows = []
    for i in range(segments):
        start = i * mono.size // segments
        later = beats[beats >= start]
        if len(later):
            start = int(later[0])
        if start + n > mono.size:
            continue
        clip = y[:, start : start + n]
        sf.write(out_dir / f"{path.stem}_{i}.wav", clip.T, sr, subtype="PCM_16")
        chroma = librosa.feature.chroma_cqt(y=librosa.to_mono(clip), sr=sr)
        key, scale, r = krumhansl_key(chroma)
        rows.append(
            {
                "clip": f"{path.stem}_{i}",
                "start": start / sr,
                "tempo": round(tempo, 1),
                "key": key,
                "scale": scale,
                "key_r": round(r, 3),
            }
        )
    return rows


def run(input_dir: str | Path, out_dir: str | Path, limit: int | None = None) -> dict:
    """Process the first ``limit`` audio files of ``input_dir`` (sorted); return timing and counts."""
    import soundfile as sf

    files = sorted(p for p in Path(input_dir).iterdir() if p.suffix.lower() in AUDIO_EXTS)[:limit]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    audio_s = sum(sf.info(str(p)).duration for p in files)
    t0 = time.perf_counter()
    c0 = time.process_time()
    rows = []
    for p in files:
        rows.extend(process_track(p, out_dir))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {
        "cpu_s": round(cpu, 3),
        "tracks": len(files),
        "clips": len(rows),
        "audio_s": round(audio_s, 2),
        "wall_s": round(wall, 3),
        "times_real_time": round(audio_s / wall, 2),
        "clip_s": round(25.0 * len(rows), 1),
        "keys": sorted({f"{r['key']} {r['scale']}" for r in rows})[:8],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args(argv)
    print(json.dumps(run(a.input_dir, a.out_dir, a.limit)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
