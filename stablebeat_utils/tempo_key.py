"""Stage 03 — tempo (BPM) and key/scale of every clip, kept only where the model is confident.

Notebook: ``notebooks/03_tempo_key.ipynb``. Reads ``RUN_DIR/01_segment/segments.jsonl`` (rows with
``status == "ok"``), writes ``RUN_DIR/03_tempo_key/tempo_key.jsonl``, one row per clip::

    clip_id, tempo_raw, tempo_confidence, key_raw, scale_raw, key_confidence,
    tempo, key, scale,                       # = the raw value, or null under min_confidence
    tempo_cnn, tempo_alt, tempo_grid,        # extras: the three tempo estimates (see below),
    tempo_method, tempo_folded, error        #   how they were reconciled, prior used, failure

**Tempo — three estimates, one octave convention.** TempoCNN alone makes octave errors on trap: a
half-time beat at 140 (snare on beat 3) is read as 70, and fast straight beats (150–170) are read
at half speed, with the network *confident* (0.9+) in its wrong octave. So the stage measures the
tempo three ways, in the same worker:

1. ``tempo_cnn`` — Essentia's ``TempoCNN`` with the StableBeaT card's graph *deeptemp-k16-3*
   (Schreiber & Müller 2019; trained on Extended Ballroom, LMDTempo, MTGTempo). The clip is mixed
   to mono and resampled to 11025 Hz; the network looks at ~12 s mel-spectrogram *patches* and
   outputs, for each patch, a softmax over 256 tempo classes, 30…285 BPM in 1-BPM steps
   (``TensorflowPredictTempoCNN``); the global tempo is the patches' majority vote, what
   ``TempoCNN`` itself computes from the same patches (:func:`majority_tempo`; one network pass).
2. ``tempo_alt`` — Essentia's ``RhythmExtractor2013`` (method ``degara``): a beat tracker on
   onset-detection functions, no learning, at 44.1 kHz, on the clip's first 15 s. Independent of TempoCNN, with its own
   octave errors (it often doubles slow lo-fi beats).
3. ``tempo_grid`` — the **hi-hat grid**: the autocorrelation of the bright (> 2 kHz) onset
   envelope, read at the length of an 8th note of TempoCNN's tempo × ½, × 1 and × 2 (three
   scores in [-1, 1]; ~0.7–0.95 where hats play on that 8th-note grid, ~0 where they do not).

**The convention** (what "the tempo" of a beat is): the tempo its producers would write on it.
*Trap and drill* (half-time feel: snare on beat 3, closed hats on 8th notes with rolls) are
counted on their hi-hat grid: a half-time trap beat at 140 is **140, not 70**. *Lo-fi and
boom-bap* (snare on 2 and 4, hats on 16th notes, often swung) are counted at their slow tempo: a
boom-bap beat at 84 is **84, not 168**. With straight hats the two are the *same rhythm* (straight
16ths at 80 = straight 8ths at 160, a snare every 1.5 s), so the hats' *style* decides: trap
**rolls** (32nds, 16th/32nd triplets: :func:`roll_count`) → the fast reading; **swung** 16ths (the
8ths of the fast reading smeared: grid score under :data:`GRID_STRAIGHT`) → the slow reading;
neither → no stated tempo (your file name or facts file can state it). This only matters where
the slow reading is a lo-fi/boom-bap tempo (:data:`SLOW_RANGE`, 68–100 BPM); a slow reading outside
it with hats on the fast reading's 8ths is read fast, as before.

**Reconciling** (``tempo_method``): if TempoCNN and the beat tracker agree within ±4 % (``"agree"``),
that is the tempo unless the hats play 8ths of *twice* it (grid score at 2× ≥
:data:`GRID_MIN_SCORE`, 2× ≤ :data:`GRID_MAX_BPM`): then the convention above picks the octave
(``"agree, fast: hats and rolls"``, ``"agree, slow: swung 16th hats"``, ``"agree, octave
unresolved"``). If they are an octave apart (``"octave apart, …"``), the same: the faster reading
if the hats play its 8ths (and, at a lo-fi tempo, roll), the slower if its 8ths are swung or if
only the slower's 8ths are played; with no hats to tell, ``octave unresolved``. Any other
disagreement (3:2, unrelated) is ``"estimates disagree"``. Unresolved and disagreeing clips get
``tempo_confidence`` 0 — so ``tempo`` is null — while ``tempo_raw`` keeps TempoCNN's answer and
``tempo_cnn``/``tempo_alt``/``tempo_grid`` keep the evidence. :func:`octave_safe_tempo` is this
estimate for one clip; stage 07 measures generated clips with it (:func:`measured_tempo`).

**Tempo confidence** (what ``tempo_confidence`` means now): for a reconciled tempo, TempoCNN's
class-probability mass (averaged over the clip's patches) within ±4 % of the tempo *or one of
its octaves* (×¼ … ×4). The octave is decided by the agreement of the estimates and the hi-hat
grid, so the confidence only says how sure the network is of the *pulse*: a clip whose patches
disagree, or whose mass is spread over unrelated tempi, gets a low value. 0 when the estimates
cannot be reconciled. In [0, 1] and compared with the card's 0.7 like before.

Measured on 80 synthetic beats of five styles with exact tempo (``benchmarks/bench_tempo_octave.py``,
see docs/benchmarks_tempo.md): TempoCNN with the card's rule stated a BPM on 80 % of the clips
and 61 % of those were right within 4 %; with the three estimates a BPM is stated on 96 % and
all stated BPMs were right. Issue 25 (120 fresh beats of ten styles incl. lo-fi/boom-bap with
16th-note hats, trap, house, drill): issue 17's rule stated 91.8 % right (boom-bap doubled: 3/12
right); this rule states 100 % right, on 85 % of the clips (drill 58 %, sparse 67 %: see the doc).

**Prior** — the optional ``bpm_range`` (e.g. ``"70-160"``, which must span at least an octave)
overrides the convention: a reconciled tempo outside the range is moved into it by octaves
(``tempo_folded`` true). It never makes an unreconciled tempo stated.

**Key** — Essentia's ``KeyExtractor`` (HPCP chroma correlated with key profiles) on the 44.1 kHz
mono mix; ``key_confidence`` is its *strength* (the correlation with the best key profile).
Default profile ``edma`` (Faraldo's profile for electronic dance music). Measured on 25-s
segments of the demo beats it was right on 15/16, like ``bgate``/``krumhansl``/``shaath`` (the miss:
F# minor read as its relative A major), with the highest strengths on the real recordings
(Karissa Hobbs B♭ major 0.92–0.95, Vibe Ace E major 0.89–0.95); ``edmm`` and ``temperley`` misread
several beats (major as relative minor, minor as relative major). See notebook 03.

**The producer's own facts first** (``facts_from_names``, ``facts_file``): the BPM and key a
producer wrote into a source's file name (:func:`stablebeat_utils.clipfacts.facts_from_name`, read
from 01's ``source``) or into a facts file (CSV/JSON: file → bpm, key, tags, prompt;
:func:`~stablebeat_utils.clipfacts.read_facts_file`; ``""`` = ``facts.csv``/``facts.json`` in 01's
input folder, if there) **win over the estimate**: ``tempo``/``key``/``scale`` hold the supplied
value, ``tempo_source``/``key_source`` say ``supplied`` or ``estimated``, ``supplied_from`` from where,
and the estimate stays (``tempo_estimated``, ``key_estimated``, ``scale_estimated`` and the raw
fields). ``tags_supplied``/``prompt_supplied`` carry a facts file's tags and prompt. Unsure names,
unusable facts lines and unknown files are listed in the summary's ``facts_notes``; the lesson's
table (:func:`supplied_vs_estimated`) names each disagreement (octave, relative key). Facts are
applied when the file is written, so changing them re-runs in seconds.

**Relative keys** — a key profile weighs all the notes of the scale, and a minor key and its
relative major (A minor / C major) share them: on 120 synthetic beats of ten styles ``edma`` read
18 % of the keys as their relative (``benchmarks/bench_tempo_octave.py``, docs/benchmarks_tempo.md);
no other profile of Essentia did better without losing more keys, and weighting the bass's pitch
classes (the chord roots) made it worse (27 %). Measured, not yet solved: see ``supplied_vs_estimated``
for where your own keys disagree.

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
from typing import Sequence

import numpy as np

from .clipstore import ClipFolder
from .runs import JsonlLog, Run, atomic_path, atomic_write_json, file_sha256, iter_jsonl, read_json, read_jsonl
from .stage import begin

STAGE = "03_tempo_key"
TEMPO_SR = 11025
TEMPO_MODEL_URL = "https://essentia.upf.edu/models/tempo/tempocnn/deeptemp-k16-3.pb"
TEMPO_MODEL_SHA256 = "21c328332a221695dd6e8572728c617373064df882e8f81da6d88dc3a821e3b3"
TEMPO_CLASSES_BPM = np.arange(30, 286, dtype=np.float64)  # deeptemp: 256 classes, 30..285 BPM
TOLERANCE = 0.04  # ±4 %: the confidence window and the accuracy tolerance
KEY_PROFILES = (
    "edma",
    "edmm",
    "bgate",
    "braw",
    "temperley",
    "krumhansl",
    "shaath",
    "noland",
    "diatonic",
    "tonictriad",
    "wei",
    "faraldo",
    "pentatonic",
    "gomez",
)
FIELDS = ("clip_id", "tempo_raw", "tempo_confidence", "key_raw", "scale_raw", "key_confidence", "tempo", "key", "scale")

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
            raise TempoKeyError(
                f'tempo_model {str(path)!r}: no such file (give the path of deeptemp-k16-3.pb, or "" to download it)'
            )
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


def download_tempo_model(
    path: Path, url: str = TEMPO_MODEL_URL, sha256: str = TEMPO_MODEL_SHA256, timeout: float = 60.0
) -> Path:
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
                f"at {path}."
            ) from exc
        if h.hexdigest() != sha256:
            raise TempoKeyError(
                f"{url}: downloaded file has SHA-256 {h.hexdigest()}, expected {sha256} "
                "(a changed or corrupted model file; nothing was kept)"
            )
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

    # one network pass: the class probabilities of every patch; the global tempo is their majority
    # vote (what es.TempoCNN computes from the same patches, with its default "majority" aggregation)
    _WORKER["probs"] = es.TensorflowPredictTempoCNN(graphFilename=graph)
    _WORKER["beats"] = es.RhythmExtractor2013(method="degara")  # the second, independent estimate
    _WORKER["key_profile"] = key_profile
    _WORKER["key"] = {}


def _key_extractor(sr: int):
    import essentia.standard as es

    if sr not in _WORKER["key"]:
        _WORKER["key"][sr] = es.KeyExtractor(profileType=_WORKER["key_profile"], sampleRate=float(sr))
    return _WORKER["key"][sr]


def majority_tempo(probs: np.ndarray) -> float:
    """TempoCNN's global tempo: the class most patches put first (ties: the larger mean probability).

    Checked equal to ``es.TempoCNN``'s global tempo (aggregation "majority") on 30 clips, synthetic
    and real; computing it from the probabilities saves running the network a second time.
    """
    local = np.argmax(probs, axis=1)
    counts = np.bincount(local, minlength=probs.shape[1])
    best = np.flatnonzero(counts == counts.max())
    return float(TEMPO_CLASSES_BPM[best[np.argmax(probs.mean(axis=0)[best])]])


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
        probs = np.asarray(_WORKER["probs"](y), dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] == 0:
            seconds = len(y) / TEMPO_SR
            return {
                "clip_id": clip_id,
                "key": key,
                "scale": scale,
                "strength": float(strength),
                "error": f"{name}: {seconds:.1f} s is shorter than one TempoCNN patch (~12 s): no tempo",
            }
        global_bpm = majority_tempo(probs)
        # the second estimate and the hi-hat grid read the clip at 44.1 kHz (RhythmExtractor2013's rate)
        m44 = mono if sr == GRID_SR else audio.resample(mono[None], sr, GRID_SR)[0]
        m44 = np.ascontiguousarray(m44, dtype=np.float32)
        beat_bpm = float(_WORKER["beats"](m44[: int(BEAT_SECONDS * GRID_SR)])[0])  # enough beats to count
        env = bright_onsets(m44)
        ac = onset_autocorrelation(m44, env=env)
        g = float(global_bpm)
        return {
            "clip_id": clip_id,
            "global_bpm": g,
            "mean_probs": probs.mean(axis=0).tolist(),
            "beat_bpm": beat_bpm,
            "grid": [grid_score(ac, g * f) for f in (0.5, 1.0, 2.0)],
            "rolls": [roll_count(env, g * f) for f in (1.0, 2.0)],
            "key": key,
            "scale": scale,
            "strength": float(strength),
            "error": None,
        }
    except Exception as exc:  # one bad clip must not stop the batch: report it in its row
        return {"clip_id": clip_id, "error": f"{name}: {type(exc).__name__}: {exc}"}


# ---------------------------------------------------------------------------------------------
# the hi-hat grid: how regular the bright onsets are at a given note length

GRID_SR = 44100  # the clip's own rate: the hats live above the 5.5 kHz TempoCNN's signal keeps
GRID_NFFT = 512  # 11.6 ms windows
GRID_HOP = 256  # 5.8 ms frames
GRID_BAND_HZ = 2000.0  # hats, shakers, claps (and what a lo-fi low-pass leaves of the hats)
GRID_MAX_LAG_S = 1.0  # an 8th note at 30 BPM
BEAT_SECONDS = 15.0  # the beat tracker reads the first 15 s (its cost grows with the length)
GRID_MIN_SCORE = 0.3  # an octave whose 8th notes repeat at least this strongly has hats on its grid
GRID_MAX_BPM = 190.0  # the grid never moves a tempo above this (16th-note hats at 100 BPM stay 100)
TEMPO_METHOD = 3  # bumped when the tempo rule changes: older rows are re-analysed
GRID_STRAIGHT = 0.6  # hats this regular on the 8ths of 2x play straight 16ths of x (swing drops it to ~0.45)
ROLLS_MIN = 3  # this many roll gaps at the fast reading: trap/drill hats
SLOW_RANGE = (68.0, 100.0)  # a slow reading here may be lo-fi/boom-bap with 16th hats: rolls decide


def bright_onsets(y: np.ndarray, sr: int = GRID_SR) -> np.ndarray:
    """The bright-band onset envelope of ``y``, one value per :data:`GRID_HOP` frame: the half-wave
    rectified flux of the log-magnitude spectrum above :data:`GRID_BAND_HZ`, clipped at its 99.5th
    percentile so that a few loud clicks (vinyl crackle, a crash) cannot outweigh the grid of hats."""
    y = np.asarray(y, dtype=np.float32)
    if len(y) < 4 * GRID_NFFT or sr != GRID_SR:
        raise ValueError(f"bright_onsets: need {GRID_SR} Hz audio longer than {4 * GRID_NFFT} samples")
    n = 1 + (len(y) - GRID_NFFT) // GRID_HOP
    frames = np.lib.stride_tricks.sliding_window_view(y, GRID_NFFT)[::GRID_HOP][:n]
    spec = np.abs(np.fft.rfft(frames * np.hanning(GRID_NFFT).astype(np.float32), axis=1))
    band = np.fft.rfftfreq(GRID_NFFT, 1.0 / sr) >= GRID_BAND_HZ
    logmag = np.log1p(100.0 * spec[:, band])
    env = np.maximum(np.diff(logmag, axis=0), 0.0).sum(axis=1)
    return np.minimum(env, np.percentile(env, 99.5))


def onset_autocorrelation(y: np.ndarray, sr: int = GRID_SR, env: np.ndarray | None = None) -> np.ndarray:
    """Autocorrelation (lag 0 = 1) of the bright-band onset envelope of ``y`` (:func:`bright_onsets`,
    or ``env`` when given), lags 0…1 s in frames."""
    env = bright_onsets(y, sr) if env is None else env
    env = env - env.mean()
    power = np.abs(np.fft.rfft(env, 2 * len(env))) ** 2
    ac = np.fft.irfft(power)[: int(GRID_MAX_LAG_S * sr / GRID_HOP) + 2]
    return ac / ac[0] if ac[0] > 0 else np.zeros_like(ac)


def grid_score(ac: np.ndarray, bpm: float, sr: int = GRID_SR) -> float:
    """How strongly the bright onsets repeat every 8th note of ``bpm`` (the autocorrelation's
    largest value within ±3 % of that lag; about 0.8–0.95 for 8th-note hats, ≈ 0 without)."""
    lag = 30.0 / bpm * sr / GRID_HOP
    lo, hi = int(np.floor(lag * 0.97)), int(np.ceil(lag * 1.03))
    if bpm <= 0 or hi >= len(ac):
        return 0.0
    return float(np.max(ac[lo : hi + 1]))


def roll_count(env: np.ndarray, bpm: float, sr: int = GRID_SR) -> int:
    """How many bright onsets follow the previous one by 0.2–0.75 of an 8th note of ``bpm``: hat
    **rolls** (32nds, 16th and 32nd triplets of ``bpm``) and triplet fills, the hi-hat signature
    of trap and drill. Straight or swung 8th-note hats of ``bpm`` (16ths of half of it) give none."""
    if bpm <= 0 or len(env) < 3:
        return 0
    floor = 0.25 * float(np.percentile(env, 99))
    peaks = np.flatnonzero((env[1:-1] > env[:-2]) & (env[1:-1] >= env[2:]) & (env[1:-1] > floor)) + 1
    gaps = np.diff(peaks) * GRID_HOP / sr / (30.0 / bpm)
    return int(np.count_nonzero((gaps >= 0.2) & (gaps <= 0.75)))


# ---------------------------------------------------------------------------------------------
# from raw outputs to a row


def parse_bpm_range(bpm_range: str) -> tuple[float, float] | None:
    """``""`` → None; ``"70-160"`` → (70.0, 160.0). The range must span an octave (hi ≥ 2·lo)."""
    if not bpm_range or not str(bpm_range).strip():
        return None
    try:
        lo, hi = (float(v) for v in str(bpm_range).replace(" ", "").split("-"))
    except ValueError:
        raise TempoKeyError(f'bpm_range {bpm_range!r}: write it as "LOW-HIGH", e.g. "70-160", or ""') from None
    if not (30 <= lo and hi <= 286 and hi >= 2 * lo):
        raise TempoKeyError(
            f"bpm_range {bpm_range!r}: need 30 <= LOW, HIGH <= 286 and HIGH >= 2*LOW "
            "(the range must hold one whole octave so every tempo folds into it)"
        )
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


def _near(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * b


def _octave(slow: float, fast: float, s_slow: float, s_fast: float, rolls_fast: int) -> tuple[float | None, str]:
    """Pick ``slow`` or ``fast`` (= 2 × slow) from the hats: see the module docstring's rule."""
    if fast <= GRID_MAX_BPM and s_fast >= GRID_MIN_SCORE:  # bright onsets on the 8ths of `fast`
        if not SLOW_RANGE[0] <= slow <= SLOW_RANGE[1] or rolls_fast >= ROLLS_MIN:
            return fast, "fast: hats" if rolls_fast < ROLLS_MIN else "fast: hats and rolls"
        if s_fast < GRID_STRAIGHT:  # swung 16ths of the slow tempo (lo-fi, boom-bap)
            return slow, "slow: swung 16th hats"
        return None, "octave unresolved"  # straight 16ths at `slow` = half-time 8ths at `fast`
    if s_slow >= GRID_MIN_SCORE:
        return slow, "slow: hats"
    return None, "octave unresolved"


def reconcile(
    cnn_bpm: float, beat_bpm: float | None, grid: Sequence[float], rolls: Sequence[int] = (0, 0)
) -> tuple[float | None, str]:
    """(tempo, how) from TempoCNN's answer, the beat tracker's, the grid scores of ``cnn_bpm`` ×
    (½, 1, 2) and the roll counts at ``cnn_bpm`` × (1, 2); tempo None when the estimates cannot be
    reconciled (module docstring)."""
    s_half, s_one, s_two = (float(x) for x in grid)
    r_one, r_two = (int(x) for x in rolls)
    c = float(cnn_bpm)
    if beat_bpm is not None and _near(beat_bpm, c):
        if s_two < GRID_MIN_SCORE or 2 * c > GRID_MAX_BPM:
            return c, "agree"
        tempo, how = _octave(c, 2 * c, s_one, s_two, r_two)
        return tempo, "agree" if tempo == c and how == "slow: hats" else f"agree, {how}"
    if beat_bpm is not None and (_near(beat_bpm, 2 * c) or _near(beat_bpm, c / 2)):
        if beat_bpm > c:
            tempo, how = _octave(c, 2 * c, s_one, s_two, r_two)
        else:
            tempo, how = _octave(c / 2, c, s_half, s_one, r_one)
        return tempo, f"octave apart, {how}"
    return None, "estimates disagree"


def octave_mass(mean_probs, tempo: float) -> float:
    """TempoCNN's probability mass within ±4 % of ``tempo`` and of its octaves (×¼ … ×4)."""
    p = np.asarray(mean_probs, dtype=np.float64)
    near = np.zeros(len(TEMPO_CLASSES_BPM), dtype=bool)
    for f in (0.25, 0.5, 1.0, 2.0, 4.0):
        near |= np.abs(TEMPO_CLASSES_BPM - tempo * f) <= TOLERANCE * tempo * f
    return float(p[near].sum())


def octave_safe_tempo(raw: dict) -> tuple[float | None, float, str]:
    """03's tempo of one clip from :func:`analyse_clip`'s raw output: ``(tempo or None, confidence,
    how)`` — TempoCNN, the beat tracker, the hi-hat grid and the rolls reconciled (:func:`reconcile`),
    the confidence TempoCNN's mass on that pulse (:func:`octave_mass`; 0 when unreconciled). The one
    tempo estimate of the course: stage 03 states it, stage 07 measures generated clips with it."""
    if raw.get("global_bpm") is None:
        return None, 0.0, "no estimate"
    tempo, how = reconcile(float(raw["global_bpm"]), raw.get("beat_bpm"), raw["grid"], raw.get("rolls") or (0, 0))
    return tempo, (octave_mass(raw["mean_probs"], tempo) if tempo is not None else 0.0), how


def measured_tempo(raw: dict) -> tuple[float | None, float]:
    """``(bpm, confidence)`` for *measuring* a clip (stage 07): :func:`octave_safe_tempo`, and where
    it states nothing, the beat tracker's tempo when it is an octave from TempoCNN's (a plain click
    track has no hats to decide by; TempoCNN doubles slow ones, the tracker reads them right), else
    TempoCNN's own; the confidence is then 0."""
    tempo, conf, how = octave_safe_tempo(raw)
    if tempo is not None or raw.get("global_bpm") is None:
        return tempo, conf
    beat, cnn = raw.get("beat_bpm"), float(raw["global_bpm"])
    octave = beat is not None and (_near(beat, 2 * cnn) or _near(beat, cnn / 2))
    return float(beat) if octave else cnn, 0.0


def make_row(raw: dict, bpm_range: tuple[float, float] | None, min_confidence: float) -> dict:
    row = {f: None for f in FIELDS}
    row.update(
        clip_id=raw["clip_id"],
        tempo_cnn=None,
        tempo_alt=None,
        tempo_grid=None,
        tempo_method=None,
        tempo_folded=None,
        error=raw.get("error"),
    )
    if raw.get("global_bpm") is not None:
        cnn, beat = float(raw["global_bpm"]), raw.get("beat_bpm")
        tempo, _, how = octave_safe_tempo(raw)
        folded = False
        if tempo is not None and bpm_range is not None:
            lo, hi = bpm_range
            while tempo < lo:
                tempo, folded = tempo * 2, True
            while tempo > hi:
                tempo, folded = tempo / 2, True
        conf = octave_mass(raw["mean_probs"], tempo) if tempo is not None else 0.0
        row.update(
            tempo_raw=round(tempo if tempo is not None else cnn, 1),
            tempo_confidence=round(conf, 4),
            tempo_cnn=round(cnn, 1),
            tempo_alt=round(float(beat), 1) if beat is not None else None,
            tempo_grid=[round(float(x), 3) for x in raw["grid"]],
            tempo_method=how,
            tempo_folded=folded,
        )
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
# the producer's own facts: file names and a facts file (stablebeat_utils.clipfacts reads them)

FACTS_FILE_NAMES = ("facts.csv", "facts.json")  # looked for next to the beats when facts_file is ""


def _facts_file_path(run: Run, facts_file: str) -> Path | None:
    """``facts_file`` if given (it must exist), else ``facts.csv``/``facts.json`` in 01's input folder."""
    if facts_file:
        path = Path(facts_file).expanduser()
        if not path.is_file():
            raise TempoKeyError(f'facts_file {facts_file!r}: no such file (a CSV or JSON of file → bpm, key; or "")')
        if path.suffix.lower() not in (".csv", ".json"):
            raise TempoKeyError(f"facts_file {facts_file!r}: write it as .csv or .json")
        return path
    input_dir = ((run.stage_record("01_segment") or {}).get("params") or {}).get("input_dir")
    if not input_dir:
        return None
    from .demo import ensure_demo_dataset

    folder = ensure_demo_dataset() if str(input_dir) == "demo" else Path(str(input_dir)).expanduser()
    return next((folder / n for n in FACTS_FILE_NAMES if (folder / n).is_file()), None)


def _sidecar_entry(sidecar: dict[str, dict], source: str) -> tuple[str | None, dict]:
    """The facts file's entry for a source: by relative path, file name or stem (case-insensitive)."""
    name = source.replace("\\", "/").rsplit("/", 1)[-1]
    wanted = [source, name, name.rsplit(".", 1)[0]]
    for k in wanted:
        for entry, facts in sidecar.items():
            if entry.casefold() == k.casefold():
                return entry, facts
    return None, {}


def supplied_facts(run: Run, clips: list[dict], from_names: bool, facts_file: str) -> dict:
    """``{"by_source": {source: facts}, "notes": [...], "facts_file": path or None}``: the BPM, key,
    tags and prompt the producer supplied per source file. A facts file's entry wins over the name,
    field by field. ``notes`` names every name left alone as unsure, every facts-file line that could
    not be used, and every facts-file entry that matches no source."""
    from .clipfacts import facts_from_name, read_facts_file

    path = _facts_file_path(run, facts_file)
    sidecar, notes = read_facts_file(path) if path else ({}, [])
    used: set[str] = set()
    by_source: dict[str, dict] = {}
    for source in sorted({str(c.get("source") or "") for c in clips} - {""}):
        facts: dict = {}
        if from_names:
            nf = facts_from_name(source)
            facts.update({k: v for k, v in (("bpm", nf.bpm), ("key", nf.key), ("scale", nf.scale)) if v is not None})
            facts["from"] = {k: "file name" for k in ("bpm", "key") if k in facts}
            notes += [f"{source}: name left alone: {r}" for r in nf.refused]
        entry, extra = _sidecar_entry(sidecar, source)
        if entry is not None:
            used.add(entry)
            facts.update(extra)
            facts.setdefault("from", {}).update({k: path.name for k in ("bpm", "key") if k in extra})
        if facts.get("from"):
            by_source[source] = facts
    notes += [f"{path.name}: {e!r} matches no source file of 01_segment: ignored" for e in sidecar if e not in used]
    return {"by_source": by_source, "notes": notes, "facts_file": str(path) if path else None}


def apply_supplied(row: dict, clip: dict, supplied: dict) -> dict:
    """The row with the producer's values in ``tempo``/``key``/``scale`` where supplied
    (``tempo_source``/``key_source`` = ``"supplied"``, from where in ``supplied_from``); the
    estimates stay in ``tempo_estimated``/``key_estimated``/``scale_estimated`` (the card's rule
    applied) and in the raw fields."""
    row = dict(row)
    facts = supplied["by_source"].get(str(clip.get("source") or ""), {})
    row.update(
        source=clip.get("source"),
        tempo_estimated=row["tempo"],
        key_estimated=row["key"],
        scale_estimated=row["scale"],
        tempo_supplied=facts.get("bpm"),
        key_supplied=facts.get("key"),
        scale_supplied=facts.get("scale"),
        tags_supplied=facts.get("tags"),
        prompt_supplied=facts.get("prompt"),
        supplied_from=facts.get("from") or None,
    )
    if facts.get("bpm") is not None:
        row["tempo"] = facts["bpm"]
    if facts.get("key") is not None:
        row["key"], row["scale"] = facts["key"], facts["scale"]
    row["tempo_source"] = (
        "supplied" if facts.get("bpm") is not None else "estimated" if row["tempo"] is not None else None
    )
    row["key_source"] = "supplied" if facts.get("key") is not None else "estimated" if row["key"] is not None else None
    return row


def tempo_disagreement(supplied: float, estimate: float | None) -> str:
    """How an estimate stands to the producer's tempo: ``agrees`` (within 4 %), ``octave: estimate
    doubled``/``halved``, ``3:2``, ``off by +7 %``; ``no estimate``."""
    if estimate is None:
        return "no estimate"
    for factor, verdict in ((1.0, "agrees"), (2.0, "octave: estimate doubled"), (0.5, "octave: estimate halved")):
        if _near(estimate, factor * supplied):
            return verdict
    if _near(estimate, 1.5 * supplied) or _near(estimate, supplied / 1.5):
        return "3:2"
    return f"off by {100 * (estimate - supplied) / supplied:+.0f} %"


def key_disagreement(supplied: tuple[str, str], estimate: tuple[str | None, str | None]) -> str:
    """``agrees``, ``relative major``/``relative minor`` (the estimate is the supplied key's relative),
    ``parallel`` (same tonic, other scale), ``a fifth away``, ``another key``; ``no estimate``."""
    from .clipfacts import parse_key_name

    pc_s, pc_e = parse_key_name(supplied[0]), parse_key_name(estimate[0])
    if pc_e is None or estimate[1] not in ("major", "minor"):
        return "no estimate"
    sc_s, sc_e = supplied[1], estimate[1]
    if (pc_s, sc_s) == (pc_e, sc_e):
        return "agrees"
    if sc_s == "minor" and sc_e == "major" and pc_e == (pc_s + 3) % 12:
        return "relative major"
    if sc_s == "major" and sc_e == "minor" and pc_e == (pc_s + 9) % 12:
        return "relative minor"
    if pc_s == pc_e:
        return "parallel"
    if sc_s == sc_e and (pc_e - pc_s) % 12 in (5, 7):
        return "a fifth away"
    return "another key"


def supplied_vs_estimated(rows: Sequence[dict]) -> list[dict]:
    """One row per clip with a producer-supplied tempo or key: the supplied value, the estimate
    (``tempo_raw``, ``key_raw``/``scale_raw``: before the card's rule), how they disagree
    (:func:`tempo_disagreement`, :func:`key_disagreement`) and what the supplied value changed in
    the row (``changed``: the value stated before → after; ``""`` when nothing changed)."""
    out = []
    for r in rows:
        ts, ks = r.get("tempo_supplied"), r.get("key_supplied")
        if ts is None and ks is None:
            continue
        changed = []
        if ts is not None and (r.get("tempo_estimated") is None or not _near(r["tempo_estimated"], ts)):
            changed.append(f"tempo {r.get('tempo_estimated') or 'none'} → {ts:g}")
        kest = (r.get("key_estimated"), r.get("scale_estimated"))
        if ks is not None and kest != (ks, r.get("scale_supplied")):
            before = f"{kest[0]} {kest[1]}" if kest[0] else "none"
            changed.append(f"key {before} → {ks} {r.get('scale_supplied')}")
        out.append(
            {
                "clip_id": r["clip_id"],
                "source": r.get("source"),
                "tempo_supplied": ts,
                "tempo_estimate": r.get("tempo_raw"),
                "tempo": tempo_disagreement(ts, r.get("tempo_raw")) if ts is not None else "",
                "key_supplied": f"{ks} {r.get('scale_supplied')}" if ks else None,
                "key_estimate": f"{r.get('key_raw')} {r.get('scale_raw')}" if r.get("key_raw") else None,
                "key": key_disagreement((ks, r.get("scale_supplied")), (r.get("key_raw"), r.get("scale_raw")))
                if ks
                else "",
                "changed": "; ".join(changed),
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# the stage


def _ok_clips(run: Run) -> list[dict]:
    seg = run.path("01_segment", "segments.jsonl")
    if not seg.is_file():
        raise TempoKeyError(f"{seg} not found: run notebook 01_segment first (or check run_dir)")
    rows = []  # only what this stage uses of each row: at 40,000 clips the whole rows are ~90 MiB
    for r in iter_jsonl(seg):
        if r.get("status") != "ok":
            continue
        if "clip_id" not in r or "path" not in r:
            raise TempoKeyError(f"{seg}: a row without clip_id/path: {json.dumps(r)[:200]}")
        rows.append({"clip_id": r["clip_id"], "path": r["path"], "source": r.get("source")})
    return sorted(rows, key=lambda r: r["clip_id"])


CRASHED = (
    "analysing it killed the worker process (a decoder or library crash, or out of memory): "
    "it is tried again on the next run"
)


def _analyse_job(job: list[str]) -> dict:
    return analyse_clip(*job)


def _crashed_job(job: list[str]) -> dict:
    return {"clip_id": job[0], "error": f"{job[2]}: {CRASHED}"}


def _iter_results(jobs: list[tuple[str, str, str]], graph: str, key_profile: str, workers: int, analyse=_analyse_job):
    """Yield raw results in job order, on the one crash-isolating pool (:mod:`stablebeat_utils.pool`)
    with at most 2 jobs per worker in flight. A clip that kills its worker process becomes one
    error row (:data:`CRASHED`, not final: the next run tries it again) and the batch goes on."""
    if workers <= 1 or len(jobs) <= 1:
        init_estimators(graph, key_profile)
        for job in jobs:
            yield analyse(list(job))
        return
    from .pool import ordered_bounded

    yield from ordered_bounded(
        analyse,
        [list(j) for j in jobs],
        workers,
        window=2 * workers,
        on_crash=_crashed_job,
        initializer=init_estimators,
        initargs=(graph, key_profile),
    )


def _write_final(out: Path, log: JsonlLog, clips: list[dict], min_confidence: float, supplied: dict) -> dict:
    """Write the rows of ``clips`` (threshold re-applied, producer-supplied facts applied, in this
    order) atomically, one at a time (never all in memory); return the summary's counts."""
    counts = dict.fromkeys(
        ("errors", "tempo_kept", "tempo_unreconciled", "key_kept", "tempo_supplied", "key_supplied"), 0
    )
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for clip in clips:
            r = apply_supplied(apply_threshold(log.get(clip["clip_id"]), min_confidence), clip, supplied)
            counts["tempo_supplied"] += r["tempo_source"] == "supplied"
            counts["key_supplied"] += r["key_source"] == "supplied"
            fh.write(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n")
            counts["errors"] += bool(r["error"])
            counts["tempo_kept"] += r["tempo"] is not None
            counts["tempo_unreconciled"] += (
                "unresolved" in str(r.get("tempo_method")) or r.get("tempo_method") == "estimates disagree"
            )
            counts["key_kept"] += r["key"] is not None
    return counts


def run(
    run_dir: str = "runs/demo",
    profile: str = "demo",
    tempo_model: str = "",
    model_cache_dir: str = "",
    min_confidence: float = 0.7,
    bpm_range: str = "",
    key_profile: str = "edma",
    workers: int = 2,
    facts_from_names: bool = True,
    facts_file: str = "",
) -> dict:
    """Analyse every ``ok`` clip of ``RUN_DIR/01_segment``; write ``RUN_DIR/03_tempo_key/tempo_key.jsonl``."""
    run_, params = begin(STAGE, locals())  # a wrong type or an incompatible run folder: refused by name
    # 1. validate everything before any work
    if not 0.0 <= float(min_confidence) <= 1.0:
        raise TempoKeyError(f"min_confidence {min_confidence!r}: a confidence is between 0 and 1 (the card uses 0.7)")
    if key_profile not in KEY_PROFILES:
        raise TempoKeyError(f"key_profile {key_profile!r}: choose one of {', '.join(KEY_PROFILES)}")
    if int(workers) < 1:
        raise TempoKeyError(f"workers {workers!r}: need at least 1")
    prior = parse_bpm_range(bpm_range)
    clips = _ok_clips(run_)
    supplied = supplied_facts(run_, clips, bool(facts_from_names), facts_file)
    graph = resolve_tempo_model(tempo_model, model_cache_dir)

    out_dir = run_.stage_dir(STAGE)
    out = out_dir / "tempo_key.jsonl"
    # rows hold raw values that depend on the graph, the key profile and the prior: if those
    # changed since the rows were written, they are stale and the stage starts over.
    analysis = {
        "graph_sha256": file_sha256(graph),
        "key_profile": key_profile,
        "bpm_range": list(prior) if prior else None,
        "tempo_method": TEMPO_METHOD,
    }
    settings = out_dir / "analysis.json"
    if read_json(settings) != analysis:
        out.unlink(missing_ok=True)
        run_.clear_done(STAGE)
        atomic_write_json(settings, analysis)
    log = JsonlLog(out)
    # a clip that killed its worker is no final verdict (an out-of-memory kill, a broken library on
    # this machine): its row is dropped here and the clip analysed again
    log.discard({r["clip_id"] for r in log.rows() if str(r.get("error") or "").endswith(CRASHED)})

    folder = ClipFolder(run_.root)
    jobs = [(c["clip_id"], str(folder.path(c["path"])), c["path"]) for c in clips if c["clip_id"] not in log]
    folder.require(STAGE, [j[2] for j in jobs])  # clips gone from a wiped clip_dir: STOP, naming the fix
    from tqdm.auto import tqdm

    with tqdm(total=len(jobs), desc="tempo & key", unit="clip", disable=not jobs) as bar:
        for raw in _iter_results(jobs, str(graph), key_profile, int(workers)):
            log.append(make_row(raw, prior, float(min_confidence)))
            bar.update(1)

    # finalize: only the current ok clips, threshold re-applied, sorted, written atomically
    counts = _write_final(out, log, clips, float(min_confidence), supplied)
    summary = {"clips": len(clips), "analysed_now": len(jobs), **counts, "facts_notes": supplied["notes"]}
    summary.update(min_confidence=float(min_confidence), output=str(out))
    run_.mark_done(STAGE, params=params, **summary)
    return summary


def read_rows(run_dir: str) -> list[dict]:
    """The rows of ``RUN_DIR/03_tempo_key/tempo_key.jsonl`` (for notebooks and later stages)."""
    return read_jsonl(Run(run_dir).path(STAGE, "tempo_key.jsonl"))
