"""Bar-aligned loops at a known tempo, cut from a generation (notebook 06_generate, and its playground).

A producer's DAW wants loops: a whole number of bars at a stated tempo that repeat without a
click. :func:`cut_loop` makes one from a generated clip:

1. **Tempo.** The prompt's BPM (``clipfacts.parse_bpm``) is what the loop is named with — but
   only when the audio agrees. librosa's beat tracker (``librosa.beat.beat_track``, started at
   the prompted tempo) finds the beat grid *in the audio*; its tempo is compared with the
   prompt's, octave-safe (a half- or double-time reading of the same grid is the same tempo). More
   than :data:`TEMPO_TOLERANCE` (4 %) apart, the loop is **flagged**: it is cut on the detected
   grid at the detected tempo and named ``…-bpm-unsure-…``, never with a BPM the audio does not
   have.
2. **Bars.** 4/4 is assumed (:data:`BEATS_PER_BAR`). The loop starts on a **downbeat found in
   the audio** (:func:`bar_phase`): the grid's beats are counted 0–3 and three cues are averaged
   over every bar of the clip for each of the 4 phases — kick-band onsets (kick and 808 land on
   beat 1), snare-band onsets (the snare/clap is on 2 and 4, or 3 in half-time: never on 1) and
   harmonic change (chords change on bar lines); the phase with the most kick, least snare and
   most change is beat 1. The loop starts on the first such beat that sits on a regular stretch of
   the grid, snapped to its attack, and is exactly ``bars × 4 × 60 / bpm`` seconds long (rounded to
   the sample: a whole number of bars within far less than :data:`BAR_TOLERANCE`). ``bars`` is 1,
   2, 4 or 8; when the clip is too short for it, the longest of those that fits; too short for one
   bar, no loop and the reason. Measured on beats with a known bar 1: docs/benchmarks.md.
3. **Seam: a crossfade**, not a zero-crossing search. The last :data:`CROSSFADE_S` (10 ms) of
   the loop are faded (equal-gain, linear) into the audio *just before* the loop's start, so the
   loop's last sample is the sample that precedes its first one in the generation: looping it
   replays a step the audio really made, and :func:`seam_report` checks that the jump at the
   seam is no larger than the largest step between two samples inside the loop (on every
   channel). A zero-crossing search would move the cut off the beat grid and cannot match the
   slope; the crossfade keeps the grid and the slope.
4. **Loudness** (optional): ``target_lufs`` gains the loop to an integrated loudness with
   ``audio.normalize_loudness`` (never over -1 dBFS sample peak: quieter rather than clipped).

Files are 24-bit WAV, named ``<stem>-loop-<n>bars-<bpm>bpm-<key>.wav`` (key as a DAW writes it:
``Fm``, ``C#``, ``Eb``; left out when the prompt names none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BAR_CHOICES = (1, 2, 4, 8)
BEATS_PER_BAR = 4
TEMPO_TOLERANCE = 0.04  # detected vs prompted tempo: more apart than this, the loop is flagged
BAR_TOLERANCE = 0.01  # a loop's length is a whole number of bars within this
CROSSFADE_S = 0.010
SUBTYPE = "PCM_24"


class LoopError(ValueError):
    """A loop that cannot be cut; the message is meant for a person."""


@dataclass
class Grid:
    """The beat grid found in the audio, and how its tempo compares with the prompt's."""

    detected_bpm: float | None  # librosa's reading, as it came
    bpm: float | None  # the tempo the loop is cut at: the prompt's when they agree, else the detected one
    beats: np.ndarray  # beat times (s), on the grid of ``bpm`` (octave-corrected)
    prompted_bpm: float | None
    deviation: float | None  # |detected (octave-corrected) - prompted| / prompted
    flagged: bool
    note: str = ""


@dataclass
class Loop:
    """A cut loop (``audio`` None when none could be cut: ``reason`` says why)."""

    audio: np.ndarray | None
    sr: int
    bars: int = 0
    start_s: float = 0.0
    grid: Grid | None = None
    seam: dict = field(default_factory=dict)
    loudness: dict = field(default_factory=dict)
    reason: str = ""

    @property
    def bar_count(self) -> float:
        """Bars the audio spans at the loop's tempo (a whole number within BAR_TOLERANCE)."""
        if self.audio is None or not self.grid or not self.grid.bpm:
            return 0.0
        return self.audio.shape[1] / self.sr / (BEATS_PER_BAR * 60.0 / self.grid.bpm)


def key_label(key: tuple[str, str] | None) -> str:
    """``("F", "minor")`` → ``"Fm"``; ``("C#", "major")`` → ``"C#"``; None → ``""``."""
    if not key:
        return ""
    tonic, scale = key
    return f"{tonic}{'m' if scale == 'minor' else ''}"


def bpm_label(bpm: float) -> str:
    return f"{bpm:.0f}" if abs(bpm - round(bpm)) < 0.05 else f"{bpm:.1f}"


def loop_name(stem: str, loop: Loop, key: tuple[str, str] | None = None) -> str:
    """``<stem>-loop-4bars-140bpm-Fm.wav``; a flagged tempo is ``bpm-unsure``, never a number."""
    g = loop.grid
    tempo = "bpm-unsure" if g is None or g.flagged or not g.bpm else f"{bpm_label(g.bpm)}bpm"
    parts = [stem, "loop", f"{loop.bars}bars", tempo] + ([key_label(key)] if key else [])
    return re.sub(r"[^A-Za-z0-9#._-]", "_", "-".join(parts)) + ".wav"


def _mono(audio: np.ndarray) -> np.ndarray:
    return np.asarray(audio, dtype=np.float32).mean(axis=0) if audio.ndim == 2 else np.asarray(audio, np.float32)


def _octave(detected: float, prompted: float) -> float:
    """The octave of ``detected`` (×½, ×1, ×2) nearest ``prompted``: the same grid, read at the prompt's level."""
    return min((detected * f for f in (0.5, 1.0, 2.0)), key=lambda t: abs(t - prompted))


def _regrid(beats: np.ndarray, factor: float) -> np.ndarray:
    """Beats of a grid read at ``factor`` × its tempo: halves inserted (×2) or every other beat (×½)."""
    if factor > 1.5 and len(beats) > 1:
        mids = (beats[:-1] + beats[1:]) / 2
        return np.sort(np.concatenate([beats, mids]))
    if factor < 0.75:
        return beats[::2]
    return beats


def beat_grid(audio: np.ndarray, sr: int, prompted_bpm: float | None) -> Grid:
    """The beat grid in ``audio`` and its tempo against the prompt's (see the module doc)."""
    import librosa

    y = _mono(audio)
    start = float(prompted_bpm) if prompted_bpm else 120.0
    tempo, beats = librosa.beat.beat_track(y=y, sr=sr, start_bpm=start, units="time", trim=False)
    detected = float(np.atleast_1d(tempo)[0]) if np.size(tempo) else 0.0
    beats = np.asarray(beats, dtype=float)
    if detected <= 0 or len(beats) < 2:
        return Grid(None, None, beats, prompted_bpm, None, True, "no beat found in the audio")
    if not prompted_bpm:
        return Grid(detected, detected, beats, None, None, True, "the prompt names no BPM")
    octave = _octave(detected, float(prompted_bpm))
    deviation = abs(octave - prompted_bpm) / prompted_bpm
    beats = _regrid(beats, octave / detected)
    if deviation > TEMPO_TOLERANCE:
        note = (
            f"detected {octave:.1f} BPM, the prompt asked for {bpm_label(prompted_bpm)} BPM "
            f"({100 * deviation:.1f} % apart, more than {100 * TEMPO_TOLERANCE:g} %)"
        )
        return Grid(detected, octave, beats, prompted_bpm, deviation, True, note)
    note = "" if octave == detected else f"librosa read {detected:.1f} BPM (the same grid at another octave)"
    return Grid(detected, float(prompted_bpm), beats, prompted_bpm, deviation, False, note)


# -- the downbeat: which of the grid's 4 beats starts a bar ---------------------------------------
# No library: madmom's downbeat tracker (the reference DBN) was last released in 2018 (0.16.1) and
# does not build on Python >= 3.10 / NumPy 2 without patches; BeatNet and allin1 depend on it;
# beat_this (CPJKU, maintained) downloads its checkpoint on first use, and the course runs offline
# with no model download; Essentia (installed for 03) tracks beats, not downbeats. So: three cues
# every 4/4 beat producer relies on, folded over the grid's 4 phases (Davies & Plumbley 2006 and
# Papadopoulos & Peeters 2011 use the same cues), validated on beats with a known bar 1
# (benchmarks/bench_downbeat.py; docs/benchmarks.md).
KICK_BAND = (0.0, 150.0)  # Hz: kick and 808 — on beat 1 (and often 3)
SNARE_BAND = (800.0, 5000.0)  # Hz: snare/clap — on 2 and 4 (3 in half-time): never on 1
HOP = 512
REGULAR = 0.1  # a beat starts a loop only when both its neighbours are this close to one period


def _band_envelope(logmel: np.ndarray, freqs: np.ndarray, band: tuple[float, float], sr: int) -> np.ndarray:
    import librosa

    rows = np.where((freqs >= band[0]) & (freqs < band[1]))[0]
    return librosa.onset.onset_strength(S=logmel[rows], sr=sr, hop_length=HOP)


def beat_cues(y: np.ndarray, sr: int, beats: np.ndarray) -> dict[str, np.ndarray]:
    """Per beat: kick-band and snare-band onset strength, and how much the harmony changes there.

    Onset strengths are the largest within ±2 frames (±23 ms at 44.1 kHz) of the beat; the harmonic
    change at beat k is 1 − cos between the median chroma of the beat before it and the beat after it.
    """
    import librosa

    n_mels = 64
    mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=HOP, n_mels=n_mels, fmax=min(11000, sr / 2))
    logmel = librosa.power_to_db(mel)
    freqs = librosa.mel_frequencies(n_mels=n_mels, fmax=min(11000, sr / 2))
    frames = librosa.time_to_frames(beats, sr=sr, hop_length=HOP)

    def at(env: np.ndarray) -> np.ndarray:
        return np.array([env[max(0, f - 2) : f + 3].max() if 0 <= f < len(env) else 0.0 for f in frames])

    chroma = librosa.feature.chroma_stft(y=y, sr=sr, hop_length=HOP)
    f = np.clip(frames, 0, chroma.shape[1] - 1)
    segs = [np.median(chroma[:, f[k] : max(f[k] + 1, f[k + 1])], axis=1) for k in range(len(f) - 1)]
    segs = [v / (np.linalg.norm(v) + 1e-9) for v in segs]
    change = np.zeros(len(frames))
    for k in range(1, len(segs)):
        change[k] = 1.0 - float(segs[k - 1] @ segs[k])
    return {
        "kick": at(_band_envelope(logmel, freqs, KICK_BAND, sr)),
        "snare": at(_band_envelope(logmel, freqs, SNARE_BAND, sr)),
        "harmony": change,
    }


def beat_numbers(beats: np.ndarray, bpm: float) -> np.ndarray:
    """Each beat's position in a 4-beat cycle (0–3), counted in periods from the middle of the grid —
    by time, so a missing or extra beat early in the clip does not shift the count."""
    ref = beats[len(beats) // 2]
    return np.round((beats - ref) / (60.0 / bpm)).astype(int) % BEATS_PER_BAR


def bar_phase(cues: dict[str, np.ndarray], numbers: np.ndarray) -> tuple[int, np.ndarray]:
    """The phase (0–3) of :func:`beat_numbers` that starts a bar, and the 4 phases' scores.

    Each cue is averaged over every beat of a phase (all the clip's bars), then standardised across
    the 4 phases; score = kick − snare + harmonic change. The highest score is the downbeat.
    """

    def z(v: np.ndarray) -> np.ndarray:
        m = np.array([v[numbers == p].mean() if np.any(numbers == p) else 0.0 for p in range(BEATS_PER_BAR)])
        return (m - m.mean()) / (m.std() + 1e-9)

    scores = z(cues["kick"]) - z(cues["snare"]) + z(cues["harmony"])
    return int(np.argmax(scores)), scores


def _downbeat(y: np.ndarray, sr: int, beats: np.ndarray, bpm: float, earliest: float) -> int | None:
    """The index of the first beat at or after ``earliest`` s that starts a bar and sits on a regular grid."""
    phase, _ = bar_phase(beat_cues(y, sr, beats), numbers := beat_numbers(beats, bpm))
    period = 60.0 / bpm
    for i, t in enumerate(beats):
        if numbers[i] != phase or t < earliest or i == 0 or i + 1 >= len(beats):
            continue
        if abs(t - beats[i - 1] - period) <= REGULAR * period and abs(beats[i + 1] - t - period) <= REGULAR * period:
            return i
    return None


SNAP_S = 0.03  # a beat is moved onto the attack it marks when one starts this close


def _snap_to_attack(y: np.ndarray, sr: int, t: float) -> int:
    """The sample where the attack nearest beat time ``t`` starts (librosa's backtracked onset), else ``t``.

    librosa's beat times sit on its analysis frames (~12 ms apart) and can land just after the
    attack; a loop cut there would lose its first transient.
    """
    import librosa

    onsets = librosa.onset.onset_detect(y=y, sr=sr, units="samples", backtrack=True)
    here = int(round(t * sr))
    if len(onsets):
        near = int(onsets[np.argmin(np.abs(onsets - here))])
        if abs(near - here) <= SNAP_S * sr:
            return near
    return here


def crossfade_seam(audio: np.ndarray, start: int, length: int, fade: int) -> np.ndarray:
    """``audio[:, start:start+length]`` with its last ``fade`` samples faded into those before ``start``.

    The fade weight reaches 1 on the last sample, so the loop ends on ``audio[:, start-1]``: the
    seam replays the step ``audio[start-1] → audio[start]`` the generation really made.
    """
    loop = np.array(audio[:, start : start + length], dtype=np.float32)
    if fade <= 0:
        return loop
    w = (np.arange(1, fade + 1, dtype=np.float32) / fade)[None, :]
    tail = loop[:, length - fade :]
    before = audio[:, start - fade : start].astype(np.float32)
    loop[:, length - fade :] = tail * (1 - w) + before * w
    return loop


def seam_report(loop: np.ndarray) -> dict:
    """The jump from the loop's last sample to its first, against its largest step inside."""
    loop = np.atleast_2d(loop)
    jump = float(np.max(np.abs(loop[:, 0] - loop[:, -1])))
    step = float(np.max(np.abs(np.diff(loop, axis=1)))) if loop.shape[1] > 1 else 0.0
    return {"seam_jump": round(jump, 6), "max_step": round(step, 6), "click_free": bool(jump <= step)}


def _fit_bars(bars: int, seconds_free: float, bar_s: float) -> int:
    """The longest of BAR_CHOICES up to ``bars`` that fits in ``seconds_free``; 0 when none does."""
    fits = [b for b in BAR_CHOICES if b <= bars and b * bar_s <= seconds_free]
    return max(fits) if fits else 0


def _check_args(audio: np.ndarray, sr: int, bars: int) -> None:
    if bars not in BAR_CHOICES:
        raise LoopError(f"loop bars must be one of {', '.join(map(str, BAR_CHOICES))} (got {bars})")
    if audio.ndim != 2 or audio.shape[1] == 0 or sr <= 0:
        raise LoopError(f"expected (channels, samples) audio with a sample rate (got shape {audio.shape}, sr {sr})")


def cut_loop(
    audio: np.ndarray, sr: int, prompted_bpm: float | None, bars: int = 4, target_lufs: float | None = None
) -> Loop:
    """One loop of ``bars`` bars (or the longest of 1/2/4/8 that fits) from ``(channels, n)`` audio."""
    _check_args(audio, sr, bars)
    seconds = audio.shape[1] / sr
    if prompted_bpm and seconds < BEATS_PER_BAR * 60.0 / prompted_bpm:
        return Loop(None, sr, reason=(
            f"too short for one bar: {seconds:.2f} s, one bar at {bpm_label(prompted_bpm)} BPM is "
            f"{BEATS_PER_BAR * 60.0 / prompted_bpm:.2f} s"
        ))  # fmt: skip
    grid = beat_grid(audio, sr, prompted_bpm)
    if grid.bpm is None:
        return Loop(None, sr, grid=grid, reason=grid.note)
    bar_s = BEATS_PER_BAR * 60.0 / grid.bpm
    fade = int(round(CROSSFADE_S * sr))
    first = _downbeat(_mono(audio), sr, grid.beats, grid.bpm, fade / sr)
    if first is None:
        return Loop(None, sr, grid=grid, reason="no downbeat on a regular beat grid (and late enough for the seam)")
    start = max(fade, _snap_to_attack(_mono(audio), sr, grid.beats[first]))
    n_bars = _fit_bars(bars, (audio.shape[1] - start) / sr, bar_s)
    if n_bars == 0:
        return Loop(None, sr, grid=grid, reason=(
            f"too short for one bar after the first downbeat ({grid.beats[first]:.2f} s): "
            f"one bar at {bpm_label(grid.bpm)} BPM is {bar_s:.2f} s"
        ))  # fmt: skip
    length = int(round(n_bars * bar_s * sr))
    out = crossfade_seam(audio, start, length, min(fade, length // 4))
    loudness = {}
    if target_lufs is not None:
        from . import audio as audio_mod

        try:
            out, loudness = audio_mod.normalize_loudness(out, sr, float(target_lufs))
        except audio_mod.AudioError as exc:
            loudness = {"error": str(exc)}
    return Loop(out, sr, n_bars, round(start / sr, 4), grid, seam_report(out), loudness)


def write_loop(path: str | Path, loop: Loop) -> None:
    """The loop as a 24-bit WAV, written atomically."""
    from .audio import write_wav
    from .runs import atomic_path

    if loop.audio is None:
        raise LoopError(f"{path}: no loop to write ({loop.reason})")
    with atomic_path(Path(path)) as tmp:
        write_wav(tmp, loop.audio, loop.sr, subtype=SUBTYPE)


def loop_row(loop: Loop) -> dict:
    """What a table of loops records about one (JSON-ready)."""
    g = loop.grid
    return {
        "bars": loop.bars or None,
        "bar_count": round(loop.bar_count, 4) if loop.audio is not None else None,
        "start_s": loop.start_s if loop.audio is not None else None,
        "bpm": round(g.bpm, 2) if g and g.bpm and not g.flagged else None,
        "detected_bpm": round(g.detected_bpm, 2) if g and g.detected_bpm else None,
        "prompted_bpm": g.prompted_bpm if g else None,
        "tempo_deviation": round(g.deviation, 4) if g and g.deviation is not None else None,
        "tempo_flagged": bool(g.flagged) if g else None,
        "tempo_note": g.note if g else "",
        **loop.seam,
        **{f"loudness_{k}": v for k, v in loop.loudness.items()},
        "reason": loop.reason or None,
    }
