"""The one way to run everything: notebooks executed by papermill into ``RUN_DIR/notebooks/``.

Used by ``python -m stablebeat_utils run`` and by colab/launcher.ipynb; no notebook of its own.
Every check (stage names, profile, parameter names and types, input folder) happens before the
first notebook starts.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import STAGES, params
from .params import ParameterError
from .runs import Run, record_params

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNNER_MARKER = "_resolved_by_runner"  # tells lesson.settle the values are already resolved


class _QuietMarker(logging.Filter):
    """papermill warns about every parameter its notebook does not declare: not about our marker."""

    def filter(self, record: logging.LogRecord) -> bool:
        return RUNNER_MARKER not in record.getMessage()


def notebooks_dir() -> Path:
    """The course's notebooks (``$STABLEBEAT_NOTEBOOKS`` or ``<repo>/notebooks``)."""
    return Path(os.environ.get("STABLEBEAT_NOTEBOOKS") or REPO_ROOT / "notebooks")


def relink(notebook: Path, source_dir: Path) -> None:
    """Markdown links relative to the course's notebooks (``../docs/glossary.md``) made relative to where
    the executed copy lies (``RUN_DIR/notebooks``), so they resolve there too."""
    import json
    import re

    text = Path(notebook).read_text(encoding="utf-8")
    nb = json.loads(text)
    up = Path(os.path.relpath(Path(source_dir).resolve().parent, Path(notebook).resolve().parent)).as_posix()
    pattern = re.compile(r"\]\(\.\./(?!\.\./)")
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            src = "".join(cell["source"])
            cell["source"] = pattern.sub(f"]({up}/", src).splitlines(keepends=True)
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new != text:
        Path(notebook).write_text(new, encoding="utf-8")


def available_stages() -> list[str]:
    nb = notebooks_dir()
    return [s for s in STAGES if (nb / f"{s}.ipynb").is_file()]


def plan(
    stages: list[str] | None = None,
    profile: str | None = None,
    files: list[str | os.PathLike] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, dict]:
    """Validated parameters for each stage to run, in order. Raises ParameterError early."""
    existing = available_stages()
    if stages:
        wanted = [params.canonical_stage(s) for s in stages]
        missing = [s for s in wanted if s not in existing]
        if missing:
            raise ParameterError(
                f"no notebook for stage(s) {', '.join(missing)} in {notebooks_dir()} (not written yet?)"
            )
        wanted = [s for s in STAGES if s in wanted]
    else:
        wanted = existing
    if not wanted:
        raise ParameterError(f"no notebooks found in {notebooks_dir()}")

    file_layers = []
    for f in files or []:
        path = Path(f)
        if not path.is_file():
            raise ParameterError(f"parameter file {path} not found")
        if path.suffix not in (".yaml", ".yml"):
            raise ParameterError(f"{path}: parameter files are YAML (.yaml or .yml)")
        file_layers.append(params.load_profile(str(path)))
    overrides = dict(overrides or {})
    profile = (
        overrides.pop("profile", None)
        or next((layer["profile"] for layer in reversed(file_layers) if layer.get("profile")), None)
        or profile
        or "demo"
    )
    params.load_profile(profile)  # unknown profile → error now

    for name in overrides:
        params.refuse_secret(name)
    known = set().union(*(params.schema(s) for s in wanted))
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) {', '.join(unknown)} for stage(s) {', '.join(wanted)}; "
            "see `python -m stablebeat_utils stages`"
        )
    resolved = {}
    for stage in wanted:
        values = params.resolve(stage, profile=profile, files=file_layers, overrides=overrides)
        values["profile"] = profile
        if "run_dir" in values:
            values["run_dir"] = str(Path(values["run_dir"]).expanduser().resolve())
        resolved[stage] = values
    _check_inputs(resolved)
    return resolved


def _check_inputs(resolved: dict[str, dict]) -> None:
    for stage, values in resolved.items():
        input_dir = values.get("input_dir")
        if input_dir is None or input_dir == "demo":
            continue
        path = Path(input_dir).expanduser()
        if not path.is_dir():
            raise ParameterError(f"{stage}: input_dir {str(path)!r} is not a folder")
        if not any(p.is_file() for p in path.rglob("*")):
            raise ParameterError(f"{stage}: input_dir {str(path)!r} contains no files")
        values["input_dir"] = str(path.resolve())
    run_dirs = {v["run_dir"] for v in resolved.values() if "run_dir" in v}
    for rd in run_dirs:
        Run(rd).check_compatible()


def run(
    stages: list[str] | None = None,
    profile: str | None = None,
    files: list[str | os.PathLike] | None = None,
    overrides: dict[str, Any] | None = None,
    kernel_name: str = "python3",
    log_output: bool = False,
) -> list[Path]:
    """Execute the notebooks of ``stages`` (all that exist by default) in order."""
    import papermill as pm

    pm_log = logging.getLogger("papermill")
    if not any(isinstance(f, _QuietMarker) for f in pm_log.filters):
        pm_log.addFilter(_QuietMarker())
    resolved = plan(stages, profile, files, overrides)
    outputs = []
    for stage, values in resolved.items():
        run_dir = Path(values["run_dir"])
        record_params(run_dir, stage, values)
        out = run_dir / "notebooks" / f"{stage}.ipynb"
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        print(f"▶ {stage}  →  {out}", flush=True)
        try:
            pm.execute_notebook(
                str(notebooks_dir() / f"{stage}.ipynb"),
                str(out),
                parameters={**values, RUNNER_MARKER: True},
                kernel_name=kernel_name,
                cwd=str(run_dir),
                log_output=log_output,
                progress_bar=sys.stderr.isatty(),
                report_mode=False,
            )
        except pm.PapermillExecutionError as exc:
            relink(out, notebooks_dir())
            raise StageFailed(stage, out, exc) from None
        relink(out, notebooks_dir())
        print(f"✔ {stage}  {time.monotonic() - started:.1f} s", flush=True)
        outputs.append(out)
    return outputs


class StageFailed(RuntimeError):
    def __init__(self, stage: str, notebook: Path, exc: Exception):
        self.stage, self.notebook = stage, notebook
        ename = getattr(exc, "ename", type(exc).__name__)
        evalue = getattr(exc, "evalue", str(exc))
        super().__init__(
            f"stage {stage} failed: {ename}: {evalue}\n  the executed notebook, with the traceback, is {notebook}"
        )
