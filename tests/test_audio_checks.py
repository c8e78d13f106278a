"""The defect detectors of stablebeat_utils.audio_checks on synthetic signals with and without the defect.

Each detector must stay quiet on clean audio (a real beat from the bundled demo audio, a tone, a
synthetic drum loop) and fire on the same audio with the defect injected. Thresholds and their
margins: benchmarks/bench_audio_checks.py, docs/benchmarks.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stablebeat_utils import audio, audio_checks as ac

SR = 44100
DEMO = Path(__file__).resolve().parents[1] / "stablebeat_utils" / "data" / "demo_audio"


@pytest.fixture(scope="module")
def beat() -> np.ndarray:
    """2 s of a real beat, peak at -1 dBFS, as a demo is after generation."""
    a, _ = audio.load(sorted(DEMO.glob("*.ogg"))[0], sr=SR)
    a = audio.to_stereo(a)[:, int(30 * SR) : int(32 * SR)]
    return (a / np.abs(a).max() * 0.9).astype(np.float64)


def tone(seconds=2.0, amp=0.5, f=440.0):
    t = np.arange(int(seconds * SR)) / SR
    return np.stack([amp * np.sin(2 * np.pi * f * t)] * 2)


def with_clicks(y, per_second=4, amp=0.2, seed=0):
    y = y.copy()
    rng = np.random.default_rng(seed)
    for i in rng.choice(np.arange(2048, y.shape[1] - 2048), size=int(per_second * y.shape[1] / SR), replace=False):
        y[:, i] += amp * rng.choice([-1.0, 1.0])
    return y


def test_clean_audio_fires_nothing(beat):
    for y in (beat, tone()):
        fired = [c for c in ac.check(y, SR) if c.fired]
        assert not fired, fired


def test_non_finite_fires_on_one_nan(beat):
    y = beat.copy()
    assert not ac.non_finite(y).fired
    y[1, 1000] = np.nan
    c = ac.non_finite(y)
    assert c.fired and c.value == 1
    y[0, 5] = np.inf
    assert ac.non_finite(y).value == 2


def test_silence_by_level(beat):
    assert not ac.silence(beat).fired
    assert ac.silence(np.zeros((2, SR))).fired and ac.silence(np.zeros((2, SR))).value == -np.inf
    assert ac.silence(beat * 10 ** (-70 / 20)).fired  # the beat 70 dB down: RMS under -60 dBFS
    assert not ac.silence(beat * 10 ** (-30 / 20)).fired  # 30 dB down: quiet, still there


def test_clipping_fires_on_hard_clipped_audio(beat):
    assert not ac.clipping(beat).fired
    c = ac.clipping(np.clip(beat * 3, -1, 1))
    assert c.fired and c.value > 10 * ac.CLIP_FRACTION
    assert ac.clipping(np.clip(tone(amp=1.5), -1, 1)).fired
    assert not ac.clipping(tone(amp=0.99)).fired  # a peak just under full scale is not clipping


def test_dc_offset(beat):
    assert ac.dc_offset(beat).value < 0.02
    assert ac.dc_offset(beat + 0.05).fired
    right_only = beat.copy()
    right_only[1] += 0.1
    assert ac.dc_offset(right_only).fired  # one channel is enough


def test_clicks_on_a_beat_and_a_tone_but_not_on_drum_hits(beat):
    assert ac.clicks(beat, SR).value <= ac.CLICK_RATE
    assert ac.clicks(with_clicks(beat), SR).fired
    assert ac.clicks(with_clicks(tone(), amp=0.05), SR).fired  # on a tone even small ones stand out
    clicked = with_clicks(tone(), per_second=4, amp=0.2, seed=3)
    where = ac.click_times(clicked[0], SR)
    truth = np.flatnonzero(np.abs(clicked[0] - tone()[0]) > 0) / SR
    assert len(where) == len(truth) and np.allclose(where, truth, atol=2e-3)  # found where they are


def test_collapse_fires_when_every_prompt_sounds_alike(beat):
    rng = np.random.default_rng(0)
    noises = [ac.band_spectrum(0.3 * rng.standard_normal((2, 2 * SR)), SR) for _ in range(3)]
    c = ac.collapse(noises)  # three prompts, three seeds, the same hiss: collapsed
    assert c.fired and c.value < ac.COLLAPSE_DB
    varied = [ac.band_spectrum(beat, SR), ac.band_spectrum(tone(), SR), noises[0]]
    assert not ac.collapse(varied).fired
    assert ac.collapse(noises[:1]) is None  # one demo: nothing to compare
