"""Writing test audio in every format the segmenter reads (soundfile for wav/flac/ogg/aiff, PyAV for mp3/m4a)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_sf(path: Path, audio: np.ndarray, sr: int, subtype: str | None = None) -> Path:
    import soundfile as sf

    frames = np.ascontiguousarray(audio.T)
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".aiff": "AIFF", ".aif": "AIFF"}[path.suffix.lower()]
    if fmt == "OGG":  # libsndfile's Vorbis encoder wants small writes (see demo._write_ogg)
        with sf.SoundFile(str(path), "w", sr, frames.shape[1], format="OGG", subtype="VORBIS") as fh:
            for i in range(0, len(frames), sr):
                fh.write(frames[i : i + sr])
    else:
        sf.write(str(path), frames, sr, format=fmt, subtype=subtype)
    return path


def write_av(path: Path, audio: np.ndarray, sr: int, codec: str) -> Path:
    """Encode (channels, n) float audio with PyAV (``codec``: "libmp3lame"/"mp3" or "aac")."""
    import av

    layout = "stereo" if audio.shape[0] == 2 else "mono"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=sr, layout=layout)
        block = 1152 if "mp3" in codec else 1024
        pts = 0
        for i in range(0, audio.shape[1], block):
            chunk = np.ascontiguousarray(audio[:, i : i + block], dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = sr
            frame.pts = pts
            pts += chunk.shape[1]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
