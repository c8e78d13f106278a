"""Colab support: GPU check with a STOP message, Drive only when asked, installs only what Colab lacks.

Used by ``colab/launcher.ipynb`` (and by any numbered notebook opened on its own in Colab).
Nothing here runs at import: no Drive mount, no install, no token read.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from . import params

REPO_ROOT = Path(__file__).resolve().parent.parent
COLAB_REQUIREMENTS = REPO_ROOT / "colab" / "requirements-colab.txt"


class Stop(RuntimeError):
    """Stops "Run all" with a message that says what to do; the notebook shows it as the error."""


def in_colab() -> bool:
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def gpu_report() -> dict:
    """{'cuda': bool, 'name', 'memory_gb', 'bf16'} for GPU 0 (nothing when there is none)."""
    import torch

    if not torch.cuda.is_available():
        return {"cuda": False, "name": None, "memory_gb": 0.0, "bf16": False}
    props = torch.cuda.get_device_properties(0)
    return {"cuda": True, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
            "bf16": bool(torch.cuda.is_bf16_supported()), "count": torch.cuda.device_count()}


def profile_requirements(profile: str) -> dict:
    """The ``requires:`` block of a profile (e.g. ``{gpu_memory_gb: 38}``); empty for demo."""
    return dict(params.load_profile(profile).get("requires") or {})


def check_gpu(profile: str, report: dict | None = None) -> dict:
    """Raise :class:`Stop` naming what is needed when this runtime cannot run ``profile``."""
    need = profile_requirements(profile)
    report = report if report is not None else gpu_report()
    want_gb = float(need.get("gpu_memory_gb") or 0)
    if want_gb <= 0:
        return report
    if not report.get("cuda"):
        raise Stop(f"STOP: profile {profile!r} needs a GPU with at least {want_gb:g} GB of memory and this "
                   "runtime has none. In Colab: Runtime → Change runtime type → a GPU "
                   f"({need.get('gpu_hint', 'A100')}), then run again.")
    if report["memory_gb"] + 0.5 < want_gb:
        alt = need.get("smaller_gpu_profile")
        raise Stop(f"STOP: profile {profile!r} needs at least {want_gb:g} GB of GPU memory; this runtime's "
                   f"{report['name']} has {report['memory_gb']:g} GB. Choose a bigger GPU "
                   f"({need.get('gpu_hint', 'A100')})" + (f", or the profile {alt!r}." if alt else "."))
    return report


def mount_drive(mount_point: str = "/content/drive") -> Path:
    """Mount Google Drive (asks the user in Colab); only called when the learner asks for Drive."""
    if not in_colab():
        raise Stop("STOP: Google Drive can only be mounted inside Colab; set use_drive = False here.")
    from google.colab import drive  # type: ignore[import-not-found]

    drive.mount(mount_point)
    return Path(mount_point) / "MyDrive"


def missing_requirements(requirements: Path = COLAB_REQUIREMENTS) -> list[str]:
    """Requirement lines whose module is not importable here (Colab's own torch is never among them)."""
    import importlib.util

    missing = []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name = line.split(";")[0]
        for sep in ("==", ">=", "<=", "~=", "<", ">", "["):
            name = name.split(sep)[0]
        module = {"essentia-tensorflow": "essentia", "pytorch-lightning": "pytorch_lightning",
                  "stable-audio-tools": "stable_audio_tools", "PyYAML": "yaml", "av": "av",
                  "einops-exts": "einops_exts", "alias-free-torch": "alias_free_torch",
                  "vector-quantize-pytorch": "vector_quantize_pytorch", "scikit-learn": "sklearn",
                  "PyWavelets": "pywt"}.get(name.strip(), name.strip().replace("-", "_"))
        if importlib.util.find_spec(module) is None:
            missing.append(line)
    return missing


def install_missing(requirements: Path = COLAB_REQUIREMENTS) -> list[str]:
    """pip-install only what is missing (never torch/torchaudio: Colab's CUDA build stays)."""
    todo = missing_requirements(requirements)
    engine = [t for t in todo if t.startswith("stable-audio-tools")]
    rest = [t for t in todo if t not in engine]
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    if rest:
        subprocess.run(pip + rest, check=True)
    if engine:  # declares torch==2.7.1 and Python <3.11: see requirements-engine.txt
        subprocess.run(pip + ["--no-deps", "--ignore-requires-python"] + engine, check=True)
    from . import compat

    compat.apply()
    return todo
