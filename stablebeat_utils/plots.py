"""Figures: matplotlib builders that return a ``matplotlib.figure.Figure`` (or PNG bytes).

Used by the stages to draw the PNGs they write (04's tag space, 07's report), and by :mod:`show`
for the notebooks. No IPython here: a figure is built, never displayed (the notebook or
:func:`show.image` displays it).
"""

from __future__ import annotations

from .clipfacts import FAMILIES


def plot_tag_frequency(freq: dict, n_clips: int, top: int = 25):
    """Horizontal bars of how many clips carry each tag, one panel per family (the card's "Frequence moods").

    ``freq``: family → list of (tag, count), most frequent first.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    families = list(freq)
    rows = max([min(len(v), top) for v in freq.values()] + [1])
    fig = Figure(figsize=(5 * max(len(families), 1), 0.28 * rows + 1.5), layout="constrained")
    axes = fig.subplots(1, max(len(families), 1), squeeze=False)[0]
    for ax, fam in zip(axes, families):
        items = list(freq[fam])[:top][::-1]
        ax.barh([t for t, _ in items], [c for _, c in items], color="tab:blue")
        shown = f"top {len(items)} of {len(freq[fam])} tags" if len(freq[fam]) > len(items) else f"{len(items)} tags"
        ax.set_title(f"{fam}: {shown} ({n_clips} clips)")
        ax.set_xlabel("clips carrying the tag")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(axis="y", labelsize=8)
    return fig


def plot_bpm_key(bpms, keys: dict):
    """A histogram of the confident tempos and bars of the confident keys (``"G minor"`` → count)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    if len(bpms):
        ax1.hist(list(bpms), bins=range(int(min(bpms)) // 5 * 5, int(max(bpms)) // 5 * 5 + 10, 5), color="tab:orange")
    ax1.set_title(f"tempo (confident: {len(bpms)} clips)")
    ax1.set_xlabel("BPM")
    ax1.set_ylabel("clips")
    names = sorted(keys, key=lambda k: -keys[k])
    ax2.bar(names, [keys[k] for k in names], color="tab:green")
    ax2.set_title(f"key (confident: {sum(keys.values())} clips)")
    ax2.tick_params(axis="x", labelrotation=60, labelsize=8)
    return fig


def plot_prompt_lengths(lengths: dict, limit: int = 128):
    """Histogram of prompt lengths in T5 tokens, per source (``{"llm": [...], "template": [...]}``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    data = [(k, v) for k, v in lengths.items() if len(v)]
    if data:
        ax.hist([v for _, v in data], bins=20, label=[f"{k} ({len(v)})" for k, v in data], stacked=True)
        ax.legend()
    ax.axvline(limit, color="red", linestyle="--")
    ax.text(limit, ax.get_ylim()[1] * 0.9, f" T5 limit {limit}", color="red", ha="right")
    ax.set_xlabel("T5 tokens")
    ax.set_ylabel("prompts")
    ax.set_title("prompt length")
    return fig


def plot_tag_map(xy, labels, clusters, names: dict, title: str = ""):
    """The tags' 2-D map (PCA of their T5 embeddings), coloured by cluster, every point labelled."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 9), layout="constrained")
    ax = fig.subplots()
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    for c in sorted(set(clusters)):
        idx = [i for i, k in enumerate(clusters) if k == c]
        ax.scatter(
            [xy[i][0] for i in idx],
            [xy[i][1] for i in idx],
            color=cmap(c % 10),
            s=18,
            label=f"{c}: {names.get(c, names.get(str(c), ''))}",
        )
    for (x, y), lab in zip(xy, labels):
        ax.annotate(lab, (x, y), fontsize=6, alpha=0.8, xytext=(2, 2), textcoords="offset points")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    return fig


def plot_clip_scores(row: dict, top: int = 8):
    """One clip's best CLAP similarities per family (bars), its chosen tags highlighted.

    ``row``: a row of ``02_tag/tags.jsonl`` (``scores`` + ``<family>_tags``).
    """
    from matplotlib.figure import Figure

    families = [f for f in FAMILIES if f in row.get("scores", {})]
    fig = Figure(figsize=(5 * max(len(families), 1), 0.3 * top + 1.5), layout="constrained")
    axes = fig.subplots(1, max(len(families), 1), squeeze=False)[0]
    fig.suptitle(row.get("clip_id", ""))
    for ax, fam in zip(axes, families):
        best = sorted(row["scores"][fam].items(), key=lambda kv: (-kv[1], kv[0]))[:top][::-1]
        chosen = set(row.get(f"{fam}_tags", []))
        # bars start just left of the lowest score shown: cosines can be negative or all close
        lo, hi = min(s for _, s in best), max(s for _, s in best)
        base = lo - 0.1 * (hi - lo or abs(hi) or 1.0)
        ax.barh(
            [t for t, _ in best],
            [s - base for _, s in best],
            left=base,
            color=["tab:red" if t in chosen else "tab:gray" for t, _ in best],
        )
        ax.set_title(f"{fam}: best {len(best)} of {len(row['scores'][fam])} tags")
        ax.set_xlabel("cosine similarity (red: chosen)")
        ax.tick_params(axis="y", labelsize=8)
        _few_ticks(ax.xaxis)
    return fig


def _few_ticks(axis, n: int = 3) -> None:
    """At most ``n`` + 1 ticks with short labels: close scores otherwise print overlapping 6-digit labels."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axis.set_major_locator(MaxNLocator(nbins=n))
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:.4g}"))


def plot_metric_bars(df, metrics, models, labels: dict | None = None, training: dict | None = None):
    """One panel per metric: bars per prompt, one colour per model; dashed line = training median.

    ``df``: evaluate's metrics table (``prompt_idx``, ``model`` and the metric columns; seeds are averaged).
    """
    from matplotlib.figure import Figure

    labels = labels or {}
    training = training or {}
    n = len(metrics)
    cols = 3 if n > 4 else n
    nrows = -(-n // cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    prompts = sorted(df["prompt_idx"].unique())
    width = 0.8 / max(len(models), 1)
    means = df.groupby(["prompt_idx", "model"])[list(metrics)].mean(numeric_only=True)
    for ax, metric in zip(axes, metrics):
        for j, model in enumerate(models):
            vals = [means.loc[(p, model), metric] if (p, model) in means.index else float("nan") for p in prompts]
            ax.bar([i + (j - (len(models) - 1) / 2) * width for i in range(len(prompts))], vals, width, label=model)
        ref = training.get(metric)
        if ref is not None and ref == ref:
            ax.axhline(ref, color="k", ls="--", lw=1, label="training median")
        ax.set_xticks(range(len(prompts)), [f"P{p + 1}" for p in prompts])
        ax.set_title(labels.get(metric, metric), fontsize=10)
        if metric in ("spectral_flatness", "transient_sharpness"):
            ax.set_yscale("log")
    for ax in axes[n:]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    return fig


def plot_bpm_scatter(df, models):
    """Requested vs measured BPM per clip, one colour per model, with the 1×, ½× and 2× lines."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.subplots()
    sub = df[df["bpm_requested"].notna() & df["bpm"].notna()]
    for model in models:
        s = sub[sub["model"] == model]
        ax.scatter(s["bpm_requested"].astype(float), s["bpm"].astype(float), label=model, alpha=0.8)
    lo, hi = 40, 300
    for f, style in ((1, "-"), (0.5, ":"), (2, ":")):
        ax.plot([lo, hi], [lo * f, hi * f], "k" + style, lw=0.8)
    ax.set_xlim(50, 200)
    ax.set_ylim(30, 300)
    ax.set_xlabel("requested BPM (from the prompt)")
    ax.set_ylabel("measured BPM (TempoCNN)")
    ax.set_title("BPM adherence (solid 1×, dotted ½× and 2×)")
    ax.legend(fontsize=8)
    return fig


def plot_spectrogram_pair(path_a, path_b, names, title: str = "", sr: int = 22050):
    """Log-frequency dB spectrograms of two clips side by side (same prompt and seed, two models)."""
    import librosa
    import librosa.display
    import numpy as np
    from matplotlib.figure import Figure

    from .audio import load

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, path, name in zip(axes, (path_a, path_b), names):
        y, _ = load(path, sr=sr, mono=True)
        S = librosa.amplitude_to_db(np.abs(librosa.stft(y[0], n_fft=2048, hop_length=512)), ref=np.max, top_db=80)
        img = librosa.display.specshow(S, sr=sr, hop_length=512, x_axis="time", y_axis="log", ax=ax, cmap="magma")
        ax.set_title(name)
    fig.colorbar(img, ax=axes, format="%+2.0f dB", label="level (dB below the loudest bin)")
    if title:
        import textwrap

        fig.suptitle("\n".join(textwrap.wrap(title, 140)), fontsize=9)  # whole, never cut
    return fig


def _mono(audio):
    import numpy as np

    audio = np.asarray(audio, dtype=np.float32)
    return audio if audio.ndim == 1 else audio.mean(axis=0)


def spectrogram_axes(ax, audio, sr: int, title: str = "", n_fft: int = 2048, hop_length: int = 512):
    """Draw a log-frequency spectrogram (dB re full scale) of (channels, n) or (n,) audio on ``ax``."""
    import librosa
    import librosa.display
    import numpy as np

    y = _mono(audio)
    if y.size < n_fft:
        y = np.pad(y, (0, n_fft - y.size))
    spec = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop_length))
    db = librosa.amplitude_to_db(spec, ref=1.0, top_db=100.0)
    img = librosa.display.specshow(
        db, sr=sr, hop_length=hop_length, x_axis="time", y_axis="log", ax=ax, vmin=-100, vmax=0, cmap="magma"
    )
    ax.set_title(title, fontsize=9)
    ax.set(xlabel="time (s)", ylabel="frequency (Hz)")
    return img


def spectrogram_colorbar(fig, img, axes) -> None:
    """The colour bar of :func:`spectrogram_axes`' images (0 dB = a full-scale sine)."""
    fig.colorbar(img, ax=axes, format="%+.0f dB", label="level (dB re full scale)")


def spectrogram_png(audio, sr: int, title: str = "", width: float = 5.0, height: float = 2.6) -> bytes:
    """A spectrogram as PNG bytes (for an ``ipywidgets.Image`` in the playground)."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    ax = fig.add_subplot(1, 1, 1)
    spectrogram_colorbar(fig, spectrogram_axes(ax, audio, sr, title), ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_tempo_key_results(rows, min_confidence: float = 0.7):
    """03_tempo_key: BPM histogram (kept vs dropped by the confidence rule) and key/scale bars.

    ``rows`` are ``tempo_key.jsonl`` rows. Dropped values (confidence under ``min_confidence``)
    are drawn in grey so you see what the rule throws away.
    """
    from collections import Counter

    from matplotlib.figure import Figure

    rows = list(rows)
    kept = [r["tempo_raw"] for r in rows if r.get("tempo") is not None]
    dropped = [r["tempo_raw"] for r in rows if r.get("tempo") is None and r.get("tempo_raw") is not None]
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    allv = kept + dropped
    if allv:
        lo, hi = int(min(allv)) // 5 * 5, int(max(allv)) // 5 * 5 + 10
        ax1.hist(
            [kept, dropped],
            bins=range(lo, hi, 5),
            stacked=True,
            color=["tab:orange", "lightgrey"],
            label=[f"kept ({len(kept)})", f"dropped ({len(dropped)})"],
        )
        ax1.legend(fontsize=8)
    ax1.set_title(f"tempo_raw, kept when confidence ≥ {min_confidence:g}")
    ax1.set_xlabel("BPM")
    ax1.set_ylabel("clips")
    k_kept = Counter(f"{r['key_raw']} {r['scale_raw']}" for r in rows if r.get("key") is not None)
    k_drop = Counter(f"{r['key_raw']} {r['scale_raw']}" for r in rows if r.get("key") is None and r.get("key_raw"))
    names = sorted(set(k_kept) | set(k_drop), key=lambda k: (-k_kept[k] - k_drop[k], k))
    ax2.bar(
        names,
        [k_kept[n] for n in names],
        color=["tab:blue" if n.endswith("minor") else "tab:green" for n in names],
        label="kept",
    )
    ax2.bar(names, [k_drop[n] for n in names], bottom=[k_kept[n] for n in names], color="lightgrey", label="dropped")
    ax2.set_title("key and scale (blue: minor, green: major)")
    ax2.set_ylabel("clips")
    ax2.tick_params(axis="x", labelrotation=60, labelsize=8)
    ax2.legend(fontsize=8)
    return fig


def plot_focus_tags(before: dict, after: dict, chosen: list[dict], n_before: int, n_after: int):
    """Tag shares before (% of the run's clips) and after (% of a focus epoch's samples): a matplotlib Figure.

    The tags shown are those the subset carries; the chosen ones are marked with ★.
    """
    from matplotlib.figure import Figure

    mark = {(c["family"], c["tag"]) for c in chosen}
    fams = [f for f in FAMILIES if after.get(f)]
    rows = max([len(after[f]) for f in fams] + [1])
    fig = Figure(figsize=(5 * max(len(fams), 1), 0.32 * rows + 1.8), layout="constrained")
    axes = fig.subplots(1, max(len(fams), 1), squeeze=False)[0]
    for ax, f in zip(axes, fams):
        names = list(after[f])[::-1]
        y = list(range(len(names)))
        b = [100.0 * before.get(f, {}).get(t, 0) / max(n_before, 1) for t in names]
        a = [100.0 * after[f][t] / max(n_after, 1) for t in names]
        ax.barh([i + 0.2 for i in y], b, height=0.4, color="tab:gray", label=f"before ({n_before} clips)")
        ax.barh([i - 0.2 for i in y], a, height=0.4, color="tab:orange", label=f"focus ({n_after} samples/epoch)")
        ax.set_yticks(y, [("★ " if (f, t) in mark else "") + t for t in names], fontsize=8)
        ax.set_xlabel("% of clips / samples carrying the tag")
        ax.set_title(f)
        ax.legend(fontsize=7, loc="lower right")
    return fig


# --------------------------------------------------------------------------------------------
# the stage


def plot_training_watch(curves, val, scores, detectors, exported_step=None):
    """05's "is my training going well?" figure: three panels against the training step.

    1. the training loss (``curves``: ``{step, loss}``) and the held-out clips' loss (``val``:
       ``{step, val_loss}``; never trained on): both falling is learning; the held-out one rising
       while the training one falls is overfitting;
    2. each demo's distance to the training clips (``scores``: the rows of ``demo_scores.csv``; 07's
       signal metrics, lower = closer), their mean per step, red crosses where a detector fired,
       grey marks for demos that could not be scored, a dashed line at the exported step;
    3. each detector as a multiple of its threshold (``detectors``: ``{name: threshold}``; over 1 =
       fired; silence as dB under its threshold), log scale.
    """
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 3.8))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    if curves:
        ax1.plot([r["step"] for r in curves], [r["loss"] for r in curves], lw=0.8, color="C0", label="training loss")
    if val:
        ax1.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", ms=4, color="C3", label="held-out loss")
    ax1.set(xlabel="step", ylabel="diffusion loss", title="loss: training vs held-out clips")
    if curves or val:
        ax1.legend(fontsize=8)
    scored = [r for r in scores if r.get("distance") is not None]
    for prompt in sorted({r["prompt"] for r in scored}):
        rows = [r for r in scored if r["prompt"] == prompt]
        ax2.plot([r["step"] for r in rows], [r["distance"] for r in rows], ".-", lw=0.7, alpha=0.6, label=prompt[:32])
    steps = sorted({r["step"] for r in scored})
    if steps:
        mean = [np.mean([r["distance"] for r in scored if r["step"] == s]) for s in steps]
        ax2.plot(steps, mean, color="k", lw=2, label="mean")
    fired = [r for r in scored if r.get("fired")]
    if fired:
        ax2.plot(
            [r["step"] for r in fired], [r["distance"] for r in fired], "x", color="red", ms=9, label="detector fired"
        )
    unscored = [r for r in scores if r.get("distance") is None]
    for r in unscored:
        ax2.axvline(r["step"], color="0.6", lw=3, alpha=0.4)
    if exported_step is not None:
        ax2.axvline(exported_step, color="C2", ls="--", lw=1, label=f"exported (step {exported_step})")
    ax2.set(xlabel="step", ylabel="mean |log metric − training median|", title="demos: distance to your clips")
    if scored or unscored:
        ax2.legend(fontsize=7)
    else:
        ax2.text(0.5, 0.5, "no demos scored", ha="center", va="center", transform=ax2.transAxes)
    for k, (name, threshold) in enumerate(detectors.items()):
        rows = [r for r in scores if r.get(name) is not None]
        if name == "silence":  # dBFS: how far under the silence floor; the ratio of levels
            ys = [10 ** ((threshold - r[name]) / 20) if np.isfinite(r[name]) else 1e3 for r in rows]
        else:
            ys = [max(float(r[name]) / threshold, 1e-3) if threshold > 0 else (1e3 if r[name] else 1e-3) for r in rows]
        ax3.plot([r["step"] for r in rows], ys, "o", ms=4, color=f"C{k}", label=name, alpha=0.8)
    ax3.axhline(1.0, color="red", lw=1, ls="--")
    ax3.set_yscale("log")
    ax3.set(xlabel="step", ylabel="value / threshold (over 1 = fired)", title="defect detectors")
    if scores:
        ax3.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
