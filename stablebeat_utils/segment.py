"""Stage 01 — segment: a folder of beats in, 44.1 kHz stereo clips with their start times out.

Notebook: ``notebooks/01_segment.ipynb``.

The StableBeaT card takes, from each instrumental, **two segments of 20–35 s from different parts
of the track and keeps their start time** (``seconds_start`` conditioning). This module does that,
reproducibly:

1. **Find** the sources: every file under ``input_dir`` (recursive, sorted by relative posix path)
   whose name ends in an audio extension (:data:`AUDIO_EXTS`). Other files (cover art, notes) are
   ignored and counted. Hidden folders (``.git``, ``.Trashes``…) and ``__MACOSX`` are not entered.
   **Hidden audio-named files** (``._beat.wav`` AppleDouble metadata from macOS, ``.beat.wav``)
   are **rejected** with a reason, not silently skipped, so nothing disappears unexplained;
   ``.DS_Store`` (no audio extension) is ignored like any other non-audio file. A **folder whose
   name ends in an audio extension** (``beats.wav/``, ``.wav/``) gets a rejected row "is a
   folder" (its contents are still scanned when it is not hidden).
2. **Decode** once (soundfile, PyAV fallback; :func:`stablebeat_utils.audio.decode`). Rejected,
   each with a human reason: empty, not audio, **truncated** (the file holds less than its header
   announces — usually a broken copy or download: re-export it), NaN/inf samples, silent. A file
   that kills its worker process (a decoder segfault) becomes one rejected row and the batch goes
   on; that row is not final: the next run tries the file again (the kill may have been the
   machine's — out of memory, a broken library — not the file's).
3. **Analyse** a mono copy at :data:`ANALYSIS_SR` (11 025 Hz — 4× less work than 44.1 kHz and
   enough for beats): RMS envelope (silence, fade-in/out), a mel spectrogram, librosa onset
   strength and **beat tracking**; bars are 4 beats, their phase (the downbeat) is the one whose
   beats carry the most low-band (kick) onset energy.
4. **Choose** ``segments_per_track`` segments that start and end **on bar boundaries** (falling
   back to beats, then to a 0.5 s grid when no steady beat is found; ``cut_on`` says which),
   ``min_seconds``–``max_seconds`` long, inside the *usable* region (after the fade-in and before
   the fade-out: where the 1 s loudness is within :data:`FADE_DB` dB of the track's loud level),
   avoiding quiet stretches, one in each equal part of the usable region (different parts of the
   track), never overlapping.
   **Short tracks:** a track whose usable region fits fewer segments gives fewer clips (a 45 s
   track gives one); a track with no room for one segment of ``min_seconds`` gets one rejected
   row "too short" with its lengths.
5. **Cut, convert, normalise** only the chosen segments from the decoded source: to stereo
   (mono duplicated, more channels folded down), resampled to 44.1 kHz with soxr (VHQ), gained to
   ``target_lufs`` integrated (pyloudnorm, BS.1770) — but never above a sample-peak ceiling of
   ``peak_ceiling_dbfs``: where the target would need more, the gain is reduced (never limited,
   never clipped); the row records the loudness reached. Written as 16-bit ``clip_format``:
   ``wav`` (the demo) or ``flac`` (the Colab profiles: lossless, the same decoded samples in about
   half the bytes on Drive). Every later stage reads clips by the row's ``path`` with
   :func:`stablebeat_utils.audio.load`, which decodes both. A changed ``clip_format`` is a changed
   parameter: the stage starts over, so a run folder never mixes formats.
6. **Duplicates:** a source whose audio was already seen — byte-identical, or the same audio in
   another container, codec or sample rate (a 0.5 s × 16-band loudness fingerprint, compared when
   the lengths agree) — gets a rejected row "duplicate of <source>" and no clips. The earliest
   source in sorted path order wins, whatever the worker scheduling. Only sources that gave clips
   are compared against (a copy of an unreadable file keeps its own reason).

7. **Where the clips go:** ``RUN_DIR/01_segment/clips``, or with ``clip_dir`` this run's own subfolder
   of a folder outside the run folder (Colab: ``/content/stablebeat_clips``, the VM's local disk —
   "latents only on Drive"; :mod:`stablebeat_utils.clipstore`). Rows are the same either way. Clips
   gone from the clip folder (a disconnect wipes the local disk) are **rebuilt** by the next run from
   their sources — the same bytes, the rows untouched, the count printed and returned — and a
   source that no longer gives its recorded rows stops the stage by name instead. A changed
   ``clip_dir`` moves the clips (nothing starts over).

``segments.jsonl`` holds one row per clip and one row per source that gave none; ``start`` is in
seconds in the source, ``path`` relative to RUN_DIR (the clip's name in the run; resolved by
:func:`clip_path`). Work runs in ``workers`` processes (ordered,
bounded window, so memory stays flat however many tracks there are); a source's rows are appended
in one write after its clips are in place, so a run killed at any moment and run again ends with
the same bytes. Changing a parameter that affects the output starts the stage over.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import layout
from . import audio as audio_mod
from . import clipstore
from .audio import AUDIO_EXTS, is_audio_name
from .pool import ordered_bounded as _ordered_bounded  # the one crash-isolating pool (moved to pool.py)
from .runs import JsonlLog, Run, RunFolderError, atomic_path, atomic_write_json, file_sha256, read_json
from . import stage
from .stage import begin

STAGE = layout.SEGMENT
SKIP_DIRS = {"__MACOSX"}
ANALYSIS_SR = 11025
HOP = 256  # 23 ms frames at ANALYSIS_SR
N_MELS = 64
SILENT_DBFS = -60.0  # a track whose loud level is below this is silent
FADE_DB = 12.0  # fade-in/out: the 1 s level more than this below the loud level
QUIET_DB = 24.0  # a quiet stretch inside a segment: this far below the loud level
GRID_SECONDS = 0.5  # the fallback grid when no steady beat is found
FP_HOP_S = 0.5  # fingerprint frame
FP_BANDS = 16
FP_MAX_FRAMES = 180  # the first 90 s are plenty to tell tracks apart
DUP_CORR = 0.97  # fingerprint correlation above which two sources are the same audio
DUP_PROFILE_DB = 1.0  # ... and their average spectra differ by less than this (RMS dB)
ROW_FIELDS = (
    "clip_id",
    "source",
    "index",
    "of",
    "start",
    "duration",
    "path",
    "status",
    "reason",
    "cut_on",
    "tempo",
    "source_duration",
    "source_sr",
    "source_channels",
    "source_format",
    "sha256",
    "loudness_lufs",
    "gain_db",
    "peak_dbfs",
)


class SegmentError(ValueError):
    """A parameter or input folder that cannot be used; raised before any work starts."""


# ---------------------------------------------------------------------------------------------
# finding sources


@dataclass(frozen=True)
class Source:
    rel: str  # posix path relative to the input folder
    kind: str  # "file", "folder" (a folder named like audio), "hidden" (._x.wav and friends)


def discover(input_dir: str | os.PathLike) -> tuple[list[Source], list[str]]:
    """The sources under ``input_dir`` in sorted order, and the ignored (non-audio) files."""
    root = Path(input_dir)
    sources: list[Source] = []
    ignored: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in dirnames:
            rel = (here / d).relative_to(root).as_posix()
            if is_audio_name(d):
                sources.append(Source(rel, "folder"))
            if d.startswith(".") or d in SKIP_DIRS:
                continue
            if (here / d).is_symlink():
                continue  # never follow folder links (loops); files that are links are read
            keep.append(d)
        dirnames[:] = sorted(keep)
        for f in filenames:
            rel = (here / f).relative_to(root).as_posix()
            if not is_audio_name(f):
                ignored.append(rel)
            elif f.startswith("."):
                sources.append(Source(rel, "hidden"))
            else:
                sources.append(Source(rel, "file"))
    sources.sort(key=lambda s: s.rel)
    return sources, sorted(ignored)


def slug(text: str, max_len: int = 40) -> str:
    """A filesystem-safe lowercase ASCII slug (``"Beat #1 (Ft. Ø)"`` → ``"beat_1_ft_o"``)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    s = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")
    return s[:max_len].strip("_") or "track"


def clip_id_for(rel: str, index: int | None) -> str:
    """``<slug of stem>-<8 hex of the relative path>-<NN>`` (``-rejected`` for a source with no clip)."""
    stem = rel.rsplit("/", 1)[-1]
    for ext in AUDIO_EXTS:
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    h = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:8]
    return f"{slug(stem)}-{h}-" + ("rejected" if index is None else f"{index:02d}")


# ---------------------------------------------------------------------------------------------
# analysis


@dataclass
class Analysis:
    """What the segmenter saw in one track (all times in seconds)."""

    duration: float
    frame_times: np.ndarray
    rms_db: np.ndarray  # per frame
    level_db: np.ndarray  # 1 s moving loudness
    onset: np.ndarray  # onset strength per frame
    loud_db: float  # the track's loud level (90th percentile of level_db)
    usable: tuple[float, float]  # after the fade-in, before the fade-out
    tempo: float | None
    beats: np.ndarray
    bars: np.ndarray
    grid: np.ndarray  # the boundaries segments are cut on
    cut_on: str  # "bar", "beat" or "time"
    mel_db: np.ndarray = field(repr=False)
    segments: list[tuple[float, float]] = field(default_factory=list)


def _moving_mean(x: np.ndarray, n: int) -> np.ndarray:
    if n <= 1 or len(x) == 0:
        return x
    c = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    half = n // 2
    idx = np.arange(len(x))
    lo = np.clip(idx - half, 0, len(x))
    hi = np.clip(idx + half + 1, 0, len(x))
    return (c[hi] - c[lo]) / (hi - lo)


def analyse(mono: np.ndarray, sr: int) -> Analysis:
    """Analyse a mono signal (any rate; resampled to :data:`ANALYSIS_SR`): loudness, onsets, beats, bars."""
    import librosa

    y = mono if sr == ANALYSIS_SR else audio_mod.resample(mono[None, :], sr, ANALYSIS_SR, quality="HQ")[0]
    duration = len(mono) / sr
    rms = librosa.feature.rms(y=y, frame_length=1024, hop_length=HOP, center=True)[0]
    rms_db = 20 * np.log10(np.maximum(rms, 1e-10))
    frames_per_s = ANALYSIS_SR / HOP
    level_db = 10 * np.log10(np.maximum(_moving_mean(rms.astype(np.float64) ** 2, int(frames_per_s)), 1e-20))
    loud_db = float(np.percentile(level_db, 90)) if len(level_db) else float("-inf")
    frame_times = librosa.frames_to_time(np.arange(len(rms)), sr=ANALYSIS_SR, hop_length=HOP)
    S = librosa.feature.melspectrogram(
        y=y, sr=ANALYSIS_SR, n_fft=1024, hop_length=HOP, n_mels=N_MELS, fmax=5000.0, center=True
    )
    mel_db = librosa.power_to_db(S, ref=1.0, amin=1e-10)
    n = min(len(rms), mel_db.shape[1])
    # S comes from a centred STFT already: librosa's extra centring shift (n_fft // 2hop frames) would
    # put every onset ~30-80 ms late (measured on demo.make_beat); without it beats land ~15 ms early,
    # just before the attack, which is where a cut belongs.
    onset = librosa.onset.onset_strength(S=mel_db, sr=ANALYSIS_SR, hop_length=HOP, center=False)[:n]

    loud = np.nonzero(level_db >= loud_db - FADE_DB)[0]
    usable = (float(frame_times[loud[0]]), float(min(frame_times[loud[-1]], duration))) if len(loud) else (0.0, 0.0)

    tempo, beat_frames = librosa.beat.beat_track(onset_envelope=onset, sr=ANALYSIS_SR, hop_length=HOP, trim=True)
    tempo = float(np.atleast_1d(tempo)[0]) if len(beat_frames) else None
    beats = librosa.frames_to_time(beat_frames, sr=ANALYSIS_SR, hop_length=HOP)
    bars = np.array([])
    if len(beat_frames) >= 8:
        # the downbeat: of the 4 phases, the one whose beats carry the most low-band (kick) onset
        low = librosa.onset.onset_strength(S=mel_db[: N_MELS // 8], sr=ANALYSIS_SR, hop_length=HOP, center=False)[:n]
        bf = np.minimum(beat_frames, len(low) - 1)
        strength = [low[bf[p::4]].mean() + 0.5 * onset[bf[p::4]].mean() for p in range(4)]
        bars = beats[int(np.argmax(strength)) :: 4]
    a = Analysis(
        duration,
        frame_times[:n],
        rms_db[:n],
        level_db[:n],
        onset,
        loud_db,
        usable,
        tempo,
        beats,
        bars,
        np.array([]),
        "time",
        mel_db,
    )
    return a


def _grids(a: Analysis, min_s: float, max_s: float) -> Iterator[tuple[str, np.ndarray]]:
    u0, u1 = a.usable
    eps = 0.05  # a boundary a frame before the usable start still counts
    for name, g in (("bar", a.bars), ("beat", a.beats)):
        g = g[(g >= u0 - eps) & (g <= u1 + eps)]
        if len(g) >= 2:
            yield name, g
    yield "time", np.arange(u0, u1 + 1e-9, GRID_SECONDS)


def choose_segments(a: Analysis, n_segments: int, min_s: float, max_s: float) -> list[tuple[float, float]]:
    """Up to ``n_segments`` non-overlapping (start, end) on the grid, one per equal part of the usable region.

    Bars first, then beats, then a 0.5 s grid: the first grid that gives the most segments wins (at
    a slow tempo a bar can be too long to fit two segments). Fills ``a.grid``, ``a.cut_on`` and
    ``a.segments``.
    """
    u0, u1 = a.usable
    length = u1 - u0
    n_fit = min(n_segments, int(np.floor((length + 1e-6) / min_s)))
    if n_fit <= 0:
        return []
    quiet = (a.level_db < a.loud_db - QUIET_DB).astype(np.float64)
    cq = np.concatenate([[0.0], np.cumsum(quiet)])
    fps = ANALYSIS_SR / HOP

    def quiet_seconds(s: np.ndarray, e: np.ndarray) -> np.ndarray:
        i = np.clip((s * fps).astype(int), 0, len(quiet))
        j = np.clip((e * fps).astype(int), 0, len(quiet))
        return (cq[j] - cq[i]) / fps

    best_choice: tuple[list, str, np.ndarray] = ([], "time", np.array([]))
    for cut_on, grid in _grids(a, min_s, max_s):
        s_idx, e_idx = np.triu_indices(len(grid), k=1)
        starts, ends = grid[s_idx], grid[e_idx]
        dur = ends - starts
        ok = (dur >= min_s - 1e-6) & (dur <= max_s + 1e-6) & (starts >= u0 - 0.06) & (ends <= a.duration)
        if not ok.any():
            continue
        starts, ends, dur = starts[ok], ends[ok], dur[ok]
        qs = quiet_seconds(starts, ends)
        target = min(max_s, max(min_s, length / n_fit))
        chosen: list[tuple[float, float]] = []
        prev_end = -np.inf
        part = length / n_fit
        for k in range(n_fit):
            w0, w1 = u0 + k * part, u0 + (k + 1) * part
            free = starts >= prev_end - 1e-6
            if not free.any():
                break
            overlap = np.clip(np.minimum(ends, w1) - np.maximum(starts, w0), 0, None)
            centre = np.abs((starts + ends) / 2 - (w0 + w1) / 2)
            score = overlap - 0.5 * np.abs(dur - target) - 0.01 * centre - 4.0 * qs
            score = np.where(free, score, -np.inf)
            best = int(np.argmax(score))  # ties → the earliest, deterministic
            chosen.append((float(starts[best]), float(ends[best])))
            prev_end = ends[best]
        if len(chosen) > len(best_choice[0]):
            best_choice = (chosen, cut_on, grid)
        if len(chosen) == n_fit:
            break
    a.segments, a.cut_on, a.grid = best_choice
    return a.segments


# ---------------------------------------------------------------------------------------------
# fingerprints (duplicate detection)
# Measured on demo.make_beat: the same beat as wav / 48 kHz flac / 128 kb/s mp3 correlates at
# ≥ 0.9998 with ≤ 0.43 dB spectral difference; two different beats at the same tempo and length
# reach 0.91 and 1.97 dB — hence the thresholds below.


def fingerprint(a: Analysis) -> dict:
    """A small loudness pattern: 0.5 s × 16 mel bands, as int8 quarter-dB deviations + the band means."""
    fps = ANALYSIS_SR / HOP
    step = max(1, int(round(FP_HOP_S * fps)))
    power = 10 ** (a.mel_db / 10)
    n_frames = min(power.shape[1] // step, FP_MAX_FRAMES)
    if n_frames == 0:
        return {"seconds": round(a.duration, 3), "profile": [], "frames": ""}
    p = power[:, : n_frames * step].reshape(FP_BANDS, N_MELS // FP_BANDS, n_frames, step).mean(axis=(1, 3))
    db = 10 * np.log10(np.maximum(p, 1e-10))
    profile = db.mean(axis=1)
    dev = np.clip(np.round((db - profile[:, None]) * 4), -127, 127).astype(np.int8)
    return {
        "seconds": round(a.duration, 3),
        "profile": [round(float(v), 2) for v in profile],
        "frames": base64.b64encode(dev.T.tobytes()).decode("ascii"),
    }


def _fp_arrays(fp: dict) -> tuple[np.ndarray, np.ndarray]:
    dev = np.frombuffer(base64.b64decode(fp["frames"]), dtype=np.int8).reshape(-1, FP_BANDS).astype(np.float64)
    return np.asarray(fp["profile"], dtype=np.float64), dev / 4


def same_audio(fp_a: dict, fp_b: dict) -> bool:
    """Whether two fingerprints come from the same audio (any container, codec or sample rate)."""
    if not fp_a.get("frames") or not fp_b.get("frames"):
        return False
    da, db_ = fp_a["seconds"], fp_b["seconds"]
    if abs(da - db_) > max(0.5, 0.01 * max(da, db_)):
        return False
    pa, xa = _fp_arrays(fp_a)
    pb, xb = _fp_arrays(fp_b)
    if np.sqrt(np.mean((pa - pb) ** 2)) > DUP_PROFILE_DB:
        return False
    n = min(len(xa), len(xb))
    xa, xb = xa[:n].ravel(), xb[:n].ravel()
    sa, sb = xa.std(), xb.std()
    if sa < 0.25 and sb < 0.25:
        return True  # both steady (no pattern to compare): same length and spectrum is all there is
    if sa == 0 or sb == 0:
        return False
    return float(np.corrcoef(xa, xb)[0, 1]) >= DUP_CORR


class _DupIndex:
    """Fingerprints and file hashes of the sources that gave clips, bucketed by length."""

    def __init__(self) -> None:
        self.by_sha: dict[str, str] = {}
        self.buckets: dict[int, list[tuple[str, dict]]] = {}

    def find(self, sha: str | None, fp: dict | None) -> str | None:
        if sha and sha in self.by_sha:
            return self.by_sha[sha]
        if not fp:
            return None
        b = int(fp["seconds"])
        for k in range(b - 2, b + 3):
            for src, other in self.buckets.get(k, ()):
                if same_audio(fp, other):
                    return src
        return None

    def add(self, source: str, sha: str | None, fp: dict | None) -> None:
        if sha:
            self.by_sha.setdefault(sha, source)
        if fp:
            self.buckets.setdefault(int(fp["seconds"]), []).append((source, fp))


# ---------------------------------------------------------------------------------------------
# one source (runs in a worker)


def _row(source: str, index: int | None, of: int, status: str, reason: str = "", **extra: Any) -> dict:
    row = {k: None for k in ROW_FIELDS}
    row.update(clip_id=clip_id_for(source, index), source=source, index=index, of=of, status=status, reason=reason)
    row.update(extra)
    return row


def _rejected(source: str, reason: str, **extra: Any) -> dict:
    return {
        "source": source,
        "rows": [_row(source, None, 1, "rejected", reason, **extra)],
        "fp": None,
        "sha256": extra.get("sha256"),
    }


def process_source(task: dict) -> dict:
    """Decode, analyse, cut, normalise and write the clips of one source; never raises.

    Returns ``{"source", "rows", "fp", "sha256"}``; clips are already in place (atomically). A
    *rebuild* task (``task["expect"]``: the source's recorded rows, some of whose clips are gone)
    writes the missing clips only when the source gives exactly those rows again, and returns the
    recorded rows as resumed (``rebuilt``: how many clips, or ``rebuild_failed``: why not).
    """
    rel = task["rel"]
    try:
        result = _process_source(task)
    except audio_mod.AudioError as exc:
        result = _rejected(rel, str(exc))
    except RunFolderError:
        # reliability suite: a full disk (or unwritable run folder) while writing a clip is not a
        # verdict on the source — turned into a rejected row it was kept on re-run ("complete"),
        # so the source stayed rejected after the disk was freed. It stops the stage instead.
        raise
    except MemoryError:
        result = _rejected(rel, "too large to decode in memory")
    except Exception as exc:  # one odd file must not stop the batch: report it
        result = _rejected(rel, f"could not be processed ({type(exc).__name__}: {exc})")
    if task.get("expect") is not None and not result.get("resumed"):
        return _not_rebuilt(task, result["rows"][0]["reason"])
    return result


def _not_rebuilt(task: dict, why: str) -> dict:
    return {"source": task["rel"], "rows": task["expect"], "resumed": True, "rebuild_failed": why}


def _kind_refused(rel: str, kind: str) -> dict | None:
    if kind == "folder":
        return _rejected(rel, "is a folder, not an audio file (its name ends like one)")
    if kind == "hidden":
        name = rel.rsplit("/", 1)[-1]
        what = "macOS AppleDouble metadata ('._' file)" if name.startswith("._") else "a hidden file"
        return _rejected(rel, f"{what}: not used")
    return None


def _unusable(dec: Any, mono: np.ndarray, min_s: float) -> str | None:
    """Why a decoded source gives no clip before any analysis (truncated, corrupt, silent, short)."""
    if dec.truncated:
        return (
            f"truncated: the header announces {dec.declared_seconds:.1f} s but the file holds "
            f"{dec.seconds:.1f} s (a broken copy or download? re-export it)"
        )
    bad = audio_mod.non_finite_count(dec.audio)
    if bad:
        return f"{bad} NaN/infinite samples: the file is corrupt"
    peak = audio_mod.peak_dbfs(mono)
    if peak < SILENT_DBFS:
        return f"silent (peak {peak:.0f} dBFS)"
    if dec.seconds < min_s:
        return f"too short: {dec.seconds:.1f} s long, a clip needs at least {min_s:g} s"
    return None


def _no_segments(a: Analysis, dec: Any, min_s: float) -> str | None:
    """Why an analysed source gives no clip (silent, or no room for one segment)."""
    if a.loud_db < SILENT_DBFS:
        return f"silent (loudness {a.loud_db:.0f} dBFS)"
    if not a.segments:
        u0, u1 = a.usable
        return (
            f"too short: {u1 - u0:.1f} s of steady audio after trimming silence and fades "
            f"({dec.seconds:.1f} s in all), a clip needs at least {min_s:g} s"
        )
    return None


def _cut(dec: Any, a: Analysis, rel: str, cfg: dict, info: dict) -> list[tuple[dict, np.ndarray]]:
    """The (row, 44.1 kHz stereo normalised audio) of each chosen segment; nothing written."""
    out = []
    ext = cfg.get("clip_format", "wav")
    for i, (s, e) in enumerate(a.segments):
        i0, i1 = int(round(s * dec.sr)), min(int(round(e * dec.sr)), dec.audio.shape[1])
        clip = audio_mod.to_stereo(dec.audio[:, i0:i1])
        clip = audio_mod.resample(clip, dec.sr, audio_mod.TARGET_SR)
        clip, gain = audio_mod.normalize_loudness(
            clip, audio_mod.TARGET_SR, cfg["target_lufs"], cfg["peak_ceiling_dbfs"]
        )
        row = _row(
            rel,
            i,
            len(a.segments),
            "ok",
            start=round(i0 / dec.sr, 4),
            duration=round(clip.shape[1] / audio_mod.TARGET_SR, 4),
            path=f"{STAGE}/clips/{clip_id_for(rel, i)}.{ext}",
            cut_on=a.cut_on,
            tempo=round(a.tempo, 2) if a.tempo else None,
            **info,
            **gain,
        )
        out.append((row, clip))
    return out


def _write_clips(cuts: list[tuple[dict, np.ndarray]], clips_dir: Path, cfg: dict, only_missing: bool) -> int:
    """Each clip into ``clips_dir`` atomically (``only_missing``: those not there); how many written."""
    n = 0
    for row, clip in cuts:
        dest = clips_dir / Path(row["path"]).name
        if only_missing and dest.exists():
            continue
        with atomic_path(dest) as tmp:
            audio_mod.write_clip(tmp, clip, audio_mod.TARGET_SR, cfg.get("clip_format", "wav"))
        n += 1
    return n


def _process_source(task: dict) -> dict:
    rel, cfg = task["rel"], task["config"]
    refused = _kind_refused(rel, task["kind"])
    if refused is not None:
        return refused
    path = Path(task["input_dir"]) / rel
    if not path.exists():
        return _rejected(rel, "file not found (a broken link?)")
    sha = file_sha256(path)
    dec = audio_mod.decode(path)
    info = {
        "source_duration": round(dec.seconds, 3),
        "source_sr": dec.sr,
        "source_channels": dec.audio.shape[0],
        "source_format": dec.format,
        "sha256": sha,
    }
    mono = audio_mod.to_mono(dec.audio)
    why = _unusable(dec, mono, cfg["min_seconds"])
    if why:
        return _rejected(rel, why, **info)
    a = analyse(mono, dec.sr)
    fp = fingerprint(a)
    if a.loud_db >= SILENT_DBFS:
        choose_segments(a, cfg["segments_per_track"], cfg["min_seconds"], cfg["max_seconds"])
    why = _no_segments(a, dec, cfg["min_seconds"])
    if why:
        return {**_rejected(rel, why, **info), "fp": fp}
    cuts = _cut(dec, a, rel, cfg, info)
    rows = [row for row, _ in cuts]
    expect = task.get("expect")
    if expect is not None:  # a rebuild: the same rows, or nothing is written
        if rows != expect:
            return _not_rebuilt(task, "the source no longer gives the recorded clips (changed or replaced since?)")
        n = _write_clips(cuts, Path(task["clips_dir"]), cfg, only_missing=True)
        return {"source": rel, "rows": expect, "resumed": True, "rebuilt": n}
    _write_clips(cuts, Path(task["clips_dir"]), cfg, only_missing=False)
    return {"source": rel, "rows": rows, "fp": fp, "sha256": sha}


def analyse_file(
    path: str | os.PathLike, segments_per_track: int = 2, min_seconds: float = 20.0, max_seconds: float = 35.0
) -> Analysis:
    """The analysis :func:`run` makes of one file, with its chosen segments (for plots in the notebook)."""
    dec = audio_mod.decode(path)
    a = analyse(audio_mod.to_mono(dec.audio), dec.sr)
    choose_segments(a, segments_per_track, min_seconds, max_seconds)
    return a


# ---------------------------------------------------------------------------------------------
# the stage


def _warm_worker() -> None:
    """Pool initializer: librosa's jitted code compiled by one worker at a time (compat.warm_jit)."""
    from . import compat

    compat.warm_jit(analyse, audio_mod.TARGET_SR)


CRASHED = (
    "reading it crashed the decoder (the worker process died): the file is probably corrupt; "
    "it is tried again on the next run"
)


def _crashed(task: dict) -> dict:
    if task.get("expect") is not None:
        return _not_rebuilt(task, CRASHED)
    return _rejected(task["rel"], CRASHED)


def _config(
    input_dir: Path,
    segments_per_track: int,
    min_seconds: float,
    max_seconds: float,
    target_lufs: float,
    peak_ceiling_dbfs: float,
    clip_format: str = "wav",
) -> dict:
    cfg = {
        "input_dir": str(input_dir),
        "segments_per_track": segments_per_track,
        "min_seconds": min_seconds,
        "max_seconds": max_seconds,
        "target_lufs": target_lufs,
        "peak_ceiling_dbfs": peak_ceiling_dbfs,
        "analysis_sr": ANALYSIS_SR,
        "hop": HOP,
        "clip_sr": audio_mod.TARGET_SR,
        "format": 1,
    }
    if clip_format != "wav":  # absent for WAV: run folders made before clip_format resume as they were
        cfg["clip_format"] = clip_format
    return cfg


def _validate(min_seconds: float, max_seconds: float) -> None:
    """What the settings' own choices and bounds (checked before ``run``'s body) cannot say."""
    if not min_seconds <= max_seconds:
        raise SegmentError(f"min_seconds={min_seconds!r}, max_seconds={max_seconds!r}: need 0 < min ≤ max")
    if max_seconds - min_seconds < 0.5:
        raise SegmentError(
            f"max_seconds - min_seconds = {max_seconds - min_seconds:g} s: leave at least 0.5 s "
            "so segments can end on a bar or beat"
        )


def _clean_stage(stage_dir: Path, *clip_folders: Path) -> None:
    """Remove this stage's own outputs (never anything else): its files, and this run's own clip
    folders outside the run folder (``<clip_dir>/<run>-<hash>``, made by this stage)."""
    for name in (layout.SEGMENTS, layout.STAGE_JSON, clipstore.RECORD):
        (stage_dir / name).unlink(missing_ok=True)
    for folder in (stage_dir / layout.CLIPS, stage_dir / layout.WORK, *clip_folders):
        if folder.is_dir():
            shutil.rmtree(folder)


def _clip_folder(clip_dir: str, run_obj: Run, in_dir: Path) -> Path:
    """Where the clips go: ``RUN_DIR/01_segment/clips``, or this run's subfolder of ``clip_dir``
    (never inside the folder of beats: the next run would take the clips for beats)."""
    folder = clipstore.folder_for(clip_dir, run_obj.root)
    if clip_dir and (folder == in_dir or in_dir in folder.parents):
        raise SegmentError(
            f"clip_dir {clip_dir!r} is inside input_dir {str(in_dir)!r}: put the clips elsewhere "
            f"(on Colab: clip_dir={clipstore.COLAB_CLIP_DIR!r}, the VM's local disk)"
        )
    return folder


def _start_over_if_changed(stage_dir: Path, config: dict, clips_dir: Path) -> None:
    """Clean the stage when a parameter that shapes the clips changed (or outputs have no record)."""
    old = read_json(stage_dir / layout.WORK / layout.WORK_CONFIG)
    previous = clipstore.ClipFolder(stage_dir.parent).folder
    outside = [f for f in {previous, clips_dir} if f != stage_dir / layout.CLIPS]
    if old is not None and old != config:
        print(f"{STAGE}: parameters changed since the last run in {stage_dir} — starting this stage over")
        _clean_stage(stage_dir, *outside)
    elif old is None and (stage_dir / layout.SEGMENTS).exists():
        _clean_stage(stage_dir, *outside)  # outputs without a record of how they were made: not trusted


def _missing_clips(rows: list[dict], clips_dir: Path) -> set[str]:
    """The names of the ``ok`` rows' clips that are not in ``clips_dir`` (one listing)."""
    have = set(os.listdir(clips_dir)) if clips_dir.is_dir() else set()
    return {Path(r["path"]).name for r in rows if r["status"] == "ok"} - have


def _move_clips(run_obj: Run, rows: list[dict], clips_dir: Path) -> int:
    """A changed ``clip_dir``: the clips still in the previously recorded folder move to the new one
    (each copied atomically, then removed); the rest are rebuilt. Returns how many moved."""
    previous = clipstore.ClipFolder(run_obj.root).folder
    if previous == clips_dir or not previous.is_dir():
        return 0
    moved = 0
    for name in sorted(_missing_clips(rows, clips_dir)):
        if (previous / name).is_file():
            with atomic_path(clips_dir / name) as tmp:
                shutil.copyfile(previous / name, tmp)
            (previous / name).unlink()
            moved += 1
    if previous.is_dir() and not any(previous.iterdir()):
        previous.rmdir()
    return moved


def _prepare(run_obj: Run, config: dict, clip_dir: str, clips_dir: Path, rows: list[dict]) -> int:
    """The work folder, the config and the clip folder (recorded before any clip is written);
    clips of a changed ``clip_dir`` moved over. Returns how many clips moved."""
    work = run_obj.stage_dir(STAGE) / layout.WORK
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / layout.WORK_CONFIG, config)
    clips_dir.mkdir(parents=True, exist_ok=True)
    moved = _move_clips(run_obj, rows, clips_dir)
    clipstore.record_folder(run_obj.root, clip_dir, clips_dir)
    return moved


def _plan_storage(run_obj: Run, in_dir: Path, sources: list, config: dict, clip_dir: str, clips_dir: Path) -> None:
    """The storage plan: printed, kept in RUN_DIR/storage_plan.json, a STOP before any clip when it won't fit."""
    from . import storage

    plan = storage.segment_plan(
        run_obj.root,
        [in_dir / s.rel for s in sources if s.kind == "file"],
        config["segments_per_track"],
        config["min_seconds"],
        config["max_seconds"],
        config.get("clip_format", "wav"),
        clip_folder=clips_dir,
        clip_dir=clip_dir,
    )
    print(plan.text())
    storage.record(run_obj.root, plan)
    storage.refuse(plan)


def _source_complete(rows: list[dict]) -> bool:
    return bool(rows) and len(rows) == rows[0]["of"] and len({r["index"] for r in rows}) == len(rows)


def _sources(input_dir: str | os.PathLike, run_obj: Run) -> tuple[Path, list, list]:
    """The input folder (``"demo"`` = the bundled beats), its audio sources and ignored files; a missing
    folder, one without audio, or one that overlaps the run folder is refused by name."""
    from . import demo

    try:
        in_dir = Path(demo.resolve_input_dir(input_dir)).resolve()
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise SegmentError(str(exc)) from exc
    sources, ignored = discover(in_dir)
    if not sources:
        raise SegmentError(f"input_dir {str(in_dir)!r} holds no audio files ({', '.join(AUDIO_EXTS)})")
    if run_obj.root == in_dir or in_dir in run_obj.root.parents or run_obj.root in in_dir.parents:
        raise SegmentError(
            f"run_dir {str(run_obj.root)!r} and input_dir {str(in_dir)!r} overlap: keep the run "
            "folder outside the folder of beats (and the other way round)"
        )
    return in_dir, sources, ignored


def _take(result: dict, log: JsonlLog, fps: JsonlLog, dups: "_DupIndex", clips_dir: Path) -> None:
    """One source's result into the log: a resumed source only re-enters the duplicate index; a new
    one is logged, or replaced by one ``duplicate of`` row (its clips deleted) when it repeats an
    earlier source."""
    src, rows = result["source"], result["rows"]
    if result.get("resumed"):
        if rows[0]["status"] == "ok":
            dups.add(src, rows[0].get("sha256"), (fps.get(src) or {}).get("fp"))
        return
    ok = rows[0]["status"] == "ok"
    original = dups.find(result["sha256"], result["fp"]) if ok else None
    if original is not None:
        for r in rows:
            (clips_dir / Path(r["path"]).name).unlink(missing_ok=True)
        info = {k: rows[0][k] for k in ("source_duration", "source_sr", "source_channels", "source_format", "sha256")}
        rows = [_row(src, None, 1, "rejected", f"duplicate of {original}", **info)]
    elif ok:
        fps.append({"source": src, "fp": result["fp"]})  # before the rows: resume needs it
        dups.add(src, result["sha256"], result["fp"])
    log.append(*rows)


def _summary(rows: list[dict], in_dir: Path, n_sources: int, n_ignored: int, seg_path: Path, clips_dir: Path) -> dict:
    ok_rows = [r for r in rows if r["status"] == "ok"]
    rejected = [r for r in rows if r["status"] != "ok"]
    return {
        "input_dir": str(in_dir),
        "sources": n_sources,
        "sources_with_clips": len({r["source"] for r in ok_rows}),
        "clips": len(ok_rows),
        "rejected": len(rejected),
        "duplicates": sum(1 for r in rejected if r["reason"].startswith("duplicate of")),
        "crashed": sum(1 for r in rejected if r["reason"] == CRASHED),
        "ignored_files": n_ignored,
        "clip_hours": round(sum(r["duration"] for r in ok_rows) / 3600, 4),
        "segments": str(seg_path),
        "clips_dir": str(clips_dir),
    }


def _tasks(sources: list, by_source: dict, in_dir: Path, clips_dir: Path, config: dict, gone: set) -> Iterator[Any]:
    """One task per source: a complete one passes through as resumed (or is rebuilt when clips of it
    are gone from the clip folder), the others are segmented."""
    for s in sources:
        rows = by_source.get(s.rel, [])
        task = {"rel": s.rel, "kind": s.kind, "input_dir": str(in_dir), "clips_dir": str(clips_dir), "config": config}
        if not _source_complete(rows):
            yield task
        elif any(r["status"] == "ok" and Path(r["path"]).name in gone for r in rows):
            yield {**task, "expect": rows}
        else:
            yield ("done", {"source": s.rel, "rows": rows, "resumed": True})


def _segment_all(tasks: Iterator[Any], n: int, workers: int, progress: bool, log: JsonlLog, clips_dir: Path) -> dict:
    """Run the tasks in the worker pool, in source order, into the log; rebuilt and failed counts."""
    from tqdm.auto import tqdm

    fps = JsonlLog(log.path.parent / layout.WORK / layout.FINGERPRINTS, key="source")
    dups = _DupIndex()
    out: dict = {"rebuilt": 0, "failed": []}
    with tqdm(total=n, desc="segment", unit="track", disable=not progress) as bar:
        for result in _ordered_bounded(
            process_source, tasks, workers, window=2 * workers + 2, on_crash=_crashed, initializer=_warm_worker
        ):
            _take(result, log, fps, dups, clips_dir)
            out["rebuilt"] += result.get("rebuilt", 0)
            if result.get("rebuild_failed"):
                out["failed"].append(f"{result['source']}: {result['rebuild_failed']}")
            bar.update(1)
    return out


def _remove_strays(clips_dir: Path, rows: list[dict]) -> None:
    """Clips of duplicates and temp files of a killed run: everything in the clip folder but the rows' clips."""
    keep = {Path(r["path"]).name for r in rows if r["status"] == "ok"}
    for f in clips_dir.iterdir():
        if f.name not in keep:
            f.unlink() if f.is_file() or f.is_symlink() else shutil.rmtree(f)


def _refuse_unrebuilt(failed: list[str], clips_dir: Path) -> None:
    if failed:
        raise SegmentError(
            f"{len(failed)} source(s) could not rebuild their missing clips in {clips_dir} exactly as "
            "recorded:\n  " + "\n  ".join(failed[:10]) + "\nPut those sources back as they were, or start "
            "over in a new run_dir (their tags, prompts and latents describe the old clips)."
        )


def _warn_if_all_crashed(summary: dict) -> None:
    if summary["crashed"] >= 2 and summary["crashed"] == summary["sources"]:
        print(
            f"{STAGE}: WARNING every file crashed its worker process. That points at this machine (a broken "
            "library, or a corrupt numba cache: delete librosa/__pycache__/*.nb* in the venv), not at your "
            "files. Run the stage again once fixed: those files are retried.",
            file=sys.stderr,
        )


@stage.entry(STAGE, SegmentError)
def run(
    run_dir: str | os.PathLike,
    input_dir: str | os.PathLike,
    profile: str,
    segments_per_track: int,
    min_seconds: float,
    max_seconds: float,
    target_lufs: float,
    peak_ceiling_dbfs: float,
    workers: int,
    clip_format: str,
    clip_dir: str,
    *,
    progress: bool = True,
) -> dict:
    """Segment every beat under ``input_dir`` into ``RUN_DIR/01_segment`` (see the module docstring).

    ``clip_dir`` (default ``""``: ``RUN_DIR/01_segment/clips``): a folder outside the run folder for
    the clip audio — on Colab ``/content/stablebeat_clips``, the VM's local disk, so only rows,
    tags, prompts, latents and checkpoints go to Drive (:mod:`stablebeat_utils.clipstore`). Clips
    gone from it (a disconnect wipes the local disk) are rebuilt by running the stage again.

    Returns a summary: sources, clips, rejected, duplicates, hours of clips, paths, and how many
    clips this call rebuilt or moved. Resumable and deterministic (the same bytes whatever
    ``workers`` and wherever a previous run was killed).
    """
    run_obj, _ = begin(STAGE, locals())  # a wrong type or an incompatible run folder: refused by name
    numbers = (float(min_seconds), float(max_seconds), float(target_lufs), float(peak_ceiling_dbfs))
    _validate(*numbers[:2])
    in_dir, sources, ignored = _sources(input_dir, run_obj)
    clips_dir = _clip_folder(clip_dir, run_obj, in_dir)
    config = _config(in_dir, segments_per_track, *numbers, clip_format)
    params = {"input_dir": str(input_dir), "profile": profile, **{k: v for k, v in config.items() if k != "input_dir"}}
    if clip_dir:  # absent when unset: run folders made before clip_dir resume as they were
        params["clip_dir"] = clip_dir
    stage_dir = run_obj.stage_dir(STAGE)
    _start_over_if_changed(stage_dir, config, clips_dir)
    log = JsonlLog(stage_dir / layout.SEGMENTS)
    # a file that killed its worker is not a final verdict (an out-of-memory kill, a broken library
    # on this machine): such rows are retried on every run; a truly corrupt file is rejected again
    crashed = {r["clip_id"] for r in log.rows() if r.get("reason") == CRASHED}
    if run_obj.is_done(STAGE, params) and len(log) and not crashed and not _missing_clips(log.rows(), clips_dir):
        return dict(run_obj.stage_record(STAGE)["summary"], clips_rebuilt=0, clips_moved=0)
    _plan_storage(run_obj, in_dir, sources, config, clip_dir, clips_dir)
    run_obj.clear_done(STAGE)
    moved = _prepare(run_obj, config, clip_dir, clips_dir, log.rows())
    log.discard(crashed)
    by_source: dict[str, list[dict]] = {}
    for r in log.rows():
        by_source.setdefault(r["source"], []).append(r)
    gone = _missing_clips(log.rows(), clips_dir)
    tasks = _tasks(sources, by_source, in_dir, clips_dir, config, gone)
    done = _segment_all(tasks, len(sources), workers, progress, log, clips_dir)
    rows = log.finalize(sort_key=lambda r: (r["source"], -1 if r["index"] is None else r["index"]))
    _remove_strays(clips_dir, rows)
    _refuse_unrebuilt(done["failed"], clips_dir)
    summary = _summary(rows, in_dir, len(sources), len(ignored), log.path, clips_dir)
    _warn_if_all_crashed(summary)
    run_obj.mark_done(STAGE, params=params, **summary)
    if done["rebuilt"] or moved:
        print(f"{STAGE}: {done['rebuilt']} missing clip(s) rebuilt from their sources, {moved} moved, in {clips_dir}")
    return dict(summary, clips_rebuilt=done["rebuilt"], clips_moved=moved)


def read_segments(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``RUN_DIR/01_segment/segments.jsonl`` (for the notebook and later stages)."""
    from .runs import read_jsonl

    return read_jsonl(Run(run_dir).path(STAGE, layout.SEGMENTS))


def source_path(run_dir: str | os.PathLike, source: str) -> Path:
    """The absolute path of a row's ``source`` (the input folder is recorded in the stage record)."""
    record = Run(run_dir).stage_record(STAGE) or {}
    input_dir = (record.get("summary") or {}).get("input_dir")
    if not input_dir:
        raise SegmentError(f"{run_dir}: stage {STAGE} has not finished; run segment.run first")
    return Path(input_dir) / source


def clip_path(run_dir: str | os.PathLike, row: dict) -> Path:
    """The absolute path of an ok row's clip (in the run folder, or in the clip folder of ``clip_dir``)."""
    return clipstore.clip_path(run_dir, row["path"])
