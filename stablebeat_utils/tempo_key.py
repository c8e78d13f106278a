"""Stage 03 — tempo (BPM) and key/scale of every clip, kept only where the model is confident.

Notebook: ``notebooks/03_tempo_key.ipynb``. Reads ``RUN_DIR/01_segment/segments.jsonl`` (rows with
``status == "ok"``), writes ``RUN_DIR/03_tempo_key/tempo_key.jsonl``, one row per clip::

    clip_id, tempo_raw, tempo_confidence, key_raw, scale_raw, key_confidence,
    tempo, key, scale,                       # = the raw value, or null under min_confidence
    tempo_cnn, tempo_folded, error           # extras: TempoCNN's own answer, prior used, failure

**Tempo** — Essentia's ``TempoCNN`` with the StableBeaT card's graph *deeptemp-k16-3* (Schreiber &
Müller 2019; trained on Extended Ballroom, LMDTempo, MTGTempo). The clip is mixed to mono and
resampled to 11025 Hz; the network looks at ~12 s mel-spectrogram *patches* (hop 128 frames) and
outputs, for each patch, a softmax over 256 tempo classes, 30…285 BPM in 1-BPM steps.
``TempoCNN`` gives the global tempo (majority vote of the patches' local tempi);
``TensorflowPredictTempoCNN`` on the same patches gives the full class probabilities.

**Tempo confidence** (what ``tempo_confidence`` means): let *P* be the patches' class
probabilities averaged over the clip. The confidence is the probability mass of *P* within ±4 %
of the reported tempo (the usual "Accuracy 1" tolerance of tempo evaluation). 1.0 means every
patch put all its mass on that tempo; a clip whose patches disagree, or whose mass is split
between 70 and 140 BPM, gets a low value. It is in [0, 1] and comparable to the card's "70 %".

**Octave errors** — on trap, the network often answers half (or double) the nominal BPM: with
the snare on beat 3 ("half-time") both readings are defensible. The optional ``bpm_range`` prior
(e.g. ``"70-160"``, which must span at least an octave) folds *P* into the range: each class's
mass is moved to its octave-equivalent (×2ⁿ) inside the range. If TempoCNN's global tempo lies in
the range it is kept; otherwise the folded tempo with the most mass within ±4 % is reported. With
a prior the confidence is measured on the folded distribution (the mass of all octave-equivalents
counts, since the prior decides the octave). ``tempo_cnn`` always keeps the network's own answer.

**Key** — Essentia's ``KeyExtractor`` (HPCP chroma correlated with key profiles) on the 44.1 kHz
mono mix; ``key_confidence`` is its *strength* (the correlation with the best key profile).
Default profile ``edma`` (Faraldo's profile for electronic dance music). Measured on 25-s
segments of the demo beats it was right on 15/16, like ``bgate``/``krumhansl``/``shaath`` (the miss:
F# minor read as its relative A major), with the highest strengths on the real recordings
(Karissa Hobbs B♭ major 0.92–0.95, Vibe Ace E major 0.89–0.95); ``edmm`` and ``temperley`` misread
several beats (major as relative minor, minor as relative major). See notebook 03.

**The card's rule** — a value is kept only when its confidence ≥ ``min_confidence`` (0.7):
``tempo`` is null when ``tempo_confidence < min_confidence``; ``key`` and ``scale`` together are
null when ``key_confidence < min_confidence``. The threshold is applied when the file is
finalized, so changing only ``min_confidence`` re-runs in seconds without re-analysing.

Parallel (``workers`` processes, each loading the model once), streaming (at most 2 clips per
worker in flight), resumable (rows are appended once; a re-run analyses only missing clips and
rewrites the file sorted, so a killed run ends with the same bytes as an uninterrupted one).
A clip that cannot be decoded gets a row of nulls with an ``error``; it never stops the batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .runs import (JsonlLog, Run, atomic_path, atomic_write_json, atomic_write_text, file_sha256, read_json,
                   read_jsonl)

STAGE = "03_tempo_key"
TEMPO_SR = 11025
TEMPO_MODEL_URL = "https://essentia.upf.edu/models/tempo/tempocnn/deeptemp-k16-3.pb"
TEMPO_MODEL_SHA256 = "21c328332a221695dd6e8572728c617373064df882e8f81da6d88dc3a821e3b3"
TEMPO_CLASSES_BPM = np.arange(30, 286, dtype=np.float64)  # deeptemp: 256 classes, 30..285 BPM
TOLERANCE = 0.04  # ±4 %: the confidence window and the accuracy tolerance
KEY_PROFILES = ("edma", "edmm", "bgate", "braw", "temperley", "krumhansl", "shaath", "noland",
                "diatonic", "tonictriad", "wei", "faraldo", "pentatonic", "gomez")
FIELDS = ("clip_id", "tempo_raw", "tempo_confidence", "key_raw", "scale_raw", "key_confidence",
          "tempo", "key", "scale")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # libtensorflow's start-up chatter


class TempoKeyError(ValueError):
    """A parameter or input that cannot be used; raised before any work."""


# ---------------------------------------------------------------------------------------------
# where the TempoCNN graph comes from

def resolve_tempo_model(tempo_model: str = "", model_cache_dir: str = "") -> Path:
    """The TempoCNN graph to load.

    ``tempo_model`` = a local ``.pb`` path → that file (not checksummed: it may be another graph).
    ``""`` → ``<model_cache_dir or cache_home()/"models">/deeptemp-k16-3.pb``, downloaded once from
    Essentia's model site (atomically, SHA-256 verified) when not there yet — or from
    ``$STABLEBEAT_MODEL_MIRROR`` (a folder or URL prefix holding a copy; the Makefile points it at
    ``../shared/models/tempocnn`` when that exists, which is how offline CI gets the graph).
    """
    if tempo_model:
        path = Path(tempo_model).expanduser()
        if not path.is_file():
            raise TempoKeyError(f"tempo_model {str(path)!r}: no such file (give the path of "
                                "deeptemp-k16-3.pb, or \"\" to download it)")
        return path
    from .runs import cache_home

    folder = Path(model_cache_dir).expanduser() if model_cache_dir else cache_home() / "models"
    path = folder / "deeptemp-k16-3.pb"
    if path.is_file():
        if file_sha256(path) == TEMPO_MODEL_SHA256:
            return path
        path.unlink()  # a file that is not the expected graph (we only ever rename verified ones)
    mirror = os.environ.get("STABLEBEAT_MODEL_MIRROR", "")
    if mirror:  # a local folder (or URL prefix) holding a copy: still SHA-256 verified
        local = Path(mirror).expanduser() / path.name
        url = local.resolve().as_uri() if local.is_file() else mirror.rstrip("/") + "/" + path.name
        if local.is_file() or "://" in mirror:
            return download_tempo_model(path, url=url)
    return download_tempo_model(path)


def download_tempo_model(path: Path, url: str = TEMPO_MODEL_URL, sha256: str = TEMPO_MODEL_SHA256,
                         timeout: float = 60.0) -> Path:
    """Download ``url`` to ``path`` atomically and verify its SHA-256; clear errors offline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # removed again on any error: nothing half-downloaded is kept
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                for block in iter(lambda: resp.read(1 << 16), b""):
                    h.update(block)
                    out.write(block)
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise TempoKeyError(
                f"cannot download the TempoCNN graph from {url} ({exc}). Offline? Download "
                f"deeptemp-k16-3.pb by hand (SHA-256 {sha256}) and set tempo_model to its path, or put it "
                f"at {path}.") from exc
        if h.hexdigest() != sha256:
            raise TempoKeyError(f"{url}: downloaded file has SHA-256 {h.hexdigest()}, expected {sha256} "
                                "(a changed or corrupted model file; nothing was kept)")
    return path


# ---------------------------------------------------------------------------------------------
# analysis of one clip (runs in the worker processes)

_WORKER: dict = {}


def init_estimators(graph: str, key_profile: str) -> None:
    """Load the models once per process."""
    import essentia

    essentia.log.infoActive = False
    essentia.log.warningActive = False
    import essentia.standard as es

    _WORKER["tempo"] = es.TempoCNN(graphFilename=graph)
    _WORKER["probs"] = es.TensorflowPredictTempoCNN(graphFilename=graph)
    _WORKER["key_profile"] = key_profile
    _WORKER["key"] = {}


def _key_extractor(sr: int):
    import essentia.standard as es

    if sr not in _WORKER["key"]:
        _WORKER["key"][sr] = es.KeyExtractor(profileType=_WORKER["key_profile"], sampleRate=float(sr))
    return _WORKER["key"][sr]


def analyse_clip(clip_id: str, path: str, name: str | None = None) -> dict:
    """Raw analysis of one clip: tempo (global + mean class probabilities) and key. Never raises.

    ``name`` is how messages call the file (its path relative to the run folder), so rows do not
    depend on where the run folder lies.
    """
    from . import audio

    name = name or path
    try:
        wav, sr = audio.load(path)
        mono = wav.mean(axis=0)
        if not np.any(mono):
            raise audio.AudioError("the clip is digital silence")
        key, scale, strength = _key_extractor(sr)(np.ascontiguousarray(mono, dtype=np.float32))
        y = audio.resample(mono[None], sr, TEMPO_SR)[0]
        global_bpm, local_bpm, _ = _WORKER["tempo"](y)
        probs = np.asarray(_WORKER["probs"](y), dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] == 0 or len(local_bpm) == 0:
            seconds = len(y) / TEMPO_SR
            return {"clip_id": clip_id, "key": key, "scale": scale, "strength": float(strength),
                    "error": f"{name}: {seconds:.1f} s is shorter than one TempoCNN patch (~12 s): no tempo"}
        return {"clip_id": clip_id, "global_bpm": float(global_bpm), "mean_probs": probs.mean(axis=0).tolist(),
                "key": key, "scale": scale, "strength": float(strength), "error": None}
    except Exception as exc:  # one bad clip must not stop the batch: report it in its row
        return {"clip_id": clip_id, "error": f"{name}: {type(exc).__name__}: {exc}"}


# ---------------------------------------------------------------------------------------------
# from raw outputs to a row

def parse_bpm_range(bpm_range: str) -> tuple[float, float] | None:
    """``""`` → None; ``"70-160"`` → (70.0, 160.0). The range must span an octave (hi ≥ 2·lo)."""
    if not bpm_range or not str(bpm_range).strip():
        return None
    try:
        lo, hi = (float(v) for v in str(bpm_range).replace(" ", "").split("-"))
    except ValueError:
        raise TempoKeyError(f"bpm_range {bpm_range!r}: write it as \"LOW-HIGH\", e.g. \"70-160\", or \"\"") from None
    if not (30 <= lo and hi <= 286 and hi >= 2 * lo):
        raise TempoKeyError(f"bpm_range {bpm_range!r}: need 30 <= LOW, HIGH <= 286 and HIGH >= 2*LOW "
                            "(the range must hold one whole octave so every tempo folds into it)")
    return lo, hi


def _mass_near(bpms: np.ndarray, mass: np.ndarray, tempo: float) -> float:
    return float(mass[np.abs(bpms - tempo) <= TOLERANCE * tempo].sum())


def _fold(mean_probs: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Move each class's mass to its octave-equivalent inside [lo, hi]."""
    bpms = TEMPO_CLASSES_BPM.copy()
    while np.any(bpms < lo):
        bpms = np.where(bpms < lo, bpms * 2, bpms)
    while np.any(bpms > hi):
        bpms = np.where(bpms > hi, bpms / 2, bpms)
    return bpms, mean_probs


def tempo_estimate(global_bpm: float, mean_probs, bpm_range: tuple[float, float] | None) -> tuple[float, float, bool]:
    """(tempo, confidence, folded) from TempoCNN's outputs; see the module docstring."""
    p = np.asarray(mean_probs, dtype=np.float64)
    if bpm_range is None:
        return float(global_bpm), _mass_near(TEMPO_CLASSES_BPM, p, global_bpm), False
    lo, hi = bpm_range
    bpms, mass = _fold(p, lo, hi)
    if lo <= global_bpm <= hi:
        return float(global_bpm), _mass_near(bpms, mass, global_bpm), False
    # mass per distinct folded tempo (64 and 128 both land on 128), then the ±4 % window mass;
    # among equal windows the tempo carrying the most mass itself wins
    values, inverse = np.unique(bpms, return_inverse=True)
    point = np.bincount(inverse, weights=mass)
    scores = np.array([_mass_near(values, point, b) for b in values])
    best = int(np.lexsort((-point, -np.round(scores, 9)))[0])
    return float(values[best]), float(scores[best]), True


def make_row(raw: dict, bpm_range: tuple[float, float] | None, min_confidence: float) -> dict:
    row = {f: None for f in FIELDS}
    row.update(clip_id=raw["clip_id"], tempo_cnn=None, tempo_folded=None, error=raw.get("error"))
    if raw.get("global_bpm") is not None:
        tempo, conf, folded = tempo_estimate(raw["global_bpm"], raw["mean_probs"], bpm_range)
        row.update(tempo_raw=round(tempo, 1), tempo_confidence=round(conf, 4),
                   tempo_cnn=round(float(raw["global_bpm"]), 1), tempo_folded=folded)
    if raw.get("key") is not None:
        row.update(key_raw=raw["key"], scale_raw=raw["scale"], key_confidence=round(raw["strength"], 4))
    return apply_threshold(row, min_confidence)


def apply_threshold(row: dict, min_confidence: float) -> dict:
    """The card's rule: keep tempo / key+scale only where their confidence ≥ ``min_confidence``."""
    row = dict(row)
    tc, kc = row.get("tempo_confidence"), row.get("key_confidence")
    row["tempo"] = row["tempo_raw"] if tc is not None and tc >= min_confidence else None
    keep_key = kc is not None and kc >= min_confidence
    row["key"] = row["key_raw"] if keep_key else None
    row["scale"] = row["scale_raw"] if keep_key else None
    return row


# ---------------------------------------------------------------------------------------------
# the stage

def _ok_clips(run: Run) -> list[dict]:
    seg = run.path("01_segment", "segments.jsonl")
    if not seg.is_file():
        raise TempoKeyError(f"{seg} not found: run notebook 01_segment first (or check run_dir)")
    rows = [r for r in read_jsonl(seg) if r.get("status") == "ok"]
    for r in rows:
        if "clip_id" not in r or "path" not in r:
            raise TempoKeyError(f"{seg}: a row without clip_id/path: {json.dumps(r)[:200]}")
    return sorted(rows, key=lambda r: r["clip_id"])


def _iter_results(jobs: list[tuple[str, str]], graph: str, key_profile: str, workers: int):
    """Yield raw results as they finish, with at most 2 jobs per worker in flight."""
    if workers <= 1 or len(jobs) <= 1:
        init_estimators(graph, key_profile)
        for job in jobs:
            yield analyse_clip(*job)
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: libtensorflow's threads do not survive a fork of a process that used them
    ctx = mp.get_context("spawn")
    todo = iter(jobs)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_estimators,
                             initargs=(graph, key_profile)) as pool:
        pending: set = set()
        while True:
            while len(pending) < 2 * workers:
                job = next(todo, None)
                if job is None:
                    break
                pending.add(pool.submit(analyse_clip, *job))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                try:
                    yield fut.result()
                except BrokenProcessPool as exc:
                    raise RuntimeError("a tempo/key worker process died (out of memory?). The rows written so "
                                       "far are kept: run the stage again to resume.") from exc


def run(run_dir: str = "runs/demo", profile: str = "demo", tempo_model: str = "", model_cache_dir: str = "",
        min_confidence: float = 0.7, bpm_range: str = "", key_profile: str = "edma", workers: int = 2) -> dict:
    """Analyse every ``ok`` clip of ``RUN_DIR/01_segment``; write ``RUN_DIR/03_tempo_key/tempo_key.jsonl``."""
    # a wrong type or an incompatible run folder is refused, by name, before any work
    from .params import check_call
    check_call(STAGE, dict(locals()))
    params = dict(run_dir=str(run_dir), profile=profile, tempo_model=tempo_model, model_cache_dir=model_cache_dir,
                  min_confidence=min_confidence, bpm_range=bpm_range, key_profile=key_profile, workers=workers)
    # 1. validate everything before any work
    if not 0.0 <= float(min_confidence) <= 1.0:
        raise TempoKeyError(f"min_confidence {min_confidence!r}: a confidence is between 0 and 1 (the card uses 0.7)")
    if key_profile not in KEY_PROFILES:
        raise TempoKeyError(f"key_profile {key_profile!r}: choose one of {', '.join(KEY_PROFILES)}")
    if int(workers) < 1:
        raise TempoKeyError(f"workers {workers!r}: need at least 1")
    prior = parse_bpm_range(bpm_range)
    run_ = Run(run_dir)
    clips = _ok_clips(run_)
    graph = resolve_tempo_model(tempo_model, model_cache_dir)

    out_dir = run_.stage_dir(STAGE)
    out = out_dir / "tempo_key.jsonl"
    # rows hold raw values that depend on the graph, the key profile and the prior: if those
    # changed since the rows were written, they are stale and the stage starts over.
    analysis = {"graph_sha256": file_sha256(graph), "key_profile": key_profile, "bpm_range": list(prior) if prior else None}
    settings = out_dir / "analysis.json"
    if read_json(settings) != analysis:
        out.unlink(missing_ok=True)
        run_.clear_done(STAGE)
        atomic_write_json(settings, analysis)
    log = JsonlLog(out)

    jobs = [(c["clip_id"], str(run_.path(c["path"])), c["path"]) for c in clips if c["clip_id"] not in log]
    from tqdm.auto import tqdm

    with tqdm(total=len(jobs), desc="tempo & key", unit="clip", disable=not jobs) as bar:
        for raw in _iter_results(jobs, str(graph), key_profile, int(workers)):
            log.append(make_row(raw, prior, float(min_confidence)))
            bar.update(1)

    # finalize: only the current ok clips, threshold re-applied, sorted, written atomically
    ids = [c["clip_id"] for c in clips]
    rows = [apply_threshold(log.get(cid), float(min_confidence)) for cid in ids]
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows))
    summary = {
        "clips": len(rows),
        "analysed_now": len(jobs),
        "errors": sum(1 for r in rows if r["error"]),
        "tempo_kept": sum(1 for r in rows if r["tempo"] is not None),
        "key_kept": sum(1 for r in rows if r["key"] is not None),
        "min_confidence": float(min_confidence),
        "output": str(out),
    }
    run_.mark_done(STAGE, params=params, **summary)
    return summary


def read_rows(run_dir: str) -> list[dict]:
    """The rows of ``RUN_DIR/03_tempo_key/tempo_key.jsonl`` (for notebooks and later stages)."""
    return read_jsonl(Run(run_dir).path(STAGE, "tempo_key.jsonl"))
