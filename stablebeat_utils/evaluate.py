"""Evaluate generated beats, base model vs fine-tune — the logic behind ``notebooks/07_evaluate.ipynb``.

The StableBeaT card reports six numbers per generated clip but not their formulas. Here is how
this project defines them (all on the clip mixed to mono — the mean of its channels — and, for
the four signal metrics, resampled to 44.1 kHz; one magnitude STFT ``|X|`` with
``librosa.stft(n_fft=2048, hop_length=512, window="hann", center=True)`` — 46 ms frames every
11.6 ms — is shared by them):

=========================  ===================================================================
column                     definition
=========================  ===================================================================
``bpm``                    Essentia TempoCNN *deeptemp-k16-3* global tempo, the very estimator of
                           03_tempo_key (``tempo_key.analyse_clip``), **without** 03's optional
                           ``bpm_range`` octave prior (a prior would hide the octave errors that
                           BPM adherence wants to see).
``spectral_centroid``      mean over *active* frames of ``librosa.feature.spectral_centroid(S=|X|)``
                           = Σ f·|X(f)| / Σ |X(f)| per frame, in Hz.
``spectral_flatness``      mean over active frames of ``librosa.feature.spectral_flatness(S=|X|)``
                           (power 2): geometric mean / arithmetic mean of the power spectrum |X|².
                           1 = white noise, → 0 for a pure tone.
``hp_ratio``               ``H, P = librosa.decompose.hpss(|X|)`` (median filters of 31 frames /
                           31 bins, soft masks); ratio of summed magnitudes Σ H / Σ P.
                           > 1 harmonic-heavy, < 1 percussive-heavy.
``transient_sharpness``    ``r = librosa.feature.rms(y, frame_length=512, hop_length=128)`` — a fine
                           RMS envelope (11.6 ms frames every 2.9 ms, its own, not the shared STFT);
                           ``TS = 0.1² · Σ_t max(0, r[t+1] − r[t])² / Σ_t r[t]²``: the mean squared
                           rise per frame of the envelope of the clip *normalised to an RMS of
                           −20 dBFS* (0.1). The same total rise made in one or two frames (a sharp
                           attack) scores more than when spread over many (a soft one); dividing by
                           the clip's own energy makes it loudness-free (a copy 6 dB quieter scores
                           the same) and stops a longer, louder swell from outscoring a short click
                           of the same peak. Sums over the same frames: a silent tail changes nothing.
``clap_score``             cosine similarity of the clip's CLAP audio embedding and the CLAP text
                           embedding of its prompt, with the CLAP path of 02_tag (``tag.make_backend``:
                           mono, 48 kHz, non-overlapping 10-s windows, unit window embeddings
                           averaged weighted by seconds, renormalised) — ``clap_setting="card"``.
                           ``clap_setting="stable-audio-metrics"`` follows that tool's CLAP score
                           instead (:func:`clap_audio_embedding_sam`): LAION's 630k-audioset-fusion
                           weights (``laion/clap-htsat-fused``), mono 48 kHz, peak-normalised to
                           −1 dBFS, int16, the whole clip with fusion truncation. CLAP numbers
                           compare only at the same setting; at this one the report shows SAO 1.0's
                           published figures beside ours (Song Describer, no singing: FD_openl3
                           96.51, KL_passt 0.55, CLAP 0.41 — FD and KL are not computed here).
=========================  ===================================================================

*Active* frames: frames whose energy is within 60 dB of the clip's loudest frame; a generated
clip with a silent tail would otherwise pull the centroid toward 0 and the flatness toward 1
(the flatness of digital silence is 1 by definition).

Where the values land (measured with this module on the three recordings of ``shared/audio``,
first 47 s — the drum-and-bass stem is 25 s; the card's range in brackets): centroid
1154 / 2641 / 3588 Hz [785–4287]; flatness 3.8e-4 / 2.9e-4 for the two full mixes, 2.7e-2 for
the drums-and-bass stem (noisier: mostly percussion) [3.0e-5–1.8e-3]; H/P 1.88 / 1.50 / 0.89
[0.46–2.96]; transient sharpness 9.1e-5 / 9.2e-5 / 1.7e-4 [7.3e-6–2.1e-3]; a click track of 2-ms noise bursts
scores 1.8e-3, the same track of 40-ms swells (same peak) 2.4e-4, a steady tone ~1e-6. The card's CLAP
scores (0.25–0.55) come from LAION's real checkpoints; the demo's tiny random CLAP gives
meaningless values near 0 and only exercises the code path.

Beyond the card:

- **BPM adherence** — the BPM requested in the prompt (:func:`parse_bpm`: "at 110 BPM") vs the
  measured one: absolute error, relative error, *Accuracy 1* (within ±4 %) and *Accuracy 2*
  (within ±4 % of ½×, 1× or 2× the request — octave errors forgiven), and the octave-tolerant
  absolute error ``min_f |measured − f·requested|``, f ∈ {½, 1, 2}.
- **Key adherence** where the prompt names a key (:func:`parse_key`: "in D major", "G minor",
  "Gm", "F#m", "Bb min"): key estimated with 03's method (Essentia ``KeyExtractor``, profile
  ``key_profile``); exact match (pitch class and mode, enharmonics equal) and the MIREX weighted
  score (1 same, 0.5 fifth above, 0.3 relative, 0.2 parallel, 0 otherwise).
- **Fréchet CLAP distance** between the CLAP embeddings of each model's clips and those of the
  training clips (``RUN_DIR/01_segment``): ``‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½``
  (FAD's formula, Kilgour et al. 2019, on CLAP embeddings). Caveat: with fewer clips than the
  embedding's 512 dimensions the covariances are rank-deficient and the estimate is biased
  upward and noisy; compare base and fine-tune at equal clip counts only, never with published
  FAD values.

What "better" means in the summary (fine-tune vs base, prompt by prompt, seeds averaged):
BPM — lower |measured − requested|; key — higher weighted score; CLAP score — higher; the four
signal metrics — closer to the training clips, i.e. lower ``|log(value) − median log(training)|``
(log because they are positive and spread over orders of magnitude; without training clips
there is no "better" and the summary says n/a); Fréchet distance — lower.

Outputs in ``RUN_DIR/07_evaluate/``: ``metrics.csv`` (one row per generated clip),
``training_metrics.csv``, ``card_table.md`` (per prompt, base vs fine-tune, laid out like the
card), ``summary.md`` / ``summary.json``, ``plots/*.png``, ``report.md`` and ``stage.json``.
Per-clip measurements are cached in ``cache/*.jsonl`` (append-once, keyed by file, its size and
mtime, under a hash of the settings) so a killed run resumes and a re-run costs seconds.
The per-clip work runs on 01's crash-isolating pool (:mod:`stablebeat_utils.pool`): a clip that
kills its worker process (a decoder segfault) becomes one error row and the batch goes on; that
row is not cached, so the next run tries the file again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .runs import JsonlLog, Run, atomic_path, atomic_write_json, atomic_write_text, read_jsonl

STAGE = "07_evaluate"
SR = 44100
N_FFT = 2048
HOP = 512
HPSS_KERNEL = 31
ACTIVE_DB = 60.0  # frames more than this far below the loudest frame are not averaged
TS_FRAME, TS_HOP = 512, 128  # transient sharpness: its own fine RMS envelope (11.6 ms frames, 2.9 ms hop)
TS_REF_RMS = 0.1  # transient sharpness is measured as if the clip had this RMS (−20 dBFS): loudness-free
BPM_TOLERANCE = 0.04
OCTAVE_FACTORS = (0.5, 1.0, 2.0)
METRICS_VERSION = 2  # bumped when a definition changes: cached rows of another version are recomputed
CARD_METRICS = ("bpm", "spectral_centroid", "spectral_flatness", "hp_ratio", "transient_sharpness", "clap_score")
SIGNAL_METRICS = ("spectral_centroid", "spectral_flatness", "hp_ratio", "transient_sharpness")
CARD_LABELS = {"bpm": "BPM", "spectral_centroid": "Spectral Centroid", "spectral_flatness": "Spectral Flatness",
               "hp_ratio": "Harmonic/Percussive Ratio", "transient_sharpness": "Transient Sharpness",
               "clap_score": "CLAP Prompt Score"}
MODEL_LABELS = {"base": "Stable Audio Open 1.0", "finetune": "fine-tune", "focus": "second stage (05b_focus)"}
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".m4a")
CLAP_BACKENDS = ("transformers", "laion_clap")
CLAP_SETTINGS = ("card", "stable-audio-metrics")
# stable-audio-metrics' CLAP score (src/clap_score.py): LAION's 630k-audioset-fusion-best.pt; transformers'
# conversion of that checkpoint is the hub repo below. Its audio: mono 48 kHz, peak-normalised to −1 dBFS,
# quantised to int16 and back, the whole clip to the model (fusion truncation for clips over 10 s).
SAM_CLAP_MODEL = "laion/clap-htsat-fused"
SAM_PEAK_DBFS = -1.0
SAM_SEED = 0  # the fusion / rand_trunc crops are drawn at random upstream; here from a fixed seed
# SAO 1.0's published figures (Evans et al. 2024, "Stable Audio Open", Song Describer, no-singing subset),
# measured with stable-audio-metrics: shown beside ours only at clap_setting="stable-audio-metrics"
SAO_PUBLISHED = {"benchmark": "Song Describer (no singing)", "FD_openl3": 96.51, "KL_passt": 0.55, "CLAP": 0.41}


class EvaluateError(ValueError):
    """Input or a parameter that cannot be evaluated; the message is meant for a person."""


# ---------------------------------------------------------------------------------------------
# the card's signal metrics (pure functions of a mono signal, unit-tested on known signals)

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
    energy = float((r ** 2).sum())
    if energy <= 0:
        raise EvaluateError("the clip is digital silence: no transient sharpness can be measured")
    rise = np.maximum(np.diff(r), 0.0)
    return float(TS_REF_RMS ** 2 * (rise ** 2).sum() / energy)


def signal_metrics(y: np.ndarray, sr: int) -> dict[str, float]:
    """The four signal metrics of one clip, sharing one STFT."""
    y = _as_mono44(y, sr)
    S = magnitude(y)
    return {"spectral_centroid": spectral_centroid(S), "spectral_flatness": spectral_flatness(S),
            "hp_ratio": hp_ratio(S), "transient_sharpness": transient_sharpness(y)}


# ---------------------------------------------------------------------------------------------
# what a prompt asks for

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


def parse_key(prompt: str) -> tuple[str, str] | None:
    """The key a prompt names, as ``(tonic, "major"|"minor")`` with a canonical tonic, or None.

    "in D major" → ("D", "major"); "G minor" / "Gm" / "in g minor" → ("G", "minor");
    "F# minor" → ("F#", "minor"); "A-flat major" → ("Ab", "major"); "a minor chord progression" →
    None. The reader of stage 04's validator: :func:`stablebeat_utils.clipfacts.parse_key` (its
    docstring gives the rules for the ambiguous lower-case "a").
    """
    from .clipfacts import parse_key as _parse_key

    return _parse_key(prompt)


def bpm_adherence(requested: float | None, measured: float | None) -> dict[str, Any]:
    """Error measures of ``measured`` against ``requested`` (all None when either is missing)."""
    out = {"bpm_abs_error": None, "bpm_rel_error": None, "bpm_octave_error": None,
           "bpm_acc1": None, "bpm_acc2": None}
    if requested is None or measured is None or not math.isfinite(measured):
        return out
    err = abs(measured - requested)
    oct_err = min(abs(measured - f * requested) for f in OCTAVE_FACTORS)
    out.update(bpm_abs_error=err, bpm_rel_error=err / requested, bpm_octave_error=oct_err,
               bpm_acc1=bool(err <= BPM_TOLERANCE * requested),
               bpm_acc2=any(abs(measured - f * requested) <= BPM_TOLERANCE * f * requested for f in OCTAVE_FACTORS))
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


# ---------------------------------------------------------------------------------------------
# distributions

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


# ---------------------------------------------------------------------------------------------
# CLAP (the same path as 02_tag)

def make_clap(clap_model: str, clap_backend: str = "transformers", device: str = "cpu"):
    """02_tag's CLAP backend object (``embed_text``, ``embed_audio``, ``sampling_rate``, ``window_seconds``)."""
    from . import tag

    if clap_backend not in CLAP_BACKENDS:
        raise EvaluateError(f"clap_backend {clap_backend!r}: choose one of {', '.join(CLAP_BACKENDS)}")
    try:
        return tag.make_backend(clap_backend, clap_model, device)
    except tag.TagError as exc:
        raise EvaluateError(f"clap_model {clap_model!r} (backend {clap_backend}): {exc}") from exc


def clap_audio_embedding(clap, y: np.ndarray, sr: int) -> np.ndarray:
    """One unit vector for a clip, windowed and pooled exactly as 02_tag does."""
    from . import audio, tag

    mono = audio.to_mono(np.atleast_2d(np.asarray(y, dtype=np.float32)))
    if sr != clap.sampling_rate:
        mono = audio.resample(mono[None], sr, clap.sampling_rate)[0]
    bounds = tag.window_bounds(len(mono), clap.sampling_rate, clap.window_seconds)
    if not bounds:
        raise EvaluateError("the clip is empty")
    windows = [mono[a:b] for a, b in bounds]
    emb = clap.embed_audio(windows)
    return tag.pool_windows(emb, [(b - a) / clap.sampling_rate for a, b in bounds])


def clap_audio_embedding_sam(clap, y: np.ndarray, sr: int, seed: int = SAM_SEED) -> np.ndarray:
    """One unit vector for a clip with stable-audio-metrics' CLAP conventions (``clap_setting``).

    The clip mixed to mono and resampled to CLAP's 48 kHz, peak-normalised to −1 dBFS
    (``pyloudnorm.normalize.peak``), quantised to int16 and back, and given *whole* to the model:
    a fused model (``enable_fusion``, e.g. :data:`SAM_CLAP_MODEL`) sees a clip over 10 s as three
    10-s crops (front, middle, back third) plus the whole clip shrunk to 10 s ("fusion"
    truncation); an unfused one sees one random 10-s crop ("rand_trunc"). The crops are drawn
    from ``seed`` so a re-run gives the same number. Transformers backend only.
    """
    import pyloudnorm
    import torch

    from . import audio
    from .tag import l2_normalize

    if not hasattr(clap, "processor"):
        raise EvaluateError("clap_setting='stable-audio-metrics' runs on clap_backend='transformers' "
                            f"(with clap_model={SAM_CLAP_MODEL!r}, LAION's 630k-audioset-fusion weights)")
    mono = audio.to_mono(np.atleast_2d(np.asarray(y, dtype=np.float32)))
    if sr != clap.sampling_rate:
        mono = audio.resample(mono[None], sr, clap.sampling_rate)[0]
    if not mono.size or not np.abs(mono).max() > 0:
        raise EvaluateError("the clip is empty or digital silence: no CLAP embedding")
    x = pyloudnorm.normalize.peak(mono.astype(np.float64), SAM_PEAK_DBFS)
    x = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16).astype(np.float64) / 32767.0
    fe = clap.processor.feature_extractor
    state = np.random.get_state()  # the extractor draws its crops from numpy's global generator
    try:
        np.random.seed(seed)
        feats = fe([x], sampling_rate=clap.sampling_rate, truncation="fusion" if clap.fusion else "rand_trunc",
                   padding="repeatpad", return_tensors="pt")
    finally:
        np.random.set_state(state)
    # "longer" is the truth (the extractor would flag a random clip when none is longer)
    is_longer = torch.tensor([[len(x) > fe.nb_max_samples]], device=clap.device)
    with torch.inference_mode():
        out = clap.model.get_audio_features(
            input_features=feats["input_features"].to(device=clap.device, dtype=clap.dtype), is_longer=is_longer)
    emb = out.pooler_output if hasattr(out, "pooler_output") else out
    return l2_normalize(emb.float().cpu().numpy())[0]


def clap_scores(audio_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of paired audio and text embeddings, ``(n,)``."""
    from .tag import l2_normalize

    a = l2_normalize(np.atleast_2d(audio_embeddings))
    t = l2_normalize(np.atleast_2d(text_embeddings))
    if a.shape != t.shape:
        raise ValueError(f"paired embeddings must have the same shape, got {a.shape} and {t.shape}")
    return (a * t).sum(axis=1)


# ---------------------------------------------------------------------------------------------
# one clip (runs in the worker processes)

_WORKER: dict = {}


def _init_worker(graph: str | None, key_profile: str) -> None:
    from . import compat

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    compat.warm_jit(signal_metrics, SR, seconds=3.0)  # librosa's jitted code, one process at a time
    if graph:
        from . import tempo_key

        tempo_key.init_estimators(graph, key_profile)  # 03's own estimator, loaded once per process
        _WORKER["tempo"] = True


def measure_clip(path: str, with_tempo: bool = True) -> dict:
    """Signal metrics (+ tempo and key with 03's estimator) of one file. Never raises."""
    from . import audio

    row: dict[str, Any] = {"error": None}
    try:
        y, sr = audio.load(path)
        row["duration_s"] = round(y.shape[1] / sr, 3)
        row.update(signal_metrics(y, sr))
        if with_tempo:
            from . import tempo_key

            raw = tempo_key.analyse_clip(Path(path).name, path)
            if raw.get("global_bpm") is not None:
                bpm, conf, _ = tempo_key.tempo_estimate(raw["global_bpm"], raw["mean_probs"], None)
                row.update(bpm=round(bpm, 2), tempo_confidence=round(conf, 4))
            if raw.get("key") is not None:
                row.update(key_est=f"{raw['key']} {raw['scale']}", key_strength=round(raw["strength"], 4))
            if raw.get("error"):
                row["error"] = raw["error"]
    except Exception as exc:  # one bad clip never stops the batch
        row["error"] = f"{path}: {type(exc).__name__}: {exc}"
    return row


CRASHED = ("measuring it killed the worker process (a decoder or library crash): the file is probably "
           "corrupt; it is tried again on the next run")


def _measure_job(job: dict) -> dict:
    """Pool task: ``{"key", "path", "with_tempo", "measure"}`` → ``{"key", **row}``."""
    return {"key": job["key"], **job["measure"](job["path"], job["with_tempo"])}


def _crashed_job(job: dict) -> dict:
    return {"key": job["key"], "error": f"{job['path']}: {CRASHED}", "crashed": True}


def _iter_measure(jobs: list[tuple[str, str, bool]], graph: str | None, key_profile: str, workers: int,
                  measure=measure_clip):
    """Yield ``(key, row)`` in job order, on 01's crash-isolating pool (:mod:`stablebeat_utils.pool`).

    A clip that kills its worker process becomes one row ``{"error": …, "crashed": True}`` and
    the batch goes on. ``workers <= 1`` measures in this process (no isolation). ``measure`` is
    the per-clip function (a module-level function: it is sent to the workers by name).
    """
    from .pool import ordered_bounded

    if workers <= 1 and jobs:
        _init_worker(graph, key_profile)
    tasks = ({"key": k, "path": p, "with_tempo": t, "measure": measure} for k, p, t in jobs)
    for res in ordered_bounded(_measure_job, tasks, int(workers), window=2 * int(workers), on_crash=_crashed_job,
                               initializer=_init_worker, initargs=(graph, key_profile)):
        key = res.pop("key")
        yield key, res


# ---------------------------------------------------------------------------------------------
# inputs

def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def read_generations(run_dir: str | os.PathLike, generations: str = "") -> list[dict]:
    """Rows ``{path (absolute), prompt, model, seed, prompt_idx}`` of the generations list.

    ``""`` → ``RUN_DIR/06_generate/generations.jsonl``; otherwise a ``.jsonl`` or ``.csv`` with at
    least ``path`` and ``prompt`` (``model`` defaults to "model", ``seed`` to 0). A relative path is
    looked up under RUN_DIR, then beside the list file.
    """
    run = Run(run_dir)
    src = Path(generations).expanduser() if generations else run.path("06_generate", "generations.jsonl")
    if not src.is_file():
        hint = (" — run notebook 06_generate first, or set `generations` to a .jsonl/.csv of {path, prompt, model}"
                if not generations else "")
        raise EvaluateError(f"{src}: generations list not found{hint}")
    try:
        if src.suffix.lower() == ".csv":
            import pandas as pd

            rows = pd.read_csv(src, dtype=str, keep_default_na=False).to_dict("records")
        else:
            rows = read_jsonl(src)
    except Exception as exc:
        raise EvaluateError(f"{src}: cannot be read as {'CSV' if src.suffix.lower() == '.csv' else 'JSONL'} ({exc})") from exc
    out = []
    for i, r in enumerate(rows, 1):
        if not r.get("path") or not isinstance(r.get("prompt"), str):
            raise EvaluateError(f"{src}: row {i} needs a `path` and a text `prompt`: {json.dumps(r, default=str)[:200]}")
        p = Path(str(r["path"])).expanduser()
        if not p.is_absolute():
            p = run.path(str(r["path"])) if run.path(str(r["path"])).exists() else (src.parent / p)
        seed = r.get("seed", 0)
        out.append({"path": str(p.resolve()), "prompt": r["prompt"], "model": str(r.get("model") or "model"),
                    "seed": int(seed) if str(seed).strip().lstrip("-").isdigit() else 0,
                    "prompt_idx": r.get("prompt_idx")})
    if not out:
        raise EvaluateError(f"{src}: no generations listed")
    # prompts in the order they first appear (06's prompt_idx when given)
    order: dict[str, int] = {}
    for r in sorted(out, key=lambda r: (r["prompt_idx"] is None, int(r["prompt_idx"] or 0))):
        order.setdefault(r["prompt"], len(order))
    for r in out:
        r["prompt_idx"] = order[r["prompt"]]
    return out


def reference_clips(run_dir: str | os.PathLike, reference: str = "") -> tuple[list[str], str]:
    """The training clips to compare with: ``""`` → 01_segment's ok clips; a folder → its audio; "none"."""
    run = Run(run_dir)
    if reference == "none":
        return [], "none"
    if reference:
        folder = Path(reference).expanduser()
        if not folder.is_dir():
            raise EvaluateError(f"reference {reference!r}: not a folder (give a folder of training audio, \"\" for "
                                "RUN_DIR/01_segment's clips, or \"none\")")
        files = sorted(str(p.resolve()) for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTS)
        return files, str(folder)
    seg = run.path("01_segment", "segments.jsonl")
    if not seg.is_file():
        return [], f"none ({seg} not found)"
    rows = [r for r in read_jsonl(seg) if r.get("status") == "ok" and r.get("path")]
    return sorted(str(run.path(r["path"])) for r in rows), run.rel(seg)


# ---------------------------------------------------------------------------------------------
# tables

def _fmt(v: Any, metric: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(v)
    v = float(v)
    if metric in ("bpm", "spectral_centroid"):
        return f"{v:.2f}"
    if metric in ("hp_ratio", "clap_score", "key_score"):
        return f"{v:.3f}"
    if metric in ("spectral_flatness", "transient_sharpness", "frechet"):
        return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return f"{v:.4g}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _per_prompt(df, models: list[str]):
    """Mean of each metric per (prompt, model) over seeds."""
    cols = list(CARD_METRICS) + ["bpm_abs_error", "bpm_octave_error", "key_score"] + [f"{m}_dist" for m in SIGNAL_METRICS]
    cols = [c for c in cols if c in df.columns]
    g = df[df["model"].isin(models)].groupby(["prompt_idx", "model"])[cols].mean(numeric_only=True)
    return g


def card_table(df, models: list[str]) -> str:
    """Markdown: per prompt, its text, then one row per model with the card's six columns."""
    parts = ["# Per-prompt metrics (laid out like the StableBeaT card)\n",
             "Means over seeds. Columns as on the card; definitions in `report.md`.\n"]
    g = _per_prompt(df, models)
    header = ["Model"] + [CARD_LABELS[m] for m in CARD_METRICS]
    for idx in sorted(df["prompt_idx"].unique()):
        sub = df[df["prompt_idx"] == idx]
        prompt = sub["prompt"].iloc[0]
        req = sub["bpm_requested"].iloc[0]
        key = sub["key_requested"].iloc[0]
        asks = ", ".join(x for x in [f"{_fmt(req, 'bpm')} BPM" if req == req and req is not None else "",
                                     key if isinstance(key, str) and key else ""] if x)
        parts.append(f"\n## Prompt {idx + 1}\n\n> {prompt}\n\n" + (f"Requested: {asks}.\n\n" if asks else ""))
        rows = []
        for m in models:
            if (idx, m) in g.index:
                vals = g.loc[(idx, m)]
                rows.append([MODEL_LABELS.get(m, m)] + [_fmt(vals.get(c), c) for c in CARD_METRICS])
        parts.append(_md_table(header, rows))
    return "".join(parts)


TIE_TOLERANCE = 1e-3  # relative difference under which base and fine-tune tie on a prompt
BETTER = {
    "bpm": "lower absolute error, measured vs requested BPM (prompts that name a BPM)",
    "bpm_octave": "lower octave-tolerant BPM error (½×, 1×, 2× the request forgiven)",
    "key": "higher MIREX key score (prompts that name a key)",
    "spectral_centroid": "closer to the training clips (log distance to their median)",
    "spectral_flatness": "closer to the training clips (log distance to their median)",
    "hp_ratio": "closer to the training clips (log distance to their median)",
    "transient_sharpness": "closer to the training clips (log distance to their median)",
    "clap_score": "higher (audio closer to its prompt in CLAP space)",
}
_BETTER_COL = {"bpm": ("bpm_abs_error", -1), "bpm_octave": ("bpm_octave_error", -1), "key": ("key_score", +1),
               "clap_score": ("clap_score", +1), **{m: (f"{m}_dist", -1) for m in SIGNAL_METRICS}}


def compare(df, base: str = "base", cand: str = "finetune") -> list[dict]:
    """Per metric: means of both models, and the candidate's wins/losses/ties over prompts.

    Two values within :data:`TIE_TOLERANCE` (relative) of each other are a tie.
    """
    out = []
    g = _per_prompt(df, [base, cand])
    for name, (col, sign) in _BETTER_COL.items():
        value_col = {"bpm": "bpm_abs_error", "bpm_octave": "bpm_octave_error", "key": "key_score"}.get(name, name)
        rec = {"metric": name, "better": BETTER[name],
               "base_mean": _mean(df[df["model"] == base], value_col),
               "finetune_mean": _mean(df[df["model"] == cand], value_col),
               "wins": 0, "losses": 0, "ties": 0, "prompts_compared": 0}
        if col not in g.columns:
            rec["verdict"] = "n/a"
            out.append(rec)
            continue
        for idx in sorted({i for i, _ in g.index}):
            if (idx, base) not in g.index or (idx, cand) not in g.index:
                continue
            b, c = g.loc[(idx, base), col], g.loc[(idx, cand), col]
            if b != b or c != c:  # NaN: the prompt does not ask / the metric is missing
                continue
            rec["prompts_compared"] += 1
            d = sign * (c - b)
            if abs(d) <= TIE_TOLERANCE * max(abs(b), abs(c), 1e-12):  # under 0.1 %: no real difference
                rec["ties"] += 1
            elif d > 0:
                rec["wins"] += 1
            else:
                rec["losses"] += 1
        n = rec["prompts_compared"]
        rec["verdict"] = ("n/a" if n == 0 else "fine-tune better" if rec["wins"] > rec["losses"]
                          else "base better" if rec["losses"] > rec["wins"] else "even")
        out.append(rec)
    return out


def _mean(df, col: str) -> float | None:
    if col not in df.columns:
        return None
    v = df[col].astype(float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


# ---------------------------------------------------------------------------------------------
# the stage

def _settings_key(**kw) -> str:
    return hashlib.sha256(json.dumps({**kw, "v": METRICS_VERSION}, sort_keys=True).encode()).hexdigest()[:12]


def _validate(generations: str, clap_backend: str, key_profile: str, workers: int, reference: str,
              clap_setting: str = "card") -> None:
    from . import tempo_key

    if clap_setting not in CLAP_SETTINGS:
        raise EvaluateError(f"clap_setting {clap_setting!r}: choose one of {', '.join(CLAP_SETTINGS)}")
    if clap_setting == "stable-audio-metrics" and clap_backend != "transformers":
        raise EvaluateError("clap_setting='stable-audio-metrics' runs on clap_backend='transformers' (with clap_model="
                            f"{SAM_CLAP_MODEL!r}: LAION's 630k-audioset-fusion weights, as stable-audio-metrics uses)")

    if clap_backend not in CLAP_BACKENDS:
        raise EvaluateError(f"clap_backend {clap_backend!r}: choose one of {', '.join(CLAP_BACKENDS)}")
    if key_profile not in tempo_key.KEY_PROFILES:
        raise EvaluateError(f"key_profile {key_profile!r}: choose one of {', '.join(tempo_key.KEY_PROFILES)}")
    if int(workers) < 1:
        raise EvaluateError(f"workers {workers!r}: need at least 1")
    if generations and Path(generations).suffix.lower() not in (".jsonl", ".csv"):
        raise EvaluateError(f"generations {generations!r}: give a .jsonl or .csv file, or \"\" for 06's list")


def run(run_dir: str = "runs/demo", profile: str = "demo", generations: str = "", clap_model: str = "tiny:clap",
        clap_backend: str = "transformers", clap_setting: str = "card", tempo_model: str = "", key_profile: str = "edma",
        reference: str = "", device: str = "auto", workers: int = 2, spectrogram_pairs: int = 8) -> dict:
    """Measure every generated clip, compare base vs fine-tune, write ``RUN_DIR/07_evaluate/``.

    See the module docstring for the metric definitions and outputs. Returns a summary dict.
    """
    # a wrong type or an incompatible run folder is refused, by name, before any work
    from .params import check_call
    check_call(STAGE, dict(locals()))
    import pandas as pd
    from tqdm.auto import tqdm

    from . import tempo_key

    params = dict(run_dir=str(run_dir), profile=profile, generations=str(generations), clap_model=clap_model,
                  clap_backend=clap_backend, clap_setting=clap_setting, tempo_model=str(tempo_model), key_profile=key_profile,
                  reference=str(reference), device=device, workers=int(workers),
                  spectrogram_pairs=int(spectrogram_pairs))
    # 1. validate before any work
    _validate(generations, clap_backend, key_profile, workers, reference, clap_setting)
    run_ = Run(run_dir)
    gens = read_generations(run_dir, generations)
    refs, ref_source = reference_clips(run_dir, reference)
    try:
        graph = tempo_key.resolve_tempo_model(tempo_model)
    except tempo_key.TempoKeyError as exc:
        raise EvaluateError(f"tempo_model: {exc}") from exc
    out_dir = run_.stage_dir(STAGE)

    # 2. per-clip signal metrics, tempo, key (cached, append-once, resumable)
    skey = _settings_key(graph=tempo_key.file_sha256(graph), key_profile=key_profile)
    sig_log = JsonlLog(out_dir / "cache" / f"signal-{skey}.jsonl", key="key")
    files: dict[str, tuple[str, bool]] = {}  # cache key → (path, with_tempo)
    gen_keys, ref_keys = [], []
    for r in gens:
        p = Path(r["path"])
        k = _file_key(p) if p.is_file() else f"{p}|missing"
        gen_keys.append(k)
        files[k] = (str(p), True)
    for path in refs:
        p = Path(path)
        k = _file_key(p) if p.is_file() else f"{p}|missing"
        ref_keys.append(k)
        files.setdefault(k, (str(p), False))
    jobs = [(k, p, t) for k, (p, t) in files.items() if k not in sig_log and not k.endswith("|missing")]
    crashed: dict[str, dict] = {}
    with tqdm(total=len(jobs), desc="07_evaluate: signal metrics, tempo, key", unit="clip", disable=not jobs) as bar:
        for k, row in _iter_measure(jobs, str(graph), key_profile, int(workers)):
            if row.get("crashed"):  # not cached: the next run tries the file again
                crashed[k] = row
            else:
                sig_log.append({"key": k, **row})
            bar.update(1)

    # 3. CLAP audio embeddings (cached) and prompt scores
    from . import models

    device_used = models.pick_device(device)
    # the card setting keeps its old cache key (no re-embedding); another setting gets its own
    ckey = _settings_key(clap_model=clap_model, backend=clap_backend,
                         **({} if clap_setting == "card" else {"setting": clap_setting, "seed": SAM_SEED}))
    clap_log = JsonlLog(out_dir / "cache" / f"clap-{ckey}.jsonl", key="key")
    need = [k for k in files if k not in clap_log and k not in crashed and not k.endswith("|missing")]
    clap = make_clap(clap_model, clap_backend, device_used)
    from . import audio

    for k in tqdm(need, desc="07_evaluate: CLAP embeddings", unit="clip", disable=not need):
        path = files[k][0]
        try:
            y, sr = audio.load(path)
            emb = (clap_audio_embedding(clap, y, sr) if clap_setting == "card"
                   else clap_audio_embedding_sam(clap, y, sr))
            clap_log.append({"key": k, "embedding": [round(float(x), 7) for x in emb], "error": None})
        except Exception as exc:
            clap_log.append({"key": k, "embedding": None, "error": f"{path}: {type(exc).__name__}: {exc}"})
    prompts = sorted({r["prompt"] for r in gens})
    text = dict(zip(prompts, clap.embed_text(prompts)))

    # 4. one row per generated clip
    def _sig(k):
        return sig_log.get(k) or crashed.get(k) or {"error": f"{files[k][0]}: file not found"}

    ref_rows = []
    for k in ref_keys:
        s = _sig(k)
        ref_rows.append({"path": files[k][0], **{m: s.get(m) for m in SIGNAL_METRICS}, "duration_s": s.get("duration_s"),
                         "error": s.get("error") or (clap_log.get(k) or {}).get("error")})
    ref_df = pd.DataFrame(ref_rows, columns=["path", *SIGNAL_METRICS, "duration_s", "error"])
    for c in (*SIGNAL_METRICS, "duration_s"):
        ref_df[c] = pd.to_numeric(ref_df[c], errors="coerce").astype(float)
    ref_median_log = {}
    for m in SIGNAL_METRICS:
        v = ref_df[m].astype(float)
        v = v[np.isfinite(v) & (v > 0)]
        ref_median_log[m] = float(np.median(np.log(v))) if len(v) else None

    rows = []
    for r, k in zip(gens, gen_keys):
        s = _sig(k)
        c = clap_log.get(k) or {}
        req_bpm = parse_bpm(r["prompt"])
        req_key = parse_key(r["prompt"])
        row = {"model": r["model"], "prompt_idx": r["prompt_idx"], "seed": r["seed"],
               "path": run_.rel(r["path"]) if str(r["path"]).startswith(str(run_.root) + os.sep) else r["path"],
               "duration_s": s.get("duration_s"), "bpm": s.get("bpm"), "tempo_confidence": s.get("tempo_confidence")}
        row.update({m: s.get(m) for m in SIGNAL_METRICS})
        emb = c.get("embedding")
        row["clap_score"] = float(clap_scores(np.asarray(emb), text[r["prompt"]])[0]) if emb else None
        row["bpm_requested"] = req_bpm
        row.update(bpm_adherence(req_bpm, row["bpm"]))
        row["key_requested"] = f"{req_key[0]} {req_key[1]}" if req_key else None
        row["key_est"] = s.get("key_est")
        row["key_strength"] = s.get("key_strength")
        if req_key and row["key_est"]:
            est = tuple(row["key_est"].split())
            row["key_exact"] = key_score(req_key, est) == 1.0
            row["key_score"] = key_score(req_key, est)
        else:
            row["key_exact"], row["key_score"] = None, None
        for m in SIGNAL_METRICS:
            v = row[m]
            ok = ref_median_log[m] is not None and v is not None and v > 0 and math.isfinite(v)
            row[f"{m}_dist"] = abs(math.log(v) - ref_median_log[m]) if ok else None
        row["error"] = s.get("error") or c.get("error")
        row["prompt"] = r["prompt"]
        rows.append(row)
    df = pd.DataFrame(rows).sort_values(["prompt_idx", "model", "seed"], kind="stable").reset_index(drop=True)
    numeric = ["duration_s", *CARD_METRICS, "tempo_confidence", "bpm_requested", "bpm_abs_error", "bpm_rel_error",
               "bpm_octave_error", "key_strength", "key_score", *[f"{m}_dist" for m in SIGNAL_METRICS]]
    for c in numeric:  # a column of failed clips only is all None: keep it numeric (NaN)
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)

    # 5. Fréchet CLAP distance of each model's clips to the training clips
    ref_emb = [clap_log.get(k, {}).get("embedding") for k in ref_keys]
    ref_emb = np.asarray([e for e in ref_emb if e], dtype=np.float64)
    models_present = sorted(df["model"].unique(), key=lambda m: (m not in ("base", "finetune"), m != "base", m))
    frechet = {}
    for m in models_present:
        embs = [clap_log.get(k, {}).get("embedding") for r, k in zip(gens, gen_keys) if r["model"] == m]
        embs = np.asarray([e for e in embs if e], dtype=np.float64)
        rec = {"n_generated": int(len(embs)), "n_training": int(len(ref_emb)), "value": None, "note": None}
        if len(ref_emb) < 2 or len(embs) < 2:
            rec["note"] = "needs at least 2 generated and 2 training clips"
        else:
            rec["value"] = frechet_distance(embs, ref_emb)
            if min(len(embs), len(ref_emb)) < ref_emb.shape[1]:
                rec["note"] = (f"small sample: {min(len(embs), len(ref_emb))} clips for {ref_emb.shape[1]} dimensions "
                               "(biased upward; compare at equal counts only)")
        frechet[m] = rec

    # 6. tables, summary, plots, report
    csv_cols = ["model", "prompt_idx", "seed", "path", "duration_s", *CARD_METRICS, "tempo_confidence", "bpm_requested",
                "bpm_abs_error", "bpm_rel_error", "bpm_octave_error", "bpm_acc1", "bpm_acc2", "key_requested",
                "key_est", "key_strength", "key_exact", "key_score", *[f"{m}_dist" for m in SIGNAL_METRICS],
                "error", "prompt"]
    df = df[csv_cols]
    with atomic_path(out_dir / "metrics.csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(out_dir / "training_metrics.csv") as tmp:
        ref_df.to_csv(tmp, index=False, float_format="%.6g")
    pair = [m for m in ("base", "finetune") if m in models_present]
    table_models = pair + [m for m in models_present if m not in pair]
    atomic_write_text(out_dir / "card_table.md", card_table(df, table_models))
    comparison = compare(df) if len(pair) == 2 else []
    means = {m: {c: _mean(df[df["model"] == m], c) for c in
                 (*CARD_METRICS, "bpm_abs_error", "bpm_octave_error", "bpm_acc1", "bpm_acc2", "key_score")}
             for m in models_present}
    training_means = {m: _mean(ref_df, m) for m in SIGNAL_METRICS}
    summary_md = _summary_md(means, training_means, comparison, frechet, models_present, len(ref_df))
    from . import focus  # per tag the second stage trained on: did it move toward the tag's training clips?

    focus_tags = focus.tag_moves(run_dir, df, ref_df, SIGNAL_METRICS, TIE_TOLERANCE) if "focus" in models_present else []
    summary_md += focus.tag_moves_md(focus_tags, SIGNAL_METRICS)
    atomic_write_text(out_dir / "summary.md", summary_md)
    plots = _plots(df, ref_df, out_dir / "plots", pair, int(spectrogram_pairs), run_)
    errors = df[df["error"].notna()]
    paper = paper_comparison(means, clap_setting, clap_model)
    report = _report_md(df, summary_md, out_dir, plots, ref_source, len(ref_df), params, errors, paper)
    atomic_write_text(out_dir / "report.md", report)

    summary = {
        "clips": int(len(df)), "models": models_present, "prompts": int(df["prompt_idx"].nunique()),
        "errors": int(len(errors)), "training_clips": int(len(ref_df)), "reference": ref_source,
        "measured_now": len(jobs), "clap_embedded_now": len(need), "device": device_used,
        "clap_setting": clap_setting, "clap_model": clap_model, "paper_comparison": paper,
        "means": means, "training_means": training_means, "frechet": frechet,
        "comparison": comparison, "focus_tags": focus_tags,
        "outputs": {n: run_.rel(out_dir / n) for n in ("metrics.csv", "card_table.md", "summary.md", "report.md")},
        "plots": [run_.rel(p) for p in plots],
    }
    atomic_write_json(out_dir / "summary.json", _jsonable(summary))
    run_.mark_done(STAGE, params=params, **_jsonable({k: summary[k] for k in
                                                     ("clips", "models", "prompts", "errors", "training_clips",
                                                      "frechet", "outputs")}))
    return summary


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _summary_md(means, training_means, comparison, frechet, models, n_train) -> str:
    parts = ["# Summary\n\n## Means per model\n\n"]
    cols = [*CARD_METRICS, "bpm_abs_error", "bpm_octave_error", "bpm_acc2", "key_score"]
    header = ["Model"] + [CARD_LABELS.get(c, c) for c in cols]
    rows = [[MODEL_LABELS.get(m, m)] + [_fmt(means[m][c], c) for c in cols] for m in models]
    if n_train:
        rows.append([f"training clips (n={n_train})", "—"] + [_fmt(training_means[m], m) for m in SIGNAL_METRICS]
                    + ["—"] * (len(cols) - 1 - len(SIGNAL_METRICS)))
    parts.append(_md_table(header, rows))
    parts.append("\n`bpm_abs_error`: |measured − requested|; `bpm_octave_error`: the same with ½× and 2× forgiven; "
                 "`bpm_acc2`: share within ±4 % of ½×, 1× or 2× the request; `key_score`: MIREX weighted key score.\n")
    if comparison:
        parts.append("\n## Fine-tune vs base, prompt by prompt\n\n")
        parts.append("Means of the value compared: the BPM rows compare errors, the others the metric itself; "
                     "a difference under 0.1 % counts as a tie.\n\n")
        header = ["Metric", "better means", "base mean", "fine-tune mean", "fine-tune wins", "losses", "ties",
                  "verdict"]
        rows = [[c["metric"], c["better"], _fmt(c["base_mean"], c["metric"]), _fmt(c["finetune_mean"], c["metric"]),
                 str(c["wins"]), str(c["losses"]), str(c["ties"]), c["verdict"]] for c in comparison]
        parts.append(_md_table(header, rows))
    else:
        parts.append("\nNo base/fine-tune pair in the generations list: no win/loss comparison.\n")
    parts.append("\n## Fréchet CLAP distance to the training clips (lower = closer)\n\n")
    rows = [[MODEL_LABELS.get(m, m), _fmt(f["value"], "frechet"), str(f["n_generated"]), str(f["n_training"]),
             f["note"] or ""] for m, f in frechet.items()]
    parts.append(_md_table(["Model", "Fréchet distance", "generated clips", "training clips", "note"], rows))
    return "".join(parts)


def _plots(df, ref_df, folder: Path, pair: list[str], n_pairs: int, run_: Run) -> list[Path]:
    from . import show

    out = []

    def save(fig, name):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
        out.append(path)

    models = pair or sorted(df["model"].unique())
    training = {m: ref_df[m].astype(float).median() for m in SIGNAL_METRICS} if len(ref_df) else {}
    save(show.plot_metric_bars(df, list(CARD_METRICS), models, CARD_LABELS, training), "metric_bars.png")
    if df["bpm_requested"].notna().any():
        save(show.plot_bpm_scatter(df, models), "bpm_requested_vs_measured.png")
    if len(pair) == 2:
        ok = df[df["error"].isna()]
        n = 0
        for idx in sorted(ok["prompt_idx"].unique()):
            sub = ok[ok["prompt_idx"] == idx]
            a, b = sub[sub["model"] == pair[0]], sub[sub["model"] == pair[1]]
            common = sorted(set(a["seed"]) & set(b["seed"]))
            if not common or n >= n_pairs:
                continue
            seed = common[0]
            pa = a[a["seed"] == seed]["path"].iloc[0]
            pb = b[b["seed"] == seed]["path"].iloc[0]
            pa, pb = (p if os.path.isabs(p) else str(run_.path(p)) for p in (pa, pb))
            title = f"Prompt {idx + 1} (seed {seed}): {sub['prompt'].iloc[0]}"
            save(show.plot_spectrogram_pair(pa, pb, [MODEL_LABELS.get(m, m) for m in pair], title),
                 f"spectrograms_prompt{idx + 1:02d}.png")
            n += 1
    return out


def paper_comparison(means: dict, clap_setting: str, clap_model: str) -> dict | None:
    """SAO 1.0's published figures beside our CLAP means — only at ``clap_setting="stable-audio-metrics"``.

    Returns None at any other setting (the numbers would not be comparable). ``comparable`` is
    False when the CLAP is not :data:`SAM_CLAP_MODEL` (the demo's tiny model, another checkpoint).
    """
    if clap_setting != "stable-audio-metrics":
        return None
    rows = [{"model": "Stable Audio Open 1.0 (published)", "benchmark": SAO_PUBLISHED["benchmark"],
             "FD_openl3": SAO_PUBLISHED["FD_openl3"], "KL_passt": SAO_PUBLISHED["KL_passt"],
             "CLAP": SAO_PUBLISHED["CLAP"]}]
    for m, vals in means.items():
        rows.append({"model": f"{MODEL_LABELS.get(m, m)} (this run)", "benchmark": "this run's prompts",
                     "FD_openl3": None, "KL_passt": None, "CLAP": vals.get("clap_score")})
    return {"setting": clap_setting, "clap_model": clap_model, "comparable": clap_model == SAM_CLAP_MODEL,
            "rows": rows}


def _setting_md(params: dict, paper: dict | None) -> str:
    setting = params.get("clap_setting", "card")
    what = ("02_tag's CLAP path (10-s windows, averaged)" if setting == "card" else
            "stable-audio-metrics' conventions: mono 48 kHz, peak-normalised to −1 dBFS, int16, whole clip, "
            "fusion truncation")
    text = (f"\n## CLAP setting: `{setting}`\n\nCLAP scores here were measured with `clap_setting = \"{setting}\"` "
            f"({what}), CLAP `{params['clap_model']}`. **CLAP numbers compare only with numbers measured at the same "
            "setting and with the same CLAP weights**; the card's CLAP scores and published papers use their own.\n")
    if paper is None:
        return text + ("\nTo place a fine-tune beside SAO 1.0's published figures, run again with "
                       f"`clap_setting = \"stable-audio-metrics\"` and `clap_model = \"{SAM_CLAP_MODEL}\"`.\n")
    rows = [[r["model"], r["benchmark"], _fmt(r["FD_openl3"]), _fmt(r["KL_passt"]), _fmt(r["CLAP"], "clap_score")]
            for r in paper["rows"]]
    text += ("\n### Beside SAO 1.0's published figures\n\n"
             + _md_table(["Model", "Prompts", "FD_openl3 ↓", "KL_passt ↓", "CLAP ↑"], rows)
             + "\nFD_openl3 and KL_passt are not computed by this course (run stable-audio-metrics for them). The "
               "published CLAP is a mean over the Song Describer prompts; ours is over this run's prompts: same "
               "measuring convention, different prompts.\n")
    if not paper["comparable"]:
        text += (f"\n**Not comparable:** `clap_model = \"{paper['clap_model']}\"` is not stable-audio-metrics' CLAP "
                 f"(`{SAM_CLAP_MODEL}`, LAION's 630k-audioset-fusion weights): the CLAP column above only exercises "
                 "the setting.\n")
    return text


def _report_md(df, summary_md, out_dir: Path, plots, ref_source, n_train, params, errors, paper=None) -> str:
    card = (out_dir / "card_table.md").read_text(encoding="utf-8").split("\n", 1)[1]
    defs = ("| Column | Definition | Better |\n|---|---|---|\n"
            "| BPM | TempoCNN deeptemp-k16-3 global tempo (03_tempo_key's estimator, no octave prior) | "
            "lower error vs the prompt's BPM |\n"
            "| Spectral Centroid | mean over active frames of Σf·\\|X\\| / Σ\\|X\\| (STFT 2048/512, mono, 44.1 kHz), Hz | "
            "closer to training |\n"
            "| Spectral Flatness | mean over active frames of geometric/arithmetic mean of \\|X\\|² | closer to training |\n"
            "| Harmonic/Percussive Ratio | Σ\\|H\\| / Σ\\|P\\| after librosa HPSS (31×31 median filters) | closer to training |\n"
            "| Transient Sharpness | 0.1² · Σ max(0, Δr)² / Σ r², r = RMS envelope (512/128 frames): the mean squared "
            "rise of the envelope of the clip normalised to −20 dBFS RMS — loudness-free | closer to training |\n"
            "| CLAP Prompt Score | cosine(CLAP audio embedding, CLAP text embedding of the prompt), 02_tag's CLAP path "
            "| higher |\n")
    rel = [p.relative_to(out_dir).as_posix() for p in plots]
    images = "\n".join(f"![{Path(r).stem}]({r})" for r in rel)
    err = ""
    if len(errors):
        err = "\n## Clips that could not be measured\n\n" + "\n".join(f"- `{r.path}`: {r.error}" for r in errors.itertuples()) + "\n"
    clap_note = ("" if params["clap_model"] != "tiny:clap" else
                 "\n**Demo note:** `clap_model = \"tiny:clap\"` is a tiny CLAP with random weights: its CLAP scores "
                 "and Fréchet distances exercise the code, they say nothing about the audio.\n")
    return (f"# 07_evaluate — base vs fine-tune\n\n"
            f"{len(df)} generated clips, {df['prompt_idx'].nunique()} prompts, models: "
            f"{', '.join(sorted(df['model'].unique()))}. Training reference: {ref_source} ({n_train} clips). "
            f"CLAP: `{params['clap_model']}` ({params['clap_backend']}); key profile `{params['key_profile']}`.\n"
            f"{clap_note}{_setting_md(params, paper)}\n## How each number is measured\n\n{defs}\n"
            "Active frames: within 60 dB of the loudest frame. All per-clip values are in `metrics.csv`.\n\n"
            + summary_md.replace("# Summary", "## Summary", 1).replace("\n## ", "\n### ")
            + "\n## Per prompt\n" + card.replace("\n## ", "\n### ")
            + f"\n## Plots\n\n{images}\n" + err
            + "\n## Caveats\n\n- The card does not publish its formulas; these definitions land in its orders of "
              "magnitude on real music but its exact numbers cannot be reproduced.\n"
              "- One generation per prompt and seed is a small sample: a win/loss on one prompt is anecdotal.\n"
              "- Flatness and H/P depend on mixing; transient sharpness is loudness-free (normalised by the clip's energy) "
              "but still depends on compression and density of hits.\n"
              "- The Fréchet distance with fewer clips than CLAP's 512 dimensions is biased upward.\n")
