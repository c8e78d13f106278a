"""Defect detectors for generated audio: what notebook ``05_train`` (and ``05b_focus``) listen for
in the demos they render during training.

The field's most common fine-tuning complaint is "after N steps it generates noise / clicks"
while the loss still falls. These detectors put a number and a verdict on each demo as it is
made (:mod:`stablebeat_utils.train_watch` scores the demos with them and with 07's metrics).
Pure numpy/scipy, no files, no models; each detector is a small function returning a
:class:`Check` (the measured value, the threshold, whether it fired). Thresholds are module
constants, measured on the bundled demo beats and on synthetic signals with and without the
defect (``benchmarks/bench_audio_checks.py``; the table is in ``docs/benchmarks.md``).

Audio is ``(channels, samples)`` or ``(samples,)`` float, full scale = 1.0, *before* any level
normalisation (a demo is normalised for listening only after it is checked: normalising would hide
clipping and a DC offset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: RMS below this (dBFS) is silence: nothing to listen to, and 07's metrics cannot be measured
SILENCE_DBFS = -60.0
#: a sample at or over this magnitude is at full scale (it clips when written as fixed-point audio)
CLIP_LEVEL = 0.999
#: clipping fires when more than this fraction of the samples sit at full scale (0.1 %)
CLIP_FRACTION = 1e-3
#: DC offset fires when |mean| exceeds this fraction of the RMS (music: < 0.01; a bias: ~1)
DC_RATIO = 0.1
#: a click is a linear-prediction residual this many robust deviations over its surroundings
CLICK_SIGMAS = 24.0
#: clicks fire at more than this many clicks per second (2 s demos: three clicks or more)
CLICK_RATE = 1.25
CLICK_ORDER = 32  # linear-prediction order: music is predictable, a click is not
CLICK_BLOCK = 1024  # samples: the surroundings a click is compared with
CLICK_MERGE_S = 0.002  # outliers closer than this are one click
#: collapse fires when every pair of demos (different prompts) differs by less than this (dB RMS
#: over :data:`N_BANDS` log-spaced bands of their average spectrum): one sound for every prompt
COLLAPSE_DB = 1.5
N_BANDS = 32
BAND_LO, BAND_HI = 40.0, 16000.0


@dataclass(frozen=True)
class Check:
    """One detector's verdict: ``value`` compared with ``threshold``; ``fired`` = the defect is there."""

    name: str
    value: float
    threshold: float
    fired: bool
    unit: str = ""

    def __str__(self) -> str:
        return f"{self.name} {self.value:.4g}{self.unit} (threshold {self.threshold:g}{self.unit})"


def _2d(y) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    return y[None] if y.ndim == 1 else y


def non_finite(y) -> Check:
    """NaN or infinite samples (a diverged model): fires at one."""
    n = int(np.size(y) - np.count_nonzero(np.isfinite(y)))
    return Check("non_finite", float(n), 0.0, n > 0, " samples")


def rms_dbfs(y) -> float:
    """RMS level in dBFS over all channels (-inf for digital silence; NaN samples ignored)."""
    y = _2d(y)
    y = y[np.isfinite(y)]
    rms = float(np.sqrt(np.mean(y**2))) if y.size else 0.0
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def silence(y) -> Check:
    """Silence: RMS under :data:`SILENCE_DBFS`."""
    level = rms_dbfs(y)
    return Check("silence", level, SILENCE_DBFS, level < SILENCE_DBFS, " dBFS")


def clipping(y) -> Check:
    """Clipping: the fraction of samples at full scale (``|x| >= CLIP_LEVEL``) over :data:`CLIP_FRACTION`."""
    y = _2d(y)
    frac = float(np.mean(np.abs(y) >= CLIP_LEVEL)) if y.size else 0.0
    return Check("clipping", frac, CLIP_FRACTION, frac > CLIP_FRACTION)


def dc_offset(y) -> Check:
    """DC offset: the largest channel's ``|mean| / RMS`` over :data:`DC_RATIO`."""
    y = _2d(y)
    rms = np.sqrt(np.mean(y**2, axis=1))
    ratio = np.abs(y.mean(axis=1)) / np.where(rms > 0, rms, 1.0)
    value = float(ratio.max()) if ratio.size else 0.0
    return Check("dc_offset", value, DC_RATIO, value > DC_RATIO)


def lpc_residual(x: np.ndarray, order: int = CLICK_ORDER) -> np.ndarray:
    """What linear prediction (``order`` coefficients, autocorrelation method) cannot predict in ``x``."""
    from scipy.linalg import solve_toeplitz
    from scipy.signal import lfilter

    x = np.asarray(x, dtype=np.float64)
    r = np.array([np.dot(x[: x.size - k], x[k:]) for k in range(order + 1)])
    if r[0] <= 0:
        return np.zeros_like(x)
    r[0] *= 1.0 + 1e-9  # a little white noise: the system stays solvable on pure tones
    a = solve_toeplitz(r[:-1], r[1:])
    e = lfilter(np.concatenate([[1.0], -a]), [1.0], x)
    e[:order] = 0.0  # the filter's start-up (no past samples to predict from), not the audio
    return e


def click_times(x: np.ndarray, sr: int) -> np.ndarray:
    """Seconds of the clicks in one channel ``x``: samples whose linear-prediction residual
    (:func:`lpc_residual`) stands :data:`CLICK_SIGMAS` robust deviations (1.4826 × median |e|) over
    the loudest of their own and the two neighbouring :data:`CLICK_BLOCK`-sample blocks — an
    isolated, unpredictable jump, not a drum hit (whose surroundings are as busy); outliers within
    :data:`CLICK_MERGE_S` are one click."""
    e = np.abs(lpc_residual(x))
    if e.size < 3 * CLICK_BLOCK:
        return np.zeros(0)
    n_blocks = e.size // CLICK_BLOCK
    med = np.median(e[: n_blocks * CLICK_BLOCK].reshape(n_blocks, CLICK_BLOCK), axis=1)
    padded = np.concatenate([med[:1], med, med[-1:]])
    local = np.maximum(np.maximum(padded[:-2], padded[1:-1]), padded[2:])
    idx = np.minimum(np.arange(e.size) // CLICK_BLOCK, local.size - 1)
    sigma = 1.4826 * np.maximum(local[idx], 1e-7)
    hits = np.flatnonzero(e > CLICK_SIGMAS * sigma)
    if hits.size == 0:
        return np.zeros(0)
    starts = hits[np.concatenate([[True], np.diff(hits) > CLICK_MERGE_S * sr])]
    return starts / sr


def clicks(y, sr: int) -> Check:
    """Clicks/pops: clicks per second (:func:`click_times`, the busiest channel) over :data:`CLICK_RATE`."""
    y = _2d(np.nan_to_num(np.asarray(y, dtype=np.float64)))
    seconds = y.shape[1] / sr if y.size else 0.0
    count = max((len(click_times(ch, sr)) for ch in y), default=0)
    rate = count / seconds if seconds > 0 else 0.0
    return Check("clicks", rate, CLICK_RATE, rate > CLICK_RATE, "/s")


def band_spectrum(y, sr: int) -> np.ndarray:
    """The average spectrum in :data:`N_BANDS` log-spaced bands (dB, mean-removed: the shape, not the
    level) of the mono mix — scipy's Welch estimate, 4096-sample segments."""
    from scipy.signal import welch

    mono = np.nan_to_num(_2d(y)).mean(axis=0)
    f, pxx = welch(mono, fs=sr, nperseg=min(4096, max(256, mono.size)))
    edges = np.geomspace(BAND_LO, min(BAND_HI, sr / 2), N_BANDS + 1)
    bands = np.array(
        [
            pxx[(f >= lo) & (f < hi)].mean() if np.any((f >= lo) & (f < hi)) else 0.0
            for lo, hi in zip(edges[:-1], edges[1:])
        ]
    )
    db = 10 * np.log10(np.maximum(bands, 1e-20))
    return db - db.mean()


def spectrum_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS difference (dB) of two :func:`band_spectrum` shapes."""
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def collapse(spectra: list[np.ndarray]) -> Check | None:
    """Collapse: demos of *different* prompts alike — the largest pairwise :func:`spectrum_distance`
    under :data:`COLLAPSE_DB`. None with fewer than two demos (nothing to compare)."""
    if len(spectra) < 2:
        return None
    widest = max(spectrum_distance(a, b) for i, a in enumerate(spectra) for b in spectra[i + 1 :])
    return Check("collapse", widest, COLLAPSE_DB, widest < COLLAPSE_DB, " dB")


def check(y, sr: int) -> list[Check]:
    """Every single-demo detector on ``y``: non-finite samples, silence, clipping, DC offset, clicks."""
    return [non_finite(y), silence(y), clipping(y), dc_offset(y), clicks(y, sr)]


#: what to try when a detector fires (the lesson and the training warnings say it)
ADVICE = {
    "non_finite": "the weights diverged: lower lr and resume from the last good checkpoint",
    "silence": "the model outputs silence: lower lr, or keep an earlier checkpoint (export_from='best')",
    "clipping": "the output exceeds full scale: lower lr, fewer epochs, or keep an earlier checkpoint",
    "dc_offset": "the output drifts off zero: lower lr, fewer epochs, or keep an earlier checkpoint",
    "clicks": "clicks/pops: lower lr, fewer epochs, or keep the last good checkpoint (export_from='best')",
    "collapse": "every prompt sounds alike: lower lr, fewer epochs, more varied prompts, or an earlier checkpoint",
}
