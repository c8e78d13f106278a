"""Run folders on disk: paths, atomic writes, append-once JSONL, stage records.

Used by every notebook (01_segment … 07_evaluate); no notebook of its own.

The contract (see docs/design.md, "The run folder"): every stage writes under ``RUN_DIR/<stage>/``,
writes files atomically (temp file in the same folder, fsync, rename), appends JSONL rows only
once per key, and records itself in ``RUN_DIR/<stage>/stage.json`` when done. A stage killed at
any moment and run again ends exactly where an uninterrupted run ends:

- a file is either absent or complete (never half-written), because it is renamed into place;
- a JSONL row is either absent or complete: a line cut by a kill is dropped when the file is
  reopened, and :class:`JsonlLog` never appends a key twice;
- stages sort their JSONL at the end (:meth:`JsonlLog.finalize`) so the bytes do not depend on
  worker scheduling.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.metadata
import json
import os
import platform
import re
import tempfile
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable, Iterable, Iterator

from . import __version__, layout

RUN_FORMAT = 1
_UMASK = os.umask(0)
os.umask(_UMASK)  # bumped when the run-folder layout changes incompatibly


def find_run_dir(run_dir: str | os.PathLike, creates: bool = False, cwd=None, root=None) -> str:
    """Where a lesson's ``run_dir`` is: a relative one that does not exist here (a lesson opened from
    ``notebooks/``) but exists at the course's root (``make demo``'s ``runs/demo``) is that one.

    A stage that ``creates`` the run (01_segment) keeps the path as given."""
    path = Path(run_dir).expanduser()
    here = Path(cwd) if cwd is not None else Path.cwd()
    if creates or path.is_absolute() or (here / path).exists():
        return str(path)
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    if (root / "notebooks").is_dir() and (root / path).is_dir():
        return str((root / path).resolve())
    return str(path)


class RunFolderError(RuntimeError):
    """A run folder that cannot be used (incompatible version, unwritable, disk full)."""


def cache_home() -> Path:
    """Where built tiny models, downloaded model files and the demo beats are cached.

    ``$STABLEBEAT_HOME`` if set, else ``~/.cache/stablebeat``.
    """
    root = os.environ.get("STABLEBEAT_HOME") or os.path.join(Path.home(), ".cache", "stablebeat")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _disk_error(path: Path, exc: OSError) -> RunFolderError:
    if exc.errno == errno.ENOSPC:
        return RunFolderError(
            f"{path}: no space left on the device — free some disk and run the stage again "
            "(nothing half-written was kept)"
        )
    return RunFolderError(f"{path}: cannot write ({exc.strerror or exc})")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    For writers that want a file name (``soundfile.write``, ``torch.save``, matplotlib). The
    temporary name keeps the extension (``suffix``) so format-sniffing writers still work.
    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise _disk_error(path, exc) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """The complete rows of a JSONL file, one at a time (a last line cut by a kill is ignored)."""
    for _, _, line in _lines(Path(path)):
        yield json.loads(line)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete rows of a JSONL file (a last line cut by a kill is ignored)."""
    return list(iter_jsonl(path))


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(offset, length, stripped line) of every complete, non-blank line of ``path``."""
    if not path.exists():
        return
    offset = 0
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # a line cut by a kill: not a row
            line = raw.strip()
            if line:
                yield offset, len(raw), line
            offset += len(raw)


# The names atomic_path gives its temporary files: ".<stem>.<8 random chars>.tmp<suffix>".
_TEMP_NAME = re.compile(r"^\..*\.[a-z0-9_]{8}\.tmp(\.[^./]*)?$")


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of :func:`atomic_path` left under ``folder`` by a killed process.

    A SIGKILL (or power loss) gives ``atomic_path`` no chance to remove its temp file; the target
    is intact, but the debris stays. Added by the reliability suite (tests/test_reliability.py):
    a 04_prompts run killed while saving a figure left ``.tag_map.<rnd>.tmp.png`` in the stage
    folder for good. :meth:`Run.mark_done` calls this once the stage has finished writing.
    """
    removed = []
    for p in Path(folder).rglob(".*.tmp*"):
        if p.is_file() and _TEMP_NAME.match(p.name):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class JsonlLog:
    """An append-once JSONL file keyed by one field (``clip_id`` by default).

    Opening repairs a file whose last line was cut by a kill (the partial line is truncated
    away). :meth:`append` writes whole lines with one ``write`` + ``fsync`` and ignores a key that
    is already present, so a re-run never duplicates a row.

    Memory: the log keeps each key and where its line starts in the file, not the rows. At the
    card's scale (40,000 clips) 02's rows, with their per-tag scores, take ~600 MiB as Python
    dicts; the index takes a few MiB (benchmarks/bench_rows.py). :meth:`get` reads one line back,
    :meth:`rows` and :meth:`finalize` give a :class:`Rows` view that reads the file as it is
    iterated — a row read from it is a fresh dict, so changing it changes nothing on disk.
    """

    def __init__(self, path: str | os.PathLike, key: str | Callable[[dict], str] = "clip_id"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = key if callable(key) else (lambda row, _k=key: row[_k])
        self._repair()
        self._index()

    def _index(self) -> None:
        self._at: dict[str, tuple[int, int]] = {}  # key -> (offset, length) of its first line
        self._size = 0
        for offset, length, line in _lines(self.path):
            self._at.setdefault(self._key(json.loads(line)), (offset, length))
            self._size = offset + length
        if self.path.exists():
            self._size = self.path.stat().st_size

    def _repair(self) -> None:
        if not self.path.exists():
            return
        size = self.path.stat().st_size
        if not size:
            return
        with open(self.path, "rb+") as fh:
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            # the cut line is the tail after the last newline; read back in blocks to find it
            pos, keep = size, 0
            while pos > 0:
                step = min(1 << 16, pos)
                pos -= step
                fh.seek(pos)
                nl = fh.read(step).rfind(b"\n")
                if nl >= 0:
                    keep = pos + nl + 1
                    break
            fh.truncate(keep)
            os.fsync(fh.fileno())

    def _read(self, where: tuple[int, int]) -> dict:
        with open(self.path, "rb") as fh:
            fh.seek(where[0])
            return json.loads(fh.read(where[1]))

    def __contains__(self, key: str) -> bool:
        return key in self._at

    def __len__(self) -> int:
        return len(self._at)

    def keys(self) -> set[str]:
        return set(self._at)

    def rows(self) -> Rows:
        """The rows, first occurrence of each key, in file order (read lazily)."""
        return Rows(self.path, list(self._at.values()))

    def get(self, key: str, default: dict | None = None) -> dict | None:
        where = self._at.get(key)
        return default if where is None else self._read(where)

    def append(self, *rows: dict) -> int:
        """Append the rows whose key is new, as one write. Returns how many were written."""
        new, seen = [], set()
        for row in rows:
            k = self._key(row)
            if k in self._at or k in seen:
                continue
            seen.add(k)
            new.append((k, (json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")))
        if not new:
            return 0
        try:
            with open(self.path, "ab") as fh:
                fh.write(b"".join(line for _, line in new))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            self._repair()
            self._index()
            raise _disk_error(self.path, exc) from exc
        offset = self._size
        for k, line in new:
            self._at[k] = (offset, len(line))
            offset += len(line)
        self._size = offset
        return len(new)

    def _rewrite(self, order: list[tuple[int, int]]) -> None:
        """Write the lines at ``order`` (offset, length) as the new file, atomically; re-index."""
        if not self.path.exists():
            self.path.touch()  # finalize of a stage with no rows still leaves its (empty) file
        with atomic_path(self.path) as tmp, open(self.path, "rb") as src, open(tmp, "wb") as out:
            for offset, length in order:
                src.seek(offset)
                out.write(src.read(length))
        self._index()

    def discard(self, keys: set[str]) -> int:
        """Drop the rows with these keys (rewriting the file atomically); returns how many."""
        gone = [k for k in keys if k in self._at]
        if gone:
            drop = set(gone)
            self._rewrite([w for k, w in self._at.items() if k not in drop])
        return len(gone)

    def finalize(self, sort_key: Callable[[dict], Any] | None = None) -> Rows:
        """Rewrite the file sorted (by key unless ``sort_key``), atomically; return the rows.

        Only the sort keys are held (one small tuple per row), not the rows.
        """
        if sort_key is None:
            order = [w for _, w in sorted(self._at.items(), key=lambda kw: kw[0])]
        else:
            firsts = set(self._at.values())
            keyed = [(sort_key(json.loads(line)), (off, n)) for off, n, line in _lines(self.path) if (off, n) in firsts]
            order = [w for _, w in sorted(keyed, key=lambda kw: kw[0])]
        self._rewrite(order)
        return self.rows()


class Rows(Sequence):
    """A read-only, lazily read list of JSONL rows: iterating reads the file line by line.

    Works wherever a list of rows was used (``len``, indexing, slicing, iteration); ``list(rows)``
    brings them all into memory, which is what this view exists to avoid at the card's scale.
    """

    def __init__(self, path: Path, where: list[tuple[int, int]]):
        self._path, self._where = path, where

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        offset, length = self._where[i]
        with open(self._path, "rb") as fh:
            fh.seek(offset)
            return json.loads(fh.read(length))

    def __iter__(self) -> Iterator[dict]:
        if not self._where:
            return
        with open(self._path, "rb") as fh:
            pos = 0
            for offset, length in self._where:
                if offset != pos:
                    fh.seek(offset)
                yield json.loads(fh.read(length))
                pos = offset + length

    def __eq__(self, other: object) -> bool:
        return list(self) == (list(other) if isinstance(other, (list, tuple, Rows)) else other)

    def __repr__(self) -> str:
        return f"Rows({str(self._path)!r}, {len(self)} rows)"


class Run:
    """A run folder: ``Run(run_dir).stage_dir("01_segment")`` and friends."""

    def __init__(self, run_dir: str | os.PathLike):
        self.root = Path(run_dir).expanduser().resolve()

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    def stage_dir(self, stage: str, create: bool = True) -> Path:
        path = self.root / stage
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def rel(self, path: str | os.PathLike) -> str:
        """``path`` relative to the run folder, with forward slashes (how rows store paths)."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    # -- stage records ---------------------------------------------------------------------
    def stage_record(self, stage: str) -> dict | None:
        return read_json(self.root / stage / layout.STAGE_JSON)

    def is_done(self, stage: str, params: dict | None = None) -> bool:
        """True when ``stage`` finished, and (if given) with the same parameters."""
        record = self.stage_record(stage)
        if not record or record.get("status") != "done":
            return False
        return params is None or record.get("params") == params

    def mark_done(self, stage: str, params: dict | None = None, **summary: Any) -> dict:
        from . import __version__

        record = {
            "stage": stage,
            "status": "done",
            "package_version": __version__,
            "params": params or {},
            "summary": summary,
        }
        remove_stale_temp_files(self.stage_dir(stage))
        atomic_write_json(self.stage_dir(stage) / layout.STAGE_JSON, record)
        return record

    def clear_done(self, stage: str) -> None:
        (self.root / stage / layout.STAGE_JSON).unlink(missing_ok=True)

    # -- run.json ---------------------------------------------------------------------------
    def read_run_json(self) -> dict | None:
        return read_json(self.root / layout.RUN_JSON)

    def check_compatible(self) -> None:
        """Refuse a run folder written by an incompatible layout version."""
        info = self.read_run_json()
        if info is None:
            return
        fmt = info.get("run_format")
        if fmt != RUN_FORMAT:
            raise RunFolderError(
                f"{self.root}: this run folder was written with run format {fmt!r}, this version of "
                f"stablebeat_utils writes format {RUN_FORMAT}. Use a new run_dir, or the version that "
                "made it."
            )


def iter_rows(paths: Iterable[str | os.PathLike]) -> Iterator[dict]:
    for p in paths:
        yield from iter_jsonl(p)


# --------------------------------------------------------------------------------------------
# run.json: every stage's parameters and the versions they ran with
# --------------------------------------------------------------------------------------------

VERSIONED_PACKAGES = (
    "torch",
    "torchaudio",
    "stable-audio-tools",
    "transformers",
    "essentia-tensorflow",
    "librosa",
    "numpy",
    "pytorch-lightning",
    "papermill",
)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "stablebeat_utils": __version__}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def record_params(run_dir: str | os.PathLike, stage: str, values: dict) -> Path:
    """Merge ``stage``'s parameters into ``RUN_DIR/run.json`` (no secrets ever reach it: the schema
    refuses secret-like names)."""
    run = Run(run_dir)
    run.check_compatible()
    info = run.read_run_json() or {"run_format": RUN_FORMAT, "params": {}}
    info["run_format"] = RUN_FORMAT
    info["versions"] = versions()
    info.setdefault("params", {})[stage] = values
    run.root.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(run.root / layout.RUN_JSON, info)
