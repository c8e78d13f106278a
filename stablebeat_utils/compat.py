"""Every shim for an engine quirk lives here, each with the engine version it is for.

Used by all notebooks indirectly (through the stage modules); ``python -m stablebeat_utils.compat
--setup`` is run once by ``scripts/setup.sh``.

Call :func:`apply` before importing stable-audio-tools; it is idempotent and cheap.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

_APPLIED = False


def _torchaudio_dir() -> Path | None:
    spec = importlib.util.find_spec("torchaudio")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def disable_torchaudio_extension() -> list[Path]:
    """torchaudio 2.11.0 (CUDA wheel) beside torch 2.13.0+cpu: set its compiled extension aside.

    Every torchaudio wheel on the registry is a CUDA build; its ``lib/*.so`` fail to load beside
    the CPU torch and make ``import torchaudio`` raise. Without them torchaudio 2.11 runs its
    pure-Python parts (resample, Spectrogram, MelSpectrogram, lfilter), which is all that
    stable-audio-tools 0.0.20 uses on our code paths (we never call ``torchaudio.load/save``).
    Only done when torch is a CPU build and the import fails; Colab's matching pair is left alone.
    """
    import torch

    ta = _torchaudio_dir()
    if ta is None or "+cpu" not in torch.__version__:
        return []
    moved = []
    for so in sorted((ta / "lib").glob("*.so")):
        target = so.with_name(so.name + ".disabled")
        os.replace(so, target)
        moved.append(target)
    return moved


def install_torchaudio_prototype_stub() -> None:
    """stable-audio-tools 0.0.20 ``models/discriminators.py`` imports ``torchaudio.prototype``.

    ``torchaudio.prototype`` was removed in torchaudio 2.9; the import sits at module level of a
    module we never use for diffusion training (the autoencoder discriminators), so an empty
    module satisfies it. Needed on any torchaudio >= 2.9, Colab's included.
    """
    if "torchaudio.prototype" in sys.modules:
        return
    try:
        import torchaudio.prototype  # noqa: F401
        return
    except Exception:
        pass
    proto = types.ModuleType("torchaudio.prototype")
    proto.__path__ = []  # a package, so `from torchaudio.prototype.x import y` fails clearly
    sys.modules["torchaudio.prototype"] = proto
    transforms = types.ModuleType("torchaudio.prototype.transforms")

    class ChromaSpectrogram:  # used only by the autoencoder discriminators we never build
        def __init__(self, *args, **kwargs):
            raise RuntimeError("torchaudio.prototype is gone since torchaudio 2.9; "
                               "ChromaSpectrogram is unavailable (stablebeat_utils.compat stub)")

    transforms.ChromaSpectrogram = ChromaSpectrogram
    sys.modules["torchaudio.prototype.transforms"] = transforms
    proto.transforms = transforms


def apply() -> None:
    """Apply every runtime shim once. Safe to call many times."""
    global _APPLIED
    if _APPLIED:
        return
    install_torchaudio_prototype_stub()
    _APPLIED = True


def _main(argv: list[str]) -> int:
    if "--setup" in argv:
        try:
            import torchaudio  # noqa: F401
        except OSError:
            moved = disable_torchaudio_extension()
            print(f"compat: set aside {len(moved)} torchaudio CUDA extension libraries (CPU torch)")
            for mod in [m for m in sys.modules if m.startswith("torchaudio")]:
                del sys.modules[mod]
            import torchaudio  # noqa: F401  (raises if the shim was not enough)
        return 0
    print("usage: python -m stablebeat_utils.compat --setup", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
