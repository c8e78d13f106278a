"""Training that watches its own sound — notebook ``05_train`` (and ``05b_focus``, which trains with 05's code).

Each demo the training renders is scored as it is made (:class:`DemoWatch`, called by
``train_lightning.DemoCallback`` on the raw generation, before its level is normalised for
listening):

- **distance to the training clips**: 07's four signal metrics
  (:func:`stablebeat_utils.evaluate_metrics.signal_metrics`: spectral centroid, flatness,
  harmonic/percussive ratio, transient sharpness), each as 07 compares them — ``|log(value) −
  median log(training clips)|`` (:func:`stablebeat_utils.evaluate_metrics.log_distance`) — and their
  mean, ``distance``. The training clips' medians are measured once per session on up to
  :data:`REFERENCE_CLIPS` clips (the first :data:`REFERENCE_SECONDS` s of each, chosen by clip id);
- **defects** (:mod:`stablebeat_utils.audio_checks`): non-finite samples, silence, clipping, DC
  offset, clicks; and per step, **collapse** (the demos of different prompts alike).

A demo that cannot be scored (silence, NaN samples) gets a row saying so (``status``), never none.
Rows go to ``RUN_DIR/<stage>/demo_scores.csv`` (rewritten atomically after each step's demos; a
resumed session keeps the earlier rows). A **warning** is printed — and kept for the summary and the
lesson — when a detector fires, or when the mean distance grows over :data:`GROWTH_DEMOS` demo steps
in a row, naming what to try.

The step's **score** (:func:`step_score`, lower is better) picks the best demo step for
``export_from="best"``: the mean distance over the step's demos, or infinity when one of them could
not be scored or a detector fired.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np

from . import audio as audio_io
from . import layout
from . import audio_checks as ac
from .evaluate_metrics import SIGNAL_METRICS, EvaluateError, log_distance, signal_metrics
from .runs import atomic_path

REFERENCE_CLIPS = 12  # training clips measured for the reference (07 measures all; 05 has to be quick)
REFERENCE_SECONDS = 10.0
GROWTH_DEMOS = 3  # warn when the distance grew over this many successive demo steps
CSV_NAME = layout.DEMO_SCORES
DETECTORS = ("non_finite", "silence", "clipping", "dc_offset", "clicks")
COLUMNS = (
    ["step", "file", "prompt", "status", "distance"]
    + [f"{m}_dist" for m in SIGNAL_METRICS]
    + list(SIGNAL_METRICS)
    + list(DETECTORS)
    + ["collapse", "fired"]
)


def reference_medians(paths: list[Path], sr: int = 44100) -> dict[str, float]:
    """Median log of each of 07's signal metrics over the training clips ``paths`` (up to
    :data:`REFERENCE_CLIPS` of them, the first :data:`REFERENCE_SECONDS` s each); a clip that cannot
    be read or measured is left out."""
    values: dict[str, list[float]] = {m: [] for m in SIGNAL_METRICS}
    for path in list(paths)[:REFERENCE_CLIPS]:
        try:
            y, _ = audio_io.load(path, sr=sr)
            m = signal_metrics(y[..., : int(REFERENCE_SECONDS * sr)], sr)
        except (audio_io.AudioError, EvaluateError, OSError):
            continue
        for k, v in m.items():
            if v > 0 and math.isfinite(v):
                values[k].append(math.log(v))
    return {k: float(np.median(v)) for k, v in values.items() if v}


def score_demo(wav: np.ndarray, sr: int, medians: dict[str, float]) -> dict:
    """One demo's row: detectors, 07's metrics, their distances to the training clips, a status.

    ``status`` is ``"scored"``, or says why the metrics could not be measured (``"not scored:
    silent"``, ``"not scored: non-finite samples"``, 07's own reason). ``fired``: the detectors that
    fired, ``;``-separated.
    """
    checks = {c.name: c for c in ac.check(wav, sr)}
    row = {name: checks[name].value for name in DETECTORS}
    fired = [name for name in DETECTORS if checks[name].fired]
    row["fired"] = ";".join(fired)
    if checks["non_finite"].fired:
        return {**row, "status": "not scored: non-finite samples", "distance": None}
    if checks["silence"].fired:
        return {**row, "status": "not scored: silent", "distance": None}
    try:
        metrics = signal_metrics(wav, sr)
    except EvaluateError as exc:
        return {**row, "status": f"not scored: {exc}", "distance": None}
    row.update(metrics)
    dists = []
    for m in SIGNAL_METRICS:
        d = log_distance(metrics[m], medians.get(m))
        row[f"{m}_dist"] = d
        if d is not None:
            dists.append(d)
    row["distance"] = float(np.mean(dists)) if dists else None
    row["status"] = "scored" if dists else "not scored: no training-clip reference"
    return row


def step_score(rows: list[dict]) -> float:
    """The score of one demo step (lower is better): the mean ``distance`` of its demos; infinity
    when a demo could not be scored or any detector (collapse included) fired."""
    if not rows or any(r.get("fired") or r.get("distance") is None for r in rows):
        return math.inf
    return float(np.mean([r["distance"] for r in rows]))


class DemoWatch:
    """Scores the demos of one training session, step by step (see the module docstring)."""

    def __init__(self, stage_dir: Path, clip_paths: list[Path], stage: str = layout.TRAIN, sr: int = 44100):
        self.stage_dir, self.stage, self.sr = Path(stage_dir), stage, sr
        self.clip_paths = list(clip_paths)
        self.medians: dict[str, float] | None = None
        self.csv_path = self.stage_dir / CSV_NAME
        self.rows = read_scores(self.csv_path)
        self.warnings: list[str] = []
        self._pending: list[tuple[dict, np.ndarray]] = []

    def add(self, step: int, file: str, prompt: str, wav: np.ndarray, sr: int) -> dict:
        """Score one demo (the raw generation) of ``step``; :meth:`end_step` closes the step."""
        if self.medians is None:
            self.medians = reference_medians(self.clip_paths, self.sr)
        row = {"step": int(step), "file": file, "prompt": prompt, **score_demo(wav, sr, self.medians)}
        self._pending.append((row, ac.band_spectrum(np.nan_to_num(wav), sr)))
        return row

    def end_step(self, step: int) -> float:
        """Collapse across the step's demos, warnings, the CSV; returns the step's :func:`step_score`."""
        rows = [r for r, _ in self._pending]
        spectra = [s for r, s in self._pending if r["status"] == "scored"]
        prompts = {r["prompt"] for r, _ in self._pending if r["status"] == "scored"}
        self._pending = []
        alike = ac.collapse(spectra) if len(prompts) > 1 else None
        for r in rows:
            r["collapse"] = None if alike is None else alike.value
            if alike is not None and alike.fired:
                r["fired"] = ";".join(x for x in (r["fired"], "collapse") if x)
        files = {r["file"] for r in rows}
        self.rows = [r for r in self.rows if r["file"] not in files] + rows
        self.rows.sort(key=lambda r: (int(r["step"]), str(r["file"])))
        self._warn(step, rows)
        self._write()
        return step_score(rows)

    def _warn(self, step: int, rows: list[dict]) -> None:
        for r in rows:
            if r["status"] != "scored":
                self._say(f"demo {r['file']} ({r['prompt'][:40]!r}) could not be scored: {r['status'][12:]}")
            for name in filter(None, str(r.get("fired") or "").split(";")):
                self._say(f"step {step}: {name} in {r['file']} — {ac.ADVICE[name]}")
        means = step_distances(self.rows)
        recent = [d for _, d in means[-(GROWTH_DEMOS + 1) :]]
        if len(recent) == GROWTH_DEMOS + 1 and all(b > a for a, b in zip(recent, recent[1:])):
            self._say(
                f"step {step}: the demos' distance to your training clips grew over the last {GROWTH_DEMOS} demos "
                f"({' → '.join(f'{d:.3f}' for d in recent)}) — the model may be drifting or overfitting: "
                "try a lower lr, fewer epochs, or keep the best demo's weights (export_from='best')"
            )

    def _say(self, text: str) -> None:
        msg = f"{self.stage}: WARNING {text}"
        self.warnings.append(msg)
        print(msg, file=sys.stderr, flush=True)

    def _write(self) -> None:
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.csv_path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
                w.writeheader()
                for r in self.rows:
                    w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})


def read_scores(path: Path) -> list[dict]:
    """The rows of a ``demo_scores.csv`` (numbers as floats, blanks as None); [] when there is none."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            row: dict = {}
            for k, v in r.items():
                if k in ("file", "prompt", "status", "fired"):
                    row[k] = v
                elif v in ("", None):
                    row[k] = None
                else:
                    row[k] = int(float(v)) if k == "step" else float(v)
            out.append(row)
    return out


def step_distances(rows: list[dict]) -> list[tuple[int, float]]:
    """``(step, mean distance)`` per demo step, over the demos that were scored."""
    by: dict[int, list[float]] = {}
    for r in rows:
        if r.get("distance") is not None:
            by.setdefault(int(r["step"]), []).append(float(r["distance"]))
    return [(s, float(np.mean(v))) for s, v in sorted(by.items())]


def warnings_of(rows: list[dict]) -> list[str]:
    """The detector findings of a finished run's CSV, one line per demo that fired or was not scored."""
    out = []
    for r in rows:
        fired = [x for x in str(r.get("fired") or "").split(";") if x]
        if fired or r.get("status") != "scored":
            what = ", ".join(fired) or r.get("status")
            advice = "; ".join(ac.ADVICE[x] for x in fired) if fired else "listen to it"
            out.append(f"step {r['step']} {r['file']}: {what} — {advice}")
    return out
