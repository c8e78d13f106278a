"""Checkpoint files of notebook ``05_train`` (and ``05b_focus``, which trains with 05's code).

Light on purpose (no torch, no Lightning): :mod:`stablebeat_utils.train` finds the checkpoint to
resume from before anything heavy is imported, and the Lightning classes
(:mod:`stablebeat_utils.train_lightning`) write, prune and mirror them with these functions.

- a checkpoint is ``step=N.ckpt``; :func:`checkpoint_problem` tells a complete one from a cut copy;
- :func:`newest_checkpoint`: the complete one with the highest step in any of several folders;
- :func:`local_checkpoint_folder`: one folder per run under ``local_checkpoint_dir`` (fast local disk);
- :func:`prune_checkpoints`: keep the newest ``keep``;
- :func:`mirror_checkpoint`: an atomic copy from local disk to the run folder (Drive);
  :class:`CheckpointMirror` runs it in a background thread, so training goes on while it copies.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
from pathlib import Path

from . import layout
from .runs import RunFolderError, atomic_path

STAGE = layout.TRAIN  # the stage whose messages these are
#: what a checkpoint must agree on to be resumed (changing anything else, e.g. lr or max_steps, is fine)
RESUME_KEYS = ("base_model", "mode", "lora_rank", "lora_alpha", "lora_adapter", "pre_encode", "ema")
_CKPT_RE = re.compile(r"^step=(\d+)\.ckpt$")


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint, or None. ``torch.save`` writes a zip whose central
    directory comes last: a copy cut by a disconnect (a Drive sync, a full disk) has none."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"incomplete or unreadable ({type(exc).__name__}: {exc})"
    if not any(n.endswith("data.pkl") for n in names):
        return "not a torch checkpoint (no data.pkl inside)"
    return None


def newest_checkpoint(*ckpt_dirs: Path, quiet: bool = False) -> Path | None:
    """The complete checkpoint with the highest step in any of ``ckpt_dirs`` (temporary files ignored).

    With the same step in several folders the first folder wins (the fast local copy). A checkpoint
    that is cut short (a disconnect mid-write or mid-copy) is skipped with a message naming it, and
    the previous complete one is used.
    """
    found = []
    for rank, ckpt_dir in enumerate(ckpt_dirs):
        ckpt_dir = Path(ckpt_dir)
        if ckpt_dir.is_dir():
            for p in ckpt_dir.iterdir():
                m = _CKPT_RE.match(p.name)
                if m:
                    found.append((-int(m.group(1)), rank, p))
    for _, _, p in sorted(found):
        problem = checkpoint_problem(p)
        if problem is None:
            return p
        if not quiet:
            print(f"{STAGE}: skipping checkpoint {p}: {problem} — resuming from the previous complete one")
    return None


def local_checkpoint_folder(local_checkpoint_dir: str, run_root: Path) -> Path | None:
    """This run's folder under ``local_checkpoint_dir`` (one folder per run folder), or None when unset."""
    if not local_checkpoint_dir:
        return None
    key = hashlib.sha256(str(Path(run_root).resolve()).encode()).hexdigest()[:10]
    return Path(local_checkpoint_dir).expanduser() / f"{Path(run_root).name}-{key}"


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Keep the ``keep`` highest-step ``step=N.ckpt`` files of ``folder``; remove temp files of cut writes."""
    if not folder.is_dir():
        return
    found = sorted((int(_CKPT_RE.match(p.name).group(1)), p) for p in folder.iterdir() if _CKPT_RE.match(p.name))
    for _, old in found[:-keep]:
        old.unlink(missing_ok=True)


def mirror_checkpoint(path: Path, mirror_dir: Path, keep: int) -> Path | None:
    """Copy ``path`` atomically into ``mirror_dir`` (temp file, fsync, rename), then prune it to ``keep``.

    Returns the mirrored path, or None with a warning when the copy fails (the run folder's disk
    is full, read-only, or a Drive that went away): training goes on from the local copy and the
    next checkpoint tries again. Nothing already mirrored is touched by a failed copy.
    """
    import shutil

    try:
        mirror_dir.mkdir(parents=True, exist_ok=True)
        target = mirror_dir / path.name
        with atomic_path(target) as tmp:
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
                dst.flush()
                os.fsync(dst.fileno())
        prune_checkpoints(mirror_dir, keep)
        return target
    except (OSError, RunFolderError) as exc:
        print(
            f"{STAGE}: WARNING could not copy checkpoint {path.name} to {mirror_dir} "
            f"({getattr(exc, 'strerror', None) or exc}). Training goes on; the checkpoint is kept in {path.parent} and the "
            "next checkpoint tries the copy again. Free space / remount Drive.",
            file=sys.stderr,
        )
        return None


class CheckpointMirror:
    """:func:`mirror_checkpoint` in a background thread: the training step that wrote a checkpoint
    returns at once while the copy runs (a full fine-tune's 16.9 GB take minutes to reach Drive).

    At most one copy is in flight; a checkpoint submitted meanwhile waits, and a newer one replaces
    it (the older is never copied: only the newest matters for resuming). The copy stays atomic
    (temp file, fsync, rename) and the mirror folder is pruned after it; a failed copy warns (as
    :func:`mirror_checkpoint` does) and the next checkpoint tries again. :meth:`wait` blocks until
    nothing is in flight, at most ``wait_s`` seconds (Lightning's teardown calls it: at the end of
    fit, and after an exception or an interrupt). One process copies: Lightning saves checkpoints
    on rank 0 only.
    """

    def __init__(self, mirror_dir: Path, keep: int, wait_s: float = 1800.0):
        self.mirror_dir, self.keep, self.wait_s = Path(mirror_dir), keep, float(wait_s)
        self._init_sync()

    def _init_sync(self) -> None:
        self._cond = threading.Condition()
        self._queued: Path | None = None  # the next checkpoint to copy (a newer one replaces it)
        self._copying: Path | None = None  # the one being copied
        self._thread: threading.Thread | None = None

    def __getstate__(self):  # a lock and a thread do not pickle (a spawned process starts idle)
        return {"mirror_dir": self.mirror_dir, "keep": self.keep, "wait_s": self.wait_s}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_sync()

    def submit(self, path: Path) -> None:
        """Copy ``path`` to the mirror folder in the background; returns at once."""
        with self._cond:
            self._queued = Path(path)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="checkpoint-mirror", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                if self._queued is None:
                    self._thread = None
                    self._cond.notify_all()
                    return
                path, self._queued, self._copying = self._queued, None, self._queued
            try:
                if path.exists():  # else pruned from local disk after a newer one replaced it
                    mirror_checkpoint(path, self.mirror_dir, self.keep)
            except Exception as exc:  # never let the thread die with a copy marked in flight
                print(
                    f"{STAGE}: WARNING copying checkpoint {path.name} to {self.mirror_dir} failed: {exc}",
                    file=sys.stderr,
                )
            finally:
                with self._cond:
                    self._copying = None
                    self._cond.notify_all()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._thread is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the copy in flight (and a queued one) is done; False when ``timeout`` (default
        ``wait_s``) passed first — then the copy goes on in the background while this process lives."""
        timeout = self.wait_s if timeout is None else timeout
        with self._cond:
            if self._thread is None:
                return True
            name = (self._copying or self._queued or Path("?")).name
            print(f"{STAGE}: waiting for the checkpoint copy to Drive… ({name} → {self.mirror_dir})", flush=True)
            done = self._cond.wait_for(lambda: self._thread is None, timeout=timeout)
        if not done:
            print(
                f"{STAGE}: WARNING the checkpoint copy to {self.mirror_dir} is still running after {timeout:.0f} s; "
                "the complete checkpoint is on local disk, and the copy goes on while this session lives.",
                file=sys.stderr,
            )
        return done


# --------------------------------------------------------------------------------------------
# divergence: a non-finite loss or weight stops training; nothing non-finite is kept or exported


class DivergedError(RuntimeError):
    """Training diverged (a NaN/inf loss or weight); the message names the step and what to try.

    :mod:`stablebeat_utils.train` raises its own subclass (a ``TrainError`` too)."""


def nonfinite_tensors(state: dict) -> list[str]:
    """The names of the floating-point tensors of ``state`` that hold a NaN or an infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]


def drop_checkpoints_from(step: int, *ckpt_dirs: Path) -> list[str]:
    """Remove the ``step=N.ckpt`` files with N >= ``step`` (their weights gave the non-finite loss)."""
    gone = []
    for ckpt_dir in ckpt_dirs:
        if Path(ckpt_dir).is_dir():
            for p in sorted(Path(ckpt_dir).iterdir()):
                m = _CKPT_RE.match(p.name)
                if m and int(m.group(1)) >= step:
                    p.unlink(missing_ok=True)
                    gone.append(p.name)
    return sorted(set(gone))


def divergence_message(stage: str, step: int, what: str, lr: float, good: Path | None, ckpt_dir: Path) -> str:
    """What a producer reads when training diverges: where, why it matters, what to try.

    The re-run **resumes** from the last good checkpoint with the new (lower) learning rate: the
    optimizer's learning rate and the schedule's base are replaced by the new ``lr``, the schedule
    goes on from the checkpoint's step (see ``train_lightning.Wrapper.on_load_checkpoint``).
    """
    lower = f"{lr / 10:.0e}" if lr > 0 else "a lower value"
    where = (
        f"The last good checkpoint, {good.name}, is kept: run the stage again with a lower lr (e.g. lr={lower}) "
        f"and it resumes from {good.name} with the new learning rate. To start over from the base model "
        f"instead, delete {ckpt_dir} (or use a new run_dir)."
        if good is not None
        else f"No checkpoint was saved before it: run the stage again with a lower lr (e.g. lr={lower}) and it "
        "starts over from the base model."
    )
    return (
        f"{stage}: training diverged at step {step}: {what} (lr={lr:g}). Training stopped; nothing was "
        f"exported (an export never holds NaN/inf weights). {where} If it diverges again, also try a "
        "smaller lr still, a larger batch_size/grad_accum, or precision='32-true'."
    )
