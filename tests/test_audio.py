"""stablebeat_utils.audio: decoding every format, bad files, resampling, channels, loudness."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from audio_fixtures import write_av, write_sf  # noqa: E402

from stablebeat_utils import audio  # noqa: E402

SR = 44100


def tone(seconds: float = 3.0, sr: int = SR, channels: int = 2, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * 440 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    return np.stack([x * (1 - 0.2 * c) for c in range(channels)]).astype(np.float32)


@pytest.mark.parametrize(
    "name,writer",
    [
        ("x.wav", "sf"),
        ("x.flac", "sf"),
        ("x.ogg", "sf"),
        ("x.aiff", "sf"),
        ("x.mp3", "libmp3lame"),
        ("x.m4a", "aac"),
    ],
)
def test_decode_formats(tmp_path, name, writer):
    x = tone()
    path = tmp_path / name
    if writer == "sf":
        write_sf(path, x, SR)
    else:
        write_av(path, x, SR, writer)
    dec = audio.decode(path)
    assert dec.sr == SR and dec.audio.shape[0] == 2 and dec.audio.dtype == np.float32
    assert abs(dec.seconds - 3.0) < 0.1  # codec padding (mp3/aac) only
    assert not dec.truncated
    # the audio is there (lossy codecs: loudness within a fraction of a dB)
    assert abs(audio.integrated_loudness(dec.audio, dec.sr) - audio.integrated_loudness(x, SR)) < 0.5
    y, sr = audio.load(path, sr=22050, mono=True)
    assert sr == 22050 and y.shape[0] == 1


def test_bad_files_have_human_reasons(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "riff.wav").write_bytes(b"RIFF" + np.random.default_rng(0).bytes(4000))
    (tmp_path / "text.mp3").write_text("not audio at all\n" * 40)
    (tmp_path / "folder.wav").mkdir()
    cases = {
        "empty.wav": "empty file",
        "riff.wav": "not audio",
        "text.mp3": "not audio",
        "folder.wav": "is a folder",
        "missing.wav": "not found",
    }
    for name, words in cases.items():
        with pytest.raises(audio.AudioError, match=words):
            audio.decode(tmp_path / name)


def test_truncated_files_are_flagged(tmp_path):
    x = tone(4.0)
    for name in ("t.wav", "t.aiff", "t.flac"):
        full = write_sf(tmp_path / ("full_" + name), x, SR)
        data = full.read_bytes()
        cut = tmp_path / name
        cut.write_bytes(data[: len(data) // 2])
        dec = audio.decode(cut)
        assert dec.truncated, name
        assert dec.declared_seconds == pytest.approx(4.0, abs=0.01)
        assert not audio.decode(full).truncated
    header_only = tmp_path / "h.wav"
    header_only.write_bytes((tmp_path / "full_t.wav").read_bytes()[:44])
    with pytest.raises(audio.AudioError, match="no samples"):
        audio.decode(header_only)


def test_nan_samples_are_counted(tmp_path):
    x = tone(1.0, channels=1)
    x[0, 100] = np.nan
    x[0, 200] = np.inf
    write_sf(tmp_path / "nan.wav", x, SR, subtype="FLOAT")
    assert audio.non_finite_count(audio.decode(tmp_path / "nan.wav").audio) == 2


def test_resample_and_channels():
    x = tone(2.0, sr=48000, channels=1)
    y = audio.resample(x, 48000, SR)
    assert y.shape == (1, 2 * SR) and y.dtype == np.float32
    assert abs(audio.integrated_loudness(y, SR) - audio.integrated_loudness(x, 48000)) < 0.1
    st = audio.to_stereo(y)
    assert st.shape[0] == 2 and np.array_equal(st[0], st[1])
    six = np.random.default_rng(0).standard_normal((6, 100)).astype(np.float32)
    assert audio.to_stereo(six).shape == (2, 100)
    three = np.ones((3, 10), np.float32) * np.array([[1], [2], [3]], np.float32)
    assert np.allclose(audio.to_stereo(three), [[2] * 10, [2] * 10])
    assert audio.to_stereo(st) is st


def test_normalize_reaches_target_without_clipping():
    quiet = tone(5.0, amp=0.05)  # low crest factor: the target is reachable under the ceiling
    out, info = audio.normalize_loudness(quiet, SR, target_lufs=-14.0, peak_ceiling_dbfs=-1.0)
    assert audio.integrated_loudness(out, SR) == pytest.approx(-14.0, abs=0.05)
    assert not info["peak_limited"] and info["loudness_lufs"] == pytest.approx(-14.0, abs=0.01)
    # a spiky signal: reaching -8 LUFS would clip, so the gain stops at the ceiling
    spiky = tone(5.0, amp=0.05)
    spiky[:, ::4410] = 0.9
    out, info = audio.normalize_loudness(spiky, SR, target_lufs=-8.0, peak_ceiling_dbfs=-1.0)
    assert info["peak_limited"]
    assert np.max(np.abs(out)) <= 10 ** (-1 / 20) + 1e-7
    assert audio.integrated_loudness(out, SR) < -8.0
    assert info["loudness_lufs"] == pytest.approx(audio.integrated_loudness(out, SR), abs=0.05)
    with pytest.raises(audio.AudioError, match="silent"):
        audio.normalize_loudness(np.zeros((2, SR), np.float32), SR)


def test_write_wav_roundtrip(tmp_path):
    import soundfile as sf

    x = tone(1.0)
    audio.write_wav(tmp_path / "o.wav", x, SR)
    info = sf.info(str(tmp_path / "o.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (SR, 2, "PCM_16")
    y, _ = sf.read(str(tmp_path / "o.wav"), dtype="float32", always_2d=True)
    assert np.max(np.abs(y.T - x)) < 1 / 32767 + 1e-6
    audio.write_wav(tmp_path / "c.wav", x * 10, SR)  # never wraps around: clipped at full scale
    y, _ = sf.read(str(tmp_path / "c.wav"), dtype="float32")
    assert np.max(np.abs(y)) <= 1.0
    assert os.path.getsize(tmp_path / "o.wav") > 0


def test_flac_clip_decodes_to_the_wav_clips_samples(tmp_path):
    """clip_format: a FLAC clip is the WAV clip's int16 samples, losslessly: the same float32 array back."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 44100)) * 0.3).astype(np.float32)
    x[0, :10] = [1.5, -1.5, 1.0, -1.0, 0.99998, 0, 1e-6, -1e-6, 0.5, -0.5]  # clipping and rounding edges
    audio.write_clip(tmp_path / "c.wav", x, 44100, "wav")
    audio.write_clip(tmp_path / "c.flac", x, 44100, "flac")
    a, sr_a = audio.load(tmp_path / "c.wav")
    b, sr_b = audio.load(tmp_path / "c.flac")
    assert sr_a == sr_b == 44100 and a.dtype == b.dtype == np.float32
    assert np.array_equal(a, b)
    assert (tmp_path / "c.flac").stat().st_size < (tmp_path / "c.wav").stat().st_size
    with pytest.raises(ValueError, match="clip_format"):
        audio.write_clip(tmp_path / "c.mp3", x, 44100, "mp3")
