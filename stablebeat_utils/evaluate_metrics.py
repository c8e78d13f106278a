"""The card's metrics of notebook ``07_evaluate``: pure functions, unit-tested on known signals (base layer:
06's variations and 05's demo scores measure with them too).

Signal metrics of one clip (:func:`signal_metrics`: spectral centroid, spectral flatness,
harmonic/percussive ratio, transient sharpness — each defined in its docstring), what a prompt
asked for (:func:`parse_bpm`, :func:`parse_key`: the one parser of :mod:`clipfacts`) and how well a
clip kept to it (:func:`bpm_adherence`, :func:`key_score`), and the Fréchet distance of two sets
of embeddings. No files, no models: :mod:`stablebeat_utils.evaluate` (the stage) measures with
these, :mod:`stablebeat_utils.evaluate_report` tabulates.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .clipfacts import parse_key  # noqa: F401  (the one key parser: 07 reads a prompt's key with 04's rules)


class EvaluateError(ValueError):
    """Input or a parameter that cannot be evaluated; the message is meant for a person."""


SR = 44100
N_FFT = 2048
HOP = 512
HPSS_KERNEL = 31
ACTIVE_DB = 60.0  # frames more than this far below the loudest frame are not averaged
TS_FRAME, TS_HOP = 512, 128  # transient sharpness: its own fine RMS envelope (11.6 ms frames, 2.9 ms hop)
TS_REF_RMS = 0.1  # transient sharpness is measured as if the clip had this RMS (−20 dBFS): loudness-free
BPM_TOLERANCE = 0.04
OCTAVE_FACTORS = (0.5, 1.0, 2.0)
CARD_METRICS = ("bpm", "spectral_centroid", "spectral_flatness", "hp_ratio", "transient_sharpness", "clap_score")
SIGNAL_METRICS = ("spectral_centroid", "spectral_flatness", "hp_ratio", "transient_sharpness")
# stable-audio-metrics' CLAP score (src/clap_score.py): LAION's 630k-audioset-fusion-best.pt; transformers'
# conversion of that checkpoint is the hub repo below. Its audio: mono 48 kHz, peak-normalised to −1 dBFS,
# quantised to int16 and back, the whole clip to the model (fusion truncation for clips over 10 s).
SAM_CLAP_MODEL = "laion/clap-htsat-fused"


def _as_mono44(y: np.ndarray, sr: int) -> np.ndarray:
    from . import audio

    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 2:
        y = audio.to_mono(y)
    if sr != SR:
        y = audio.resample(y[None], sr, SR, quality="HQ")[0]
    if not np.all(np.isfinite(y)):
        raise EvaluateError("the audio holds NaN or infinite samples")
    return np.ascontiguousarray(y)


def magnitude(y: np.ndarray, sr: int = SR) -> np.ndarray:
    """``|STFT|`` (n_fft 2048, hop 512) of ``y`` (mono ``(n,)`` or ``(channels, n)``) at 44.1 kHz."""
    import librosa

    return np.abs(librosa.stft(_as_mono44(y, sr), n_fft=N_FFT, hop_length=HOP))


def active_frames(S: np.ndarray, db: float = ACTIVE_DB) -> np.ndarray:
    """Boolean mask of the frames within ``db`` dB of the loudest frame (energy Σ|X|²)."""
    energy = (S.astype(np.float64) ** 2).sum(axis=0)
    top = energy.max() if energy.size else 0.0
    if top <= 0:
        raise EvaluateError("the clip is digital silence: no spectral metric can be measured")
    return energy >= top * 10 ** (-db / 10)


def spectral_centroid(S: np.ndarray, sr: int = SR) -> float:
    """Mean spectral centroid (Hz) over the active frames of a magnitude spectrogram."""
    import librosa

    c = librosa.feature.spectral_centroid(S=S, sr=sr, n_fft=N_FFT)[0]
    return float(c[active_frames(S)].mean())


def spectral_flatness(S: np.ndarray) -> float:
    """Mean spectral flatness (power spectrum, geometric / arithmetic mean) over the active frames."""
    import librosa

    f = librosa.feature.spectral_flatness(S=S, n_fft=N_FFT, power=2.0)[0]
    return float(f[active_frames(S)].mean())


def hp_ratio(S: np.ndarray) -> float:
    """Σ|H| / Σ|P| after ``librosa.decompose.hpss`` (31×31 median filters, soft masks)."""
    import librosa

    H, P = librosa.decompose.hpss(S, kernel_size=HPSS_KERNEL)
    p = float(P.sum())
    return float(H.sum()) / p if p > 0 else float("inf")


def transient_sharpness(y: np.ndarray, sr: int = SR) -> float:
    """How sharp the attacks are, independent of loudness (see the module docstring).

    ``TS = TS_REF_RMS² · Σ max(0, Δr)² / Σ r²`` on the RMS envelope ``r`` (512-sample frames, hop 128)
    of the mono 44.1 kHz signal ``y`` (``(n,)`` or ``(channels, n)`` at rate ``sr``). Gain cancels
    between numerator and denominator; a rise made in few frames beats the same rise spread over many.
    Version 1 of this metric (``METRICS_VERSION`` 1) used the 2048-sample frames without the
    division: it grew with loudness and rated long soft swells sharper than short clicks.
    """
    import librosa

    y = _as_mono44(y, sr)
    r = librosa.feature.rms(y=y, frame_length=TS_FRAME, hop_length=TS_HOP)[0].astype(np.float64)
    energy = float((r**2).sum())
    if energy <= 0:
        raise EvaluateError("the clip is digital silence: no transient sharpness can be measured")
    rise = np.maximum(np.diff(r), 0.0)
    return float(TS_REF_RMS**2 * (rise**2).sum() / energy)


def signal_metrics(y: np.ndarray, sr: int) -> dict[str, float]:
    """The four signal metrics of one clip, sharing one STFT."""
    y = _as_mono44(y, sr)
    S = magnitude(y)
    return {
        "spectral_centroid": spectral_centroid(S),
        "spectral_flatness": spectral_flatness(S),
        "hp_ratio": hp_ratio(S),
        "transient_sharpness": transient_sharpness(y),
    }


def log_distance(value: float | None, median_log: float | None) -> float | None:
    """How far a signal metric is from the training clips, as 07 compares them:
    ``|log(value) − median log(training clips)|``; None when either is missing or not positive."""
    if value is None or median_log is None or not math.isfinite(value) or value <= 0:
        return None
    return abs(math.log(value) - median_log)


NOTE_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
PC_NAME = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


def parse_bpm(prompt: str) -> float | None:
    """The tempo a prompt asks for ("at 110 BPM", "110 b.p.m.", "tempo: 90", "one hundred and ten
    beats a minute"), or None. 30–300 only. The reader of stage 04's validator:
    :func:`stablebeat_utils.clipfacts.parse_bpm`."""
    from .clipfacts import parse_bpm as _parse_bpm

    return _parse_bpm(prompt)


def pitch_class(name: str) -> int:
    """'C#' / 'Db' / 'D♭' / 'Bb' → 0..11."""
    name = name.strip()
    pc = NOTE_PC[name[0].upper()]
    rest = name[1:].strip().lower()
    if rest in ("#", "♯", "-sharp", "sharp"):
        pc += 1
    elif rest in ("b", "♭", "-flat", "flat"):
        pc -= 1
    elif rest:
        raise ValueError(f"not a note name: {name!r}")
    return pc % 12


# parse_key: the one key parser, clipfacts.parse_key ("in D major" → ("D", "major"); its docstring gives the
# rules for the ambiguous lower-case "a"), imported at the top


def bpm_adherence(requested: float | None, measured: float | None) -> dict[str, Any]:
    """Error measures of ``measured`` against ``requested`` (all None when either is missing)."""
    out = {"bpm_abs_error": None, "bpm_rel_error": None, "bpm_octave_error": None, "bpm_acc1": None, "bpm_acc2": None}
    if requested is None or measured is None or not math.isfinite(measured):
        return out
    err = abs(measured - requested)
    oct_err = min(abs(measured - f * requested) for f in OCTAVE_FACTORS)
    out.update(
        bpm_abs_error=err,
        bpm_rel_error=err / requested,
        bpm_octave_error=oct_err,
        bpm_acc1=bool(err <= BPM_TOLERANCE * requested),
        bpm_acc2=any(abs(measured - f * requested) <= BPM_TOLERANCE * f * requested for f in OCTAVE_FACTORS),
    )
    return out


def key_score(reference: tuple[str, str], estimate: tuple[str, str]) -> float:
    """MIREX key score: 1 same key, 0.5 estimate a fifth above (same mode), 0.3 relative, 0.2 parallel.

    The rule of ``mir_eval.key.weighted_score`` (not a dependency of this project for 10 lines).
    """
    rpc, rmode = pitch_class(reference[0]), reference[1]
    epc, emode = pitch_class(estimate[0]), estimate[1]
    if rmode == emode:
        if rpc == epc:
            return 1.0
        if (epc - rpc) % 12 == 7:
            return 0.5
        return 0.0
    if rpc == epc:
        return 0.2
    if rmode == "major" and (epc - rpc) % 12 == 9:  # C major → A minor
        return 0.3
    if rmode == "minor" and (epc - rpc) % 12 == 3:  # A minor → C major
        return 0.3
    return 0.0


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and of ``b`` (FAD's formula).

    ``tr (Σa Σb)^½`` is computed as ``Σ √λ`` of the symmetric PSD matrix ``Σa^½ Σb Σa^½`` (same
    eigenvalues), not with ``scipy.linalg.sqrtm`` of the non-symmetric product, which returns
    complex, inaccurate values when the covariances are rank-deficient — always the case with
    fewer clips than dimensions. Needs at least 2 rows in each set.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (n, dim) arrays of the same dim, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 embeddings per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(ca)
    sqrt_ca = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = sqrt_ca @ cb @ sqrt_ca
    lam = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(lam, 0, None)).sum())
    d = float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * tr_covmean)
    return max(d, 0.0)
