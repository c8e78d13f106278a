"""A second-stage fine-tune on the styles the first one under-learned — notebook ``05b_focus``.

The StableBeaT card ends on what went wrong (rare styles — boom bap, dense high-energy percussion —
came out weakest, because the tags were unevenly spread) and on what it would do next: fine-tune
2–3 more epochs on a smaller set that represents those styles better. This stage does that:

1. **choose** a subset of the run's training clips by their tags (``04_prompts/metadata.json``):
   the tags 04 flagged as under-represented (``tag_space.json``'s ``under_represented``, or
   recomputed with ``rare_percent``), or the tags the producer names in ``focus_tags``
   (``"genres: boom bap; instruments: 808"`` or just ``"boom bap, 808"``); clips carrying an
   ``exclude_tags`` tag are left out;
2. **rebalance** (``rebalance=True``) by *repeats*: a clip is listed up to ``max_repeats`` times in
   an epoch, so that each chosen tag is seen about as often as the most frequent one;
3. **check** before any model loads: a tag no clip carries, a subset smaller than one batch, an
   ``init_model`` whose architecture (``model_config.json``) differs from the run's model —
   each a :class:`FocusError` naming the problem;
4. **train** with :func:`stablebeat_utils.train.run` — 05's own code and settings (read from its
   stage record), starting from ``init_model`` (05's export by default, or a published fine-tune),
   with this stage's ``lr``/``epochs``/``max_steps``/``batch_size``, into ``RUN_DIR/05b_focus/``:
   its own checkpoints (resumable), logs, demos and ``export/``. 05's export is only read.

Written to ``RUN_DIR/05b_focus/``: ``subset.jsonl`` (one row per chosen clip: its tags, the chosen
tags it carries — why it is in —, its repeats), ``focus.json`` (chosen tags, tag counts before
and after, the settings inherited from 05, the prompts 06 generates per chosen tag),
``tag_counts.png`` (before/after), then what training writes (``checkpoints/``, ``export/`` …).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import layout
from . import plots
from .clipfacts import FAMILIES
from .focus_results import (  # noqa: F401  (05b's names for what 06 and 07 read of it)
    export_dir,
    for_generation,
    read,
    tag_moves,
    tag_moves_md,
)
from .runs import Run, atomic_path, atomic_write_json, read_json, read_jsonl
from . import settings, stage
from .stage import begin

STAGE = layout.FOCUS
FIRST = layout.TRAIN
#: 05's parameters this stage sets itself (everything else is inherited from 05's run)
OWN = ("run_dir", "profile", "base_model", "lr", "epochs", "max_steps", "batch_size", "export_merged")


class FocusError(ValueError):
    """A focus request that cannot be trained; raised before any model loads, naming the problem."""


# --------------------------------------------------------------------------------------------
# tags


def parse_tags(text: str, what: str = "focus_tags") -> list[tuple[str | None, str]]:
    """``"genres: boom bap, trap; instruments: 808"`` or ``"boom bap, 808"`` → [(family|None, tag)]."""
    out: list[tuple[str | None, str]] = []
    for part in re.split(r"[;\n]", text or ""):
        part = part.strip()
        if not part:
            continue
        family = None
        m = re.match(r"^([A-Za-z_]+)\s*:\s*(.*)$", part)
        if m:
            family = m.group(1).lower()
            if family not in FAMILIES:
                raise FocusError(
                    f"{what}: unknown tag family {m.group(1)!r} in {part!r}; the families are {', '.join(FAMILIES)}"
                )
            part = m.group(2)
        for tag in part.split(","):
            tag = tag.strip().lower()
            if tag:
                out.append((family, tag))
    return list(dict.fromkeys(out))


def clip_tags(run_dir: str | os.PathLike, clip_ids: list[str]) -> dict[str, dict[str, list[str]]]:
    """Each training clip's tags per family, from ``04_prompts/metadata.json`` (keyed by file name)."""
    run = Run(run_dir)
    meta_path = run.path(layout.PROMPTS, layout.METADATA)
    metadata = read_json(meta_path)
    if not isinstance(metadata, dict):
        raise FocusError(f"{meta_path}: missing or unreadable — run 04_prompts first")
    by_id = {
        r.get("clip_id"): Path(str(r.get("filepath", ""))).name
        for r in read_jsonl(run.path(layout.PROMPTS, layout.PROMPT_ROWS))
    }
    out = {}
    for cid in clip_ids:
        m = metadata.get(by_id.get(cid, "")) or {}
        out[cid] = {f: [str(t).lower() for t in dict.fromkeys(m.get(f"{f}_tags") or [])] for f in FAMILIES}
    return out


def tag_counts(
    tags: dict[str, dict[str, list[str]]], repeats: dict[str, int] | None = None
) -> dict[str, dict[str, int]]:
    """family → {tag: how many clips carry it} (each clip counted ``repeats[clip]`` times), most frequent first."""
    out = {}
    for f in FAMILIES:
        c = Counter()
        for cid, fams in tags.items():
            for t in fams.get(f, []):
                c[t] += (repeats or {}).get(cid, 1)
        out[f] = dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
    return out


def flagged_tags(
    run_dir: str | os.PathLike, tags: dict[str, dict[str, list[str]]], rare_percent: float = 0.0
) -> tuple[list[tuple[str, str]], list[dict]]:
    """The under-represented tags that at least one clip carries, and those no clip carries.

    ``rare_percent`` = 0: the list 04 wrote (``tag_space.json``'s ``under_represented``); > 0: the
    tags the run's clips carry on fewer than that share of the clips (recomputed here).
    """
    if rare_percent > 0:
        n = len(tags)
        counts = tag_counts(tags)
        rows = [
            {"family": f, "tag": t, "clips": c}
            for f in FAMILIES
            for t, c in counts[f].items()
            if 100.0 * c / max(n, 1) < rare_percent
        ]
    else:
        path = Run(run_dir).path(layout.PROMPTS, layout.TAG_SPACE)
        space = read_json(path)
        if not isinstance(space, dict) or "under_represented" not in space:
            raise FocusError(
                f"{path}: missing or without 'under_represented' — run 04_prompts first, or set "
                "focus_tags / rare_percent"
            )
        rows = space["under_represented"]
    carried = [(r["family"], str(r["tag"]).lower()) for r in rows if r.get("clips", 0) > 0]
    never = [r for r in rows if not r.get("clips", 0)]
    return carried, never


def resolve_tags(
    wanted: list[tuple[str | None, str]], tags: dict[str, dict[str, list[str]]], what: str
) -> list[tuple[str, str]]:
    """(family|None, tag) → (family, tag) pairs that the clips carry; a tag no clip carries is an error."""
    counts = tag_counts(tags)
    out, missing = [], []
    for fam, tag in wanted:
        fams = [fam] if fam else [f for f in FAMILIES if tag in counts[f]]
        found = [(f, tag) for f in fams if tag in counts[f]]
        if not found:
            missing.append(f"{fam + ': ' if fam else ''}{tag!r}")
        out.extend(found)
    if missing:
        known = "; ".join(f"{f}: {', '.join(counts[f]) or '-'}" for f in FAMILIES)
        raise FocusError(
            f"{what}: no clip of the run carries {', '.join(missing)} (04_prompts/metadata.json). "
            f"The run's tags are — {known}"
        )
    return list(dict.fromkeys(out))


@dataclass
class Subset:
    chosen: list[tuple[str, str]]  # (family, tag) the subset is built around
    rows: list[dict]  # one per clip in the subset, sorted by clip_id
    excluded: list[str] = field(default_factory=list)  # clips carrying a chosen tag but an excluded one too

    @property
    def repeats(self) -> dict[str, int]:
        return {r["clip_id"]: r["repeats"] for r in self.rows}


def choose(
    tags: dict[str, dict[str, list[str]]],
    chosen: list[tuple[str, str]],
    exclude: list[tuple[str, str]] = (),
    rebalance: bool = True,
    max_repeats: int = 4,
) -> Subset:
    """The clips carrying at least one chosen tag and no excluded one, with their repeats and reasons."""
    excl = set(exclude)
    rows, excluded = [], []
    for cid in sorted(tags):
        have = {(f, t) for f in FAMILIES for t in tags[cid].get(f, [])}
        hits = [ft for ft in chosen if ft in have]
        if not hits:
            continue
        bad = sorted(have & excl)
        if bad:
            excluded.append(cid)
            continue
        rows.append(
            {
                "clip_id": cid,
                "focus_tags": [f"{f}:{t}" for f, t in hits],
                "repeats": 1,
                "tags": tags[cid],
                "reason": "carries " + ", ".join(f"{t} ({f})" for f, t in hits),
            }
        )
    sub = Subset(list(chosen), rows, excluded)
    if rebalance and rows:
        _rebalance(sub, tags, max_repeats)
    return sub


def _rebalance(sub: Subset, tags: dict, max_repeats: int) -> None:
    """Repeats so each chosen tag is seen about as often as the most frequent one (≤ ``max_repeats`` each).

    Greedy and deterministic: the least-seen tag gets one more repeat of the clip that carries it
    with the fewest other chosen tags (then the fewest repeats so far, then by clip_id).
    """
    keys = [f"{f}:{t}" for f, t in sub.chosen]
    by_id = {r["clip_id"]: r for r in sub.rows}

    def seen(k):
        return sum(r["repeats"] for r in sub.rows if k in r["focus_tags"])

    target = max(seen(k) for k in keys)
    capped: set[str] = set()
    while True:
        open_ = [k for k in keys if k not in capped and seen(k) < target]
        if not open_:
            break
        k = min(open_, key=lambda k: (seen(k), k))
        cands = [r for r in sub.rows if k in r["focus_tags"] and r["repeats"] < max_repeats]
        if not cands:
            capped.add(k)
            continue
        best = min(cands, key=lambda r: (len(r["focus_tags"]), r["repeats"], r["clip_id"]))
        by_id[best["clip_id"]]["repeats"] += 1
    for r in sub.rows:
        if r["repeats"] > 1:
            r["reason"] += f"; repeated {r['repeats']}x so its rare tag(s) are seen about as often as the others"


# --------------------------------------------------------------------------------------------
# architecture


def architecture(cfg: dict) -> dict:
    """The parts of a ``model_config.json`` that fix the network's shape (not paths or training)."""
    keep = {k: copy.deepcopy(cfg.get(k)) for k in ("model_type", "sample_rate", "audio_channels", "model")}
    for cond in (keep.get("model") or {}).get("conditioning", {}).get("configs", []) or []:
        (cond.get("config") or {}).pop("model_path", None)
    (keep.get("model") or {}).pop("training", None)
    return keep


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def model_config_of(source: str) -> tuple[dict, str]:
    """``(model_config, where it was read)`` of a SAO source without loading any weights."""
    from . import models

    if source == models.REAL_MODELS["sao"]:
        return models.sao_full_config(), f"{source} (bundled {models.SAO_FULL_CONFIG.name})"
    resolved = models.resolve(source)
    if Path(resolved).is_dir():
        path = Path(resolved) / layout.MODEL_CONFIG
        if not path.is_file():
            raise FocusError(f"{path}: missing — a model folder holds model_config.json and model.safetensors")
    else:
        from huggingface_hub import hf_hub_download

        with models._hub_errors(source, resolved, "sao"):
            path = Path(hf_hub_download(resolved, filename=layout.MODEL_CONFIG, token=models.hub_token()))
    try:
        return json.loads(path.read_text(encoding="utf-8")), str(path)
    except ValueError as exc:
        raise FocusError(f"{path}: not valid JSON ({exc})") from exc


def check_architecture(init_model: str, run_model: str) -> None:
    """Refuse an ``init_model`` whose network differs from the run's (05's ``base_model``)."""
    a, where_a = model_config_of(init_model)
    b, where_b = model_config_of(run_model)
    diffs = _diff(architecture(a), architecture(b))
    if diffs:
        more = f" … and {len(diffs) - 5} more" if len(diffs) > 5 else ""
        raise FocusError(
            f"init_model {init_model!r} ({where_a}) is not the run's architecture (05_train's "
            f"base_model {run_model!r}, {where_b}): {'; '.join(diffs[:5])}{more}"
        )


# --------------------------------------------------------------------------------------------
# the plan: everything checked, nothing loaded


def first_stage_settings(run_dir: str | os.PathLike, profile: str = "demo") -> tuple[dict, str]:
    """05's settings for this run: its stage record, else run.json, else the profile's values. Every
    field of :class:`settings.TrainSettings`; one an older record lacks takes its demo value."""
    from . import params

    run = Run(run_dir)
    rec = run.stage_record(FIRST)
    if rec and rec.get("status") == "done" and rec.get("params"):
        values, source = dict(rec["params"]), f"{run.path(FIRST, layout.STAGE_JSON)}"
    elif ((run.read_run_json() or {}).get("params") or {}).get(FIRST):
        values, source = dict(run.read_run_json()["params"][FIRST]), f"{run.path(layout.RUN_JSON)}"
    else:
        values, source = params.resolve(FIRST, profile=profile), f"profile {profile!r}"
    defaults = params.schema(FIRST)  # what train.run takes when not given a value: the demo's
    return {k: values.get(k, defaults[k]) for k in settings.spec(FIRST)}, source


def default_init(run_dir: str | os.PathLike) -> Path:
    return layout.export_dir(Run(run_dir).path(FIRST))


def _init_source(run_dir, init_model: str) -> str:
    if init_model:
        return init_model
    path = default_init(run_dir)
    if not (path / layout.MODEL_WEIGHTS).is_file() or not (path / layout.MODEL_CONFIG).is_file():
        raise FocusError(
            f"{path}: no exported model (model.safetensors + model_config.json) — run 05_train first "
            "(with export_merged=True for LoRA), or set init_model to a fine-tune folder or hub id"
        )
    return str(path)


def _chosen_tags(run_dir, tags: dict, focus_tags: str, rare_percent: float) -> tuple[list, list[dict], str]:
    """``(chosen tags, never-chosen rare tags, why they were chosen)``: named, or flagged as rare."""
    never: list[dict] = []
    if focus_tags.strip():
        chosen = resolve_tags(parse_tags(focus_tags, "focus_tags"), tags, "focus_tags")
        why = "named in focus_tags"
    else:
        chosen, never = flagged_tags(run_dir, tags, rare_percent)
        why = (
            f"carried by fewer than {rare_percent:g} % of the clips"
            if rare_percent > 0
            else "flagged as under-represented by 04_prompts (tag_space.json)"
        )
        if not chosen:
            raise FocusError(
                f"{Run(run_dir).root}: no tag is flagged as rare that a clip carries ({why}); name the "
                "tags to focus on in focus_tags, or raise rare_percent"
            )
    return chosen, never, why


def _tag_prompts(chosen: list, sub: Subset, by_id: dict) -> list[dict]:
    """One training prompt per chosen tag (its first clip's), for 06 to generate."""
    prompts = []
    for f, t in chosen:  # 06 generates one training prompt per chosen tag (its first clip's)
        rows = [r for r in sub.rows if f"{f}:{t}" in r["focus_tags"]]
        prompts.append(
            {
                "family": f,
                "tag": t,
                "clips": [r["clip_id"] for r in rows],
                "prompt": by_id[rows[0]["clip_id"]].prompt if rows else None,
            }
        )
    return prompts


def plan(
    run_dir: str = "runs/demo",
    profile: str = "demo",
    init_model: str = "",
    focus_tags: str = "",
    exclude_tags: str = "",
    rare_percent: float = 0.0,
    rebalance: bool = True,
    max_repeats: int = 4,
    batch_size: int = 2,
) -> dict:
    """Every check of the stage, no model loaded: the subset, its counts, the settings to train with."""
    from . import train

    settings.check(
        STAGE, {"max_repeats": max_repeats, "batch_size": batch_size, "rare_percent": rare_percent}, FocusError
    )
    clips = train.read_clips(run_dir, check_audio=False)  # train.run checks the clips it will read
    tags = clip_tags(run_dir, [c.clip_id for c in clips])
    chosen, never, why = _chosen_tags(run_dir, tags, focus_tags, rare_percent)
    exclude = resolve_tags(parse_tags(exclude_tags, "exclude_tags"), tags, "exclude_tags")
    clash = sorted(set(chosen) & set(exclude))
    if clash:
        raise FocusError(f"{', '.join(f'{f}: {t}' for f, t in clash)}: both chosen and excluded (exclude_tags)")
    sub = choose(tags, chosen, exclude, rebalance, max_repeats)
    if len(sub.rows) < batch_size:
        raise FocusError(
            f"the focus subset has {len(sub.rows)} clip(s) "
            f"({', '.join(r['clip_id'] for r in sub.rows) or 'none'}), fewer than one batch "
            f"(batch_size={batch_size}): choose more tags, raise rare_percent, or lower batch_size"
        )
    first, first_source = first_stage_settings(run_dir, profile)
    init = _init_source(run_dir, init_model)
    check_architecture(init, first["base_model"])
    by_id = {c.clip_id: c for c in clips}
    ids = [r["clip_id"] for r in sub.rows]
    prompts = _tag_prompts(chosen, sub, by_id)
    return {
        "chosen": [{"family": f, "tag": t} for f, t in chosen],
        "why": why,
        "never_chosen": never,
        "excluded_clips": sub.excluded,
        "subset": sub.rows,
        "repeats": sub.repeats,
        "before": tag_counts(tags),
        "after": tag_counts({i: tags[i] for i in ids}, sub.repeats),
        "n_clips_before": len(clips),
        "n_clips_after": len(ids),
        "samples_per_epoch": sum(sub.repeats.values()),
        "init_model": init,
        "first_stage": first,
        "first_stage_source": first_source,
        "prompts": prompts,
        "clips": [by_id[i] for i in ids for _ in range(sub.repeats[i])],
    }


# --------------------------------------------------------------------------------------------
# plot


def _weights_id(source: str) -> str:
    """A local model folder's weights by size and mtime (a re-trained 05 export is another start); else the id."""
    path = Path(source) / layout.MODEL_WEIGHTS
    if path.is_file():
        st = path.stat()
        return f"{source}:{st.st_size}:{st.st_mtime_ns}"
    return source


def _fingerprint(p: dict) -> str:
    blob = json.dumps({"init_model": _weights_id(p["init_model"]), "repeats": p["repeats"]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_run_args(epochs: int, max_steps: int) -> None:
    """What the settings' own bounds (checked before ``run``'s body) cannot say."""
    if epochs < 1 and max_steps < 1:
        raise FocusError("set epochs >= 1 or max_steps >= 1")


# what focus.json keeps of the plan (beside the fingerprint and the rebalancing settings)
_FOCUS_JSON_KEYS = (
    "chosen",
    "why",
    "never_chosen",
    "excluded_clips",
    "before",
    "after",
    "n_clips_before",
    "n_clips_after",
    "samples_per_epoch",
    "init_model",
    "first_stage",
    "first_stage_source",
    "prompts",
)


def _write_plan(out: Path, p: dict, fp: str, rebalance: bool, max_repeats: int, compare_prompts: int) -> None:
    """subset.jsonl, tag_counts.png (tag counts before / after) and focus.json."""
    with atomic_path(out / layout.SUBSET) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in p["subset"]), encoding="utf-8")
    fig = plots.plot_focus_tags(p["before"], p["after"], p["chosen"], p["n_clips_before"], p["samples_per_epoch"])
    with atomic_path(out / layout.TAG_COUNTS_PNG) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    info = {k: p[k] for k in _FOCUS_JSON_KEYS}
    info.update(
        fingerprint=fp,
        rebalance="repeats" if rebalance else "none",
        max_repeats=max_repeats,
        compare_prompts=compare_prompts,
    )
    atomic_write_json(out / layout.FOCUS_JSON, info)


def _train_settings(p: dict, run_dir, profile: str, lr: float, epochs: int, max_steps: int, batch_size: int) -> dict:
    """05_train's settings (from the first stage), with this stage's init model, rate, length and batch."""
    settings = dict(
        p["first_stage"],
        run_dir=run_dir,
        profile=profile,
        base_model=p["init_model"],
        lr=lr,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        export_merged=True,
    )
    if settings.get("local_checkpoint_dir"):  # 05's local-first checkpoints (one folder per run): not 05's folder
        settings["local_checkpoint_dir"] = str(Path(settings["local_checkpoint_dir"]).expanduser() / STAGE)
    return settings


@stage.entry(STAGE, FocusError)
def run(
    run_dir: str,
    profile: str,
    init_model: str,
    focus_tags: str,
    exclude_tags: str,
    rare_percent: float,
    rebalance: bool,
    max_repeats: int,
    lr: float,
    epochs: int,
    max_steps: int,
    batch_size: int,
    compare_prompts: int,
) -> dict:
    """Choose the focus subset, write it, and fine-tune from ``init_model`` on it; return a summary.

    ``max_steps`` > 0 stops after that many steps, else ``epochs`` passes over the subset (repeats
    included). Running again resumes from the newest checkpoint of ``RUN_DIR/05b_focus``; a changed
    subset or ``init_model`` with checkpoints there is refused (they belong to another focus run).
    ``compare_prompts``: how many chosen tags (rarest first) 06 generates a training prompt of with
    all three models, for 07's per-tag comparison (0 = every chosen tag).
    """
    run_, params = begin(STAGE, locals())  # a wrong type or an incompatible run folder: refused by name
    from . import train

    _check_run_args(epochs, max_steps)
    out = run_.stage_dir(STAGE)
    p = plan(run_dir, profile, init_model, focus_tags, exclude_tags, rare_percent, rebalance, max_repeats, batch_size)
    fp = _fingerprint(p)
    old = read_json(out / layout.FOCUS_JSON) or {}
    if run_.is_done(STAGE, params) and layout.exported_weights(out).is_file() and old.get("fingerprint") == fp:
        return dict(run_.stage_record(STAGE)["summary"], skipped=True)
    if train.newest_checkpoint(layout.checkpoint_dir(out)) is not None and old.get("fingerprint") not in (None, fp):
        raise FocusError(
            f"{layout.checkpoint_dir(out)} holds checkpoints of another focus subset or init_model; use a new "
            f"run_dir, put the tags back, or delete {out} to start the second stage over"
        )
    _write_plan(out, p, fp, rebalance, max_repeats, compare_prompts)

    settings = _train_settings(p, run_dir, profile, lr, epochs, max_steps, batch_size)
    trained = train.run(**settings, stage=STAGE, clips=p["clips"])
    summary = {
        "chosen": [f"{c['family']}:{c['tag']}" for c in p["chosen"]],
        "why": p["why"],
        "clips": p["n_clips_after"],
        "of_clips": p["n_clips_before"],
        "samples_per_epoch": p["samples_per_epoch"],
        "init_model": p["init_model"],
        "first_stage_settings_from": p["first_stage_source"],
        "subset": run_.rel(out / layout.SUBSET),
        "focus_json": run_.rel(out / layout.FOCUS_JSON),
        "plot": run_.rel(out / layout.TAG_COUNTS_PNG),
        "train": trained,
    }
    run_.mark_done(STAGE, params=params, **summary)
    return summary


def subset_table(run_dir: str | os.PathLike):
    """The subset as a pandas DataFrame (clip, why, repeats) for the lesson."""
    import pandas as pd

    rows = read_jsonl(Run(run_dir).path(STAGE, layout.SUBSET))
    return pd.DataFrame([{"clip_id": r["clip_id"], "repeats": r["repeats"], "why": r["reason"]} for r in rows])
