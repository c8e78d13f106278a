"""Where a run's clips live: the run folder, or a clip folder outside it (``clip_dir`` of 01_segment).

Used by every stage that reads clip audio (02_tag, 03_tempo_key, 05_train and its pre-encoding,
05b_focus, 07_evaluate's reference clips) and by the notebook players; no notebook of its own.

Rows keep the clip's name in the run: ``path`` = ``01_segment/clips/<clip_id>.<ext>``, relative to
RUN_DIR, whatever ``clip_dir`` is (so rows, tags, prompts and latents never change when the clips
move). By default the file is at ``RUN_DIR/<path>``. With ``clip_dir`` set (on Colab typically
``/content/stablebeat_clips``: the VM's local disk) 01_segment writes the clips to this run's own
subfolder of it, ``<clip_dir>/<run folder name>-<10 hex of its absolute path>`` (the rule of
05_train's ``local_checkpoint_dir``), and records that folder in ``RUN_DIR/01_segment/clip_folder.json``.
:func:`clip_path` — through :class:`ClipFolder` — is the one way a row's ``path`` becomes a file.

The local disk is wiped when Colab disconnects. Re-running 01_segment rebuilds the missing clips
from their sources (bit-identical). A stage that needs a clip that is gone from an outside clip
folder stops with :class:`MissingClipsError`, naming the clip, the folder and that fix. A clip
missing from the run folder itself is a damaged run folder, reported per clip by each stage (as
any unreadable clip is).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

from . import layout
from .runs import Run, atomic_write_json, read_json, read_jsonl

SEGMENT = layout.SEGMENT
CLIPS_PREFIX = f"{SEGMENT}/{layout.CLIPS}/"
RECORD = layout.CLIP_FOLDER_RECORD
COLAB_CLIP_DIR = "/content/stablebeat_clips"  # the Colab VM's local disk (not Drive)


class MissingClipsError(FileNotFoundError):
    """Clips a stage needs are gone from the clip folder outside the run folder (a wiped local disk)."""


def run_subfolder(base: str | os.PathLike, run_root: str | os.PathLike) -> Path:
    """``<base>/<run folder name>-<10 hex of its absolute path>``: one folder per run folder under a
    shared local folder (the naming of 05_train's ``local_checkpoint_dir``)."""
    root = Path(run_root).expanduser().resolve()
    key = hashlib.sha256(str(root).encode()).hexdigest()[:10]
    return Path(base).expanduser().absolute() / f"{root.name}-{key}"


def folder_for(clip_dir: str, run_root: str | os.PathLike) -> Path:
    """Where 01_segment writes the clips for ``clip_dir`` ("" = ``RUN_DIR/01_segment/clips``)."""
    if not clip_dir:
        return Path(run_root).expanduser().resolve() / SEGMENT / layout.CLIPS
    return run_subfolder(clip_dir, run_root)


def record_folder(run_root: str | os.PathLike, clip_dir: str, folder: Path) -> None:
    """Keep where the clips are in ``RUN_DIR/01_segment/clip_folder.json`` (01_segment, before any
    clip); no file when they are in the run folder (as in run folders made before ``clip_dir``)."""
    path = Path(run_root) / SEGMENT / RECORD
    if not clip_dir:
        path.unlink(missing_ok=True)
        return
    data = {"clip_dir": clip_dir, "folder": str(folder)}
    if read_json(path) != data:
        atomic_write_json(path, data)


def recorded(run_root: str | os.PathLike) -> dict:
    """The recorded ``{"clip_dir", "folder"}`` (``clip_dir`` "" when the clips are in the run folder)."""
    data = read_json(Path(run_root) / SEGMENT / RECORD) or {}
    return {"clip_dir": data.get("clip_dir") or "", "folder": data.get("folder") or ""}


class ClipFolder:
    """A run's clip folder, read once: ``ClipFolder(run_dir).path(row["path"])``."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run = Run(run_dir)
        rec = recorded(self.run.root)
        self.clip_dir = rec["clip_dir"]
        self.outside = bool(rec["folder"])
        self.folder = Path(rec["folder"]) if self.outside else self.run.path(SEGMENT, layout.CLIPS)

    def path(self, rel: str | os.PathLike) -> Path:
        """The file of a row's ``path`` (or a prompts row's ``filepath``): a clip's name in the run is
        mapped to the clip folder; any other path is relative to RUN_DIR (or absolute)."""
        rel = os.fspath(rel)
        if self.outside and rel.startswith(CLIPS_PREFIX) and "/" not in rel[len(CLIPS_PREFIX) :]:
            return self.folder / rel[len(CLIPS_PREFIX) :]
        return self.run.path(rel)

    def missing(self, rels: Iterable[str | os.PathLike]) -> list[str | os.PathLike]:
        """Those of ``rels`` that name a clip of the clip folder whose file is not there (one listing)."""
        try:
            have = set(os.listdir(self.folder))
        except OSError:
            have = set()
        return [r for r in rels if r and self.path(r).parent == self.folder and self.path(r).name not in have]

    def require(self, stage: str, rels: Iterable[str]) -> None:
        """Stop when clips that ``stage`` needs are gone from a clip folder outside the run folder.

        (Clips kept in the run folder are each stage's to report, one row per unreadable clip.)
        """
        if not self.outside:
            return
        gone = self.missing(rels)
        if not gone:
            return
        total = len(self.missing([r.get("path") for r in _ok_rows(self.run)]))
        names = ", ".join(Path(r).name for r in gone[:5]) + (f", … ({len(gone) - 5} more)" if len(gone) > 5 else "")
        raise MissingClipsError(
            f"STOP — {stage} needs {len(gone)} clip(s) that are gone from the clip folder {self.folder} "
            f"(clip_dir={self.clip_dir!r}: a local disk, wiped when the runtime disconnects): {names}. "
            f"Fix: re-run 01_segment (same parameters, clip_dir={self.clip_dir!r}) to rebuild the {total} "
            "missing clip(s) from their sources, bit-identical; then run this stage again."
        )


def _ok_rows(run: Run) -> list[dict]:
    return [r for r in read_jsonl(run.path(SEGMENT, layout.SEGMENTS)) if r.get("status") == "ok"]


def clip_path(run_dir: str | os.PathLike, rel: str | os.PathLike) -> Path:
    """The file of one row's ``path`` (see :class:`ClipFolder`; build one for many rows)."""
    return ClipFolder(run_dir).path(rel)
