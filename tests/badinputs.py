"""Helpers for tests/test_reliability.py: a bad-input corpus written on the fly (no committed audio)
and a *stage server* that runs stages in forked children so a test can SIGKILL one mid-work.

The corpus (:func:`make_corpus`) returns what each entry must become in ``01_segment``:
``"ok"`` (at least one ok clip) or the words its rejected row's reason must contain.

The stage server (``python tests/badinputs.py serve``) imports every stage module once (~10 s
of torch/transformers/essentia imports), then for each JSON command line on stdin forks a child
that calls ``<module>.run(**kwargs)`` in its own session (so ``os.killpg`` also reaches the
stage's worker processes). It prints ``{"pid"}`` when the child starts and ``{"pid", "status",
"seconds"}`` when it ends. The parent itself never runs a model or a torch op, so every fork
starts clean (no OpenMP/TensorFlow threads to inherit).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

SR = 22050


def _beat_source(seconds: float = 56.0) -> np.ndarray:
    """One rendered demo beat (stereo float32 at :data:`SR`); the usable files are crops of it."""
    from stablebeat_utils import demo

    return demo.make_beat(96, "A", "minor", seconds, seed=7, sr=SR, melody=False)


def _crop(src: np.ndarray, start_s: float, seconds: float) -> np.ndarray:
    i = int(start_s * SR)
    return np.ascontiguousarray(src[:, i : i + int(seconds * SR)])


def make_corpus(root: Path) -> dict[str, str]:
    """Write the bad-input corpus under ``root``; return ``{relative path: "ok" | reason words}``.

    The six usable files are different crops of one beat with lengths 1.5 s apart, so the
    segmenter's duplicate check (same audio *and* the same length within 1 %) keeps them apart;
    the byte-identical copy must be caught.
    """
    import soundfile as sf

    from stablebeat_utils import audio

    root.mkdir(parents=True, exist_ok=True)
    src = _beat_source()
    expect: dict[str, str] = {}

    def w(rel: str, x: np.ndarray, sr: int, subtype: str | None = None, fmt: str | None = None) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), np.ascontiguousarray(x.T), sr, subtype=subtype, format=fmt)
        return path

    # usable, ≥ 45 s: each must give ok clips
    clipped = np.clip(_crop(src, 0.0, 45.5) * 6.0, -1.0, 1.0)  # hard clipping
    w("clipped.wav", clipped, SR, "PCM_16")
    expect["clipped.wav"] = "ok"
    mono = audio.resample(_crop(src, 1.0, 47.0).mean(axis=0, keepdims=True), SR, 7350)
    w("mono_7350.wav", mono, 7350, "PCM_16")
    expect["mono_7350.wav"] = "ok"
    w("hi_96k_float.wav", audio.resample(_crop(src, 2.0, 48.5), SR, 96000), 96000, "FLOAT")
    expect["hi_96k_float.wav"] = "ok"
    x = _crop(src, 3.0, 50.0)
    six = np.vstack([x, 0.7 * x.mean(axis=0, keepdims=True), 0.1 * x[:1], 0.5 * x]).astype(np.float32)
    w("surround 5.1.wav", six, SR, "PCM_24")
    expect["surround 5.1.wav"] = "ok"
    w("Ünïcödé bëat 日本 #1.flac", _crop(src, 4.0, 51.5), SR, "PCM_16")
    expect["Ünïcödé bëat 日本 #1.flac"] = "ok"
    nested = w("deep/er/still deeper/nested beat.wav", _crop(src, 5.0, 53.0), SR, "PCM_16")
    expect["deep/er/still deeper/nested beat.wav"] = "ok"
    # a byte-identical duplicate (sorted later than its original)
    shutil.copyfile(nested, root / "zz copy of nested.wav")
    expect["zz copy of nested.wav"] = "duplicate of deep/er/still deeper/nested beat.wav"

    # unusable: each must give one rejected row with a human reason
    (root / "zero.wav").write_bytes(b"")
    expect["zero.wav"] = "empty file"
    good = (root / "clipped.wav").read_bytes()
    (root / "truncated.wav").write_bytes(good[: len(good) // 3])
    expect["truncated.wav"] = "truncated"
    (root / "riff_random.wav").write_bytes(b"RIFF" + np.random.default_rng(1).bytes(40000))
    expect["riff_random.wav"] = "not audio"
    (root / "lyrics.mp3").write_text("these are lyrics, not audio\n" * 50, encoding="utf-8")
    expect["lyrics.mp3"] = "not audio"
    (root / "folder.wav").mkdir()
    (root / "folder.wav" / "readme.txt").write_text("a folder named like audio")
    expect["folder.wav"] = "is a folder"
    (root / "._clipped.wav").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 300)
    expect["._clipped.wav"] = "AppleDouble"
    (root / ".hidden beat.wav").write_bytes(good[:2000])
    expect[".hidden beat.wav"] = "hidden file"
    w("two_seconds.wav", _crop(src, 10.0, 2.0), SR, "PCM_16")
    expect["two_seconds.wav"] = "too short"
    w("six_seconds.ogg", _crop(src, 20.0, 6.0), SR, "VORBIS", "OGG")
    expect["six_seconds.ogg"] = "too short"
    w("silence_60s.wav", np.zeros((1, 60 * 8000), np.float32), 8000, "PCM_16")
    expect["silence_60s.wav"] = "silent"
    nan = _crop(src, 6.0, 46.0).copy()
    nan[1, 5000:5010] = np.nan
    w("nan.wav", nan, SR, "FLOAT")
    expect["nan.wav"] = "NaN"
    # junk that is not audio-named: ignored (counted), never a row
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 64)
    (root / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\x00" * 64)
    (root / "deep" / "cover.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 64)
    return expect


IGNORED = {".DS_Store", "Thumbs.db", "deep/cover.jpg", "folder.wav/readme.txt"}


# ---------------------------------------------------------------------------------------------
# the stage server

MODULES = {
    "segment": "01_segment",
    "tag": "02_tag",
    "tempo_key": "03_tempo_key",
    "prompts": "04_prompts",
    "evaluate": "07_evaluate",
}


def serve() -> None:
    import importlib

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    mods = {name: importlib.import_module(f"stablebeat_utils.{name}") for name in MODULES}
    # Not essentia: libtensorflow starts threads when it loads, and a child forked after that hangs
    # in TempoCNN (measured: 07_evaluate with workers=1 never returned). Each child imports it.
    import torch  # noqa: F401
    import transformers  # noqa: F401

    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: its own session, quiet, runs one stage and exits
            os.setsid()
            code = 0
            try:
                log = open(cmd.get("log", os.devnull), "w")
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                mods[cmd["module"]].run(**cmd["kwargs"])
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        out.write(json.dumps({"pid": pid, "status": status, "seconds": time.monotonic() - started}) + "\n")
        out.flush()


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    serve()
