"""The tempo and key estimator, shared by 03_tempo_key and 07_evaluate (moved here from tempo_key.py).

Used by notebooks 03_tempo_key and 07_evaluate; no notebook of its own. Tempo: TempoCNN (deeptemp-k16-3)
class probabilities, their majority vote, folded into a BPM range and reconciled with a beat tracker and
the hi-hat grid; key: Essentia's ``KeyExtractor``. :mod:`stablebeat_utils.tempo_key` tells the rules in
full and applies the card's confidence threshold; 07 measures generated clips with the same functions.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

import numpy as np

from .runs import atomic_path, file_sha256

TEMPO_SR = 11025
TEMPO_MODEL_URL = "https://essentia.upf.edu/models/tempo/tempocnn/deeptemp-k16-3.pb"
TEMPO_MODEL_SHA256 = "21c328332a221695dd6e8572728c617373064df882e8f81da6d88dc3a821e3b3"
TEMPO_CLASSES_BPM = np.arange(30, 286, dtype=np.float64)  # deeptemp: 256 classes, 30..285 BPM
TOLERANCE = 0.04  # ±4 %: the confidence window and the accuracy tolerance
# the profiles this Essentia (2.1-beta6-dev) runs on a major *and* a minor signal: its KeyExtractor
# rejects "wei"/"faraldo"/"pentatonic" when configured, and "weichai" raises on minor keys ("does not
# support minor scales"); tests/test_tempo_key.py runs every name listed here through Essentia
KEY_PROFILES = (
    "edma",
    "edmm",
    "bgate",
    "braw",
    "temperley",
    "temperley2005",
    "krumhansl",
    "shaath",
    "noland",
    "diatonic",
    "tonictriad",
    "thpcp",
    "gomez",
)

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


def _key_extractor(sr: int, profile: str = ""):
    import essentia.standard as es

    profile = profile or _WORKER["key_profile"]
    if (sr, profile) not in _WORKER["key"]:
        _WORKER["key"][sr, profile] = es.KeyExtractor(profileType=profile, sampleRate=float(sr))
    return _WORKER["key"][sr, profile]


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
        mono32 = np.ascontiguousarray(mono, dtype=np.float32)
        key, scale, strength = _key_extractor(sr)(mono32)
        alt = _key_extractor(sr, KEY_ALT)(mono32) if _WORKER["key_profile"] == "edma" else None
        y = audio.resample(mono[None], sr, TEMPO_SR)[0]
        probs = np.asarray(_WORKER["probs"](y), dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] == 0:
            seconds = len(y) / TEMPO_SR
            return {
                "clip_id": clip_id,
                "key": key,
                "scale": scale,
                "strength": float(strength),
                "key_alt": [alt[0], alt[1], float(alt[2])] if alt is not None else None,
                "error": f"{name}: {seconds:.1f} s is shorter than one TempoCNN patch (~12 s): no tempo",
            }
        global_bpm = majority_tempo(probs)
        # the second estimate and the hi-hat grid read the clip at 44.1 kHz (RhythmExtractor2013's rate)
        m44 = mono if sr == GRID_SR else audio.resample(mono[None], sr, GRID_SR)[0]
        m44 = np.ascontiguousarray(m44, dtype=np.float32)
        beat_bpm = float(_WORKER["beats"](m44[: int(BEAT_SECONDS * GRID_SR)])[0])  # enough beats to count
        env, mid = onset_envelopes(m44)
        ac = onset_autocorrelation(m44, env=env)
        mid_ac = onset_autocorrelation(m44, env=mid, max_lag_s=MID_MAX_LAG_S)
        g = float(global_bpm)
        return {
            "clip_id": clip_id,
            "global_bpm": g,
            "mean_probs": probs.mean(axis=0).tolist(),
            "beat_bpm": beat_bpm,
            "grid": [grid_score(ac, g * f) for f in (0.5, 1.0, 2.0)],
            "rolls": [roll_count(env, g * f) for f in (1.0, 2.0)],
            "snare": [round(x, 4) for x in snare_scores(mid_ac, g)],
            "key": key,
            "scale": scale,
            "strength": float(strength),
            "key_alt": [alt[0], alt[1], float(alt[2])] if alt is not None else None,
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
TEMPO_METHOD = 4  # bumped when the tempo or key rule changes: older rows are re-analysed (4: snare, triplets, keys)
GRID_STRAIGHT = 0.6  # hats this regular on the 8ths of 2x play straight 16ths of x (swing drops it to ~0.45)
ROLLS_MIN = 3  # this many roll gaps at the fast reading: trap/drill hats
SLOW_RANGE = (68.0, 100.0)  # a slow reading here may be lo-fi/boom-bap with 16th hats: rolls decide
MID_BAND_HZ = (1000.0, 4000.0)  # claps and snares (and what else sounds there): the backbeat's band
MID_MAX_LAG_S = 2.0  # two beats at 60 BPM
SNARE_MIN = 0.7  # the mid band repeats this strongly every beat of the slow reading …
SNARE_RATIO = 0.8  # … and about as strongly as every two beats: a snare on every slow beat
HALF_TIME_MAX_BPM = (
    170.0  # trap/drill's half-time tempi end here: straight 16ths at a slow tempo above its half are boom-bap
)
# TempoCNN's mass that counts for a tempo: its octaves and its triplet levels (×3/4, ×3/2 and their octaves)
PULSE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0, 0.375, 0.75, 1.5, 3.0)


def onset_envelopes(y: np.ndarray, sr: int = GRID_SR) -> tuple[np.ndarray, np.ndarray]:
    """Two onset envelopes of ``y`` from one spectrogram, one value per :data:`GRID_HOP` frame: the
    half-wave rectified flux of the log-magnitude spectrum above :data:`GRID_BAND_HZ` (hats) and in
    :data:`MID_BAND_HZ` (claps, snares), each clipped at its 99.5th percentile so that a few loud
    clicks (vinyl crackle, a crash) cannot outweigh the grid."""
    y = np.asarray(y, dtype=np.float32)
    if len(y) < 4 * GRID_NFFT or sr != GRID_SR:
        raise ValueError(f"bright_onsets: need {GRID_SR} Hz audio longer than {4 * GRID_NFFT} samples")
    n = 1 + (len(y) - GRID_NFFT) // GRID_HOP
    frames = np.lib.stride_tricks.sliding_window_view(y, GRID_NFFT)[::GRID_HOP][:n]
    logmag = np.log1p(100.0 * np.abs(np.fft.rfft(frames * np.hanning(GRID_NFFT).astype(np.float32), axis=1)))
    flux = np.maximum(np.diff(logmag, axis=0), 0.0)
    freqs = np.fft.rfftfreq(GRID_NFFT, 1.0 / sr)
    out = []
    for band in (freqs >= GRID_BAND_HZ, (freqs >= MID_BAND_HZ[0]) & (freqs < MID_BAND_HZ[1])):
        env = flux[:, band].sum(axis=1)
        out.append(np.minimum(env, np.percentile(env, 99.5)))
    return out[0], out[1]


def bright_onsets(y: np.ndarray, sr: int = GRID_SR) -> np.ndarray:
    """The bright-band (hi-hat) onset envelope of ``y`` (:func:`onset_envelopes`)."""
    return onset_envelopes(y, sr)[0]


def onset_autocorrelation(
    y: np.ndarray, sr: int = GRID_SR, env: np.ndarray | None = None, max_lag_s: float = GRID_MAX_LAG_S
) -> np.ndarray:
    """Autocorrelation (lag 0 = 1) of the bright-band onset envelope of ``y`` (:func:`bright_onsets`,
    or ``env`` when given), lags 0…``max_lag_s`` (1 s) in frames."""
    env = bright_onsets(y, sr) if env is None else env
    env = env - env.mean()
    power = np.abs(np.fft.rfft(env, 2 * len(env))) ** 2
    ac = np.fft.irfft(power)[: int(max_lag_s * sr / GRID_HOP) + 2]
    return ac / ac[0] if ac[0] > 0 else np.zeros_like(ac)


def snare_scores(mid_ac: np.ndarray, bpm: float, sr: int = GRID_SR) -> list[float]:
    """How strongly the mid band (claps, snares) repeats every 1, 2 and 4 beats of ``bpm`` (the
    autocorrelation of its onsets at those lags, ±3 %; 0 beyond :data:`MID_MAX_LAG_S`)."""
    return [grid_score(mid_ac, bpm / (2 * k), sr) for k in (1, 2, 4)]  # grid_score reads 8th notes


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


def _octave(
    slow: float, fast: float, s_slow: float, s_fast: float, rolls_fast: int, snare: Sequence[float] = (0.0, 0.0)
) -> tuple[float | None, str]:
    """Pick ``slow`` or ``fast`` (= 2 × slow) from the hats, then the snare (``snare``: the mid band's
    repetition every 1 and 2 beats of ``slow``): see the module docstring's rule."""
    if fast <= GRID_MAX_BPM and s_fast >= GRID_MIN_SCORE:  # bright onsets on the 8ths of `fast`
        if not SLOW_RANGE[0] <= slow <= SLOW_RANGE[1] or rolls_fast >= ROLLS_MIN:
            return fast, "fast: hats" if rolls_fast < ROLLS_MIN else "fast: hats and rolls"
        if s_fast < GRID_STRAIGHT:  # swung 16ths of the slow tempo (lo-fi, boom-bap)
            return slow, "slow: swung 16th hats"
        one, two = (float(x) for x in snare)
        if one >= SNARE_MIN and one >= SNARE_RATIO * two:  # a backbeat every slow beat: 2 and 4 of `fast`
            return fast, "fast: snare on every slow beat"
        if fast > HALF_TIME_MAX_BPM:  # no half-time trap this fast: boom-bap's straight 16ths
            return slow, "slow: 16th hats above half-time tempi"
        return None, "octave unresolved"  # straight 16ths at `slow` = half-time 8ths at `fast`
    if s_slow >= GRID_MIN_SCORE:
        return slow, "slow: hats"
    return None, "octave unresolved"


def reconcile(
    cnn_bpm: float,
    beat_bpm: float | None,
    grid: Sequence[float],
    rolls: Sequence[int] = (0, 0),
    snare: Sequence[float] = (0.0, 0.0, 0.0),
) -> tuple[float | None, str]:
    """(tempo, how) from TempoCNN's answer, the beat tracker's, the grid scores of ``cnn_bpm`` ×
    (½, 1, 2), the roll counts at ``cnn_bpm`` × (1, 2) and the snare scores every 1, 2 and 4 beats of
    ``cnn_bpm`` (:func:`snare_scores`); tempo None when the estimates cannot be reconciled (module docstring)."""
    s_half, s_one, s_two = (float(x) for x in grid)
    r_one, r_two = (int(x) for x in rolls)
    n1, n2, n4 = (float(x) for x in snare)
    c = float(cnn_bpm)
    if beat_bpm is not None and _near(beat_bpm, c):
        if s_two < GRID_MIN_SCORE or 2 * c > GRID_MAX_BPM:
            return c, "agree"
        tempo, how = _octave(c, 2 * c, s_one, s_two, r_two, (n1, n2))
        return tempo, "agree" if tempo == c and how == "slow: hats" else f"agree, {how}"
    if beat_bpm is not None and (_near(beat_bpm, 2 * c) or _near(beat_bpm, c / 2)):
        if beat_bpm > c:
            tempo, how = _octave(c, 2 * c, s_one, s_two, r_two, (n1, n2))
        else:
            tempo, how = _octave(c / 2, c, s_half, s_one, r_one, (n2, n4))
        return tempo, f"octave apart, {how}"
    return None, "estimates disagree"


def octave_mass(mean_probs, tempo: float) -> float:
    """TempoCNN's probability mass within ±4 % of ``tempo`` and of its octaves (×¼ … ×4)."""
    p = np.asarray(mean_probs, dtype=np.float64)
    near = np.zeros(len(TEMPO_CLASSES_BPM), dtype=bool)
    for f in (0.25, 0.5, 1.0, 2.0, 4.0):
        near |= np.abs(TEMPO_CLASSES_BPM - tempo * f) <= TOLERANCE * tempo * f
    return float(p[near].sum())


def pulse_mass(mean_probs, tempo: float) -> float:
    """TempoCNN's probability mass on ``tempo``'s pulse: within ±4 % of the tempo, its octaves and its
    triplet levels (× :data:`PULSE_FACTORS`: ¾ and 3/2 of it and their octaves — where a drill beat's
    triplet fills put part of the network's mass). The stage's ``tempo_confidence``."""
    p = np.asarray(mean_probs, dtype=np.float64)
    near = np.zeros(len(TEMPO_CLASSES_BPM), dtype=bool)
    for f in PULSE_FACTORS:
        near |= np.abs(TEMPO_CLASSES_BPM - tempo * f) <= TOLERANCE * tempo * f
    return float(p[near].sum())


def octave_safe_tempo(raw: dict) -> tuple[float | None, float, str]:
    """03's tempo of one clip from :func:`analyse_clip`'s raw output: ``(tempo or None, confidence,
    how)`` — TempoCNN, the beat tracker, the hi-hat grid and the rolls reconciled (:func:`reconcile`),
    the confidence TempoCNN's mass on that pulse (:func:`octave_mass`; 0 when unreconciled). The one
    tempo estimate of the course: stage 03 states it, stage 07 measures generated clips with it."""
    if raw.get("global_bpm") is None:
        return None, 0.0, "no estimate"
    tempo, how = reconcile(
        float(raw["global_bpm"]),
        raw.get("beat_bpm"),
        raw["grid"],
        raw.get("rolls") or (0, 0),
        raw.get("snare") or (0.0, 0.0, 0.0),
    )
    return tempo, (pulse_mass(raw["mean_probs"], tempo) if tempo is not None else 0.0), how


KEY_ALT = "edmm"  # the second opinion on edma's keys: Faraldo's EDM profile for minor keys
KEY_RELATIVE_MARGIN = 0.08  # edma's major must beat edmm's relative minor by this much to be stated


def resolve_key(raw: dict) -> tuple[str | None, str | None, float, str]:
    """``(key, scale, confidence, how)`` of one clip from :func:`analyse_clip`'s raw output.

    A minor key and its relative major share their notes; ``edma`` leans major (on synthetic beats it
    read 18 % of the keys as their relative, nearly all minor keys as major). Where ``edma`` says
    major and :data:`KEY_ALT` (``edmm``, which leans minor) says its relative minor, the two
    strengths decide: ``edmm`` stronger → the minor (``"relative minor: edmm stronger"``); ``edma``
    ahead by less than :data:`KEY_RELATIVE_MARGIN` → not stated (``"relative unresolved"``,
    confidence 0, the raw key stays ``edma``'s); else ``edma``'s. Other profiles: their own answer."""
    key, scale, strength = raw.get("key"), raw.get("scale"), float(raw.get("strength") or 0.0)
    alt = raw.get("key_alt")
    if key is None or not alt or scale != "major" or alt[1] != "minor":
        return key, scale, strength, "profile"
    from .clipfacts import parse_key_name

    pc, pc_alt = parse_key_name(key), parse_key_name(alt[0])
    if pc is None or pc_alt != (pc + 9) % 12:
        return key, scale, strength, "profile"
    lead = strength - float(alt[2])
    if lead < 0:
        return alt[0], "minor", float(alt[2]), "relative minor: edmm stronger"
    if lead < KEY_RELATIVE_MARGIN:
        return key, scale, 0.0, "relative unresolved"
    return key, scale, strength, "profile"


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
