"""The start of every lesson: cell 4 of each notebook is ``P = lesson.settle("NN_stage", globals())``.

:func:`settle` turns the notebook's ``parameters`` cell into the values its stage's ``run()`` takes:

1. the profile (``profile = "colab_a100"`` in the form) applied to every parameter still at its demo
   value — parameters the learner changed are kept; under the runner the values arrive already
   resolved (``_resolved_by_runner``) and are only validated (:mod:`params`);
2. in Colab: the GPU checked and Drive mounted where a path points into it (:func:`colab.prepare`;
   elsewhere nothing);
3. the values recorded in ``RUN_DIR/run.json`` (:func:`runs.record_params`);
4. library chatter that tells a learner nothing kept out of the lesson's output
   (:func:`quiet_library_noise`): it goes to the ``stablebeat_utils.lesson`` logger instead.

Notebook-facing: stages never import this module (they validate with :func:`params.check_call`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

from . import layout
from . import colab, params
from .runs import find_run_dir, record_params

log = logging.getLogger(__name__)

# Warnings a learner can do nothing about: (category, pattern on the file that warns, pattern on the
# message or None for any).
_NOISE = (
    (
        FutureWarning,
        re.compile(
            r"[/\\](torch|torchaudio|pytorch_lightning|lightning|lightning_fabric|torchsde|"
            r"transformers|stable_audio_tools)[/\\]"
        ),
        None,
    ),
    (UserWarning, re.compile(r"[/\\]torchsde[/\\]"), None),  # "Should have tb<=t1": float rounding at the last step
    # stable-audio-tools 0.0.20 opens torch.cuda.amp.autocast on a CPU-only machine (the demo, CI)
    (
        UserWarning,
        re.compile(r"[/\\](torch|stable_audio_tools)[/\\]"),
        re.compile(r"CUDA is not available or torch_xla is imported\. Disabling autocast"),
    ),
    # Lightning 2.6 on every 05/05b run: the engine's wrapper defines a validation_step the course
    # never feeds, and its frozen VAE and T5 are in eval mode on purpose
    (
        UserWarning,
        re.compile(r"[/\\](pytorch_lightning|lightning)[/\\]"),
        re.compile(r"but have no `val_dataloader`|module\(s\) in eval mode at the start of training"),
    ),
)
# Engine modules that print at import time (stable-audio-tools 0.0.20: "flash_attn not installed,
# disabling Flash Attention"); imported once here with their print sent to the log.
_CHATTY_IMPORTS = ("stable_audio_tools.models.transformer",)
_SAO_STAGES = (layout.TRAIN, layout.FOCUS, layout.GENERATE, layout.EVALUATE)
_original_showwarning = None


def _is_noise(category: type, filename: str, message: object = "") -> bool:
    return any(
        issubclass(category, cat) and rx.search(str(filename)) and (msg is None or msg.search(str(message)))
        for cat, rx, msg in _NOISE
    )


def _showwarning(message, category, filename, lineno, file=None, line=None):
    if _is_noise(category, filename, message):
        log.info("%s:%s: %s: %s", filename, lineno, category.__name__, message)
        return
    _original_showwarning(message, category, filename, lineno, file, line)


# Lightning 2.6's advertisement on every fit ("💡 Tip: … try installing litlogger …"), logged at INFO
# by rank_zero_info on this logger (lightning-utilities' rank_zero module logs through it)
_TIP_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("💡 Tip:"):
            log.info("%s: %s", record.name, record.getMessage())
            return False
        return True


def quiet_library_noise(stage: str = "") -> None:
    """Send the engines' FutureWarnings (torch, Lightning, torchsde, …) and import-time prints to the
    log instead of the lesson's output. Idempotent; every other warning still shows."""
    global _original_showwarning
    if _original_showwarning is None:
        _original_showwarning = warnings.showwarning
        warnings.showwarning = _showwarning
    for name in _TIP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())
    if stage not in _SAO_STAGES:
        return
    for name in _CHATTY_IMPORTS:
        try:
            if importlib.util.find_spec(name.split(".")[0]) is None:
                continue
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                importlib.import_module(name)
        except ImportError:  # the stage itself will say what is missing
            continue
        for text in out.getvalue().splitlines():
            log.info("%s: %s", name, text)


def settle(stage: str, namespace: dict) -> dict[str, Any]:
    """The notebook's parameters, profile applied, validated, recorded; pass to ``<stage>.run(**P)``."""
    stage = params.canonical_stage(stage)
    quiet_library_noise(stage)
    values = params.settled_values(stage, namespace)
    colab.prepare(values)  # in Colab: GPU check, Drive mounted if a path points into it; elsewhere nothing
    if "run_dir" in values:
        given = values["run_dir"]
        values["run_dir"] = str(Path(find_run_dir(given, creates=stage == layout.SEGMENT)).expanduser().resolve())
        if not Path(given).expanduser().is_absolute() and not Path(given).expanduser().exists():
            if Path(values["run_dir"]).is_dir():
                print(f"run_dir {given!r} is not beside this notebook: using {values['run_dir']}")
        record_params(values["run_dir"], stage, values)
    if namespace.get("_resolved_by_runner"):
        saved_copy_settings(values.get("run_dir"))
    return values


def saved_copy_settings(run_dir: str | None) -> None:
    """Under the runner, whose executed copy is saved: text progress bars (a widget bar is saved
    frozen at 0 %), and players that link their files relative to ``RUN_DIR/notebooks``."""
    import tqdm.auto
    import tqdm.std

    tqdm.auto.tqdm, tqdm.auto.trange = tqdm.std.tqdm, tqdm.std.trange
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Loading weights" bars: noise in a lesson
    if run_dir:
        from . import show

        show.NOTEBOOK_DIR = Path(run_dir) / "notebooks"
