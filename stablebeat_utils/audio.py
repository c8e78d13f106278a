"""Audio in and out: decoding any common format, resampling, channel layout, loudness.

Used by every notebook that reads or writes audio (01_segment first). Decoding goes through
soundfile (libsndfile: wav, flac, ogg, aiff, mp3) and falls back to PyAV (bundled ffmpeg: m4a,
aac, anything else); resampling uses soxr (VHQ), the well-kept library of the field; loudness is
measured with pyloudnorm (ITU-R BS.1770-4 integrated loudness, LUFS).

:func:`decode` is the careful entry point (it reports what the header announced, so truncated
files can be told apart); :func:`load` is the short one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TARGET_SR = 44100
# the one list of audio file names the course reads (01's sources, 07's folders, the demo check):
# what libsndfile and the compressed-audio decoder of :func:`load` open
AUDIO_EXTS = (
    ".wav",
    ".wave",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".m4a",
    ".aac",
    ".mp4",
    ".aif",
    ".aiff",
    ".aifc",
)
CLIP_FORMATS = ("wav", "flac")  # how 01_segment stores clips: the same 16-bit samples, FLAC ~half the bytes
TRUNCATION_TOLERANCE_S = 0.1  # decoded audio may fall short of the header by this much (codec padding)


class AudioError(ValueError):
    """A file that cannot be used as audio; the message is meant for a person."""


def is_audio_name(name: str | os.PathLike) -> bool:
    """Whether a file name ends in one of :data:`AUDIO_EXTS` (any case)."""
    return str(name).lower().endswith(AUDIO_EXTS)


@dataclass
class Decoded:
    """What :func:`decode` returns: samples ``(channels, n)`` float32 at ``sr``, and what was announced."""

    audio: np.ndarray
    sr: int
    decoder: str  # "soundfile" or "pyav"
    format: str  # container/codec, for reports
    declared_seconds: float | None  # the length the header announces, where it does
    truncated: bool  # the file holds less than its header announces

    @property
    def seconds(self) -> float:
        return self.audio.shape[1] / self.sr


def _header_says_truncated(info) -> bool:
    """libsndfile 1.2 notes a chunk longer than the file as ``data : N (should be M)`` in its log."""
    text = getattr(info, "extra_info", "") or ""
    for line in text.splitlines():
        s = line.strip()
        if (s.startswith(("data", "SSND")) and "should be" in s) or "> file length" in s:
            return True
    return False


def _declared_from_log(info) -> float | None:
    """The length a cut WAV/AIFF header announces (libsndfile reports the shortened length instead)."""
    import re

    text = getattr(info, "extra_info", "") or ""
    frames = re.search(r"^\s*Frames\s*:\s*(\d+)", text, re.M)  # AIFF COMM chunk
    if frames:
        return int(frames.group(1)) / info.samplerate
    data = re.search(r"^\s*data\s*:\s*(\d+)", text, re.M)
    align = re.search(r"Block Align\s*:\s*(\d+)", text)
    if data and align and int(align.group(1)):
        return int(data.group(1)) / int(align.group(1)) / info.samplerate
    return None


def _decode_soundfile(path: Path) -> Decoded:
    import soundfile as sf

    info = sf.info(str(path))
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (n, channels)
    declared = info.frames / info.samplerate if info.samplerate else None
    truncated = _header_says_truncated(info)
    if truncated:
        declared = _declared_from_log(info) or declared
    return Decoded(
        np.ascontiguousarray(data.T), int(sr), "soundfile", f"{info.format}/{info.subtype}", declared, truncated
    )


def _decode_av(path: Path) -> Decoded:
    import av

    try:
        container = av.open(str(path))
    except Exception as exc:  # PyAV raises many different error types for junk
        reason = getattr(exc, "strerror", None) or str(exc)
        raise AudioError(f"not audio: neither libsndfile nor ffmpeg can read it (ffmpeg: {reason})") from exc
    truncated = False
    with container:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise AudioError("the file has no audio stream")
        stream = streams[0]
        sr = stream.codec_context.sample_rate or stream.rate
        declared = None
        if stream.duration is not None and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
        elif container.duration:
            declared = container.duration / 1_000_000
        fmt = f"{container.format.name}/{stream.codec_context.name}"
        # planar float whatever the codec gives: PyAV's own converter (libswresample), no rate change
        converter = av.AudioResampler(format="fltp", layout=stream.layout, rate=sr)
        chunks = []
        try:
            for frame in container.decode(stream):
                for out in converter.resample(frame):
                    chunks.append(out.to_ndarray().reshape(len(out.layout.channels), -1))
            for out in converter.resample(None):
                chunks.append(out.to_ndarray().reshape(len(out.layout.channels), -1))
        except Exception as exc:
            if not chunks:
                raise AudioError(f"the audio stream cannot be decoded ({type(exc).__name__}: {exc})") from exc
            truncated = True  # decoding broke off part-way: keep what decoded, report it
    if not chunks:
        raise AudioError("the audio stream is empty")
    audio = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    return Decoded(audio, int(sr), "pyav", fmt, declared, truncated)


def decode(path: str | os.PathLike) -> Decoded:
    """Decode ``path`` at its own rate and channels; raise :class:`AudioError` for anything unusable.

    Sets ``truncated`` when the file holds less audio than its header announces (a WAV/AIFF data
    chunk cut short, a FLAC whose frames stop early, a stream that breaks off); callers decide.
    """
    path = Path(path)
    if path.is_dir():
        raise AudioError("is a folder, not an audio file")
    if not path.exists():
        raise AudioError("file not found" + (" (a broken symbolic link)" if path.is_symlink() else ""))
    size = path.stat().st_size
    if size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        dec = _decode_soundfile(path)
    except Exception:
        try:
            dec = _decode_av(path)
        except AudioError:
            raise
        if dec.declared_seconds is None:
            try:  # libsndfile could read the header but not the data (e.g. a FLAC that loses sync)
                import soundfile as sf

                info = sf.info(str(path))
                dec.declared_seconds = info.frames / info.samplerate
            except Exception:
                pass
    if dec.audio.size == 0 or dec.audio.shape[1] == 0:
        raise AudioError(f"the file decodes to no samples ({size} bytes: a header without audio)")
    if dec.declared_seconds and dec.declared_seconds - dec.seconds > max(
        TRUNCATION_TOLERANCE_S, 0.01 * dec.declared_seconds
    ):
        dec.truncated = True
    return dec


def load(path: str | os.PathLike, sr: int | None = None, mono: bool = False) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 of shape ``(channels, samples)``; resample to ``sr`` if given.

    Raises :class:`AudioError` with a human-readable reason for anything unusable.
    """
    dec = decode(path)
    audio, file_sr = dec.audio, dec.sr
    if mono:
        audio = audio.mean(axis=0, keepdims=True)
    if sr is not None and sr != file_sr:
        audio = resample(audio, file_sr, sr)
        file_sr = sr
    return np.ascontiguousarray(audio, dtype=np.float32), file_sr


def resample(audio: np.ndarray, sr_in: int, sr_out: int, quality: str = "VHQ") -> np.ndarray:
    """(channels, n) float32 resampled with soxr (``quality``: VHQ by default; HQ/MQ/LQ for analysis)."""
    import soxr

    if sr_in == sr_out:
        return audio
    out = soxr.resample(np.ascontiguousarray(audio.T), sr_in, sr_out, quality=quality)
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


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(channels, n) → (n,) by averaging the channels."""
    return audio[0] if audio.shape[0] == 1 else audio.mean(axis=0)


def non_finite_count(audio: np.ndarray) -> int:
    """How many samples are NaN or ±inf (a float file can carry them; they poison everything after)."""
    return int(audio.size - np.count_nonzero(np.isfinite(audio)))


def peak_dbfs(audio: np.ndarray) -> float:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return 20 * np.log10(peak) if peak > 0 else float("-inf")


def integrated_loudness(audio: np.ndarray, sr: int) -> float:
    """ITU-R BS.1770-4 integrated loudness (LUFS) of (channels, n) audio, via pyloudnorm.

    ``-inf`` for silence or audio shorter than one 400 ms gating block.
    """
    import pyloudnorm as pyln

    if audio.shape[1] < int(0.4 * sr) + 1:
        return float("-inf")
    # float32 in: the same figure to 0.01 dB here, ~25 % faster than pyloudnorm's usual float64
    return float(pyln.Meter(sr).integrated_loudness(np.ascontiguousarray(audio.T, dtype=np.float32)))


def normalize_loudness(
    audio: np.ndarray, sr: int, target_lufs: float = -14.0, peak_ceiling_dbfs: float = -1.0
) -> tuple[np.ndarray, dict]:
    """Gain ``audio`` to ``target_lufs`` integrated, but never above a sample-peak ceiling.

    Where reaching the target would push the sample peak over ``peak_ceiling_dbfs``, the gain is
    reduced instead (nothing is limited or clipped, so the result is quieter than the target; the
    returned ``loudness_lufs`` says by how much). Returns ``(audio, info)`` with ``gain_db``,
    ``loudness_lufs`` (after gain), ``peak_dbfs`` (after gain) and ``peak_limited``.
    """
    measured = integrated_loudness(audio, sr)
    if not np.isfinite(measured):
        raise AudioError("silent: no loudness can be measured")
    gain_db = target_lufs - measured
    peak = peak_dbfs(audio)
    limited = peak + gain_db > peak_ceiling_dbfs
    if limited:
        gain_db = peak_ceiling_dbfs - peak
    out = (audio * np.float32(10 ** (gain_db / 20))).astype(np.float32)
    # float rounding must not step over the ceiling
    ceiling = 10 ** (peak_ceiling_dbfs / 20)
    over = float(np.max(np.abs(out)))
    if over > ceiling:
        out *= np.float32(ceiling / over)
    return out, {
        "gain_db": round(float(gain_db), 3),
        "loudness_lufs": round(measured + float(gain_db), 3),
        "peak_dbfs": round(peak_dbfs(out), 3),
        "peak_limited": bool(limited),
    }


def write_wav(path: str | os.PathLike, audio: np.ndarray, sr: int, subtype: str = "PCM_16") -> None:
    """Write (channels, n) float audio to a WAV file (callers use ``runs.atomic_path``)."""
    import soundfile as sf

    clipped = np.clip(audio, -1.0, 1.0)
    if subtype == "PCM_16":  # converted here: ~40 % faster than libsndfile's float→int path, same rounding
        sf.write(str(path), np.round(clipped.T * 32767.0).astype(np.int16), sr, subtype=subtype, format="WAV")
    else:
        sf.write(str(path), clipped.T, sr, subtype=subtype, format="WAV")


def write_clip(path: str | os.PathLike, audio: np.ndarray, sr: int, clip_format: str = "wav") -> None:
    """Write (channels, n) float audio as a 16-bit clip, ``clip_format`` "wav" or "flac".

    Both hold the same int16 samples (rounded here, once): FLAC is lossless, so a FLAC clip decodes
    to exactly the float32 array of the WAV one, in about half the bytes.
    """
    import soundfile as sf

    if clip_format == "wav":
        write_wav(path, audio, sr)
        return
    if clip_format != "flac":
        raise ValueError(f"clip_format={clip_format!r}: choose one of {CLIP_FORMATS}")
    pcm = np.round(np.clip(audio, -1.0, 1.0).T * 32767.0).astype(np.int16)
    sf.write(str(path), pcm, sr, subtype="PCM_16", format="FLAC")
