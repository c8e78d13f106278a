"""Evaluate generated beats, base model vs fine-tune — the logic behind ``notebooks/07_evaluate.ipynb``.

The StableBeaT card reports six numbers per generated clip but not their formulas. Here is how
this project defines them (all on the clip mixed to mono — the mean of its channels — and, for
the four signal metrics, resampled to 44.1 kHz; one magnitude STFT ``|X|`` with
``librosa.stft(n_fft=2048, hop_length=512, window="hann", center=True)`` — 46 ms frames every
11.6 ms — is shared by them):

=========================  ===================================================================
column                     definition
=========================  ===================================================================
``bpm``                    03_tempo_key's octave-safe tempo, the very estimator of stage 03
                           (``tempo.octave_safe_tempo``: TempoCNN *deeptemp-k16-3*, the beat
                           tracker, the hi-hat grid and rolls reconciled; where they cannot be,
                           ``tempo.measured_tempo``'s fallback and a ``tempo_confidence`` of 0), **without**
                           03's optional ``bpm_range`` octave prior (a prior would hide the octave
                           errors that BPM adherence wants to see).
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
                           embedding of its prompt, with the CLAP path of 02_tag (``clap.make_backend``:
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
  ``key_profile``; with ``edma``, 03's second opinion on relative keys, :func:`tempo.resolve_key`:
  a key 03 would not state is not stated here either); exact match (pitch class and mode, enharmonics equal) and the MIREX weighted
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import layout
from .audio import is_audio_name
from .clipstore import ClipFolder, clip_path
from .evaluate_metrics import (
    CARD_METRICS,
    SAM_CLAP_MODEL,
    SIGNAL_METRICS,
    SR,
    EvaluateError,
    bpm_adherence,
    frechet_distance,
    key_score,
    parse_bpm,
    parse_key,
    signal_metrics,
)
from .evaluate_report import (
    TIE_TOLERANCE,
    _jsonable,
    _mean,
    _plots,
    _report_md,
    blind_md,
    blind_preference,
    refresh_blind,  # noqa: F401 — the notebook calls evaluate.refresh_blind (07 without re-measuring)
    _summary_md,
    card_table,
    compare,
    labelled,
    learning,
    learning_md,
    paper_comparison,
)
from .runs import JsonlLog, Run, atomic_path, file_sha256, atomic_write_json, atomic_write_text, read_jsonl
from . import stage
from .clap import BACKENDS
from .stage import begin

STAGE = layout.EVALUATE
METRICS_VERSION = 3  # bumped when a definition changes: cached rows of another version are recomputed
CLAP_BACKENDS = BACKENDS  # 02's and 07's CLAP backends (clap.py)
SAM_PEAK_DBFS = -1.0
SAM_SEED = 0  # the fusion / rand_trunc crops are drawn at random upstream; here from a fixed seed


# ---------------------------------------------------------------------------------------------
# CLAP (the same path as 02_tag)


def make_clap(clap_model: str, clap_backend: str = "transformers", device: str = "cpu"):
    """02_tag's CLAP backend object (``embed_text``, ``embed_audio``, ``sampling_rate``, ``window_seconds``)."""
    from . import clap as clap_scoring

    if clap_backend not in CLAP_BACKENDS:
        raise EvaluateError(f"clap_backend {clap_backend!r}: choose one of {', '.join(CLAP_BACKENDS)}")
    try:
        return clap_scoring.make_backend(clap_backend, clap_model, device)
    except clap_scoring.TagError as exc:
        raise EvaluateError(f"clap_model {clap_model!r} (backend {clap_backend}): {exc}") from exc


def clap_audio_embedding(clap, y: np.ndarray, sr: int) -> np.ndarray:
    """One unit vector for a clip, windowed and pooled exactly as 02_tag does."""
    from . import audio
    from . import clap as clap_scoring

    mono = audio.to_mono(np.atleast_2d(np.asarray(y, dtype=np.float32)))
    if sr != clap.sampling_rate:
        mono = audio.resample(mono[None], sr, clap.sampling_rate)[0]
    bounds = clap_scoring.window_bounds(len(mono), clap.sampling_rate, clap.window_seconds)
    if not bounds:
        raise EvaluateError("the clip is empty")
    windows = [mono[a:b] for a, b in bounds]
    emb = clap.embed_audio(windows)
    return clap_scoring.pool_windows(emb, [(b - a) / clap.sampling_rate for a, b in bounds])


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
    from .clap import l2_normalize

    if not hasattr(clap, "processor"):
        raise EvaluateError(
            "clap_setting='stable-audio-metrics' runs on clap_backend='transformers' "
            f"(with clap_model={SAM_CLAP_MODEL!r}, LAION's 630k-audioset-fusion weights)"
        )
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
        feats = fe(
            [x],
            sampling_rate=clap.sampling_rate,
            truncation="fusion" if clap.fusion else "rand_trunc",
            padding="repeatpad",
            return_tensors="pt",
        )
    finally:
        np.random.set_state(state)
    # "longer" is the truth (the extractor would flag a random clip when none is longer)
    is_longer = torch.tensor([[len(x) > fe.nb_max_samples]], device=clap.device)
    with torch.inference_mode():
        out = clap.model.get_audio_features(
            input_features=feats["input_features"].to(device=clap.device, dtype=clap.dtype), is_longer=is_longer
        )
    emb = out.pooler_output if hasattr(out, "pooler_output") else out
    return l2_normalize(emb.float().cpu().numpy())[0]


def clap_scores(audio_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of paired audio and text embeddings, ``(n,)``."""
    from .clap import l2_normalize

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
        from . import tempo

        tempo.init_estimators(graph, key_profile)  # 03's own estimator, loaded once per process
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
            from . import tempo

            raw = tempo.analyse_clip(Path(path).name, path)
            if raw.get("global_bpm") is not None:  # 03's octave-safe tempo (tempo.measured_tempo)
                bpm, conf = tempo.measured_tempo(raw)
                row.update(bpm=round(bpm, 2), tempo_confidence=round(conf, 4))
            if raw.get("key") is not None:  # 03's rule (tempo.resolve_key): edma + edmm on relative keys
                key, scale, strength, how = tempo.resolve_key(raw)
                row["key_method"] = how
                if how != "relative unresolved":  # 03 states no key there: neither does 07
                    row.update(key_est=f"{key} {scale}", key_strength=round(strength, 4))
            if raw.get("error"):
                row["error"] = raw["error"]
    except Exception as exc:  # one bad clip never stops the batch
        row["error"] = f"{path}: {type(exc).__name__}: {exc}"
    return row


CRASHED = (
    "measuring it killed the worker process (a decoder or library crash): the file is probably "
    "corrupt; it is tried again on the next run"
)


def _measure_job(job: dict) -> dict:
    """Pool task: ``{"key", "path", "with_tempo", "measure"}`` → ``{"key", **row}``."""
    return {"key": job["key"], **job["measure"](job["path"], job["with_tempo"])}


def _crashed_job(job: dict) -> dict:
    return {"key": job["key"], "error": f"{job['path']}: {CRASHED}", "crashed": True}


def _iter_measure(
    jobs: list[tuple[str, str, bool]], graph: str | None, key_profile: str, workers: int, measure=measure_clip
):
    """Yield ``(key, row)`` in job order, on 01's crash-isolating pool (:mod:`stablebeat_utils.pool`).

    A clip that kills its worker process becomes one row ``{"error": …, "crashed": True}`` and
    the batch goes on. ``workers <= 1`` measures in this process (no isolation). ``measure`` is
    the per-clip function (a module-level function: it is sent to the workers by name).
    """
    from .pool import ordered_bounded

    if workers <= 1 and jobs:
        _init_worker(graph, key_profile)
    tasks = ({"key": k, "path": p, "with_tempo": t, "measure": measure} for k, p, t in jobs)
    for res in ordered_bounded(
        _measure_job,
        tasks,
        int(workers),
        window=2 * int(workers),
        on_crash=_crashed_job,
        initializer=_init_worker,
        initargs=(graph, key_profile),
    ):
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
    src = Path(generations).expanduser() if generations else run.path(layout.GENERATE, layout.GENERATIONS)
    if not src.is_file():
        hint = (
            " — run notebook 06_generate first, or set `generations` to a .jsonl/.csv of {path, prompt, model}"
            if not generations
            else ""
        )
        raise EvaluateError(f"{src}: generations list not found{hint}")
    try:
        if src.suffix.lower() == ".csv":
            import pandas as pd

            rows = pd.read_csv(src, dtype=str, keep_default_na=False).to_dict("records")
        else:
            rows = read_jsonl(src)
    except Exception as exc:
        raise EvaluateError(
            f"{src}: cannot be read as {'CSV' if src.suffix.lower() == '.csv' else 'JSONL'} ({exc})"
        ) from exc
    out = []
    for i, r in enumerate(rows, 1):
        if not r.get("path") or not isinstance(r.get("prompt"), str):
            raise EvaluateError(
                f"{src}: row {i} needs a `path` and a text `prompt`: {json.dumps(r, default=str)[:200]}"
            )
        p = Path(str(r["path"])).expanduser()
        if not p.is_absolute():
            in_run = clip_path(run.root, str(r["path"]))  # a clip's name resolves to the clip folder
            p = in_run if in_run.exists() else (src.parent / p)
        seed = r.get("seed", 0)
        out.append(
            {
                "path": str(p.resolve()),
                "prompt": r["prompt"],
                "model": str(r.get("model") or "model"),
                "model_source": r.get("model_source"),
                "seed": int(seed) if str(seed).strip().lstrip("-").isdigit() else 0,
                "prompt_idx": r.get("prompt_idx"),
            }
        )
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
            raise EvaluateError(
                f'reference {reference!r}: not a folder (give a folder of training audio, "" for '
                'RUN_DIR/01_segment\'s clips, or "none")'
            )
        files = sorted(str(p.resolve()) for p in folder.rglob("*") if is_audio_name(p.name))
        return files, str(folder)
    seg = run.path(layout.SEGMENT, layout.SEGMENTS)
    if not seg.is_file():
        return [], f"none ({seg} not found)"
    rows = [r for r in read_jsonl(seg) if r.get("status") == "ok" and r.get("path")]
    clips = ClipFolder(run.root)
    clips.require(STAGE, [r["path"] for r in rows])  # clips gone from a wiped clip_dir: STOP, naming the fix
    return sorted(str(clips.path(r["path"])) for r in rows), run.rel(seg)


# ---------------------------------------------------------------------------------------------
# the stage


def _settings_key(**kw) -> str:
    return hashlib.sha256(json.dumps({**kw, "v": METRICS_VERSION}, sort_keys=True).encode()).hexdigest()[:12]


def _validate(generations: str, clap_backend: str, clap_setting: str) -> None:
    """What the settings' own choices and bounds (checked before ``run``'s body) cannot say."""
    if clap_setting == "stable-audio-metrics" and clap_backend != "transformers":
        raise EvaluateError(
            "clap_setting='stable-audio-metrics' runs on clap_backend='transformers' (with clap_model="
            f"{SAM_CLAP_MODEL!r}: LAION's 630k-audioset-fusion weights, as stable-audio-metrics uses)"
        )
    if generations and Path(generations).suffix.lower() not in (".jsonl", ".csv"):
        raise EvaluateError(f'generations {generations!r}: give a .jsonl or .csv file, or "" for 06\'s list')


# metrics.csv: its columns, in order; the numeric ones are kept numeric (NaN) even when every clip failed
_METRICS_NUMERIC_COLUMNS = [
    "duration_s",
    *CARD_METRICS,
    "tempo_confidence",
    "bpm_requested",
    "bpm_abs_error",
    "bpm_rel_error",
    "bpm_octave_error",
    "key_strength",
    "key_score",
    *[f"{m}_dist" for m in SIGNAL_METRICS],
]
_METRICS_CSV_COLUMNS = [
    "model",
    "prompt_idx",
    "seed",
    "path",
    "duration_s",
    *CARD_METRICS,
    "tempo_confidence",
    "bpm_requested",
    "bpm_abs_error",
    "bpm_rel_error",
    "bpm_octave_error",
    "bpm_acc1",
    "bpm_acc2",
    "key_requested",
    "key_est",
    "key_strength",
    "key_exact",
    "key_score",
    *[f"{m}_dist" for m in SIGNAL_METRICS],
    "error",
    "prompt",
]
_MEAN_COLUMNS = (*CARD_METRICS, "bpm_abs_error", "bpm_octave_error", "bpm_acc1", "bpm_acc2", "key_score")


@dataclass
class _ClipFiles:
    """The files to measure: cache key → (path, with_tempo), and the keys of the generated / training clips."""

    files: dict[str, tuple[str, bool]] = field(default_factory=dict)
    gen_keys: list[str] = field(default_factory=list)
    ref_keys: list[str] = field(default_factory=list)


@dataclass
class _Measured:
    """Step 2's result: the signal cache, the clips that crashed their worker (not cached), the jobs run now."""

    log: JsonlLog
    crashed: dict[str, dict]
    jobs: list[tuple[str, str, bool]]
    files: dict[str, tuple[str, bool]]

    def row(self, k: str) -> dict:
        return self.log.get(k) or self.crashed.get(k) or {"error": f"{self.files[k][0]}: file not found"}


@dataclass
class _Embedded:
    """Step 3's result: the CLAP model, its embedding cache, the clips embedded now."""

    clap: Any
    log: JsonlLog
    need: list[str]


def _tempo_graph(tempo_model: str):
    from . import tempo

    try:
        return tempo.resolve_tempo_model(tempo_model)
    except tempo.TempoKeyError as exc:
        raise EvaluateError(f"tempo_model: {exc}") from exc


def _clip_files(gens: list[dict], refs: list[str]) -> _ClipFiles:
    clips = _ClipFiles()
    for r in gens:
        p = Path(r["path"])
        k = _file_key(p) if p.is_file() else f"{p}|missing"
        clips.gen_keys.append(k)
        clips.files[k] = (str(p), True)
    for path in refs:
        p = Path(path)
        k = _file_key(p) if p.is_file() else f"{p}|missing"
        clips.ref_keys.append(k)
        clips.files.setdefault(k, (str(p), False))
    return clips


def _measure_signals(clips: _ClipFiles, out_dir: Path, graph, key_profile: str, workers: int) -> _Measured:
    """Signal metrics, tempo and key of every clip not cached yet, on the crash-isolating pool."""
    from tqdm.auto import tqdm

    skey = _settings_key(graph=file_sha256(graph), key_profile=key_profile)
    sig_log = JsonlLog(out_dir / "cache" / f"signal-{skey}.jsonl", key="key")
    files = clips.files
    jobs = [(k, p, t) for k, (p, t) in files.items() if k not in sig_log and not k.endswith("|missing")]
    crashed: dict[str, dict] = {}
    with tqdm(total=len(jobs), desc="07_evaluate: signal metrics, tempo, key", unit="clip", disable=not jobs) as bar:
        for k, row in _iter_measure(jobs, str(graph), key_profile, workers):
            if row.get("crashed"):  # not cached: the next run tries the file again
                crashed[k] = row
            else:
                sig_log.append({"key": k, **row})
            bar.update(1)
    return _Measured(sig_log, crashed, jobs, files)


def _embed_clips(
    clips: _ClipFiles,
    measured: _Measured,
    out_dir: Path,
    clap_model: str,
    clap_backend: str,
    clap_setting: str,
    device_used: str,
) -> _Embedded:
    """CLAP audio embeddings of every clip not cached yet (a clip that fails becomes an error row)."""
    from tqdm.auto import tqdm

    from . import audio

    # the card setting keeps its old cache key (no re-embedding); another setting gets its own
    ckey = _settings_key(
        clap_model=clap_model,
        backend=clap_backend,
        **({} if clap_setting == "card" else {"setting": clap_setting, "seed": SAM_SEED}),
    )
    clap_log = JsonlLog(out_dir / "cache" / f"clap-{ckey}.jsonl", key="key")
    need = [k for k in clips.files if k not in clap_log and k not in measured.crashed and not k.endswith("|missing")]
    clap = make_clap(clap_model, clap_backend, device_used)
    for k in tqdm(need, desc="07_evaluate: CLAP embeddings", unit="clip", disable=not need):
        path = clips.files[k][0]
        try:
            y, sr = audio.load(path)
            emb = clap_audio_embedding(clap, y, sr) if clap_setting == "card" else clap_audio_embedding_sam(clap, y, sr)
            clap_log.append({"key": k, "embedding": [round(float(x), 7) for x in emb], "error": None})
        except Exception as exc:
            clap_log.append({"key": k, "embedding": None, "error": f"{path}: {type(exc).__name__}: {exc}"})
    return _Embedded(clap, clap_log, need)


def _training_table(clips: _ClipFiles, measured: _Measured, clap_log: JsonlLog):
    """The training clips' metrics (one row each) and the median log of each signal metric over them."""
    import pandas as pd

    ref_rows = []
    for k in clips.ref_keys:
        s = measured.row(k)
        ref_rows.append(
            {
                "path": clips.files[k][0],
                **{m: s.get(m) for m in SIGNAL_METRICS},
                "duration_s": s.get("duration_s"),
                "error": s.get("error") or (clap_log.get(k) or {}).get("error"),
            }
        )
    ref_df = pd.DataFrame(ref_rows, columns=["path", *SIGNAL_METRICS, "duration_s", "error"])
    for c in (*SIGNAL_METRICS, "duration_s"):
        ref_df[c] = pd.to_numeric(ref_df[c], errors="coerce").astype(float)
    ref_median_log = {}
    for m in SIGNAL_METRICS:
        v = ref_df[m].astype(float)
        v = v[np.isfinite(v) & (v > 0)]
        ref_median_log[m] = float(np.median(np.log(v))) if len(v) else None
    return ref_df, ref_median_log


def _clip_row(r: dict, s: dict, c: dict, text: dict, ref_median_log: dict, run_: Run) -> dict:
    """One generated clip's row of metrics.csv: its measurements, CLAP score, BPM/key adherence, distances."""
    req_bpm = parse_bpm(r["prompt"])
    req_key = parse_key(r["prompt"])
    row = {
        "model": r["model"],
        "prompt_idx": r["prompt_idx"],
        "seed": r["seed"],
        "path": run_.rel(r["path"]) if str(r["path"]).startswith(str(run_.root) + os.sep) else r["path"],
        "duration_s": s.get("duration_s"),
        "bpm": s.get("bpm"),
        "tempo_confidence": s.get("tempo_confidence"),
    }
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
    return row


def _clip_table(gens, clips: _ClipFiles, measured: _Measured, clap_log: JsonlLog, text, ref_median_log, run_: Run):
    """One row per generated clip, sorted by prompt, model, seed."""
    import pandas as pd

    rows = [
        _clip_row(r, measured.row(k), clap_log.get(k) or {}, text, ref_median_log, run_)
        for r, k in zip(gens, clips.gen_keys)
    ]
    df = pd.DataFrame(rows).sort_values(["prompt_idx", "model", "seed"], kind="stable").reset_index(drop=True)
    for c in _METRICS_NUMERIC_COLUMNS:  # a column of failed clips only is all None: keep it numeric (NaN)
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df


def _frechet_by_model(gens, clips: _ClipFiles, clap_log: JsonlLog, models_present: list[str]) -> dict:
    """Fréchet CLAP distance of each model's clips to the training clips, with a note when unreliable."""
    ref_emb = [clap_log.get(k, {}).get("embedding") for k in clips.ref_keys]
    ref_emb = np.asarray([e for e in ref_emb if e], dtype=np.float64)
    frechet = {}
    for m in models_present:
        embs = [clap_log.get(k, {}).get("embedding") for r, k in zip(gens, clips.gen_keys) if r["model"] == m]
        embs = np.asarray([e for e in embs if e], dtype=np.float64)
        rec = {"n_generated": int(len(embs)), "n_training": int(len(ref_emb)), "value": None, "note": None}
        if len(ref_emb) < 2 or len(embs) < 2:
            rec["note"] = "needs at least 2 generated and 2 training clips"
        else:
            rec["value"] = frechet_distance(embs, ref_emb)
            if min(len(embs), len(ref_emb)) < ref_emb.shape[1]:
                rec["note"] = (
                    f"small sample: {min(len(embs), len(ref_emb))} clips for {ref_emb.shape[1]} dimensions "
                    "(biased upward; compare at equal counts only)"
                )
        frechet[m] = rec
    return frechet


def _write_outputs(df, ref_df, models_present, frechet, out_dir: Path, run_: Run, params, ref_source, settings) -> dict:
    """metrics.csv, training_metrics.csv, card_table.md, summary.md, plots and report.md.

    ``settings``: ``run_dir``, ``clap_setting``, ``clap_model``, ``spectrogram_pairs``. Returns what the
    summary reports: means, training means, comparison, focus tags, plots, errors, paper comparison.
    """
    with atomic_path(out_dir / layout.METRICS_CSV) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(out_dir / layout.TRAINING_METRICS_CSV) as tmp:
        ref_df.to_csv(tmp, index=False, float_format="%.6g")
    pair = [m for m in ("base", "finetune") if m in models_present]
    table_models = pair + [m for m in models_present if m not in pair]
    atomic_write_text(out_dir / layout.CARD_TABLE, card_table(df, table_models))
    comparison = compare(df) if len(pair) == 2 else []
    means = {m: {c: _mean(df[df["model"] == m], c) for c in _MEAN_COLUMNS} for m in models_present}
    training_means = {m: _mean(ref_df, m) for m in SIGNAL_METRICS}
    summary_md = _summary_md(means, training_means, comparison, frechet, models_present, len(ref_df))
    learned = learning(df, frechet)  # did the fine-tune move toward the training clips? (in words, from the run)
    summary_md += learning_md(learned)
    from . import (
        focus_results as focus,
    )  # per tag the second stage trained on: did it move toward the tag's training clips?

    focus_tags = (
        focus.tag_moves(settings["run_dir"], df, ref_df, SIGNAL_METRICS, TIE_TOLERANCE)
        if "focus" in models_present
        else []
    )
    summary_md += focus.tag_moves_md(focus_tags, SIGNAL_METRICS)
    blind = blind_preference(settings["run_dir"])  # the producer's ears: 06's playground's blind rounds
    summary_md += blind_md(blind)
    atomic_write_text(out_dir / layout.SUMMARY_MD, summary_md)
    plots = _plots(df, ref_df, out_dir / "plots", pair, int(settings["spectrogram_pairs"]), run_)
    errors = df[df["error"].notna()]
    paper = paper_comparison(means, settings["clap_setting"], settings["clap_model"])
    report = _report_md(df, summary_md, out_dir, plots, ref_source, len(ref_df), params, errors, paper)
    atomic_write_text(out_dir / layout.REPORT, report)
    return {
        "means": means,
        "training_means": training_means,
        "comparison": comparison,
        "focus_tags": focus_tags,
        "blind": blind,
        "plots": plots,
        "errors": int(len(errors)),
        "paper": paper,
        "learning": learned,
    }


def _finish(run_: Run, out_dir: Path, params: dict, summary: dict) -> None:
    """Write summary.json and record the stage as done."""
    atomic_write_json(out_dir / layout.SUMMARY_JSON, _jsonable(summary))
    run_.mark_done(
        STAGE,
        params=params,
        **_jsonable(
            {k: summary[k] for k in ("clips", "models", "prompts", "errors", "training_clips", "frechet", "outputs")}
        ),
    )


@stage.entry(STAGE, EvaluateError)
def run(
    run_dir: str,
    profile: str,
    generations: str,
    clap_model: str,
    clap_backend: str,
    clap_setting: str,
    tempo_model: str,
    key_profile: str,
    reference: str,
    device: str,
    workers: int,
    spectrogram_pairs: int,
) -> dict:
    """Measure every generated clip, compare base vs fine-tune, write ``RUN_DIR/07_evaluate/``.

    See the module docstring for the metric definitions and outputs. Returns a summary dict.
    """
    run_, params = begin(STAGE, locals())  # a wrong type or an incompatible run folder: refused by name
    from . import models

    # 1. validate before any work
    _validate(generations, clap_backend, clap_setting)
    gens = read_generations(run_dir, generations)
    refs, ref_source = reference_clips(run_dir, reference)
    graph = _tempo_graph(tempo_model)
    out_dir = run_.stage_dir(STAGE)

    # 2. per-clip signal metrics, tempo, key (cached, append-once, resumable)
    clips = _clip_files(gens, refs)
    measured = _measure_signals(clips, out_dir, graph, key_profile, int(workers))

    # 3. CLAP audio embeddings (cached) and prompt scores
    device_used = models.pick_device(device)
    embedded = _embed_clips(clips, measured, out_dir, clap_model, clap_backend, clap_setting, device_used)
    prompts = sorted({r["prompt"] for r in gens})
    text = dict(zip(prompts, embedded.clap.embed_text(prompts)))

    # 4. one row per generated clip (and one per training clip)
    ref_df, ref_median_log = _training_table(clips, measured, embedded.log)
    df = _clip_table(gens, clips, measured, embedded.log, text, ref_median_log, run_)

    # 5. Fréchet CLAP distance of each model's clips to the training clips
    models_present = sorted(df["model"].unique(), key=lambda m: (m not in ("base", "finetune"), m != "base", m))
    frechet = _frechet_by_model(gens, clips, embedded.log, models_present)

    # 6. tables, summary, plots, report
    df = df[_METRICS_CSV_COLUMNS]
    settings = {
        "run_dir": run_dir,
        "clap_setting": clap_setting,
        "clap_model": clap_model,
        "spectrogram_pairs": spectrogram_pairs,
    }
    with labelled({g["model"]: g.get("model_source") for g in gens}):  # a tiny stand-in is called one
        written = _write_outputs(df, ref_df, models_present, frechet, out_dir, run_, params, ref_source, settings)
    summary = {
        "clips": int(len(df)),
        "models": models_present,
        "prompts": int(df["prompt_idx"].nunique()),
        "errors": written["errors"],
        "training_clips": int(len(ref_df)),
        "reference": ref_source,
        "measured_now": len(measured.jobs),
        "clap_embedded_now": len(embedded.need),
        "device": device_used,
        "clap_setting": clap_setting,
        "clap_model": clap_model,
        "paper_comparison": written["paper"],
        "means": written["means"],
        "training_means": written["training_means"],
        "frechet": frechet,
        "comparison": written["comparison"],
        "focus_tags": written["focus_tags"],
        "blind": written["blind"],
        "learning": written["learning"],
        "learning_md": learning_md(written["learning"]),
        "outputs": {
            n: run_.rel(out_dir / n) for n in (layout.METRICS_CSV, layout.CARD_TABLE, layout.SUMMARY_MD, layout.REPORT)
        },
        "plots": [run_.rel(p) for p in written["plots"]],
    }
    _finish(run_, out_dir, params, summary)
    return summary
