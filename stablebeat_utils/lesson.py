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
import sys
import tempfile
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
# Libraries whose native (C++) code writes to file descriptor 2 when loaded: TensorFlow 2.20, which
# Colab ships ("oneDNN custom operations are on…", "Could not find cuda drivers on your machine…",
# absl's "All log messages before absl::InitializeLog()…"). 05/05b load it: train.run adds
# Lightning's TensorBoard logger when tensorboard is installed (TensorFlow brings it), and
# torch.utils.tensorboard's writer imports tensorboard.compat.tf, i.e. TensorFlow when present.
# Jupyter's kernel copies fd 2 into the cell's output and Python's logging never sees it, so in those
# stages it is imported once, up front, with fd 1/2 pointed at a file whose lines go to the log.
_NATIVE_CHATTY_IMPORTS = ("tensorflow",)
_TENSORBOARD_STAGES = (layout.TRAIN, layout.FOCUS)
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


@contextlib.contextmanager
def native_output_to_log(name: str):
    """Point file descriptors 1 and 2 (and ``sys.stdout``/``sys.stderr``) at a temporary file for the
    block; its lines go to this module's logger at INFO, tagged with ``name``."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    py_out = io.StringIO()
    with tempfile.TemporaryFile() as tmp:
        try:
            for fd in saved:
                os.dup2(tmp.fileno(), fd)
            with contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_out):
                yield
        finally:
            for fd, keep in saved.items():
                os.dup2(keep, fd)
                os.close(keep)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace") + py_out.getvalue()
    for line in text.splitlines():
        if line.strip():
            log.info("%s (native output): %s", name, line)


def _import_quietly(name: str, native: bool) -> None:
    try:
        if importlib.util.find_spec(name.split(".")[0]) is None or name in sys.modules:
            return
        if native:
            with native_output_to_log(name):
                importlib.import_module(name)
            return
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            importlib.import_module(name)
    except ImportError:  # the stage itself will say what is missing
        return
    for text in out.getvalue().splitlines():
        log.info("%s: %s", name, text)


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
    for name in _NATIVE_CHATTY_IMPORTS if stage in _TENSORBOARD_STAGES else ():
        _import_quietly(name, native=True)
    for name in _CHATTY_IMPORTS:
        _import_quietly(name, native=False)


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
