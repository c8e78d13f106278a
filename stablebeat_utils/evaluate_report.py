"""The report of stage 07 (notebook ``07_evaluate``): the card's table, base vs fine-tune, plots, Markdown.

From the per-clip measurements (a pandas ``DataFrame``, one row per clip) to what
``RUN_DIR/07_evaluate/`` shows a reader: :func:`card_table` (the card's six numbers per model),
:func:`compare` (which model is better on each, with its tie tolerance), ``summary.md`` and
``report.md`` and the figures (:mod:`plots`). Called by :func:`stablebeat_utils.evaluate.run`.
"""

from __future__ import annotations

import contextlib
import contextvars

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import layout, modelspec
from .evaluate_metrics import CARD_METRICS, SAM_CLAP_MODEL, SIGNAL_METRICS
from .runs import Run, atomic_path

CARD_LABELS = {
    "bpm": "BPM",
    "spectral_centroid": "Spectral Centroid",
    "spectral_flatness": "Spectral Flatness",
    "hp_ratio": "Harmonic/Percussive Ratio",
    "transient_sharpness": "Transient Sharpness",
    "clap_score": "CLAP Prompt Score",
}


MODEL_LABELS = {"base": modelspec.SAO.known.label, "finetune": "fine-tune", "focus": "second stage (05b_focus)"}
SAO_HUB_ID = modelspec.SAO.known.hub_id
_LABELS: contextvars.ContextVar[dict] = contextvars.ContextVar("model_labels", default=MODEL_LABELS)


def model_labels(sources: dict) -> dict:
    """What each model is called, true to what generated it (06's ``model_source`` per model): the base
    is called by the model spec's name ("Stable Audio Open 1.0", "… Small") only when it is the hub's
    (:func:`modelspec.by_hub_id`); a tiny stand-in is called one, everywhere."""
    out = dict(MODEL_LABELS)
    base = str(sources.get("base") or SAO_HUB_ID)
    if base.startswith("tiny:"):
        out["base"] = f"tiny stand-in ({base}, trained on CPU)"
        out["finetune"] = "fine-tune of the tiny stand-in"
        out["focus"] = "second stage (05b_focus) of the tiny stand-in"
    elif modelspec.by_hub_id(base) is not None:
        out["base"] = modelspec.by_hub_id(base).label
    else:
        out["base"] = f"base model ({base})"
    return out


@contextlib.contextmanager
def labelled(sources: dict):
    """Within this block the report's tables and figures name the models by :func:`model_labels`."""
    token = _LABELS.set(model_labels(sources))
    try:
        yield
    finally:
        _LABELS.reset(token)


def label(model: str) -> str:
    return _LABELS.get().get(model, model)


# SAO 1.0's published figures (Evans et al. 2024, "Stable Audio Open", Song Describer, no-singing subset),
# measured with stable-audio-metrics: shown beside ours only at clap_setting="stable-audio-metrics"
SAO_PUBLISHED = {"benchmark": "Song Describer (no singing)", "FD_openl3": 96.51, "KL_passt": 0.55, "CLAP": 0.41}


def _fmt(v: Any, metric: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(v)
    v = float(v)
    if metric in ("bpm", "spectral_centroid"):
        return f"{v:.2f}"
    if metric in ("hp_ratio", "clap_score", "key_score"):
        return f"{v:.3f}"
    if metric in ("spectral_flatness", "transient_sharpness", "frechet"):
        return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return f"{v:.4g}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _per_prompt(df, models: list[str]):
    """Mean of each metric per (prompt, model) over seeds."""
    cols = (
        list(CARD_METRICS) + ["bpm_abs_error", "bpm_octave_error", "key_score"] + [f"{m}_dist" for m in SIGNAL_METRICS]
    )
    cols = [c for c in cols if c in df.columns]
    g = df[df["model"].isin(models)].groupby(["prompt_idx", "model"])[cols].mean(numeric_only=True)
    return g


def card_table(df, models: list[str]) -> str:
    """Markdown: per prompt, its text, then one row per model with the card's six columns."""
    parts = [
        "# Per-prompt metrics (laid out like the StableBeaT card)\n",
        "Means over seeds. Columns as on the card; definitions in `report.md`.\n",
    ]
    g = _per_prompt(df, models)
    header = ["Model"] + [CARD_LABELS[m] for m in CARD_METRICS]
    for idx in sorted(df["prompt_idx"].unique()):
        sub = df[df["prompt_idx"] == idx]
        prompt = sub["prompt"].iloc[0]
        req = sub["bpm_requested"].iloc[0]
        key = sub["key_requested"].iloc[0]
        asks = ", ".join(
            x
            for x in [
                f"{_fmt(req, 'bpm')} BPM" if req == req and req is not None else "",
                key if isinstance(key, str) and key else "",
            ]
            if x
        )
        parts.append(f"\n## Prompt {idx + 1}\n\n> {prompt}\n\n" + (f"Requested: {asks}.\n\n" if asks else ""))
        rows = []
        for m in models:
            if (idx, m) in g.index:
                vals = g.loc[(idx, m)]
                rows.append([label(m)] + [_fmt(vals.get(c), c) for c in CARD_METRICS])
        parts.append(_md_table(header, rows))
    return "".join(parts)


TIE_TOLERANCE = 1e-3  # relative difference under which base and fine-tune tie on a prompt
BETTER = {
    "bpm": "lower absolute error, measured vs requested BPM (prompts that name a BPM)",
    "bpm_octave": "lower octave-tolerant BPM error (½×, 1×, 2× the request forgiven)",
    "key": "higher MIREX key score (prompts that name a key)",
    "spectral_centroid": "closer to the training clips (log distance to their median)",
    "spectral_flatness": "closer to the training clips (log distance to their median)",
    "hp_ratio": "closer to the training clips (log distance to their median)",
    "transient_sharpness": "closer to the training clips (log distance to their median)",
    "clap_score": "higher (audio closer to its prompt in CLAP space)",
}
_BETTER_COL = {
    "bpm": ("bpm_abs_error", -1),
    "bpm_octave": ("bpm_octave_error", -1),
    "key": ("key_score", +1),
    "clap_score": ("clap_score", +1),
    **{m: (f"{m}_dist", -1) for m in SIGNAL_METRICS},
}


def compare(df, base: str = "base", cand: str = "finetune") -> list[dict]:
    """Per metric: means of both models, and the candidate's wins/losses/ties over prompts.

    Two values within :data:`TIE_TOLERANCE` (relative) of each other are a tie.
    """
    out = []
    g = _per_prompt(df, [base, cand])
    for name, (col, sign) in _BETTER_COL.items():
        value_col = {"bpm": "bpm_abs_error", "bpm_octave": "bpm_octave_error", "key": "key_score"}.get(name, name)
        rec = {
            "metric": name,
            "better": BETTER[name],
            "base_mean": _mean(df[df["model"] == base], value_col),
            "finetune_mean": _mean(df[df["model"] == cand], value_col),
            "wins": 0,
            "losses": 0,
            "ties": 0,
            "prompts_compared": 0,
        }
        if col not in g.columns:
            rec["verdict"] = "n/a"
            out.append(rec)
            continue
        for idx in sorted({i for i, _ in g.index}):
            if (idx, base) not in g.index or (idx, cand) not in g.index:
                continue
            b, c = g.loc[(idx, base), col], g.loc[(idx, cand), col]
            if b != b or c != c:  # NaN: the prompt does not ask / the metric is missing
                continue
            rec["prompts_compared"] += 1
            d = sign * (c - b)
            if abs(d) <= TIE_TOLERANCE * max(abs(b), abs(c), 1e-12):  # under 0.1 %: no real difference
                rec["ties"] += 1
            elif d > 0:
                rec["wins"] += 1
            else:
                rec["losses"] += 1
        n = rec["prompts_compared"]
        rec["verdict"] = (
            "n/a"
            if n == 0
            else "fine-tune better"
            if rec["wins"] > rec["losses"]
            else "base better"
            if rec["losses"] > rec["wins"]
            else "even"
        )
        out.append(rec)
    return out


def _mean(df, col: str) -> float | None:
    if col not in df.columns:
        return None
    v = df[col].astype(float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _summary_md(means, training_means, comparison, frechet, models, n_train) -> str:
    parts = ["# Summary\n\n## Means per model\n\n"]
    cols = [*CARD_METRICS, "bpm_abs_error", "bpm_octave_error", "bpm_acc2", "key_score"]
    header = ["Model"] + [CARD_LABELS.get(c, c) for c in cols]
    rows = [[label(m)] + [_fmt(means[m][c], c) for c in cols] for m in models]
    if n_train:
        rows.append(
            [f"training clips (n={n_train})", "—"]
            + [_fmt(training_means[m], m) for m in SIGNAL_METRICS]
            + ["—"] * (len(cols) - 1 - len(SIGNAL_METRICS))
        )
    parts.append(_md_table(header, rows))
    parts.append(
        "\n`bpm_abs_error`: |measured − requested|; `bpm_octave_error`: the same with ½× and 2× forgiven; "
        "`bpm_acc2`: share within ±4 % of ½×, 1× or 2× the request; `key_score`: MIREX weighted key score.\n"
    )
    if comparison:
        parts.append("\n## Fine-tune vs base, prompt by prompt\n\n")
        parts.append(
            "Means of the value compared: the BPM rows compare errors, the others the metric itself; "
            "a difference under 0.1 % counts as a tie.\n\n"
        )
        header = [
            "Metric",
            "better means",
            "base mean",
            "fine-tune mean",
            "fine-tune wins",
            "losses",
            "ties",
            "verdict",
        ]
        rows = [
            [
                c["metric"],
                c["better"],
                _fmt(c["base_mean"], c["metric"]),
                _fmt(c["finetune_mean"], c["metric"]),
                str(c["wins"]),
                str(c["losses"]),
                str(c["ties"]),
                c["verdict"],
            ]
            for c in comparison
        ]
        parts.append(_md_table(header, rows))
    else:
        parts.append("\nNo base/fine-tune pair in the generations list: no win/loss comparison.\n")
    parts.append("\n## Fréchet CLAP distance to the training clips (lower = closer)\n\n")
    rows = [
        [
            label(m),
            _fmt(f["value"], "frechet"),
            str(f["n_generated"]),
            str(f["n_training"]),
            f["note"] or "",
        ]
        for m, f in frechet.items()
    ]
    parts.append(_md_table(["Model", "Fréchet distance", "generated clips", "training clips", "note"], rows))
    return "".join(parts)


def _plots(df, ref_df, folder: Path, pair: list[str], n_pairs: int, run_: Run) -> list[Path]:
    from . import plots

    out = []

    def save(fig, name):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
        out.append(path)

    models = pair or sorted(df["model"].unique())
    training = {m: ref_df[m].astype(float).median() for m in SIGNAL_METRICS} if len(ref_df) else {}
    save(plots.plot_metric_bars(df, list(CARD_METRICS), models, CARD_LABELS, training), layout.METRIC_BARS_PNG)
    if df["bpm_requested"].notna().any():
        save(plots.plot_bpm_scatter(df, models), layout.BPM_SCATTER_PNG)
    if len(pair) == 2:
        ok = df[df["error"].isna()]
        n = 0
        for idx in sorted(ok["prompt_idx"].unique()):
            sub = ok[ok["prompt_idx"] == idx]
            a, b = sub[sub["model"] == pair[0]], sub[sub["model"] == pair[1]]
            common = sorted(set(a["seed"]) & set(b["seed"]))
            if not common or n >= n_pairs:
                continue
            seed = common[0]
            pa = a[a["seed"] == seed]["path"].iloc[0]
            pb = b[b["seed"] == seed]["path"].iloc[0]
            pa, pb = (p if os.path.isabs(p) else str(run_.path(p)) for p in (pa, pb))
            title = f"Prompt {idx + 1} (seed {seed}): {sub['prompt'].iloc[0]}"
            save(
                plots.plot_spectrogram_pair(pa, pb, [label(m) for m in pair], title),
                f"spectrograms_prompt{idx + 1:02d}.png",
            )
            n += 1
    return out


def paper_comparison(means: dict, clap_setting: str, clap_model: str) -> dict | None:
    """SAO 1.0's published figures beside our CLAP means — only at ``clap_setting="stable-audio-metrics"``.

    Returns None at any other setting (the numbers would not be comparable). ``comparable`` is
    False when the CLAP is not :data:`SAM_CLAP_MODEL` (the demo's tiny model, another checkpoint).
    """
    if clap_setting != "stable-audio-metrics":
        return None
    rows = [
        {
            "model": "Stable Audio Open 1.0 (published)",
            "benchmark": SAO_PUBLISHED["benchmark"],
            "FD_openl3": SAO_PUBLISHED["FD_openl3"],
            "KL_passt": SAO_PUBLISHED["KL_passt"],
            "CLAP": SAO_PUBLISHED["CLAP"],
        }
    ]
    for m, vals in means.items():
        rows.append(
            {
                "model": f"{label(m)} (this run)",
                "benchmark": "this run's prompts",
                "FD_openl3": None,
                "KL_passt": None,
                "CLAP": vals.get("clap_score"),
            }
        )
    return {"setting": clap_setting, "clap_model": clap_model, "comparable": clap_model == SAM_CLAP_MODEL, "rows": rows}


def _setting_md(params: dict, paper: dict | None) -> str:
    setting = params.get("clap_setting", "card")
    what = (
        "02_tag's CLAP path (10-s windows, averaged)"
        if setting == "card"
        else "stable-audio-metrics' conventions: mono 48 kHz, peak-normalised to −1 dBFS, int16, whole clip, "
        "fusion truncation"
    )
    text = (
        f'\n## CLAP setting: `{setting}`\n\nCLAP scores here were measured with `clap_setting = "{setting}"` '
        f"({what}), CLAP `{params['clap_model']}`. **CLAP numbers compare only with numbers measured at the same "
        "setting and with the same CLAP weights**; the card's CLAP scores and published papers use their own.\n"
    )
    if paper is None:
        return text + (
            "\nTo place a fine-tune beside SAO 1.0's published figures, run again with "
            f'`clap_setting = "stable-audio-metrics"` and `clap_model = "{SAM_CLAP_MODEL}"`.\n'
        )
    rows = [
        [r["model"], r["benchmark"], _fmt(r["FD_openl3"]), _fmt(r["KL_passt"]), _fmt(r["CLAP"], "clap_score")]
        for r in paper["rows"]
    ]
    text += (
        "\n### Beside SAO 1.0's published figures\n\n"
        + _md_table(["Model", "Prompts", "FD_openl3 ↓", "KL_passt ↓", "CLAP ↑"], rows)
        + "\nFD_openl3 and KL_passt are not computed by this course (run stable-audio-metrics for them). The "
        "published CLAP is a mean over the Song Describer prompts; ours is over this run's prompts: same "
        "measuring convention, different prompts.\n"
    )
    if not paper["comparable"]:
        text += (
            f'\n**Not comparable:** `clap_model = "{paper["clap_model"]}"` is not stable-audio-metrics\' CLAP '
            f"(`{SAM_CLAP_MODEL}`, LAION's 630k-audioset-fusion weights): the CLAP column above only exercises "
            "the setting.\n"
        )
    return text


def _report_md(df, summary_md, out_dir: Path, plots, ref_source, n_train, params, errors, paper=None) -> str:
    card = (out_dir / layout.CARD_TABLE).read_text(encoding="utf-8").split("\n", 1)[1]
    defs = (
        "| Column | Definition | Better |\n|---|---|---|\n"
        "| BPM | TempoCNN deeptemp-k16-3 global tempo (03_tempo_key's estimator, no octave prior) | "
        "lower error vs the prompt's BPM |\n"
        "| Spectral Centroid | mean over active frames of Σf·\\|X\\| / Σ\\|X\\| (STFT 2048/512, mono, 44.1 kHz), Hz | "
        "closer to training |\n"
        "| Spectral Flatness | mean over active frames of geometric/arithmetic mean of \\|X\\|² | closer to training |\n"
        "| Harmonic/Percussive Ratio | Σ\\|H\\| / Σ\\|P\\| after librosa HPSS (31×31 median filters) | closer to training |\n"
        "| Transient Sharpness | 0.1² · Σ max(0, Δr)² / Σ r², r = RMS envelope (512/128 frames): the mean squared "
        "rise of the envelope of the clip normalised to −20 dBFS RMS — loudness-free | closer to training |\n"
        "| CLAP Prompt Score | cosine(CLAP audio embedding, CLAP text embedding of the prompt), 02_tag's CLAP path "
        "| higher |\n"
    )
    rel = [p.relative_to(out_dir).as_posix() for p in plots]
    images = "\n".join(f"![{Path(r).stem}]({r})" for r in rel)
    err = ""
    if len(errors):
        err = (
            "\n## Clips that could not be measured\n\n"
            + "\n".join(f"- `{r.path}`: {r.error}" for r in errors.itertuples())
            + "\n"
        )
    clap_note = (
        ""
        if params["clap_model"] != "tiny:clap"
        else '\n**Demo note:** `clap_model = "tiny:clap"` is a tiny CLAP with random weights: its CLAP scores '
        "and Fréchet distances exercise the code, they say nothing about the audio.\n"
    )
    return (
        f"# 07_evaluate — base vs fine-tune\n\n"
        f"{len(df)} generated clips, {df['prompt_idx'].nunique()} prompts, models: "
        f"{', '.join(sorted(df['model'].unique()))}. Training reference: {ref_source} ({n_train} clips). "
        f"CLAP: `{params['clap_model']}` ({params['clap_backend']}); key profile `{params['key_profile']}`.\n"
        f"{clap_note}{_setting_md(params, paper)}\n## How each number is measured\n\n{defs}\n"
        "Active frames: within 60 dB of the loudest frame. All per-clip values are in `metrics.csv`.\n\n"
        + summary_md.replace("# Summary", "## Summary", 1).replace("\n## ", "\n### ")
        + "\n## Per prompt\n"
        + card.replace("\n## ", "\n### ")
        + f"\n## Plots\n\n{images}\n"
        + err
        + "\n## Caveats\n\n- The card does not publish its formulas; these definitions land in its orders of "
        "magnitude on real music but its exact numbers cannot be reproduced.\n"
        "- One generation per prompt and seed is a small sample: a win/loss on one prompt is anecdotal.\n"
        "- Flatness and H/P depend on mixing; transient sharpness is loudness-free (normalised by the clip's energy) "
        "but still depends on compression and density of hits.\n"
        "- The Fréchet distance with fewer clips than CLAP's 512 dimensions is biased upward.\n"
    )


# -- blind listening (06's playground records, 07 reports) ---------------------------------------


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials (scipy's ``binomtest``)."""
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def blind_preference(run_dir: str) -> dict | None:
    """What the producer chose in the playground's blind test (``06_generate/blind.jsonl``).

    Per model: how often it was chosen out of the rounds it played in, with a 95 % Wilson
    interval, and chance (1 / models per round). None when no round was recorded.
    """
    from .runs import Run, read_jsonl

    path = Run(run_dir).path(layout.GENERATE, layout.BLIND)
    rows = [r for r in (read_jsonl(path) if path.exists() else []) if r.get("choice") in (r.get("order") or [])]
    if not rows:
        return None
    out = {"rounds": len(rows), "file": f"{layout.GENERATE}/{layout.BLIND}", "models": {}}
    for m in sorted({m for r in rows for m in r["order"]}, key=lambda m: ("base", "finetune", "focus").index(m)):
        played = [r for r in rows if m in r["order"]]
        k = sum(r["choice"] == m for r in played)
        low, high = wilson_interval(k, len(played))
        chance = float(np.mean([1 / len(r["order"]) for r in played]))
        out["models"][m] = {
            "chosen": k,
            "rounds": len(played),
            "rate": k / len(played),
            "ci95": [low, high],
            "chance": chance,
        }
    return out


def blind_md(pref: dict | None) -> str:
    """The blind test as a Markdown section (empty when none was recorded)."""
    if not pref:
        return ""
    rows = []
    for m, v in pref["models"].items():
        verdict = (
            "above chance"
            if v["ci95"][0] > v["chance"]
            else "below chance"
            if v["ci95"][1] < v["chance"]
            else "not distinguishable from chance"
        )
        rows.append(
            [
                m,
                f"{v['chosen']} / {v['rounds']}",
                f"{100 * v['rate']:.0f} %",
                f"{100 * v['ci95'][0]:.0f}–{100 * v['ci95'][1]:.0f} %",
                f"{100 * v['chance']:.0f} %",
                verdict,
            ]
        )
    return (
        f"\n## Blind listening\n\n{pref['rounds']} blind round{'s' if pref['rounds'] != 1 else ''} in 06's playground (`{pref['file']}`): the same prompt "
        "and seed from each model, played in random order, the producer's pick recorded before the names were shown.\n\n"
        + _md_table(["Model", "Chosen", "Preference rate", "95 % interval (Wilson)", "Chance", "Verdict"], rows)
        + "\n"
    )


def tally_line(pref: dict | None) -> str:
    """One line for the playground: each model's preference rate with its 95 % interval so far."""
    if not pref:
        return "No blind round recorded yet."
    parts = [
        f"{m} chosen {v['chosen']}/{v['rounds']} = {100 * v['rate']:.0f} % "
        f"(95 % interval {100 * v['ci95'][0]:.0f}–{100 * v['ci95'][1]:.0f} %, chance {100 * v['chance']:.0f} %)"
        for m, v in pref["models"].items()
    ]
    return f"{pref['rounds']} blind round{'s' if pref['rounds'] != 1 else ''} so far: " + "; ".join(parts) + "."


BLIND_HEADING = "Blind listening"


def _is_heading(line: str, level: int) -> bool:
    """A Markdown heading of ``level`` or above (``#`` … ``#``×level, then a space)."""
    hashes = len(line) - len(line.lstrip("#"))
    return 0 < hashes <= level and line[hashes : hashes + 1] == " "


def replace_section(text: str, level: int, heading: str, section: str, before: str = "") -> str:
    """``text`` with its ``#``×level ``heading`` section replaced by ``section`` (Markdown, "" removes it).

    A section runs to the next heading of its level or above. With no such section, ``section`` goes
    just before the line ``before`` (or at the end)."""
    lines = text.rstrip("\n").split("\n")
    mark = "#" * level + " " + heading
    if mark in lines:
        i = lines.index(mark)
        j = next((k for k in range(i + 1, len(lines)) if _is_heading(lines[k], level)), len(lines))
    else:
        i = j = lines.index(before) if before and before in lines else len(lines)
    head, tail = "\n".join(lines[:i]).rstrip("\n"), "\n".join(lines[j:])
    parts = [head] + ([section.strip("\n")] if section.strip() else []) + ([tail] if tail else [])
    return "\n\n".join(parts) + "\n"


def refresh_blind(run_dir: str) -> dict | None:
    """Re-read the blind record and rewrite 07's blind-listening section in place (no re-measuring).

    The playground appends rounds to ``06_generate/blind.jsonl`` at any time, also after 07 ran:
    this rewrites the section of ``summary.md`` and ``report.md`` and the ``blind`` entry of
    ``summary.json`` from the record as it is now (files 07 has not written are left alone).
    Returns :func:`blind_preference`'s dict (None with no round recorded).
    """
    import json

    from .runs import Run, atomic_write_json, atomic_write_text

    pref = blind_preference(run_dir)
    out = Run(run_dir).stage_dir(layout.EVALUATE, create=False)
    section = blind_md(pref)
    summary = out / layout.SUMMARY_MD
    if summary.is_file():
        text = summary.read_text(encoding="utf-8")
        atomic_write_text(summary, replace_section(text, 2, BLIND_HEADING, section))
    report = out / layout.REPORT
    if report.is_file():
        text = report.read_text(encoding="utf-8")
        atomic_write_text(
            report, replace_section(text, 3, BLIND_HEADING, section.replace("\n## ", "\n### "), "## Per prompt")
        )
    js = out / layout.SUMMARY_JSON
    if js.is_file():
        data = json.loads(js.read_text(encoding="utf-8"))
        data["blind"] = pref
        atomic_write_json(js, data)
    return pref


# -- did the fine-tune move toward the training clips? (issue 24: the lesson states it from the run) ---

#: "measurably closer": the relative drop of a distance that counts as a move (issue 24: ≥ 10 %)
LEARNING_MIN_DROP = 0.10
#: on how many of the four signal distances the fine-tune must be that much closer (issue 24: 3 of 4)
LEARNING_MIN_METRICS = 3


def learning(df, frechet: dict, base: str = "base", cand: str = "finetune") -> dict | None:
    """How far the fine-tune moved toward the training clips, from 07's own numbers.

    Per signal metric: the mean over the candidate's and the base's clips of ``<metric>_dist`` (07's
    ``|ln v − median ln v(training clips)|``) and the relative drop ``1 − cand / base`` (positive =
    closer); the Fréchet CLAP distances of both. ``shows_learning``: at least
    :data:`LEARNING_MIN_METRICS` drops of at least :data:`LEARNING_MIN_DROP` and a lower Fréchet
    distance. None when the run has no base/candidate pair.
    """
    if df is None or not {base, cand} <= set(df["model"].unique()):
        return None
    metrics = {}
    for m in SIGNAL_METRICS:
        b, c = _mean(df[df["model"] == base], f"{m}_dist"), _mean(df[df["model"] == cand], f"{m}_dist")
        drop = None if b is None or c is None or b <= 0 else 1.0 - c / b
        metrics[m] = {"base": b, "finetune": c, "drop": drop}
    fb, fc = ((frechet.get(k) or {}).get("value") for k in (base, cand))
    fb, fc = (v if v is not None and math.isfinite(v) else None for v in (fb, fc))
    closer = [m for m, r in metrics.items() if r["drop"] is not None and r["drop"] >= LEARNING_MIN_DROP]
    frechet_lower = fb is not None and fc is not None and fc < fb
    return {
        "metrics": metrics,
        "frechet": {"base": fb, "finetune": fc, "drop": None if not fb or fc is None else 1.0 - fc / fb},
        "closer": closer,
        "frechet_lower": frechet_lower,
        "shows_learning": len(closer) >= LEARNING_MIN_METRICS and frechet_lower,
        "base": base,
        "candidate": cand,
    }


def _move(name: str, r: dict, digits: str = ".3g") -> str:
    if r["drop"] is None:
        return f"{name}: not measured"
    word = "closer" if r["drop"] >= 0 else "further"
    return f"{name} {r['base']:{digits}} → {r['finetune']:{digits}} ({abs(100 * r['drop']):.0f} % {word})"


def learning_md(rec: dict | None) -> str:
    """The section that says, in words and the run's own figures, whether the fine-tune moved toward the clips."""
    if not rec:
        return ""
    names = {m: CARD_LABELS[m].lower() for m in SIGNAL_METRICS}
    moves = [_move(names[m], r) for m, r in rec["metrics"].items()]
    f = rec["frechet"]
    if f["base"] is None or f["finetune"] is None:
        fr = "the Fréchet CLAP distance could not be computed for both models"
    else:
        verb = "fell" if f["finetune"] < f["base"] else "did not fall" if f["finetune"] == f["base"] else "rose"
        fr = f"the Fréchet CLAP distance {verb} from {_fmt(f['base'], 'frechet')} to {_fmt(f['finetune'], 'frechet')}"
    n, total = len(rec["closer"]), len(rec["metrics"])
    closer = ", ".join(names[m] for m in rec["closer"]) or "none of them"
    if rec["shows_learning"]:
        verdict = (
            f"**The fine-tune moved toward your beats**: it is at least {100 * LEARNING_MIN_DROP:.0f} % closer to "
            f"the training clips on {n} of {total} distances ({closer}), and {fr}."
        )
    elif n >= LEARNING_MIN_METRICS:  # the sound moved, CLAP's view of it did not
        verdict = (
            f"**The fine-tune moved part of the way**: at least {100 * LEARNING_MIN_DROP:.0f} % closer to the "
            f"training clips on {n} of {total} distances ({closer}), but {fr}, so CLAP does not yet hear its "
            "clips as more like yours. Train longer, then listen to both models' clips side by side in 06."
        )
    else:
        verdict = (
            f"**The fine-tune did not measurably move toward your beats**: at least {100 * LEARNING_MIN_DROP:.0f} % "
            f"closer on {n} of {total} distances ({closer}; {LEARNING_MIN_METRICS} needed), and {fr}. "
            "Train longer (more steps or epochs), or check the learning rate and 05's loss and demo plots."
        )
    return (
        "\n## Did the fine-tune move toward your beats?\n\n"
        "Distance of each model's clips to the training clips (07's log distance to their median, mean over "
        "prompts and seeds; lower = closer), base → fine-tune: " + "; ".join(moves) + ".\n\n" + verdict + "\n"
    )
