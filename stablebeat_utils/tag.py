"""Zero-shot tags by CLAP similarity — the logic behind ``notebooks/02_tag.ipynb``.

Every clip of ``01_segment`` gets instrument, mood and genre tags, as on the StableBeaT card: the
clip's CLAP audio embedding is compared (cosine similarity) with the CLAP text embedding of every
entry of three curated vocabularies (``data/vocab/{instruments,moods,genres}.yaml``), and the best
``top_k_<family>`` entries above a floor become the clip's tags. All scores are kept.

How a clip becomes one embedding (deliberate, and the same for every backend):

- the clip is decoded, folded to mono and resampled to CLAP's rate (48 kHz for LAION CLAP);
- it is cut into non-overlapping windows of ``window_seconds`` (CLAP's own input is 10 s;
  a longer window would be randomly cropped by CLAP's feature extractor, so it is refused);
- a last, partial window is kept when it holds at least half a window of audio (CLAP pads it
  the way it was trained: ``repeatpad``), and dropped otherwise — a 2 s tail padded to 10 s would
  weigh a fragment like a full window. A clip shorter than one window is one padded window;
- each window's embedding is L2-normalised, the windows are averaged with weights equal to the
  seconds of audio they hold, and the mean is L2-normalised again (the mean of unit vectors is
  shorter than one). Cosine similarity is then a plain dot product.

Backends: ``transformers`` (default) runs LAION's checkpoints through ``transformers.ClapModel``
(``models.load_clap``; ``tiny:clap`` offline). ``laion_clap`` runs the card's own package when it
is installed; it is imported only when chosen (it imports torchvision and downloads tokenizers at
import time, which hangs offline).

Outputs: ``RUN_DIR/02_tag/tags.jsonl`` (one row per ``ok`` clip of 01_segment, sorted by
``clip_id``) and ``RUN_DIR/02_tag/text_embeddings/<key>.npz`` (the vocabulary's text embeddings,
computed once per model + vocabulary).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from . import layout
from . import preflight_inference
from .clap import (  # noqa: F401  (02's names for the shared CLAP scoring: tag.make_backend & co.)
    BACKENDS,
    LAION_CLAP_CHECKPOINTS,
    MIN_TAIL,
    LaionClapBackend,
    TagError,
    TransformersClap,
    cosine_scores,
    l2_normalize,
    make_backend,
    pool_windows,
    window_bounds,
)
from .clipfacts import FAMILIES, Entry, load_vocab
from .clipstore import ClipFolder, clip_path
from .runs import JsonlLog, Run, atomic_path, atomic_write_text, iter_jsonl, read_jsonl
from . import stage
from .stage import begin
from .tag_calibration import select_family, select_tags

STAGE = layout.TAG
SCORE_DECIMALS = 6


def vocab_hash(vocab: dict[str, list[Entry]]) -> str:
    """A short hash of the families' tags and texts (keys the text-embedding cache and the rows)."""
    payload = json.dumps({f: [[e.tag, e.text] for e in vocab[f]] for f in FAMILIES}, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------


def text_embeddings(clap, vocab: dict[str, list[Entry]], cache_dir: str | Path) -> tuple[dict[str, np.ndarray], bool]:
    """Each family's text embeddings ``(n_entries, dim)``, from the cache when it has them.

    The cache file is keyed by backend, model, the model's weights fingerprint and the vocabulary.
    Returns ``(embeddings, from_cache)``.
    """
    key = hashlib.sha256(
        json.dumps([clap.name, clap.source, clap.fingerprint(), vocab_hash(vocab)]).encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                cached = {f: data[f] for f in FAMILIES}
            if all(cached[f].shape[0] == len(vocab[f]) for f in FAMILIES):
                return cached, True
        except Exception:  # a damaged cache file is recomputed, never trusted
            pass
    out = {f: clap.embed_text([e.text for e in vocab[f]]) for f in FAMILIES}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **out)
    return out, False


def _embed_key(backend: str, clap_model: str, vocab: dict[str, list[Entry]], window_seconds: float) -> str:
    """What the scores of a row depend on; rows with another key are recomputed."""
    payload = json.dumps([backend, clap_model, vocab_hash(vocab), float(window_seconds), MIN_TAIL])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _score_row(
    pooled: np.ndarray, text: dict[str, np.ndarray], vocab: dict[str, list[Entry]]
) -> dict[str, dict[str, float]]:
    return {
        f: {e.tag: round(float(s), SCORE_DECIMALS) for e, s in zip(vocab[f], cosine_scores(pooled, text[f]))}
        for f in FAMILIES
    }


def _apply_selection(
    row: dict,
    top_k: dict[str, int],
    min_similarity: float,
    max_margin: float,
    calibration: dict | None = None,
    answers: dict | None = None,
) -> dict:
    """The row's tags from its scores; with ``calibration`` (tag → fitted threshold entry, see
    :mod:`stablebeat_utils.tag_calibration`) and the producer's ``answers`` ((clip, tag) → right?)."""
    row = dict(row)
    for f in FAMILIES:
        if not calibration:
            row[f"{f}_tags"] = select_tags(row["scores"][f], top_k[f], min_similarity, max_margin)
            continue
        th = {t: c["threshold"] for t, c in calibration.items() if c["family"] == f}
        tags = select_family(row["scores"][f], top_k[f], min_similarity, max_margin, th)
        for (clip, tag), ok in (answers or {}).items():  # the producer's own answer for this clip wins
            if clip == row["clip_id"] and tag in row["scores"][f]:
                tags = [t for t in tags if t != tag] + ([tag] if ok else [])
        row[f"{f}_tags"] = sorted(tags, key=lambda t: (-row["scores"][f][t], t))
    return row


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _load_windows(run: Run, seg: dict, sr: int, window_seconds: float) -> tuple[list[np.ndarray], list[float], float]:
    from .audio import load

    rel = seg.get("path")
    if not rel:
        raise TagError("the segments row has no `path`")
    audio, _ = load(clip_path(run.root, rel), sr=sr, mono=True)
    mono = audio[0]
    if not np.all(np.isfinite(mono)):
        raise TagError("the audio holds NaN or infinite samples")
    bounds = window_bounds(len(mono), sr, window_seconds)
    windows = [mono[a:b] for a, b in bounds]
    return windows, [(b - a) / sr for a, b in bounds], len(mono) / sr


def _validate(params: dict) -> None:
    p = params
    """What the settings' own choices and bounds (checked before ``run``'s body) cannot say."""
    if not p["clap_model"]:
        raise TagError("clap_model is empty: give a hub id (laion/larger_clap_music), a local folder or tiny:clap")


def _ok_segments(run_: Run) -> list[dict]:
    """01's ``ok`` rows, one per ``clip_id``, sorted; a missing or broken ``segments.jsonl`` refused by name."""
    seg_path = run_.path(layout.SEGMENT, layout.SEGMENTS)
    if not seg_path.is_file():
        raise TagError(f"{seg_path}: not found — run 01_segment first (this stage tags its clips)")
    try:
        # what this stage uses of a row (at 40,000 clips the whole rows are ~90 MiB)
        segments = [
            {k: r[k] for k in ("clip_id", "path") if k in r} for r in iter_jsonl(seg_path) if r.get("status") == "ok"
        ]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TagError(f"{seg_path}: not a JSONL file ({exc})") from exc
    bad = [i for i, r in enumerate(segments, 1) if not isinstance(r.get("clip_id"), str)]
    if bad:
        raise TagError(f"{seg_path}: ok row {bad[0]} has no text `clip_id`")
    return sorted({r["clip_id"]: r for r in segments}.values(), key=lambda r: r["clip_id"])


def _tag_chunk(
    clap, run_: Run, chunk: list[dict], base: dict, text: dict, vocab: dict, params: dict, top_k: dict
) -> tuple[list[dict], float]:
    """The rows of one chunk of clips (an unreadable clip is an ``error`` row) and the seconds of audio read."""
    rows, loaded = [], []
    for seg in chunk:
        head = {"clip_id": seg["clip_id"], "path": seg.get("path"), **base}
        try:
            windows, weights, dur = _load_windows(run_, seg, clap.sampling_rate, params["window_seconds"])
            loaded.append((head, windows, weights, dur))
        except Exception as exc:  # one bad clip never stops the batch
            rows.append({**head, "error": f"{seg.get('path')}: {exc}"})
    flat = [w for _, ws, _, _ in loaded for w in ws]
    embs = [clap.embed_audio(b) for b in _chunks(flat, params["batch_size"])] if flat else []
    embs = np.concatenate(embs) if embs else np.zeros((0, 0), np.float32)
    i, seconds = 0, 0.0
    for head, windows, weights, dur in loaded:
        pooled = pool_windows(embs[i : i + len(windows)], weights)
        i += len(windows)
        seconds += dur
        row = {
            **head,
            "duration": round(dur, 3),
            "n_windows": len(windows),
            **{f"{f}_tags": [] for f in FAMILIES},
            "scores": _score_row(pooled, text, vocab),
        }
        rows.append(_apply_selection(row, top_k, params["min_similarity"], params["max_margin"]))
    return rows, seconds


def _calibrate(
    run_: Run,
    rows: list[dict],
    answers,
    answer_sources,
    tag_family: dict,
    top_k: dict,
    min_similarity: float,
    max_margin: float,
) -> tuple[list[dict], dict | None, list[str]]:
    """Fit per-tag thresholds on the scores and apply them (and the producer's answers) to every row;
    without answers, no calibration file is left behind."""
    from . import tag_calibration as calib

    if not answers:
        run_.path(STAGE, calib.CALIBRATION_FILE).unlink(missing_ok=True)
        return rows, None, []
    calibration = calib.fit_thresholds(answers, rows, tag_family)
    unused = calib.unusable(answers, rows)
    calib.save_calibration(run_.root, calibration, answer_sources, len(answers), unused)
    if unused:
        import warnings

        warnings.warn(
            f"02_tag: {len(unused)} calibration answer(s) are for clips that could not be tagged "
            f"(no scores to fit on): {', '.join(unused[:10])}",
            stacklevel=3,
        )
    given = calib.latest(answers)
    new_rows = [
        r if "error" in r else _apply_selection(r, top_k, min_similarity, max_margin, calibration, given) for r in rows
    ]
    if new_rows != rows:
        atomic_write_text(
            run_.path(STAGE, layout.TAGS),
            "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in new_rows),
        )
    return new_rows, calibration, unused


def _producer_answers(run_dir: str, calibration_file: str, tag_family: dict, ok_ids: set) -> tuple[list, list]:
    """The producer's answers: every tag and clip they name must exist, before any work."""
    from . import tag_calibration as calib

    try:
        answers, answer_sources = calib.gather_answers(run_dir, calibration_file)
        calib.check_names(answers, tag_family, ok_ids, answer_sources)
    except calib.CalibrationError as exc:
        raise TagError(str(exc)) from exc
    return answers, answer_sources


def _open_log(out_path: Path, key: str, ok_ids: set, top_k: dict, min_similarity: float, max_margin: float):
    """tags.jsonl with only the rows still valid, their tags re-selected with today's thresholds.

    Keep rows computed the same way (error rows too: a bad file stays bad — delete
    02_tag/tags.jsonl to retry it); re-select tags if the thresholds changed; drop rows of another
    model/vocabulary/windowing and of clips no longer in 01.
    """
    log = JsonlLog(out_path)

    def revised():  # (row as it should be now or None to drop it, whether it changed); one row at a time
        for row in log.rows():
            if row.get("embed_key") != key or row["clip_id"] not in ok_ids:
                yield None, True
                continue
            new = row if "error" in row else _apply_selection(row, top_k, min_similarity, max_margin)
            yield new, new != row

    if any(changed for _, changed in revised()):  # a second pass writes: the rows are never all in memory
        with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            for new, _ in revised():
                if new is not None:
                    fh.write(json.dumps(new, ensure_ascii=False, allow_nan=False) + "\n")
        log = JsonlLog(out_path)
    return log


def _load_clap(backend: str, clap_model: str, device: str, window_seconds: float, batch_size: int):
    """``(clap, device used)``; a GPU too small for the model and batch, or windows longer than
    the model's input, are refused (the first before anything is loaded)."""
    from . import models

    device_used = models.pick_device(device)
    preflight_inference.check_tag(device_used, clap_model, batch_size, backend, error=TagError)
    clap = make_backend(backend, clap_model, device_used)
    if window_seconds > clap.window_seconds + 1e-9:
        raise TagError(
            f"window_seconds={window_seconds} is longer than this CLAP's input "
            f"({clap.window_seconds:g} s); CLAP would crop it at random — use <= {clap.window_seconds:g}"
        )
    return clap, device_used


def _tag_all(clap, run_: Run, chunks: list[list[dict]], log: JsonlLog, base: dict, text, vocab, params, top_k):
    """Tag every chunk still to do, one append per chunk; ``(seconds of audio tagged, seconds of the loop)``."""
    from tqdm.auto import tqdm

    audio_seconds = 0.0
    loop_started = time.perf_counter()

    bar = tqdm(total=sum(len(c) for c in chunks), desc="02_tag: CLAP", unit="clip")
    for chunk in chunks:
        rows, seconds = _tag_chunk(clap, run_, chunk, dict(base), text, vocab, params, top_k)
        audio_seconds += seconds
        log.append(*rows)
        bar.update(len(chunk))
    bar.close()
    return audio_seconds, time.perf_counter() - loop_started


def _calibration_summary(calibration: dict | None, answers: list, unused: list[str]) -> dict | None:
    if calibration is None:
        return None
    return {
        "answers": len(answers),
        "tags": len(calibration),
        "unused": unused,
        "thresholds": {t: c["threshold"] for t, c in calibration.items()},
    }


@stage.entry(STAGE, TagError)
def run(
    run_dir: str,
    profile: str,
    clap_model: str,
    backend: str,
    batch_size: int,
    top_k_instruments: int,
    top_k_moods: int,
    top_k_genres: int,
    min_similarity: float,
    max_margin: float,
    window_seconds: float,
    device: str,
    vocab_dir: str,
    calibration_file: str,
) -> dict:
    """Tag every ``ok`` clip of ``RUN_DIR/01_segment/segments.jsonl``; write ``02_tag/tags.jsonl``.

    ``min_similarity`` (cosine floor) and ``max_margin`` (largest distance below the family's best
    score) filter the ``top_k_<family>`` best tags; ``-1.0`` / ``2.0`` turn them off (the demo's
    random tiny CLAP has no meaningful score scale). Resumable: clips already tagged with the same
    model, vocabulary and windowing are kept (an unreadable clip keeps its ``error`` row: delete
    ``tags.jsonl`` to retry); changed thresholds re-select tags from the stored scores, no model run.
    Calibration: the producer's answers (``02_tag/calibration_answers.jsonl``, written by the
    listening widget, and/or ``calibration_file``) give per-tag thresholds, saved in
    ``02_tag/calibration.json`` and applied to every row (:mod:`stablebeat_utils.tag_calibration`).
    Returns a summary dict (also recorded in ``02_tag/stage.json``).
    """
    run_, params = begin(STAGE, locals())  # a wrong type or an incompatible run folder: refused by name
    _validate(params)
    vocab = load_vocab(vocab_dir)
    tag_family = {e.tag: f for f in FAMILIES for e in vocab[f]}
    top_k = {f: params[f"top_k_{f}"] for f in FAMILIES}  # one top_k_<family> setting per family
    segments = _ok_segments(run_)
    ok_ids = {r["clip_id"] for r in segments}
    answers, answer_sources = _producer_answers(run_dir, calibration_file, tag_family, ok_ids)

    stage_dir = run_.stage_dir(STAGE)
    out_path = stage_dir / layout.TAGS
    key = _embed_key(backend, clap_model, vocab, window_seconds)
    log = _open_log(out_path, key, ok_ids, top_k, min_similarity, max_margin)

    # Chunks are fixed by the sorted clip list, so a resumed run feeds the model exactly the same
    # batches as an uninterrupted one (bit-identical scores); a chunk is redone if any clip is missing.
    chunks = [c for c in _chunks(segments, batch_size) if any(r["clip_id"] not in log for r in c)]
    todo = sum(len(c) for c in chunks)
    ClipFolder(run_dir).require(STAGE, [r.get("path") for c in chunks for r in c])  # a wiped clip_dir: STOP
    started = time.perf_counter()
    text_cached = None
    device_used = None
    audio_seconds = loop_seconds = 0.0
    if chunks:
        clap, device_used = _load_clap(backend, clap_model, device, window_seconds, batch_size)
        text, text_cached = text_embeddings(clap, vocab, stage_dir / "text_embeddings")
        base = {"model": clap_model, "backend": backend, "embed_key": key}
        audio_seconds, loop_seconds = _tag_all(clap, run_, chunks, log, base, text, vocab, params, top_k)
    rows = log.finalize()
    rows, calibration, unused = _calibrate(
        run_, rows, answers, answer_sources, tag_family, top_k, min_similarity, max_margin
    )
    elapsed = time.perf_counter() - started
    errors = [r for r in rows if "error" in r]
    summary = {
        "clips": len(segments),
        "tagged": len(rows) - len(errors),
        "errors": len(errors),
        "computed": todo,
        "text_embeddings": None if text_cached is None else ("cached" if text_cached else "computed"),
        "model": clap_model,
        "backend": backend,
        "device": device_used,
        "vocab_hash": vocab_hash(vocab),
        "vocab_sizes": {f: len(vocab[f]) for f in FAMILIES},
        "seconds": round(elapsed, 2),
        "audio_seconds": round(audio_seconds, 2),
        # seconds of audio tagged per second of the clip loop (decode + resample + CLAP; without
        # the model load and text embeddings, which do not grow with the dataset)
        "times_real_time": round(audio_seconds / loop_seconds, 2) if todo and loop_seconds > 0 else None,
        "path": run_.rel(out_path),
        "calibration": _calibration_summary(calibration, answers, unused),
    }
    run_.mark_done(STAGE, params=params, **summary)
    return summary


def read_tags(run_dir: str | Path) -> list[dict]:
    """The rows of ``RUN_DIR/02_tag/tags.jsonl`` (for the notebook and later stages)."""
    return read_jsonl(Run(run_dir).path(STAGE, layout.TAGS))


def tag_frequencies(rows: Iterable[dict]) -> dict[str, list[tuple[str, int]]]:
    """Family → ``[(tag, number of clips carrying it), ...]``, most frequent first (ties by name)."""
    out: dict[str, list[tuple[str, int]]] = {}
    rows = [r for r in rows if "error" not in r]
    for f in FAMILIES:
        counts: dict[str, int] = {}
        for r in rows:
            for t in r.get(f"{f}_tags", []):
                counts[t] = counts.get(t, 0) + 1
        out[f] = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return out
