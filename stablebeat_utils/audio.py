"""Audio in and out: decoding any common format, resampling, channel layout, loudness.

Used by every notebook that reads or writes audio (01_segment first). Decoding goes through
soundfile (libsndfile: wav, flac, ogg, aiff, mp3) and falls back to PyAV (bundled ffmpeg: m4a,
aac, anything else); resampling uses soxr (VHQ), the well-kept library of the field.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TARGET_SR = 44100


class AudioError(ValueError):
    """A file that cannot be used as audio; the message is meant for a person."""


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (n, channels)
    return data.T, int(sr)


def _decode_av(path: Path) -> tuple[np.ndarray, int]:
    import av

    try:
        container = av.open(str(path))
    except Exception as exc:  # PyAV raises many different error types for junk
        raise AudioError(f"not a readable audio file ({type(exc).__name__}: {exc})") from exc
    with container:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise AudioError("the file has no audio stream")
        stream = streams[0]
        chunks = []
        sr = stream.codec_context.sample_rate or stream.rate
        try:
            for frame in container.decode(stream):
                arr = frame.to_ndarray()
                if arr.dtype.kind in "iu":
                    arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
                arr = arr.astype(np.float32, copy=False)
                if frame.format.is_planar:
                    chunks.append(arr.reshape(len(frame.layout.channels), -1))
                else:
                    chunks.append(arr.reshape(-1, len(frame.layout.channels)).T)
        except Exception as exc:
            if not chunks:
                raise AudioError(f"the audio stream cannot be decoded ({type(exc).__name__}: {exc})") from exc
            # a truncated file: keep what decoded
    if not chunks:
        raise AudioError("the audio stream is empty")
    return np.concatenate(chunks, axis=1), int(sr)


def load(path: str | os.PathLike, sr: int | None = None, mono: bool = False) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 of shape ``(channels, samples)``; resample to ``sr`` if given.

    Raises :class:`AudioError` with a human-readable reason for anything unusable.
    """
    path = Path(path)
    if path.is_dir():
        raise AudioError("is a folder, not an audio file")
    if not path.exists():
        raise AudioError("file not found")
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        audio, file_sr = _decode_soundfile(path)
    except Exception:
        audio, file_sr = _decode_av(path)
    if audio.size == 0 or audio.shape[1] == 0:
        raise AudioError("the file decodes to no samples")
    if mono:
        audio = audio.mean(axis=0, keepdims=True)
    if sr is not None and sr != file_sr:
        audio = resample(audio, file_sr, sr)
        file_sr = sr
    return np.ascontiguousarray(audio, dtype=np.float32), file_sr


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """(channels, n) float32 resampled with soxr's very-high-quality filter."""
    import soxr

    if sr_in == sr_out:
        return audio
    out = soxr.resample(np.ascontiguousarray(audio.T), sr_in, sr_out, quality="VHQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)


def to_stereo(audio: np.ndarray) -> np.ndarray:
    """Mono is duplicated; more than two channels are folded down (ITU-style downmix)."""
    ch = audio.shape[0]
    if ch == 2:
        return audio
    if ch == 1:
        return np.repeat(audio, 2, axis=0)
    if ch == 6:  # 5.1 as L R C LFE Ls Rs: ITU-R BS.775 downmix, LFE dropped
        l, r, c, _lfe, ls, rs = audio
        g = 1 / np.sqrt(2)
        return np.stack([l + g * c + g * ls, r + g * c + g * rs]).astype(np.float32)
    # any other layout: odd channels to the left, even to the right, averaged
    return np.stack([audio[0::2].mean(axis=0), audio[1::2].mean(axis=0)]).astype(np.float32)


def write_wav(path: str | os.PathLike, audio: np.ndarray, sr: int, subtype: str = "PCM_16") -> None:
    """Write (channels, n) float audio to a WAV file (callers use ``runs.atomic_path``)."""
    import soundfile as sf

    sf.write(str(path), np.clip(audio, -1.0, 1.0).T, sr, subtype=subtype, format="WAV")
