"""Tag calibration for stage 02 (notebook ``02_tag``): the producer's ears set per-tag thresholds.

CLAP was not trained on trap (the StableBeaT card says so): its similarity for "snare", "hi-hats"
or "808" is on no common scale, so the same top-k rule tags some clips wrongly. Calibration asks
the producer. A listening widget (:func:`stablebeat_utils.show.calibration_widget`) plays clips
with their tags; the producer marks each tag *right* or *wrong*; the answers are appended to
``RUN_DIR/02_tag/calibration_answers.jsonl``. The same answers can come from a file
(``calibration_file``: JSONL, JSON list, YAML list or CSV with columns ``clip_id, tag, correct``),
so papermill runs work without the widget. Both sources are read, the file's answers after the
widget's; a later answer for the same clip and tag replaces an earlier one (the producer changed
their mind).

**Fitting** (:func:`fit_thresholds`): for each tag with answers, the threshold on its CLAP score
that agrees with the most answers (right answers at or above, wrong ones below), placed in the
middle of the gap between the scores on either side; when two cuts agree with as many answers,
the lower one (a tag the producer confirmed is rather kept than lost). Only right answers →
the lowest right score (every confirmed clip keeps the tag); only wrong answers → just above the
highest wrong score. Saved in ``RUN_DIR/02_tag/calibration.json`` with the answer counts.

**Using it** (:func:`select_family`): when 02 runs again, a calibrated tag is on a clip exactly
when its score reaches the tag's threshold — it no longer competes for the family's ``top_k``
places or obeys ``min_similarity`` / ``max_margin`` — and the uncalibrated tags fill ``top_k``
as before. A clip the producer answered for keeps the producer's answer even where the threshold
cannot separate all answers (it is never dropped silently).

Bad input: answers naming a tag that is in no vocabulary or a clip that is not an ``ok`` clip of
this run are refused with a message naming every unknown name and the file; an answer whose
``correct`` is not yes/no names its line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterable

from . import layout
from .runs import Run, atomic_write_json, atomic_write_text, read_jsonl

STAGE = layout.TAG
ANSWERS_FILE = layout.CALIBRATION_ANSWERS
CALIBRATION_FILE = layout.CALIBRATION
_TRUE = {"true", "yes", "y", "1", "right", "correct", "ok"}
_FALSE = {"false", "no", "n", "0", "wrong", "incorrect"}


class CalibrationError(ValueError):
    """Answers that cannot be used; the message names the file and the problem."""


def _bool(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().casefold()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise CalibrationError(f"{where}: `correct` must be yes/no (true/false, right/wrong), got {value!r}")


def read_answers(path: str | Path) -> list[dict]:
    """``[{"clip_id", "tag", "correct"}]`` from a JSONL, JSON, YAML or CSV file, in file order."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CalibrationError(f"calibration_file {str(path)!r}: no such file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            items = [(i, json.loads(line)) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
        elif suffix == ".csv":
            items = list(enumerate(csv.DictReader(io.StringIO(text)), 2))
        elif suffix in (".json", ".yaml", ".yml"):
            import yaml

            data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
            if isinstance(data, dict):
                data = data.get("answers")
            if not isinstance(data, list):
                raise CalibrationError(f"{path}: expected a list of answers (or `answers:` followed by one)")
            items = list(enumerate(data, 1))
        else:
            raise CalibrationError(f"{path}: use .jsonl, .json, .yaml or .csv (columns clip_id, tag, correct)")
    except (ValueError, ImportError) as exc:
        if isinstance(exc, CalibrationError):
            raise
        raise CalibrationError(f"{path}: cannot be read ({exc})") from exc
    out = []
    for i, item in items:
        where = f"{path}, answer {i}"
        if not isinstance(item, dict) or not {"clip_id", "tag", "correct"} <= set(item):
            raise CalibrationError(f"{where}: needs clip_id, tag and correct, got {item!r}")
        clip, tag = str(item["clip_id"] or "").strip(), str(item["tag"] or "").strip()
        if not clip or not tag:
            raise CalibrationError(f"{where}: empty clip_id or tag")
        out.append({"clip_id": clip, "tag": tag, "correct": _bool(item["correct"], where)})
    return out


def run_answers_path(run_dir: str | Path) -> Path:
    return Run(run_dir).path(STAGE, ANSWERS_FILE)


def save_answers(run_dir: str | Path, answers: Iterable[dict]) -> Path:
    """Append answers (``clip_id``, ``tag``, ``correct``) to ``02_tag/calibration_answers.jsonl``."""
    path = run_answers_path(run_dir)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    new = "".join(
        json.dumps({"clip_id": a["clip_id"], "tag": a["tag"], "correct": bool(a["correct"])}, ensure_ascii=False) + "\n"
        for a in answers
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, old + new)
    return path


def gather_answers(run_dir: str | Path, calibration_file: str = "") -> tuple[list[dict], list[str]]:
    """The widget's answers then the file's, and the sources read."""
    answers, sources = [], []
    path = run_answers_path(run_dir)
    if path.is_file():
        answers += read_answers(path)
        sources.append(str(path))
    if calibration_file:
        answers += read_answers(calibration_file)
        sources.append(str(Path(calibration_file).expanduser()))
    return answers, sources


def check_names(answers: list[dict], tag_family: dict[str, str], clip_ids: Iterable[str], sources: list[str]) -> None:
    """Refuse answers naming unknown tags or clips, naming every one of them."""
    clip_ids = set(clip_ids)
    tags = sorted({a["tag"] for a in answers if a["tag"] not in tag_family})
    clips = sorted({a["clip_id"] for a in answers if a["clip_id"] not in clip_ids})
    if tags or clips:
        parts = []
        if tags:
            parts.append(f"unknown tag(s) {', '.join(map(repr, tags))} (not in the vocabulary)")
        if clips:
            parts.append(f"unknown clip(s) {', '.join(map(repr, clips))} (not an ok clip of 01_segment)")
        raise CalibrationError(
            f"calibration answers ({' + '.join(sources)}): {'; '.join(parts)}. Nothing was "
            "applied: fix or remove those answers and run 02 again."
        )


def latest(answers: list[dict]) -> dict[tuple[str, str], bool]:
    """(clip_id, tag) → the last answer given for it."""
    out: dict[tuple[str, str], bool] = {}
    for a in answers:
        out[(a["clip_id"], a["tag"])] = a["correct"]
    return out


def fit_threshold(scored: list[tuple[float, bool]]) -> float:
    """The score threshold that agrees with the most (score, right?) answers; see the module docstring."""
    scores = sorted({s for s, _ in scored})
    cands = scores + [scores[-1] + 1e-6]

    def agree(th: float) -> int:
        return sum((s >= th) == ok for s, ok in scored)

    best = max(agree(c) for c in cands)
    first = next(i for i, c in enumerate(cands) if agree(c) == best)
    th = cands[first]
    if first > 0 and any(ok for _, ok in scored) and any(not ok for _, ok in scored) and first < len(scores):
        th = (scores[first - 1] + scores[first]) / 2  # the middle of the gap below the best cut
    return round(float(th), 6)


def fit_thresholds(answers: list[dict], rows: list[dict], tag_family: dict[str, str]) -> dict[str, dict]:
    """Per answered tag: threshold, family and the numbers of right and wrong answers used."""
    by_id = {r["clip_id"]: r for r in rows if "error" not in r}
    per_tag: dict[str, list[tuple[float, bool]]] = {}
    for (clip, tag), ok in latest(answers).items():
        row = by_id.get(clip)
        if row is None:
            continue  # an error row has no scores; check_names has refused clips that are not ok clips
        per_tag.setdefault(tag, []).append((float(row["scores"][tag_family[tag]][tag]), ok))
    return {
        tag: {
            "family": tag_family[tag],
            "threshold": fit_threshold(scored),
            "right": sum(ok for _, ok in scored),
            "wrong": sum(not ok for _, ok in scored),
        }
        for tag, scored in sorted(per_tag.items())
    }


def unusable(answers: list[dict], rows: list[dict]) -> list[str]:
    """Answers for clips whose 02 row is an error (no scores to fit on): reported, never dropped silently."""
    errors = {r["clip_id"] for r in rows if "error" in r}
    return sorted(f"{c}/{t}" for (c, t) in latest(answers) if c in errors)


def select_tags(scores: dict[str, float], top_k: int, min_similarity: float, max_margin: float) -> list[str]:
    """The ``top_k`` best tags with ``score >= min_similarity`` and within ``max_margin`` of the best.

    Ties are broken by tag name so the choice never depends on dictionary order.
    """
    if top_k <= 0 or not scores:
        return []
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    best = ranked[0][1]
    return [t for t, s in ranked[:top_k] if s >= min_similarity and best - s <= max_margin]


def select_family(
    scores: dict[str, float], top_k: int, min_similarity: float, max_margin: float, thresholds: dict[str, float]
) -> list[str]:
    """Tags of one family: uncalibrated by the top-k rule, calibrated by their thresholds; best first."""
    free = {t: s for t, s in scores.items() if t not in thresholds}
    chosen = select_tags(free, top_k, min_similarity, max_margin)
    chosen += [t for t, th in thresholds.items() if t in scores and scores[t] >= th]
    return sorted(chosen, key=lambda t: (-scores[t], t))


def save_calibration(
    run_dir: str | Path, thresholds: dict, sources: list[str], n_answers: int, unused: list[str] = ()
) -> Path:
    path = Run(run_dir).path(STAGE, CALIBRATION_FILE)
    atomic_write_json(
        path, {"answers": n_answers, "sources": sources, "thresholds": thresholds, "unused": list(unused)}
    )
    return path


def read_calibration(run_dir: str | Path) -> dict | None:
    path = Run(run_dir).path(STAGE, CALIBRATION_FILE)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def clips_to_review(rows: list[dict], n: int, answered: Iterable[tuple[str, str]] = ()) -> list[dict]:
    """Up to ``n`` tagged clips for the widget, those with the fewest answered tags first (then by id)."""
    done = {}
    for clip, _tag in answered:
        done[clip] = done.get(clip, 0) + 1
    tagged = [r for r in rows if "error" not in r]
    return sorted(tagged, key=lambda r: (done.get(r["clip_id"], 0), r["clip_id"]))[:n]


def read_run_answers(run_dir: str | Path) -> list[dict]:
    path = run_answers_path(run_dir)
    return read_jsonl(path) if path.is_file() else []
