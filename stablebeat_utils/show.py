"""Looking at results in a notebook: tables, plots, audio players.

Used by every notebook, never by a stage (stages draw the figures they save with :mod:`plots`).
With ``stablebeat_utils.playground`` the only module that imports IPython; functions here return
objects a notebook displays, and never compute stage results.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from .clipfacts import FAMILIES
from .clipstore import clip_path
from .plots import (  # noqa: F401 (the notebooks draw these inline)
    plot_clip_scores,
    plot_tag_frequency,
    plot_tempo_key_results,
    spectrogram_axes,
    spectrogram_colorbar,
)


#: where the notebook that displays lies (players link their file relative to it); None: the kernel's
#: working folder, which is the notebook's own in JupyterLab, Colab and nbval. ``lesson.settle`` sets
#: it under the runner, whose kernels work in the run folder while the notebook lies in RUN_DIR/notebooks.
NOTEBOOK_DIR: Path | None = None


def notebook_dir() -> Path:
    return Path(NOTEBOOK_DIR) if NOTEBOOK_DIR is not None else Path.cwd()


class Player:
    """An HTML5 player carrying its audio as MP3 in the ``<audio>`` element's own ``src`` — which
    JupyterLab keeps in an untrusted (e.g. executed) notebook, where it strips ``<source src>``
    (IPython's ``Audio`` puts its data there: silent players) — and a link to the file relative to
    the notebook (JupyterLab opens it from its server).

    MP3 rather than Ogg: every browser plays it; ~10x smaller than WAV in an executed notebook.
    Encoded by libsndfile (soundfile), 1-s blocks (see ``compat.write_blocks``).
    """

    mimetype = "audio/mpeg"

    def __init__(self, path: str | os.PathLike):
        import io

        from . import audio as _audio
        from .compat import write_blocks

        self.path = Path(path).absolute()
        data, sr = _audio.load(path)
        buf = io.BytesIO()
        write_blocks(buf, data, sr, format="MP3", subtype="MPEG_LAYER_III")
        self.data = buf.getvalue()

    def link(self) -> str:
        """The file's path relative to the notebook (URL-quoted, ``/`` separators)."""
        from urllib.parse import quote

        return quote(Path(os.path.relpath(self.path, notebook_dir().absolute())).as_posix())

    def _repr_html_(self) -> str:
        import base64
        import html

        b64 = base64.b64encode(self.data).decode("ascii")
        name = html.escape(self.path.name)
        return (
            f'<audio controls preload="metadata" title="{name}" src="data:{self.mimetype};base64,{b64}">'
            "Your browser does not support the audio element.</audio> "
            f'<a href="{html.escape(self.link())}" target="_blank" title="the file, from where the notebook lies">'
            f"<small>{name}</small></a>"
        )

    def __repr__(self) -> str:
        return f"<audio player: {self.path.name}>"


def embedded_audio(path: str | os.PathLike) -> Player:
    """An audio player for a file: embedded as MP3, and linked relative to the notebook (:class:`Player`)."""
    return Player(path)


def audio_player(path: str | os.PathLike, label: str | None = None):
    """An HTML5 audio player for a file (embedded, so executed notebooks keep it)."""
    from IPython.display import HTML, display

    if label:
        display(HTML(f"<b>{label}</b>"))
    return embedded_audio(path)


class Table:
    """A table that says how many rows it has, how many it shows and where all of them are.

    Cells are never cut (no "…"); ``scroll`` puts the rows in a box with its own scroll bar. ``df`` is
    the pandas DataFrame of the rows shown.
    """

    def __init__(self, df, total: int, source: str | None = None, scroll: bool = False):
        self.df, self.total, self.source, self.scroll = df, total, source, scroll

    def caption(self) -> str:
        where = f" — all of them in {self.source}" if self.source else ""
        if len(self.df) < self.total:
            more = self.total - len(self.df)
            return f"{len(self.df)} of {self.total} rows shown, {more} more row{'s' if more != 1 else ''}{where}"
        return f"{self.total} row{'s' if self.total != 1 else ''}" + (f" (from {self.source})" if self.source else "")

    def _repr_html_(self) -> str:
        import html

        body = self.df.to_html(index=False, escape=True, na_rep="")
        if self.scroll:
            body = f'<div style="max-height:26em;overflow:auto;border:1px solid #ddd">{body}</div>'
        return f"{body}<p><i>{html.escape(self.caption())}</i></p>"

    def __repr__(self) -> str:
        import pandas as pd

        with pd.option_context("display.max_colwidth", None, "display.width", 200):
            return f"{self.df.to_string(index=False)}\n{self.caption()}"

    def __len__(self) -> int:
        return len(self.df)


def table(rows, columns=None, max_rows: int = 20, source: str | os.PathLike | None = None, scroll: bool = False):
    """The rows (dicts, or a DataFrame) as a :class:`Table` (optionally only ``columns``): the first ``max_rows``
    (0: all), with a caption that counts them and names ``source``, the file that holds them all."""
    import pandas as pd

    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]]
    shown = df.head(max_rows) if max_rows else df
    return Table(shown, len(df), str(source) if source else None, scroll)


def whole_prompts(rows, n: int = 3):
    """A sample of ``n`` training prompts, each whole (04_prompts), as a list."""
    import html

    from IPython.display import HTML

    items = "".join(
        f"<li><code>{html.escape(str(r['clip_id']))}</code> ({html.escape(str(r.get('prompt_source', '')))}): "
        f"{html.escape(str(r['prompt']))}</li>"
        for r in list(rows)[:n]
    )
    return HTML(f"<p>{min(n, len(rows))} of {len(rows)} training prompts, whole:</p><ul>{items}</ul>")


# --------------------------------------------------------------------------------------------
# 04_prompts: the tag space (figures drawn from numbers that tag_space.py computed)
# Plain matplotlib Figures (no pyplot): no global state, no GUI backend needed, safe in workers.


def image(path: str | os.PathLike):
    """A PNG written by a stage, for display in the notebook."""
    from IPython.display import Image

    return Image(filename=str(Path(path)))


# --------------------------------------------------------------------------------------------
# 02_tag: one clip's CLAP scores, and clips with their tags and a player


def clips_with_tags(run_dir: str | os.PathLike, rows, n: int = 2):
    """HTML of the first ``n`` tagged clips: their tags and an embedded audio player each."""
    import html

    from IPython.display import HTML

    parts = []
    for row in [r for r in rows if "error" not in r][:n]:
        tags = "<br>".join(
            f"<i>{fam}</i>: {html.escape(', '.join(row.get(f'{fam}_tags', [])) or '—')}" for fam in FAMILIES
        )
        player = embedded_audio(clip_path(run_dir, row["path"]))._repr_html_()
        parts.append(f"<div style='margin-bottom:1em'><b>{html.escape(row['clip_id'])}</b><br>{tags}<br>{player}</div>")
    return HTML("".join(parts) or "<i>no tagged clip</i>")


# --------------------------------------------------------------------------------------------
# 07_evaluate: base vs fine-tune (figures drawn from the numbers evaluate.py measured)


# -- 06_generate: spectrograms and side-by-side players ---------------------------------------


def spectrogram_grid(rows, run_dir, row_key: str = "prompt_idx", col_key: str = "model", max_rows: int = 7):
    """A figure of spectrograms: one row per ``row_key`` (prompt), one column per ``col_key`` (model).

    ``rows`` are generation rows (``path`` relative to ``run_dir``), e.g. from
    ``generate.load_generations(run_dir)``.
    """
    import matplotlib.pyplot as plt

    from .audio import load

    rows = list(rows)
    row_ids = sorted({r[row_key] for r in rows})[:max_rows]
    col_ids = sorted({r[col_key] for r in rows})
    fig, axes = plt.subplots(
        len(row_ids),
        len(col_ids),
        figsize=(5 * len(col_ids) + 1, 2.4 * len(row_ids)),
        squeeze=False,
        layout="constrained",
    )
    by = {(r[row_key], r[col_key]): r for r in rows}
    img = None
    for i, rid in enumerate(row_ids):
        for j, cid in enumerate(col_ids):
            ax = axes[i][j]
            r = by.get((rid, cid))
            if r is None:
                ax.axis("off")
                continue
            audio, sr = _load_any(load, Path(run_dir) / r["path"])
            img = spectrogram_axes(ax, audio, sr, f"{cid} · prompt {rid} · seed {r.get('seed')}")
    if img is not None:
        spectrogram_colorbar(fig, img, axes)
    n_prompts = len({r[row_key] for r in rows})
    if n_prompts > len(row_ids):
        fig.suptitle(f"the first {len(row_ids)} of {n_prompts} prompts")
    return fig


def _load_any(load, path):
    out = load(path)
    return (out.audio, out.sr) if hasattr(out, "audio") else out


def audio_grid(
    rows, run_dir, row_key: str = "prompt_idx", col_key: str = "model", text_key: str = "prompt", max_rows: int = 7
):
    """An HTML table of embedded audio players: one row per prompt, the models side by side."""
    import html

    from IPython.display import HTML

    rows = list(rows)
    row_ids = sorted({r[row_key] for r in rows})[:max_rows]
    col_ids = sorted({r[col_key] for r in rows})
    by = {(r[row_key], r[col_key]): r for r in rows}
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in col_ids)
    body = []
    for rid in row_ids:
        any_row = next(by[(rid, c)] for c in col_ids if (rid, c) in by)
        cells = []
        for cid in col_ids:
            r = by.get((rid, cid))
            if r is None:
                cells.append("<td>—</td>")
                continue
            player = embedded_audio(Path(run_dir) / r["path"])._repr_html_()
            cells.append(f"<td>{player}<br><small>seed {r.get('seed')} · {r.get('duration')} s</small></td>")
        body.append(
            f"<tr><td style='max-width:22em;text-align:left'><b>{rid}</b> "
            f"{html.escape(str(any_row.get(text_key, '')))}</td>{''.join(cells)}</tr>"
        )
    n_prompts = len({r[row_key] for r in rows})
    more = f", the first {len(row_ids)} of {n_prompts} prompts shown" if n_prompts > len(row_ids) else ""
    count = f"<p><i>{len(row_ids)} rows: {n_prompts} prompts × {len(col_ids)} models{more}</i></p>"
    return HTML(f"<table><tr><th>prompt</th>{head}</tr>{''.join(body)}</table>{count}")


# --- 03_tempo_key -------------------------------------------------------------------------------


def tempo_key_kept_table(rows, source: str | None = None):
    """03_tempo_key: per clip, raw value, confidence and whether the 0.7 rule kept it (a counted :class:`Table`)."""
    import pandas as pd

    out = []
    for r in rows:
        out.append(
            {
                "clip_id": r["clip_id"],
                "BPM (raw)": r.get("tempo_raw"),
                "tempo conf.": r.get("tempo_confidence"),
                "tempo kept": "yes" if r.get("tempo") is not None else "no",
                "key (raw)": f"{r['key_raw']} {r['scale_raw']}" if r.get("key_raw") else None,
                "key conf.": r.get("key_confidence"),
                "key kept": "yes" if r.get("key") is not None else "no",
                "error": r.get("error"),
            }
        )
    return Table(pd.DataFrame(out), len(out), source)


def segment_plot(analysis, rows=None, title: str | None = None):
    """01_segment: a track's loudness and onset strength, its bar lines and the chosen segments.

    ``analysis`` comes from :func:`stablebeat_utils.segment.analyse_file`; ``rows`` (optional) are
    the track's ``segments.jsonl`` rows, drawn as the saved segments (else ``analysis.segments``).
    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    a = analysis
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 4.5), sharex=True)
    ax1.plot(a.frame_times, a.rms_db, lw=0.5, color="0.6", label="RMS (dBFS)")
    ax1.plot(a.frame_times, a.level_db[: len(a.frame_times)], lw=1.2, color="C0", label="1 s loudness")
    ax1.axhline(a.loud_db, ls=":", color="C0", lw=0.8)
    ax1.axvspan(0, a.usable[0], color="0.85", zorder=0)
    ax1.axvspan(a.usable[1], a.duration, color="0.85", zorder=0, label="fade / silence (not used)")
    ax1.set_ylabel("dBFS")
    ax1.set_ylim(max(float(np.min(a.rms_db)), a.loud_db - 60), a.loud_db + 10)
    ax2.plot(a.frame_times, a.onset / (np.max(a.onset) or 1), lw=0.6, color="C2", label="onset strength")
    for t in a.bars:
        ax2.axvline(t, color="C3", lw=0.5, alpha=0.6)
    ax2.set_xlabel("seconds in the source")
    ax2.set_yticks([])
    segs = [(r["start"], r["start"] + r["duration"]) for r in rows if r.get("status") == "ok"] if rows else a.segments
    for i, (s, e) in enumerate(segs):
        for ax in (ax1, ax2):
            ax.axvspan(s, e, color="C1", alpha=0.25, label="segment" if (i == 0 and ax is ax1) else None)
        ax2.text(s, 1.02, f"#{i} {s:.2f} s", color="C1", fontsize=8, va="bottom")
    ax1.legend(loc="lower center", fontsize=7, ncol=4)
    tempo = f", {a.tempo:.0f} BPM" if a.tempo else ""
    ax1.set_title(title or f"segments cut on {a.cut_on} boundaries (red lines: bars{tempo})")
    fig.tight_layout()
    return fig


def training_curves(summary_or_csvs, title: str | None = None, smooth: int = 0):
    """Loss and learning rate per step of a 05_train run (``train.run``'s summary, or its CSV paths).

    Each session after a disconnect writes its own ``logs/version_N/metrics.csv``; they are merged
    by step (:func:`stablebeat_utils.train.read_curves`). ``smooth`` > 1 overlays a moving average
    of the loss. Returns the matplotlib Figure.
    """
    import numpy as np
    from matplotlib.figure import Figure  # not pyplot: the inline backend would show it a second time

    from .train import read_curves

    csvs = summary_or_csvs.get("metrics_csv", []) if isinstance(summary_or_csvs, dict) else summary_or_csvs
    rows = read_curves(csvs)
    fig = Figure(figsize=(11, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    if not rows:
        ax1.text(0.5, 0.5, "no steps logged yet", ha="center", va="center", transform=ax1.transAxes)
    else:
        steps = np.array([r["step"] for r in rows])
        loss = np.array([r["loss"] for r in rows])
        ax1.plot(steps, loss, lw=0.8, marker="o" if len(rows) < 30 else None, ms=3, color="C0", label="loss")
        if smooth and smooth > 1 and len(loss) >= smooth:
            avg = np.convolve(loss, np.ones(smooth) / smooth, mode="valid")
            ax1.plot(steps[smooth - 1 :], avg, color="C3", lw=1.5, label=f"mean of {smooth}")
        ax2.plot(steps, [r["lr"] for r in rows], color="C1", lw=1.2)
        ax1.legend(fontsize=8)
        if len(rows) < 30:  # a demo's handful of steps: say so rather than let 4 points pass for a trend
            ax1.text(
                0.5,
                0.02,
                f"only {len(rows)} logged step{'s' if len(rows) != 1 else ''}: too few for a trend "
                "(a real run logs thousands)",
                ha="center",
                va="bottom",
                fontsize=8,
                color="0.35",
                transform=ax1.transAxes,
            )
    ax1.set(xlabel="step", ylabel="diffusion loss (MSE, v-objective)", title="training loss")
    ax2.set(xlabel="step", ylabel="learning rate", title="learning rate (InverseLR warm-up)")
    ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def training_watch(summary: dict):
    """05's (and 05b's) "is my training going well?": the warnings of the run's demo scores, then
    the figure of :func:`stablebeat_utils.plots.plot_training_watch` (training vs held-out loss, the
    demos' distance to the training clips, the defect detectors against their thresholds)."""
    from IPython.display import HTML, display

    from . import audio_checks as ac
    from .plots import plot_training_watch
    from .train import read_curves, read_val_curve
    from .train_watch import read_scores

    csvs = summary.get("metrics_csv", [])
    scores = read_scores(summary["demo_scores_csv"]) if summary.get("demo_scores_csv") else []
    warnings = summary.get("demo_warnings") or []
    if not scores:
        display(HTML("<i>no demos were scored (demo_every = 0, or fewer steps than demo_every)</i>"))
    elif warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        display(HTML(f"<b>⚠ {len(warnings)} demo(s) need a listen:</b><ul>{items}</ul>"))
    else:
        display(HTML(f"<b>✔ no detector fired</b> on {len(scores)} demo(s); every one was scored."))
    thresholds = {
        "non_finite": 0.0,
        "silence": ac.SILENCE_DBFS,
        "clipping": ac.CLIP_FRACTION,
        "dc_offset": ac.DC_RATIO,
        "clicks": ac.CLICK_RATE,
    }
    return plot_training_watch(
        read_curves(csvs), read_val_curve(csvs), scores, thresholds, exported_step=summary.get("exported_step")
    )


def training_demos(summary: dict, last: int = 4):
    """Audio players for the newest demo generations of a 05_train run (its ``summary["demos"]``)."""
    from IPython.display import HTML, display

    paths = list(summary.get("demos") or [])[-last:]
    if not paths:
        return HTML("<i>no demo generations yet (demo_every = 0, or fewer steps than demo_every)</i>")
    for path in paths:
        display(audio_player(path, label=Path(path).name))
    return None


# --- 01_segment: whole-lesson views (loops live here, not in notebook cells) -----------------------


def segment_plots(run_dir, rows, segments_per_track: int, min_seconds: float, max_seconds: float, n: int = 2):
    """Display :func:`segment_plot` for the first ``n`` sources that gave clips (re-analysed for the plot)."""
    from IPython.display import display

    from . import segment

    ok = [r for r in rows if r["status"] == "ok"]
    for source in sorted({r["source"] for r in ok})[:n]:
        analysis = segment.analyse_file(
            segment.source_path(run_dir, source), segments_per_track, min_seconds, max_seconds
        )
        fig = segment_plot(analysis, [r for r in ok if r["source"] == source], title=source)
        display(fig)
        import matplotlib.pyplot as plt

        plt.close(fig)  # pyplot figure: shown once, not again at the end of the cell


def clip_players(run_dir, rows, n: int = 2):
    """HTML with an embedded player for the first ``n`` ok clips, labelled with source and start."""
    import html

    from IPython.display import HTML

    parts = []
    for r in [r for r in rows if r.get("status", "ok") == "ok"][:n]:
        label = f"{r['clip_id']} — {r.get('source', '')} from {float(r.get('start', 0)):.2f} s"
        player = embedded_audio(clip_path(run_dir, r["path"]))._repr_html_()
        parts.append(f"<div><b>{html.escape(label)}</b><br>{player}</div>")
    return HTML("".join(parts) or "<i>no clip</i>")


# --------------------------------------------------------------------------------------------
# 02_tag: the producer's ears calibrate the tags (answers → tag_calibration → thresholds)


class CalibrationPanel:
    """A listening widget: ``n`` clips, each with its player and a right/wrong choice per tag.

    ``save()`` (the *Save answers* button) appends the marked tags to
    ``RUN_DIR/02_tag/calibration_answers.jsonl``; run 02 again to fit and apply the thresholds.
    ``choices`` maps (clip_id, tag) → its ``ToggleButtons`` (value ``"?"``, ``"right"`` or ``"wrong"``).
    """

    def __init__(self, run_dir: str | os.PathLike, rows, n: int = 6, players: bool = True):
        import html

        import ipywidgets as w

        from . import tag_calibration

        self.run_dir = run_dir
        answered = [(a["clip_id"], a["tag"]) for a in tag_calibration.read_run_answers(run_dir)]
        self.clips = tag_calibration.clips_to_review(list(rows), n, answered)
        self.choices: dict[tuple[str, str], object] = {}
        boxes = []
        for row in self.clips:
            out = w.Output()
            if players:
                with out:
                    from IPython.display import display

                    display(embedded_audio(clip_path(run_dir, row["path"])))
            toggles = []
            for fam in FAMILIES:
                for tag in row.get(f"{fam}_tags", []):
                    t = w.ToggleButtons(
                        options=["?", "right", "wrong"],
                        value="?",
                        description=tag,
                        style={"description_width": "10em", "button_width": "5em"},
                    )
                    self.choices[(row["clip_id"], tag)] = t
                    toggles.append(t)
            boxes.append(w.VBox([w.HTML(f"<b>{html.escape(row['clip_id'])}</b>"), out, *toggles]))
        self.status = w.HTML("Mark what you hear, then save.")
        button = w.Button(description="Save answers", button_style="primary")
        button.on_click(lambda _b: self.save())
        self.button = button
        self.widget = w.VBox([*boxes, w.HBox([button, self.status])])

    def answers(self) -> list[dict]:
        return [
            {"clip_id": c, "tag": t, "correct": tb.value == "right"}
            for (c, t), tb in self.choices.items()
            if tb.value != "?"
        ]

    def save(self) -> int:
        from . import tag_calibration

        answers = self.answers()
        if answers:
            path = tag_calibration.save_answers(self.run_dir, answers)
            for (c, t), tb in self.choices.items():
                if tb.value != "?":
                    tb.value = "?"  # saved: a second click does not append the same answers again
            self.status.value = f"saved {len(answers)} answer(s) to {path.name} — run 02_tag again to apply them"
        else:
            self.status.value = "nothing marked yet"
        return len(answers)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def calibration_widget(run_dir: str | os.PathLike, rows, n: int = 6) -> CalibrationPanel:
    """The listening widget of notebook 02 (see :class:`CalibrationPanel`)."""
    return CalibrationPanel(run_dir, rows, n)
