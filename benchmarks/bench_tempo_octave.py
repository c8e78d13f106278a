"""Benchmark (not a test) of stage 03's tempo and key on synthetic beats with exact answers.

    # 1. the evaluation set: 5 styles × N beats of 25 s, as a run folder with 01_segment rows
    .venv/bin/python benchmarks/bench_tempo_octave.py make /tmp/tempo_set --per-style 16 --seed 41
    # 2. stage 03 on it, scored (run it once per code version: PYTHONPATH picks the package)
    .venv/bin/python benchmarks/bench_tempo_octave.py score /tmp/tempo_set --out /tmp/after
    PYTHONPATH=/tmp/base .venv/bin/python benchmarks/bench_tempo_octave.py score /tmp/tempo_set --out /tmp/before

Styles (:func:`stablebeat_utils.demo.make_style_beat`): plain, busy, sparse, half-time trap,
lo-fi, with tempi drawn per style (plain 70–170, busy 80–160, sparse 60–160, half-time 120–165,
lo-fi 68–96 BPM) and random keys, hats on 8th notes; and (issue 25) the genre styles lofi16 and
boombap (70–95, 16th-note hats: counted slow), trap (130–170) and drill (138–146) with a half-time
feel (counted fast), house (118–130). ``--styles lofi16,boombap`` picks some.

Throughput of 01 + 03 (the ≥ 60× real-time target on 2 cores), same tracks for both code versions:

    .venv/bin/python benchmarks/bench_tempo_octave.py tracks /tmp/tracks --tracks 25 --seconds 60
    .venv/bin/python benchmarks/bench_tempo_octave.py speed /tmp/tracks --workers 2 --repeats 3
    PYTHONPATH=/tmp/base .venv/bin/python benchmarks/bench_tempo_octave.py speed /tmp/tracks --workers 2 --repeats 3

Reports, overall and per style: the share of clips with a stated BPM (``tempo`` not null), the
share of stated BPMs within 4 % of the truth, the share of clips whose raw key+scale is right (and
of stated keys), and the stage's wall time and seconds per clip. ``keys FOLDER`` compares Essentia's
key profiles on the set: keys right and relative-key confusions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
RANGES = {
    "plain": (70, 170),
    "busy": (80, 160),
    "sparse": (60, 160),
    "halftime": (120, 165),
    "lofi": (68, 96),
    # issue 25: genres counted as their producers count them (demo._genre_beat)
    "lofi16": (70, 95),
    "boombap": (70, 95),
    "trap": (130, 170),
    "house": (118, 130),
    "drill": (138, 146),
}
SECONDS = 25.0
GRAPH = (
    next(
        (
            str(p)
            for p in (HERE.parent / "shared", Path("/work/shared"))
            if (p / "models/tempocnn/deeptemp-k16-3.pb").is_file()
        ),
        str(HERE.parent / "shared"),
    )
    + "/models/tempocnn/deeptemp-k16-3.pb"
)


def make_set(folder: Path, per_style: int, seed: int, styles: list[str] | None = None) -> None:
    sys.path.insert(0, str(HERE))
    from stablebeat_utils import audio, demo

    rng = np.random.default_rng(seed)
    clips = folder / "01_segment" / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    rows, truth = [], []
    for style, (lo, hi) in RANGES.items():
        if styles and style not in styles:
            continue
        for i in range(per_style):
            bpm = float(np.round(rng.uniform(lo, hi)))
            key = demo.KEYS[int(rng.integers(12))]
            scale = ("major", "minor")[int(rng.integers(2))]
            s = int(rng.integers(1_000_000))
            cid = f"{style}_{i:02d}"
            audio.write_wav(clips / f"{cid}.wav", demo.make_style_beat(style, bpm, key, scale, SECONDS, s), 44100)
            rows.append(
                {
                    "clip_id": cid,
                    "source": f"{cid}.wav",
                    "start": 0.0,
                    "duration": SECONDS,
                    "path": f"01_segment/clips/{cid}.wav",
                    "status": "ok",
                    "reason": None,
                }
            )
            truth.append({"clip_id": cid, "style": style, "bpm": bpm, "key": key, "scale": scale, "seed": s})
    (folder / "01_segment" / "segments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "truth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in truth))
    print(f"{len(rows)} clips of {SECONDS:g} s in {folder}")


def score(folder: Path, out: Path, graph: str, workers: int) -> dict:
    from stablebeat_utils import tempo_key
    from stablebeat_utils.clipfacts import parse_key_name
    from stablebeat_utils.runs import read_jsonl

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(folder / "01_segment", out / "01_segment")
    t = time.perf_counter()
    import inspect

    extra = {"facts_from_names": False} if "facts_from_names" in inspect.signature(tempo_key.run).parameters else {}
    tempo_key.run(run_dir=str(out), tempo_model=graph, workers=workers, **extra)  # the estimate alone
    wall = time.perf_counter() - t
    truth = {r["clip_id"]: r for r in read_jsonl(folder / "truth.jsonl")}
    rows = {r["clip_id"]: r for r in read_jsonl(out / "03_tempo_key" / "tempo_key.jsonl")}
    per: dict[str, dict] = {}
    misses = []
    for cid, t_ in truth.items():
        r = rows[cid]
        for name in (t_["style"], "all"):
            p = per.setdefault(
                name,
                dict(
                    clips=0,
                    stated=0,
                    right=0,
                    key_right=0,
                    key_stated=0,
                    key_stated_right=0,
                    key_rel=0,
                    key_stated_rel=0,
                ),
            )
            p["clips"] += 1
            if r["tempo"] is not None:
                p["stated"] += 1
                ok = abs(r["tempo"] - t_["bpm"]) <= 0.04 * t_["bpm"]
                p["right"] += ok
                if not ok and name == "all":
                    misses.append(f"{cid} truth {t_['bpm']:g} stated {r['tempo']:g}")
            got, pc = (parse_key_name(r["key_raw"]), r["scale_raw"]), parse_key_name(t_["key"])
            key_ok = got == (pc, t_["scale"])
            rel = got == (((pc + 3) % 12, "major") if t_["scale"] == "minor" else ((pc + 9) % 12, "minor"))
            p["key_right"] += key_ok
            p["key_rel"] += rel
            if r["key"] is not None:
                p["key_stated"] += 1
                p["key_stated_right"] += key_ok
                p["key_stated_rel"] += rel
    return {"per": per, "misses": misses, "wall_s": wall, "clips": len(truth)}


def key_profiles(folder: Path, profiles: list[str]) -> None:
    """Raw key+scale right, and relative-key confusions (a minor read as its relative major or the
    reverse), per Essentia KeyExtractor profile, on the set's clips (mono, 44.1 kHz, like stage 03)."""
    import essentia

    essentia.log.warningActive = False
    import essentia.standard as es

    from stablebeat_utils import audio
    from stablebeat_utils.clipfacts import parse_key_name
    from stablebeat_utils.runs import read_jsonl

    extractors = {p: es.KeyExtractor(profileType=p, sampleRate=44100.0) for p in profiles}
    counts = {p: [0, 0] for p in profiles}
    truth = read_jsonl(folder / "truth.jsonl")
    for t in truth:
        y, _ = audio.load(folder / "01_segment" / "clips" / f"{t['clip_id']}.wav")
        mono = np.ascontiguousarray(y.mean(axis=0), dtype=np.float32)
        pc, scale = parse_key_name(t["key"]), t["scale"]
        relative = ((pc + 3) % 12, "major") if scale == "minor" else ((pc + 9) % 12, "minor")
        for p, ex in extractors.items():
            key, sc, _ = ex(mono)
            got = (parse_key_name(key), sc)
            counts[p][0] += got == (pc, scale)
            counts[p][1] += got == relative
    n = len(truth)
    for p, (right, rel) in counts.items():
        print(f"| {p} | {right}/{n} | {rel} ({rel / n:.0%}) |")


def make_tracks(folder: Path, tracks: int, seconds: float) -> None:
    sys.path.insert(0, str(HERE / "benchmarks"))
    sys.path.insert(0, str(HERE))
    from bench_segment import make_input  # the tracks docs/benchmarks.md measures 01 and 03 on

    folder.mkdir(parents=True, exist_ok=True)
    total = make_input(folder, tracks, seconds)
    print(f"{tracks} tracks, {total / 60:.1f} min of audio in {folder}")


def speed(folder: Path, graph: str, workers: int, repeats: int, label: str) -> None:
    """01 then 03 on ``folder``'s tracks, timed; medians over ``repeats`` fresh run folders."""
    import soundfile as sf

    from stablebeat_utils import segment, tempo_key

    source_s = sum(sf.info(str(p)).duration for p in folder.glob("*.wav"))
    walls = []
    for i in range(repeats):
        run_dir = Path(tempfile.mkdtemp(prefix="bench_speed_"))
        try:
            t = time.perf_counter()
            segment.run(run_dir=run_dir, input_dir=folder, workers=workers, progress=False)
            t01 = time.perf_counter() - t
            t = time.perf_counter()
            s = tempo_key.run(run_dir=str(run_dir), tempo_model=graph, workers=workers)
            t03 = time.perf_counter() - t
            walls.append((t01, t03))
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    t01, t03 = (float(np.median([w[k] for w in walls])) for k in (0, 1))
    print(
        f"{label}: {len(list(folder.glob('*.wav')))} tracks, {source_s / 60:.1f} min, workers={workers}, "
        f"median of {repeats}: 01 {t01:.1f} s, 03 {t03:.1f} s ({s['clips']} clips), 01+03 {t01 + t03:.1f} s "
        f"= {source_s / (t01 + t03):.1f}x real time; all walls {[(round(a, 1), round(b, 1)) for a, b in walls]}"
    )


def report(res: dict, label: str) -> None:
    print(
        f"## {label}: {res['clips']} clips, stage wall {res['wall_s']:.1f} s "
        f"({res['wall_s'] / res['clips']:.2f} s per clip, {res['clips'] * SECONDS / res['wall_s']:.0f}x real time)"
    )
    print(
        "| style | clips | BPM stated | stated BPM right (±4 %) | key+scale right (raw) | keys stated "
        "| stated keys right | stated keys relative |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, p in res["per"].items():
        st = p["stated"]
        print(
            f"| {name} | {p['clips']} | {st} ({st / p['clips']:.0%}) | {p['right']}/{st} "
            f"({p['right'] / st if st else 0:.1%}) | {p['key_right']}/{p['clips']} ({p['key_right'] / p['clips']:.0%}) | "
            f"{p['key_stated']} ({p['key_stated'] / p['clips']:.0%}) | {p['key_stated_right']}/{p['key_stated']} | "
            f"{p['key_stated_rel']} ({p['key_stated_rel'] / max(p['key_stated'], 1):.0%}) |"
        )
    print("misses:", "; ".join(res["misses"]) or "none")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("folder", type=Path)
    m.add_argument("--per-style", type=int, default=16)
    m.add_argument("--seed", type=int, default=41)
    m.add_argument("--styles", default="", help="comma-separated subset of the styles (default: all)")
    s = sub.add_parser("score")
    s.add_argument("folder", type=Path)
    s.add_argument("--out", type=Path, default=None)
    s.add_argument("--graph", default=GRAPH)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--label", default="stage 03")
    s.add_argument("--json", type=Path, default=None)
    kp = sub.add_parser("keys")
    kp.add_argument("folder", type=Path)
    kp.add_argument("--profiles", default="edma,shaath,krumhansl,bgate,temperley2005,tonictriad,gomez")
    tr = sub.add_parser("tracks")
    tr.add_argument("folder", type=Path)
    tr.add_argument("--tracks", type=int, default=25)
    tr.add_argument("--seconds", type=float, default=60.0)
    sp = sub.add_parser("speed")
    sp.add_argument("folder", type=Path)
    sp.add_argument("--graph", default=GRAPH)
    sp.add_argument("--workers", type=int, default=2)
    sp.add_argument("--repeats", type=int, default=3)
    sp.add_argument("--label", default="01+03")
    args = ap.parse_args()
    if args.cmd == "keys":
        key_profiles(args.folder, args.profiles.split(","))
        return
    if args.cmd == "tracks":
        make_tracks(args.folder, args.tracks, args.seconds)
        return
    if args.cmd == "speed":
        speed(args.folder, args.graph, args.workers, args.repeats, args.label)
        return
    if args.cmd == "make":
        make_set(args.folder, args.per_style, args.seed, [s for s in args.styles.split(",") if s])
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_tempo_"))
    res = score(args.folder, out, args.graph, args.workers)
    report(res, args.label)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
