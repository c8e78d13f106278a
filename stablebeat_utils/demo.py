"""The bundled demo dataset: synthetic trap-like beats with known BPM/key, plus three real recordings.

Used by the ``demo`` profile of every notebook (``input_dir = "demo"`` in 01_segment resolves here
through :func:`resolve_input_dir`); notebook 03_tempo_key's tests use :func:`make_beat` as ground
truth for tempo and key.

What is in it (``ensure_demo_dataset()`` → ``cache_home()/"demo-beats"/DEMO_VERSION``):

- ``demo_beat_NN.ogg`` — :data:`DEMO_SPECS` rendered by :func:`make_beat`: trap-style drums
  (kick, clap/snare on the backbeat — or on beat 3 for a *half-time* feel —, hi-hats with
  32nd/triplet rolls), an 808 (a saturated sub sine with glides) following the chord roots,
  diatonic chords of the key (minor i–VI–III–VII-like or major I–V–vi–IV-like progressions)
  and, for some, a bell melody. Ogg Vorbis to keep the folder small.
- the three real recordings of ``data/demo_audio/`` with their attribution ``.txt`` files;
- ``truth.jsonl`` — ``{source, bpm, key, scale, half_time, swing, synthetic}`` for each synthetic beat;
- ``facts.csv`` — a producer's notes (file, bpm, key, tags) on three beats: stage 03 reads it first.

``half_time=True`` means the snare/clap falls on beat 3 of each bar: the beat *feels* like half of
its nominal BPM, so a tempo estimator answering ``bpm/2`` is not wrong there (an octave error that
is musically ambiguous). Key names follow Essentia's spelling (``C, C#, D, Eb, E, F, F#, G, Ab, A,
Bb, B``).

Rendering is deterministic under the seed (numpy ``default_rng``); the Ogg container's stream
serial number is random in libsndfile, so the *files'* bytes differ between writes while the
decoded audio is identical.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .audio import AUDIO_EXTS, is_audio_name
from .runs import atomic_path, atomic_write_text, cache_home

SR = 44100
DEMO_VERSION = "v2"  # v2: slow beats swung, trap rolls only from 110 BPM (issue 25's tempo convention)
PACKAGE_AUDIO = Path(__file__).parent / "data" / "demo_audio"
KEYS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# progressions as scale degrees (0-based) of the chord roots, one chord per bar
PROGRESSIONS = {
    "minor": ((0, 5, 2, 6), (0, 3, 5, 4), (0, 5, 3, 4), (0, 2, 5, 6)),
    "major": ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 0), (0, 3, 5, 4)),
}


@dataclass(frozen=True)
class BeatSpec:
    name: str
    bpm: float
    key: str
    scale: str
    seconds: float
    seed: int
    half_time: bool = False
    melody: bool = True
    swing: float = 0.5


DEMO_SPECS: tuple[BeatSpec, ...] = (
    BeatSpec("demo_beat_01", 140, "C", "minor", 64, 101, half_time=True),
    BeatSpec("demo_beat_02", 72, "A", "minor", 56, 102, swing=0.56),  # lo-fi: swung 16th hats
    BeatSpec("demo_beat_03", 96, "F", "major", 60, 103),
    BeatSpec("demo_beat_04", 128, "D", "minor", 52, 104, melody=False),
    BeatSpec("demo_beat_05", 156, "G", "major", 50, 105, half_time=True),
    BeatSpec("demo_beat_06", 84, "E", "minor", 60, 106, swing=0.57),
    BeatSpec("demo_beat_07", 110, "Bb", "major", 58, 107, melody=False),
    BeatSpec("demo_beat_08", 148, "F#", "minor", 54, 108, half_time=True),
)


# ---------------------------------------------------------------------------------------------
# synthesis (hand-written: there is no maintained "trap beat synthesizer" library; each voice is a
# few lines of numpy/scipy)


def _midi_hz(m: float) -> float:
    return 440.0 * 2.0 ** ((m - 69) / 12.0)


def _env(n: int, sr: int, attack: float, decay: float) -> np.ndarray:
    t = np.arange(n) / sr
    a = np.clip(t / max(attack, 1e-4), 0, 1)
    return a * np.exp(-t / decay)


def _kick(sr: int) -> np.ndarray:
    n = int(0.35 * sr)
    t = np.arange(n) / sr
    f = 45 + 110 * np.exp(-t / 0.03)
    phase = 2 * np.pi * np.cumsum(f) / sr
    return (np.sin(phase) * np.exp(-t / 0.12) + 0.3 * np.sin(phase) * np.exp(-t / 0.01)).astype(np.float32)


def _clap(sr: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    n = int(0.3 * sr)
    t = np.arange(n) / sr
    noise = rng.standard_normal(n)
    sos = butter(2, [900, 6000], btype="band", fs=sr, output="sos")
    noise = sosfilt(sos, noise)
    env = np.exp(-t / 0.06)
    for d in (0.0, 0.011, 0.022):  # the three hand claps of a clap
        k = int(d * sr)
        env[k:] += 0.6 * np.exp(-(t[: n - k]) / 0.008)
    body = 0.5 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.04)
    out = noise * env * 0.5 + body
    return (out / np.max(np.abs(out))).astype(np.float32)


def _hat(sr: int, rng: np.random.Generator, decay: float = 0.03) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    n = int(0.12 * sr)
    t = np.arange(n) / sr
    sos = butter(4, 7000, btype="high", fs=sr, output="sos")
    x = sosfilt(sos, rng.standard_normal(n)) * np.exp(-t / decay)
    return (x / np.max(np.abs(x))).astype(np.float32)


def _808(sr: int, f0: float, f_from: float | None, length: float) -> np.ndarray:
    n = int(length * sr)
    t = np.arange(n) / sr
    if f_from is not None:  # glide from the previous note
        f = f0 + (f_from - f0) * np.exp(-t / 0.05)
    else:
        f = np.full(n, f0)
    phase = 2 * np.pi * np.cumsum(f) / sr
    env = _env(n, sr, 0.004, length * 0.6)
    env[-int(0.01 * sr) :] *= np.linspace(1, 0, int(0.01 * sr))
    return np.tanh(1.8 * np.sin(phase)).astype(np.float32) * env.astype(np.float32)


def _pad(sr: int, midis: list[int], length: float) -> np.ndarray:
    n = int(length * sr)
    t = np.arange(n) / sr
    out = np.zeros(n)
    for m in midis:
        f = _midi_hz(m)
        for k in range(1, 7):  # soft saw: harmonics falling like 1/k^1.5
            if f * k > 8000:
                break
            out += np.sin(2 * np.pi * f * k * t + k) / k**1.5
    rel = min(0.15, length / 4)
    env = np.clip(t / 0.05, 0, 1) * np.clip((length - t) / rel, 0, 1)
    return (out * env / len(midis)).astype(np.float32)


def _bell(sr: int, midi: int, length: float) -> np.ndarray:
    n = int(length * sr)
    t = np.arange(n) / sr
    f = _midi_hz(midi)
    index = 2.5 * np.exp(-t / 0.15)  # FM bell: inharmonic modulator, index decaying fast
    x = np.sin(2 * np.pi * f * t + index * np.sin(2 * np.pi * f * 3.5 * t))
    return (x * _env(n, sr, 0.002, 0.35)).astype(np.float32)


def _add(buf: np.ndarray, at: int, sig: np.ndarray, gain: float, pan: float = 0.0) -> None:
    """Mix mono ``sig`` into stereo ``buf`` at sample ``at`` with equal-power pan in [-1, 1]."""
    if at >= buf.shape[1]:
        return
    sig = sig[: buf.shape[1] - at]
    angle = (pan + 1) * np.pi / 4
    buf[0, at : at + len(sig)] += gain * np.cos(angle) * sig
    buf[1, at : at + len(sig)] += gain * np.sin(angle) * sig


@dataclass(frozen=True)
class _Grid:
    """Time on the beat's 16th-note grid: sample index of a time, swung 16th positions."""

    sr: int
    step: float  # a 16th note, seconds
    swing: float

    def s(self, t: float) -> int:
        return int(round(t * self.sr))

    def sw(self, k: float) -> float:  # a 16th position, swung when it is an off-beat 16th
        swing = self.swing
        return k + 2 * (swing - 0.5) if swing != 0.5 and float(k).is_integer() and int(k) % 2 == 1 else k


def _check_beat_args(bpm: float, key: str, scale: str, seconds: float) -> None:
    if key not in KEYS:
        raise ValueError(f"key {key!r}: use one of {', '.join(KEYS)}")
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r}: use 'major' or 'minor'")
    if not 30 <= bpm <= 300 or seconds <= 0:
        raise ValueError(f"bpm {bpm} / seconds {seconds}: need 30 <= bpm <= 300 and seconds > 0")


def _drum_bar(
    buf, g: _Grid, t0: float, b: int, kit: tuple, kick_pat, snare_steps, hat_div: int, rng, rolls: bool = True
) -> None:
    """Kicks, claps and closed hats of bar ``b`` (a hat roll on most 4th bars), an open hat every 2nd bar."""
    kick, clap, hats = kit
    step = g.step
    for k in kick_pat:
        _add(buf, g.s(t0 + g.sw(k) * step), kick, 0.9)
    for k in snare_steps:
        _add(buf, g.s(t0 + k * step), clap, 0.55, pan=0.05)
    roll = b % 4 == 3 and rng.random() < 0.8 and rolls
    last_beat_start = 12
    for k in range(0, 16, hat_div):
        if roll and k >= last_beat_start:
            break
        _add(buf, g.s(t0 + g.sw(k) * step), hats[0], 0.18 if k % 4 else 0.24, pan=0.3)
    if roll:  # the last beat of the bar as 32nds, 16th triplets or 32nd triplets
        div = (8, 6, 12)[int(rng.integers(3))]
        for i in range(div):
            _add(buf, g.s(t0 + (last_beat_start + 4 * i / div) * step), hats[0], 0.12 + 0.1 * i / div, pan=0.3)
    if b % 2 == 1:  # an open hat now and then
        _add(buf, g.s(t0 + 14 * step), hats[1], 0.12, pan=-0.3)


def _bass_bar(buf, g: _Grid, t0: float, kick_pat, root_hz: float, prev_root_hz: float | None) -> None:
    """808 on the kicks, each held to the next, the bar's first one gliding from the last chord's root."""
    for j, k in enumerate(kick_pat):
        nxt = kick_pat[j + 1] if j + 1 < len(kick_pat) else 16
        glide = prev_root_hz if (prev_root_hz and prev_root_hz != root_hz and j == 0) else None
        _add(buf, g.s(t0 + g.sw(k) * g.step), _808(g.sr, root_hz, glide, (nxt - k) * g.step), 0.55)


def _melody_bar(buf, g: _Grid, t0: float, tonic: int, triad: list[int], degrees, rng) -> None:
    """Bell melody: chord tones and scale steps on 8ths, with rests."""
    for k in range(0, 16, 2):
        if rng.random() < 0.45:
            continue
        if rng.random() < 0.7:
            iv = triad[int(rng.integers(3))]
        else:
            iv = degrees[int(rng.integers(7))]
        m = 72 + tonic + iv - (12 if tonic > 6 else 0)
        _add(buf, g.s(t0 + k * g.step), _bell(g.sr, int(m), 0.6), 0.13, pan=float(rng.uniform(-0.4, 0.4)))


def make_beat(
    bpm: float,
    key: str,
    scale: str,
    seconds: float,
    seed: int,
    half_time: bool = False,
    sr: int = SR,
    melody: bool = True,
    hat_div: int | None = None,
    swing: float = 0.5,
    rolls: bool | None = None,
) -> np.ndarray:
    """Render a trap-like beat: ``(2, round(seconds*sr))`` float32, peak 0.89 (about -1 dBFS).

    ``bpm`` is the nominal tempo (quarter notes per minute); with ``half_time`` the backbeat sits
    on beat 3 so the groove feels like ``bpm/2``. Chords, 808 and melody use the notes of ``key``
    ``scale``. ``hat_div`` sets the closed hats' grid in 16ths (2 = 8th notes, 1 = 16ths); the
    default plays 8ths from 110 BPM and 16ths below. ``swing`` > 0.5 delays every off-beat 16th
    (0.58: the second 16th of each 8th starts at 58 % of it); ``rolls``: trap hat rolls (32nds,
    triplets) on most 4th bars — by default from 110 BPM, where the hats play 8ths (a slow beat with
    16th-note hats *and* trap rolls is a half-time trap beat at twice its tempo: stage 03's convention).
    Same arguments → the same samples.
    """
    _check_beat_args(bpm, key, scale, seconds)
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    buf = np.zeros((2, n), dtype=np.float32)
    g = _Grid(sr, 60.0 / bpm / 4, swing)  # the step: a 16th note, seconds
    bar = 16 * g.step
    n_bars = int(np.ceil(seconds / bar))
    tonic = KEYS.index(key)
    degrees = SCALES[scale]
    prog = PROGRESSIONS[scale][int(rng.integers(len(PROGRESSIONS[scale])))]
    bars_per_chord = 2 if bpm >= 120 else 1

    kick, clap = _kick(sr), _clap(sr, rng)
    hats = [_hat(sr, rng, d) for d in (0.02, 0.035)]
    kick_patterns = (
        ([0, 10], [0, 7, 10], [0, 3, 10, 11], [0, 6, 10])
        if half_time
        else ([0, 8, 10], [0, 7, 8], [0, 3, 8, 10], [0, 10, 11])
    )
    kick_pat = kick_patterns[int(rng.integers(len(kick_patterns)))]
    snare_steps = (8,) if half_time else (4, 12)
    if hat_div is None:
        hat_div = 2 if bpm >= 110 else 1  # 8ths at fast tempi, 16ths at slow
    rolls = bpm >= 110 if rolls is None else rolls
    # an intro bar of drums alone would hide the key: everything plays from bar 0

    prev_root_hz = None
    for b in range(n_bars):
        t0 = b * bar
        chord_deg = prog[(b // bars_per_chord) % len(prog)]
        # diatonic triad on that degree
        triad = [degrees[(chord_deg + i) % 7] + 12 * ((chord_deg + i) // 7) for i in (0, 2, 4)]
        root_pc = (tonic + degrees[chord_deg]) % 12
        _drum_bar(buf, g, t0, b, (kick, clap, hats), kick_pat, snare_steps, hat_div, rng, rolls)
        # 808 on the kicks, pitched to the chord root (octave 1-2: 33-62 Hz)
        root_hz = _midi_hz(24 + root_pc + (12 if root_pc < 1 else 0))
        _bass_bar(buf, g, t0, kick_pat, root_hz, prev_root_hz)
        prev_root_hz = root_hz
        # chords: one pad per bar, voiced around middle C
        if b % bars_per_chord == 0:
            midis = [60 + tonic + iv - (12 if tonic + iv > 7 else 0) for iv in triad]
            midis.append(midis[0] - 12)
            _add(buf, g.s(t0), _pad(sr, midis, bar * bars_per_chord), 0.32, pan=-0.1)
        if melody:
            _melody_bar(buf, g, t0, tonic, triad, degrees, rng)
    # gentle fade-out in the last 0.3 s, then normalize to -1 dBFS
    fade = min(n, g.s(0.3))
    buf[:, n - fade :] *= np.linspace(1, 0, fade, dtype=np.float32)
    peak = float(np.max(np.abs(buf)))
    if peak > 0:
        buf *= 0.89 / peak
    return buf.astype(np.float32)


def render(spec: BeatSpec, sr: int = SR) -> np.ndarray:
    return make_beat(
        spec.bpm, spec.key, spec.scale, spec.seconds, spec.seed, spec.half_time, sr, spec.melody, swing=spec.swing
    )


# a producer's own notes on three of the demo beats, as they would drop them next to their beats
# (stage 03 reads ``facts.csv`` from 01's input folder: the lesson compares them with its estimates)
DEMO_FACTS = (
    "file,bpm,key,tags\ndemo_beat_02.ogg,72,A minor,lo-fi\ndemo_beat_06.ogg,84,Em,\ndemo_beat_08.ogg,148,F#m,trap\n"
)


def truth_rows(specs=DEMO_SPECS) -> list[dict]:
    return [
        {
            "source": f"{s.name}.ogg",
            "bpm": float(s.bpm),
            "key": s.key,
            "scale": s.scale,
            "half_time": s.half_time,
            "swing": s.swing,
            "synthetic": True,
        }
        for s in specs
    ]


# ---------------------------------------------------------------------------------------------
# the dataset on disk


def _write_ogg(path: Path, audio: np.ndarray, sr: int) -> None:
    from .compat import write_vorbis

    with atomic_path(path) as tmp:
        # compression_level 0.6 ≈ Vorbis quality 0.4 (~100 kb/s stereo): small, clean enough.
        write_vorbis(tmp, audio, sr, compression_level=0.6)


def _complete(dest: Path, expected: list[str]) -> bool:
    marker = dest / ".complete"
    if not marker.exists():
        return False
    try:
        listed = json.loads(marker.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return listed == expected and all((dest / name).is_file() for name in expected)


def ensure_demo_dataset(dest: str | os.PathLike | None = None) -> Path:
    """Write the demo dataset to ``dest`` (default ``cache_home()/"demo-beats"/DEMO_VERSION``) once; return it.

    Idempotent (a finished folder carries a ``.complete`` list and is returned at once),
    atomic per file (a kill leaves only whole files; the next call finishes the job) and
    deterministic in audio content. Takes ~20 s on one CPU core the first time.
    """
    dest = Path(dest) if dest is not None else cache_home() / "demo-beats" / DEMO_VERSION
    real = sorted(p for p in PACKAGE_AUDIO.iterdir() if p.suffix in (".ogg", ".txt"))
    expected = sorted(
        [f"{s.name}.ogg" for s in DEMO_SPECS] + [p.name for p in real] + ["truth.jsonl", "ATTRIBUTION.md", "facts.csv"]
    )
    if _complete(dest, expected):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    todo = [s for s in DEMO_SPECS if not (dest / f"{s.name}.ogg").is_file()]
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover

        def tqdm(x, **_):
            return x

    for spec in tqdm(todo, desc="demo beats", unit="beat", disable=not todo):
        _write_ogg(dest / f"{spec.name}.ogg", render(spec), SR)
    for src in real + [PACKAGE_AUDIO / "ATTRIBUTION.md"]:
        target = dest / src.name
        if not target.is_file() or target.stat().st_size != src.stat().st_size:
            with atomic_path(target) as tmp:
                shutil.copyfile(src, tmp)
    atomic_write_text(dest / "truth.jsonl", "".join(json.dumps(r) + "\n" for r in truth_rows()))
    atomic_write_text(dest / "facts.csv", DEMO_FACTS)
    atomic_write_text(dest / ".complete", json.dumps(expected))
    return dest


def resolve_input_dir(input_dir: str | os.PathLike) -> Path:
    """``"demo"`` → :func:`ensure_demo_dataset`; otherwise the folder, which must hold audio files."""
    if str(input_dir) == "demo":
        return ensure_demo_dataset()
    path = Path(input_dir).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"input_dir {str(path)!r} does not exist: give the folder that holds your "
            'beats, or "demo" for the bundled demo beats'
        )
    if not path.is_dir():
        raise NotADirectoryError(f"input_dir {str(path)!r} is a file, not a folder")
    if not any(p.is_file() and is_audio_name(p.name) for p in path.rglob("*")):
        raise FileNotFoundError(f"input_dir {str(path)!r} holds no audio files ({', '.join(sorted(AUDIO_EXTS))})")
    return path


def spec_dicts() -> list[dict]:
    return [asdict(s) for s in DEMO_SPECS]


# ---------------------------------------------------------------------------------------------
# styles beyond the demo beats: an evaluation set for tempo (benchmarks/bench_tempo_octave.py)

STYLES = ("plain", "busy", "sparse", "halftime", "lofi", "lofi16", "boombap", "trap", "house", "drill")


def make_style_beat(
    style: str, bpm: float, key: str, scale: str, seconds: float, seed: int, sr: int = SR
) -> np.ndarray:
    """A beat of one of :data:`STYLES` with exact ``bpm`` and key.

    The tempo follows the hi-hat-grid convention of stage 03: the closed hats play 8th notes of
    ``bpm`` in every style (a half-time trap beat at 140 has its hats on 8ths of 140 and its snare
    on beat 3 of each bar); a slow beat (lo-fi at 80) has 8th-note hats at 80.

    - ``plain``: :func:`make_beat` (straight backbeat).
    - ``halftime``: :func:`make_beat` with ``half_time=True`` (snare on beat 3: feels like bpm/2).
    - ``busy``: :func:`make_beat` plus toms and congas on syncopated 16ths, an off-beat shaker
      and a noise bed.
    - ``sparse``: kick on 1, snare on 2 and 4, closed 8th-note hats, one 808 note and one chord per
      two bars; no melody, no rolls, no open hats (few onsets, little to tell the octave by).
    - ``lofi``: :func:`make_beat` with 16ths swung to 58 %, low-passed at 3.2 kHz, tape hiss and
      vinyl crackle.

    and the genre styles of :func:`_genre_beat` (``lofi16``, ``boombap``, ``trap``, ``house``,
    ``drill``), each counted the way its producers count it: lo-fi and boom-bap at their slow
    tempo with **16th-note** hats, trap and drill at their fast tempo with a half-time feel.

    Same arguments → the same samples; output ``(2, round(seconds*sr))`` float32 peaking at 0.89.
    """
    if style not in STYLES:
        raise ValueError(f"style {style!r}: use one of {', '.join(STYLES)}")
    rng = np.random.default_rng(seed + 7919)
    if style in ("lofi16", "boombap", "trap", "house", "drill"):
        return _normalised(_genre_beat(style, bpm, key, scale, seconds, seed, sr, rng))
    if style in ("plain", "halftime"):
        return make_beat(bpm, key, scale, seconds, seed, half_time=style == "halftime", sr=sr, hat_div=2)
    n = int(round(seconds * sr))
    step = 60.0 / bpm / 4
    if style == "sparse":
        buf = np.zeros((2, n), dtype=np.float32)
        kick, clap, hat = _kick(sr), _clap(sr, rng), _hat(sr, rng, 0.02)
        tonic, degrees = KEYS.index(key), SCALES[scale]
        prog = PROGRESSIONS[scale][int(rng.integers(len(PROGRESSIONS[scale])))]
        n_bars = int(np.ceil(seconds / (16 * step)))
        for b in range(n_bars):
            t0 = b * 16 * step
            deg = prog[(b // 2) % len(prog)]
            triad = [degrees[(deg + i) % 7] + 12 * ((deg + i) // 7) for i in (0, 2, 4)]
            _add(buf, int(round(t0 * sr)), kick, 0.9)
            root_hz = _midi_hz(24 + (tonic + degrees[deg]) % 12)
            _add(buf, int(round(t0 * sr)), _808(sr, root_hz, None, 8 * step), 0.55)
            for k in (4, 12):
                _add(buf, int(round((t0 + k * step) * sr)), clap, 0.5)
            for k in (0, 2, 4, 6, 8, 10, 12, 14):
                _add(buf, int(round((t0 + k * step) * sr)), hat, 0.15 if k % 4 == 0 else 0.1, pan=0.3)
            if b % 2 == 0:
                midis = [60 + tonic + iv - (12 if tonic + iv > 7 else 0) for iv in triad]
                _add(buf, int(round(t0 * sr)), _pad(sr, midis + [midis[0] - 12], 32 * step), 0.35)
    else:
        from scipy.signal import butter, sosfilt

        if style == "busy":
            # congas/toms on syncopated 16ths, an off-beat shaker on the 8th-note grid, a noise bed
            buf = make_beat(bpm, key, scale, seconds, seed, sr=sr, hat_div=2)
            m = int(0.2 * sr)
            tom = (np.sin(2 * np.pi * 180 * np.arange(m) / sr) * np.exp(-np.arange(m) / sr / 0.05)).astype(np.float32)
            conga = (np.sin(2 * np.pi * 320 * np.arange(m) / sr) * np.exp(-np.arange(m) / sr / 0.03)).astype(np.float32)
            shaker = _hat(sr, rng, 0.012)
            for i in range(int(seconds / step) + 1):
                at = int(round(i * step * sr))
                if i % 4 == 2:
                    _add(buf, at, shaker, 0.08, pan=-0.5)
                if i % 16 in (3, 6, 11, 14) or (i % 16 == 9 and rng.random() < 0.5):
                    _add(buf, at, tom, 0.25, pan=0.4)
                if i % 16 in (2, 7, 13) and rng.random() < 0.7:
                    _add(buf, at, conga, 0.2, pan=-0.2)
            noise = sosfilt(butter(2, [300, 3000], btype="band", fs=sr, output="sos"), rng.standard_normal(n))
            buf += (0.01 * noise).astype(np.float32)
        else:  # lofi: swung 16ths, low-pass, tape hiss, vinyl crackle
            buf = make_beat(bpm, key, scale, seconds, seed, sr=sr, hat_div=2, swing=0.58)
            buf = sosfilt(butter(4, 3200, btype="low", fs=sr, output="sos"), buf, axis=1).astype(np.float32)
            crackle = (rng.random(n) < 6 / sr) * rng.standard_normal(n) * 0.05  # ~6 clicks a second
            hiss = sosfilt(butter(2, 2000, btype="high", fs=sr, output="sos"), rng.standard_normal(n)) * 0.004
            buf += (crackle + hiss).astype(np.float32)[None]
    peak = float(np.max(np.abs(buf)))
    if peak > 0:
        buf *= 0.89 / peak
    return buf.astype(np.float32)


def _normalised(buf: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(buf)))
    return (buf * (0.89 / peak) if peak > 0 else buf).astype(np.float32)


def _dust(buf: np.ndarray, rng: np.random.Generator, sr: int, cutoff: float) -> np.ndarray:
    """Lo-fi: low-pass at ``cutoff``, tape hiss, vinyl crackle (~6 clicks a second)."""
    from scipy.signal import butter, sosfilt

    n = buf.shape[1]
    buf = sosfilt(butter(4, cutoff, btype="low", fs=sr, output="sos"), buf, axis=1).astype(np.float32)
    crackle = (rng.random(n) < 6 / sr) * rng.standard_normal(n) * 0.05
    hiss = sosfilt(butter(2, 2000, btype="high", fs=sr, output="sos"), rng.standard_normal(n)) * 0.004
    return buf + (crackle + hiss).astype(np.float32)[None]


def _house(bpm: float, key: str, scale: str, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Four on the floor: kick on every beat, clap on 2 and 4, closed 16th hats, an open hat on
    every off-beat 8th, an off-beat bass on the chord root and one chord stab per bar."""
    n = int(round(seconds * sr))
    buf = np.zeros((2, n), dtype=np.float32)
    step = 60.0 / bpm / 4
    kick, clap = _kick(sr), _clap(sr, rng)
    closed, opened = _hat(sr, rng, 0.015), _hat(sr, rng, 0.09)
    tonic, degrees = KEYS.index(key), SCALES[scale]
    prog = PROGRESSIONS[scale][int(rng.integers(len(PROGRESSIONS[scale])))]
    for b in range(int(np.ceil(seconds / (16 * step)))):
        t0 = b * 16 * step
        deg = prog[b % len(prog)]
        triad = [degrees[(deg + i) % 7] + 12 * ((deg + i) // 7) for i in (0, 2, 4)]
        root_hz = _midi_hz(36 + (tonic + degrees[deg]) % 12)
        for k in range(16):
            at = int(round((t0 + k * step) * sr))
            if k % 4 == 0:
                _add(buf, at, kick, 0.9)
            if k in (4, 12):
                _add(buf, at, clap, 0.45)
            _add(buf, at, closed, 0.08 if k % 2 else 0.12, pan=0.3)
            if k % 4 == 2:
                _add(buf, at, opened, 0.14, pan=-0.3)
                _add(buf, at, _808(sr, root_hz, None, step * 1.5), 0.4)
        midis = [60 + tonic + iv - (12 if tonic + iv > 7 else 0) for iv in triad]
        _add(buf, int(round(t0 * sr)), _pad(sr, midis + [midis[0] - 12], 16 * step), 0.3)
    return buf


def _genre_beat(
    style: str, bpm: float, key: str, scale: str, seconds: float, seed: int, sr: int, rng: np.random.Generator
) -> np.ndarray:
    """The genre styles of :func:`make_style_beat`, at ``bpm`` as their producers count it:

    - ``lofi16``: 16th-note hats swung 54–62 %, no trap rolls, low-passed at 3–4.5 kHz, hiss, crackle;
    - ``boombap``: 16th-note hats, straight or barely swung (50–54 %), no rolls, no low-pass;
    - ``trap``: half-time (snare on beat 3), 8th-note hats with rolls, 808 glides;
    - ``house``: :func:`_house`;
    - ``drill``: half-time, 8th-note hats with 8th-note-triplet fills on beats 2 and 4, a second
      snare on the last 16th of most bars, 808 glides.
    """
    if style == "lofi16":
        buf = make_beat(bpm, key, scale, seconds, seed, sr=sr, hat_div=1, swing=0.54 + 0.08 * rng.random(), rolls=False)
        return _dust(buf, rng, sr, 3000 + 1500 * rng.random())
    if style == "boombap":
        return make_beat(bpm, key, scale, seconds, seed, sr=sr, hat_div=1, swing=0.5 + 0.04 * rng.random(), rolls=False)
    if style == "trap":
        return make_beat(bpm, key, scale, seconds, seed, half_time=True, sr=sr, hat_div=2)
    if style == "house":
        return _house(bpm, key, scale, seconds, sr, rng)
    buf = make_beat(bpm, key, scale, seconds, seed, half_time=True, sr=sr, hat_div=2, melody=False)
    beat, hat, clap = 60.0 / bpm, _hat(sr, rng, 0.02), _clap(sr, rng)
    for b in range(int(np.ceil(seconds / (4 * beat)))):
        t0 = 4 * b * beat
        for j in (1, 3):  # triplet 8ths over beats 2 and 4
            for i in range(3):
                _add(buf, int(round((t0 + (j + i / 3) * beat) * sr)), hat, 0.12, pan=0.3)
        if rng.random() < 0.7:
            _add(buf, int(round((t0 + 3.75 * beat) * sr)), clap, 0.35, pan=0.05)
    return buf
