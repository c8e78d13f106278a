"""Benchmark (not a test) of where 06's loops start: on a true downbeat, or not.

Beats with a known bar 1 (:func:`stablebeat_utils.demo.make_style_beat` starts bar 1 at t = 0)
are cut to begin ``offset`` beats later (0, 1.3, 2.6 and 3 beats: a whole number of beats and a
fraction of one), so bar lines fall at ``4·k·60/bpm − offset`` seconds. :func:`loops.cut_loop`
(4 bars, the prompted BPM = the true one) cuts a loop; a **hit** is a loop whose start lies within
min(50 ms, ⅛ beat) of a true bar line. ``grid`` counts the clips whose beat grid (librosa) has a
beat on a bar line at all — a miss there is the beat tracker's, not the downbeat's.

    .venv/bin/python benchmarks/bench_downbeat.py                                # this checkout
    PYTHONPATH=/tmp/base .venv/bin/python benchmarks/bench_downbeat.py           # another version

Styles and tempi: 2 tempi per style of ``demo.STYLES`` within the style's usual range (as in
bench_tempo_octave.py), key F minor, 20-s clips (seed from the tempo and offset).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from stablebeat_utils import demo, loops

TEMPI = {
    "plain": (90, 150),
    "busy": (100, 140),
    "sparse": (80, 120),
    "halftime": (130, 160),
    "lofi": (72, 90),
    "lofi16": (75, 92),
    "boombap": (84, 94),
    "trap": (140, 160),
    "house": (120, 126),
    "drill": (140, 144),
}
OFFSETS = (0.0, 1.3, 2.6, 3.0)  # beats cut from the start: bar 1 no longer at t = 0
SECONDS = 20.0
SR = demo.SR


def case(style: str, bpm: float, offset: float) -> dict:
    beat = 60.0 / bpm
    cut = offset * beat
    audio = demo.make_style_beat(style, bpm, "F", "minor", SECONDS + cut + 1, seed=int(bpm * 10 + offset * 7))
    audio = audio[:, int(round(cut * SR)) : int(round((cut + SECONDS) * SR))]
    bars = np.arange(0, 64) * 4 * beat - cut
    bars = bars[bars > -0.1]
    tol = min(0.05, beat / 8)
    loop = loops.cut_loop(audio, SR, bpm, 4)
    grid = loops.beat_grid(audio, SR, bpm)
    on_bar = lambda t: bool(np.min(np.abs(bars - t)) < tol)  # noqa: E731
    return {
        "style": style,
        "bpm": bpm,
        "offset": offset,
        "start_s": loop.start_s if loop.audio is not None else None,
        "hit": loop.audio is not None and on_bar(loop.start_s),
        "grid": any(on_bar(t) for t in grid.beats),
        "bars": loop.bars,
        "reason": loop.reason,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--styles", default=",".join(demo.STYLES))
    args = ap.parse_args()
    rows, t0 = [], time.time()
    for style in args.styles.split(","):
        for bpm in TEMPI[style]:
            for off in OFFSETS:
                rows.append(case(style, bpm, off))
                r = rows[-1]
                if not r["hit"]:
                    print(f"  miss: {style} {bpm} BPM offset {off} beats: start {r['start_s']} {r['reason']}")
    print(f"\n{'style':<10} hits  grid  (of {len(TEMPI['plain']) * len(OFFSETS)})")
    for style in args.styles.split(","):
        sub = [r for r in rows if r["style"] == style]
        print(f"{style:<10} {sum(r['hit'] for r in sub):>4}  {sum(r['grid'] for r in sub):>4}")
    hits = sum(r["hit"] for r in rows)
    print(
        f"\nall: {hits}/{len(rows)} loops start on a true downbeat ({100 * hits / len(rows):.0f} %); "
        f"grid has a bar line: {sum(r['grid'] for r in rows)}/{len(rows)}; {time.time() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
