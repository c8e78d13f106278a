"""Every shim for an engine quirk lives here, each with the engine version it is for.

Used by all notebooks indirectly (through the stage modules); ``python -m stablebeat_utils.compat
--setup`` is run once by ``scripts/setup.sh``.

Call :func:`apply` before importing stable-audio-tools; it is idempotent and cheap.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
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
            raise RuntimeError(
                "torchaudio.prototype is gone since torchaudio 2.9; "
                "ChromaSpectrogram is unavailable (stablebeat_utils.compat stub)"
            )

    transforms.ChromaSpectrogram = ChromaSpectrogram
    sys.modules["torchaudio.prototype.transforms"] = transforms
    proto.transforms = transforms


def write_blocks(target, audio, sr: int, format: str = "OGG", subtype: str = "VORBIS", **kwargs) -> None:
    """Write (channels, n) float audio to a path or file object with libsndfile, one second per call.

    libsndfile 1.2.2 (bundled with soundfile 0.14.0) segfaults when about a minute of audio goes
    to its Vorbis encoder in a single write call (measured here); 1-s blocks are safe, and are
    used for its MP3 encoder too.
    """
    import numpy as np
    import soundfile as sf

    frames = np.ascontiguousarray(np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0).T)
    dest = target if hasattr(target, "write") else str(target)
    with sf.SoundFile(dest, "w", sr, frames.shape[1], format=format, subtype=subtype, **kwargs) as fh:
        for i in range(0, len(frames), sr):
            fh.write(frames[i : i + sr])


def write_vorbis(path, audio, sr: int, compression_level: float = 0.6) -> None:
    """Ogg Vorbis through :func:`write_blocks` (the libsndfile 1.2.2 workaround)."""
    write_blocks(path, audio, sr, compression_level=compression_level)


def jit_cache_lock():
    """numba 0.68.1 under librosa 0.11 (its jitted helpers use ``cache=True``): numba's on-disk cache
    is not safe when two processes compile the same function at once — one's index can end up
    pointing at the other's machine code, and every later load segfaults in that function. Seen in
    CI on a fresh venv: both segment workers compiled ``librosa.beat`` together, after which every
    worker died in ``beat_track``. A worker process holds this lock while it first runs librosa, so
    one compiles and writes while the others wait, then load finished files.

    One lock per librosa installation (its ``__pycache__`` holds the cache), in the temp folder.
    """
    import hashlib
    import tempfile

    from filelock import FileLock

    spec = importlib.util.find_spec("librosa")
    where = str(spec.origin if spec else sys.prefix)
    name = hashlib.sha1(where.encode()).hexdigest()[:12]
    return FileLock(str(Path(tempfile.gettempdir()) / f"stablebeat-numba-cache-{name}.lock"))


def warm_jit(analysis, sr: int, seconds: float = 12.0) -> None:
    """Run ``analysis(mono_float32, sr)`` once on synthetic kicks holding :func:`jit_cache_lock`:
    a pool initializer, so librosa's jitted code is compiled by one process at a time."""
    import numpy as np

    t = np.arange(int(seconds * sr)) / sr
    kicks = (np.sin(2 * np.pi * 55 * t) * np.exp(-30 * (t % 0.5))).astype(np.float32)
    with jit_cache_lock():
        analysis(kicks, sr)


def single_thread_if_forked(parent_pid: int) -> bool:
    """torch's Linux wheels run intra-op parallel regions on GNU OpenMP (libgomp; seen with torch
    2.13.0 CPU), which is not fork-safe: a process forked after its parent ran a parallel region
    inherits the thread team's state but not its threads, and waits for them forever in its first
    parallel region. Seen in the test suite: both ranks of a ``ddp_notebook`` (fork) run on CPU hung
    in ``param.copy_`` while Lightning restored a checkpoint. With one intra-op thread torch never
    enters an OpenMP region, so a rank forked from ``parent_pid`` sets that before any tensor work
    (on GPUs the heavy work is on the device; data loading has its own workers). True when set.
    """
    import os

    if os.getpid() == parent_pid:
        return False
    import torch

    torch.set_num_threads(1)
    return True


def t5_outside_autocast() -> bool:
    """stable-audio-tools 0.0.20 ``T5Conditioner`` with transformers 5.x on a GPU under bf16 autocast.

    The conditioner casts T5 to float16 and means to run it under a float16 autocast, but its
    ``with autocast(...) and set_grad_enabled(...)`` enters only the second context. Inside
    Lightning's ``bf16-mixed`` (05 on an A100/H100) the outer bfloat16 autocast then makes T5's
    keys bfloat16 while its position bias stays float16, and transformers 5.x's SDPA path for T5
    (``create_position_bias_mask``: ``torch.where(mask, position_bias, finfo(key.dtype).min)``)
    raises "value cannot be converted to type c10::Half without overflow" at the first training
    step. Seen on an H200 (torch 2.11.0+cu130, transformers 5.17.0); CPU autocast does not
    reproduce it. The forward runs with autocast off for its device: T5 computes in its own
    float16 weights, as the conditioner intends, whatever precision the DiT trains in. Patched
    once on the class; returns True when it patched now.
    """
    from stable_audio_tools.models import conditioners

    cls = conditioners.T5Conditioner
    if getattr(cls.forward, "_stablebeat_no_autocast", False):
        return False
    forward = cls.forward

    def forward_without_autocast(self, texts, device):
        import torch

        kind = torch.device(device).type
        with torch.autocast(kind, enabled=False):
            return forward(self, texts, device)

    forward_without_autocast._stablebeat_no_autocast = True
    forward_without_autocast.__wrapped__ = forward
    cls.forward = forward_without_autocast
    return True


@contextlib.contextmanager
def quiet_sampler():
    """stable-audio-tools 0.0.20: its k-diffusion samplers always draw a tqdm bar (``disable=False``
    is hard-coded in ``inference/sampling.py``). The playground has its own bar; in JupyterLab the
    sampler's, drawn from a widget callback, lands in the log console as a bar frozen at 0 %.
    Within this block the vendored ``k_diffusion.sampling`` draws none."""
    import functools

    import tqdm.std

    from stable_audio_tools.inference.k_diffusion import sampling as ks

    saved = ks.trange, ks.tqdm
    ks.trange = functools.partial(tqdm.std.trange, disable=True)
    ks.tqdm = functools.partial(tqdm.std.tqdm, disable=True)
    try:
        yield
    finally:
        ks.trange, ks.tqdm = saved


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


class _MissingOptional(AttributeError):
    """Raised by a placeholder module's attributes: says which package to install."""


def stub_training_only_imports() -> list[str]:
    """stable-audio-tools 0.0.20: training modules import ``wandb`` and ``audiotools`` at module level.

    ``training/utils.py`` (and autoencoders/lm/clap) ``import wandb`` but use it only inside
    W&B-logger branches; ``training/losses/semantic.py`` ``import audiotools``
    (descript-audiotools) for a HuBERT loss of autoencoder training. Neither is used when
    training a diffusion model with the CSV logger (notebook 05_train), and neither is in our
    requirements (W&B is optional; descript-audiotools drags in a dozen packages). For each one
    that is *not installed*, an empty placeholder module is registered so that
    ``stable_audio_tools.training`` imports; a real installation is always used when present.
    Touching the placeholder (``wandb.Audio``) raises a clear error. Returns the names stubbed.

    Each placeholder carries a ``__spec__`` (a loader-less ``ModuleSpec``): accelerate 1.x (which
    transformers 5 imports for its 4/8-bit paths) probes ``importlib.util.find_spec("wandb")``,
    and ``find_spec`` raises ``ValueError: wandb.__spec__ is None`` for a module in
    ``sys.modules`` without one. With the spec, such probes see a module but no installed
    distribution (``importlib.metadata`` still answers "not found"), so they report W&B absent.
    """
    stubbed = []
    for name, why in (
        ("wandb", "pip install wandb (only needed for W&B logging)"),
        ("audiotools", "pip install descript-audiotools (only needed for its HuBERT loss)"),
    ):
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, origin="stablebeat_utils.compat placeholder")
        mod.__stablebeat_stub__ = True

        def _missing(attr, _name=name, _why=why):
            # AttributeError (with the explanation), so `hasattr(wandb, "run")` probes answer False
            raise _MissingOptional(
                f"{_name}.{attr}: {_name} is not installed (stablebeat_utils.compat placeholder); {_why}"
            )

        mod.__getattr__ = _missing
        sys.modules[name] = mod
        stubbed.append(name)
    return stubbed
