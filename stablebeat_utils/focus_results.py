"""What 05b_focus leaves in the run folder, read by 05b's lesson, 06_generate and 07_evaluate.

Used by notebooks 05b_focus, 06_generate and 07_evaluate; no notebook of its own (moved here from
focus.py so that 06 and 07 read the second stage without importing it): its export folder and
``focus.json`` (:func:`export_dir`, :func:`read`), what 06 generates with it
(:func:`for_generation`) and the per-tag analysis 07 reports (:func:`tag_moves`, :func:`tag_moves_md`).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import layout
from .clipstore import ClipFolder
from .runs import Run, read_json, read_jsonl

STAGE = layout.FOCUS


def export_dir(run_dir: str | os.PathLike) -> Path:
    """Where this stage exports the second-stage model (06 plays it as ``"focus"`` when it exists)."""
    return layout.export_dir(Run(run_dir).path(STAGE))


def read(run_dir: str | os.PathLike) -> dict:
    """``RUN_DIR/05b_focus/focus.json`` (for the lesson, 06 and 07); {} before the stage ran."""
    return read_json(Run(run_dir).path(STAGE, layout.FOCUS_JSON)) or {}


def for_generation(run_dir: str | os.PathLike) -> tuple[Path | None, list[str]]:
    """(the second stage's export, or None before it exists; the prompts 06 adds: one per chosen tag,
    rarest tag first, at most ``compare_prompts`` of them when that is > 0)."""
    exp = export_dir(run_dir)
    if not (exp / layout.MODEL_WEIGHTS).is_file() or not (exp / layout.MODEL_CONFIG).is_file():
        return None, []
    info = read(run_dir)
    tags = sorted(info.get("prompts", []), key=lambda p: len(p.get("clips") or []))  # stable: 04's order
    prompts = list(dict.fromkeys(p["prompt"] for p in tags if p.get("prompt")))
    limit = int(info.get("compare_prompts") or 0)
    return exp, prompts[:limit] if limit > 0 else prompts


def tag_moves(run_dir: str | os.PathLike, df, ref_df, metrics: tuple[str, ...], tie: float = 1e-3) -> list[dict]:
    """Per chosen tag: did the second stage (``focus``) move its prompt's generations, compared with the
    first stage (``finetune``), toward the training clips that carry the tag?

    ``df``: 07's per-clip table (model, prompt, clap_score, metrics); ``ref_df``: 07's training-clip
    table (absolute ``path`` + metrics). CLAP: higher is better. Each metric: the log distance to
    the median of the tag's training clips; smaller is closer. Values within ``tie`` (relative) of
    each other did not move (07's tie rule).
    """
    import math

    import numpy as np

    info = read(run_dir)
    run = Run(run_dir)
    clips = ClipFolder(run.root)
    seg = {
        r.get("clip_id"): str(clips.path(r["path"]).resolve())
        for r in read_jsonl(run.path(layout.SEGMENT, layout.SEGMENTS))
        if r.get("path")
    }
    ref = ref_df.assign(_p=[str(Path(p).resolve()) for p in ref_df["path"]]).set_index("_p") if len(ref_df) else None
    out = []
    for t in info.get("prompts", []):
        rec = {"family": t["family"], "tag": t["tag"], "prompt": t.get("prompt"), "training_clips": len(t["clips"])}
        sub = df[df["prompt"] == t.get("prompt")]
        for m in ("finetune", "focus"):
            v = sub[sub["model"] == m]["clap_score"].astype(float)
            rec[f"clap_{m}"] = float(v.mean()) if len(v.dropna()) else None

        def moved(a, b):  # +1: b above a, -1: below, 0: a tie
            return 0 if abs(b - a) <= tie * max(abs(a), abs(b), 1e-12) else (1 if b > a else -1)

        a, b = rec["clap_finetune"], rec["clap_focus"]
        rec["clap_moved"] = None if a is None or b is None else {1: "up", -1: "down", 0: "same"}[moved(a, b)]
        paths = [seg[c] for c in t["clips"] if c in seg]
        closer = farther = 0
        for metric in metrics:
            vals = ref.loc[[p for p in paths if p in ref.index], metric].astype(float) if ref is not None else []
            vals = [x for x in vals if x > 0 and math.isfinite(x)]
            target = float(np.median(np.log(vals))) if vals else None
            d = {}
            for m in ("finetune", "focus"):
                g = [x for x in sub[sub["model"] == m][metric].astype(float) if x > 0 and math.isfinite(x)]
                d[m] = abs(float(np.mean(np.log(g))) - target) if g and target is not None else None
            rec[f"{metric}_dist_finetune"], rec[f"{metric}_dist_focus"] = d["finetune"], d["focus"]
            if d["finetune"] is not None and d["focus"] is not None:
                closer += moved(d["finetune"], d["focus"]) < 0
                farther += moved(d["finetune"], d["focus"]) > 0
        rec["metrics_closer"], rec["metrics_farther"] = closer, farther
        rec["verdict"] = (
            "not generated (compare_prompts)"
            if sub.empty
            else "n/a"
            if rec["clap_moved"] is None and closer + farther == 0
            else "moved toward the tag"
            if (rec["clap_moved"] == "up") + closer > (rec["clap_moved"] == "down") + farther
            else "moved away"
            if (rec["clap_moved"] == "up") + closer < (rec["clap_moved"] == "down") + farther
            else "no change"
            if rec["clap_moved"] == "same" and closer + farther == 0
            else "mixed"
        )
        out.append(rec)
    return out


def tag_moves_md(rows: list[dict], metrics: tuple[str, ...]) -> str:
    """07's report section: per chosen tag, the second stage against the first."""
    if not rows:
        return ""

    def f(v):
        return "—" if v is None else f"{v:.3g}"

    head = [
        "Tag",
        "training clips",
        "CLAP 1st stage",
        "CLAP 2nd stage",
        "CLAP moved",
        *[f"{m} dist 1st → 2nd" for m in metrics],
        "verdict",
    ]
    lines = [
        "\n## Second stage (05b_focus) on its chosen tags\n\n",
        "Per tag the second stage trained on, its prompt (a training prompt of a clip with the tag) generated "
        "by the first stage (`finetune`) and the second (`focus`) with the same seeds. CLAP: higher is closer to "
        "the prompt. Metrics: log distance to the median of the training clips that carry the tag (smaller is "
        "closer). One prompt and few seeds per tag: a hint, not a verdict.\n\n",
        "| " + " | ".join(head) + " |\n",
        "|" + "|".join("---" for _ in head) + "|\n",
    ]
    for r in rows:
        cells = [
            f"{r['tag']} ({r['family']})",
            str(r["training_clips"]),
            f(r["clap_finetune"]),
            f(r["clap_focus"]),
            r["clap_moved"] or "—",
            *[f"{f(r[f'{m}_dist_finetune'])} → {f(r[f'{m}_dist_focus'])}" for m in metrics],
            r["verdict"],
        ]
        lines.append("| " + " | ".join(cells) + " |\n")
    return "".join(lines)
