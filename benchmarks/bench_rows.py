"""Rows in memory at the card's scale (issue 16), a benchmark, not a test.

    .venv/bin/python benchmarks/bench_rows.py [--from notebooks/runs/demo] [--clips 40000]

Takes the rows of a finished run folder (``make demo`` leaves one in notebooks/runs/demo),
replicates them to ``--clips`` rows per file under new clip ids (the card: ~40,000 clips from
20,000 beats), and measures with ``tracemalloc`` — in a fresh process per measurement, so one
does not inherit another's cache — the memory each way of reading them keeps:

- ``read_jsonl`` (every row as a dict: what holding all rows costs, the baseline);
- ``JsonlLog`` opened on the file (what 01, 02, 03, 04 and 06 open to resume), then its
  ``finalize()`` (the sorted rewrite every stage ends with), then iterating its rows;
- ``clipfacts.gather`` (04's and the tag map's join of 01 + 02 + 03).

Figures go in docs/benchmarks.md ("Rows at the card's scale").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = {
    "01_segment": "segments.jsonl",
    "02_tag": "tags.jsonl",
    "03_tempo_key": "tempo_key.jsonl",
    "04_prompts": "prompts.jsonl",
}

MEASURE = r"""
import json, sys, time, tracemalloc
sys.path.insert(0, {repo!r})
from stablebeat_utils import clipfacts, runs
what, path, root = {what!r}, {path!r}, {root!r}
tracemalloc.start()
t = time.perf_counter()
if what == "read_jsonl":
    held = runs.read_jsonl(path)
elif what == "JsonlLog":
    held = runs.JsonlLog(path)
elif what == "finalize":
    held = runs.JsonlLog(path)
    held.finalize()
elif what == "iterate":
    held = runs.JsonlLog(path)
    n = sum(1 for _ in held.rows())
elif what == "gather":
    held = clipfacts.gather(runs.Run(root))
secs = time.perf_counter() - t
cur, peak = tracemalloc.get_traced_memory()
print(json.dumps({{"held_mib": cur / 2**20, "peak_mib": peak / 2**20, "seconds": secs}}))
"""


def replicate(src: Path, dst: Path, clips: int) -> None:
    """``clips`` rows per file: the source rows cycled, every clip id (and path) made unique."""
    for stage, name in FILES.items():
        rows = [json.loads(x) for x in (src / stage / name).read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r.get("status", "ok") == "ok"] or rows
        (dst / stage).mkdir(parents=True, exist_ok=True)
        with open(dst / stage / name, "w") as fh:
            for i in range(clips):
                r = dict(rows[i % len(rows)])
                cid = f"{r['clip_id']}-{i:06d}"
                r["clip_id"] = cid
                for k in ("path", "filepath"):
                    if k in r:
                        r[k] = f"01_segment/clips/{cid}.flac"
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def measure(what: str, path: Path, root: Path, repo: Path = REPO) -> dict:
    code = MEASURE.format(repo=str(repo), what=what, path=str(path), root=str(root))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from", dest="src", default=str(REPO / "notebooks" / "runs" / "demo"))
    ap.add_argument("--clips", type=int, default=40000)
    ap.add_argument(
        "--repo", default=str(REPO), help="the checkout to measure (a baseline: a worktree of the old commit)"
    )
    args = ap.parse_args()
    src = Path(args.src)
    if not (src / "03_tempo_key" / "tempo_key.jsonl").is_file():
        raise SystemExit(f"{src}: not a finished run folder (run `make demo` first, or pass --from)")
    with tempfile.TemporaryDirectory(prefix="bench_rows_") as tmp:
        root = Path(tmp)
        replicate(src, root, args.clips)
        print(f"{args.clips} rows per file, replicated from {src}; code: {args.repo}")
        print(f"| file | MB on disk | {' | '.join(['read_jsonl', 'JsonlLog', 'finalize', 'iterate'])} (MiB held) |")
        for stage, name in FILES.items():
            path = root / stage / name
            cells = [measure(w, path, root, Path(args.repo)) for w in ("read_jsonl", "JsonlLog", "finalize", "iterate")]
            held = " | ".join(f"{c['held_mib']:.1f} (peak {c['peak_mib']:.1f}, {c['seconds']:.1f} s)" for c in cells)
            print(f"| {stage}/{name} | {path.stat().st_size / 1e6:.0f} | {held} |", flush=True)
        g = measure("gather", root, root, Path(args.repo))
        print(
            f"clipfacts.gather (01+02+03): held {g['held_mib']:.1f} MiB, peak {g['peak_mib']:.1f} MiB, {g['seconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
