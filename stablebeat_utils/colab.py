"""Colab support: GPU check with a STOP message, Drive only when asked, installs only what Colab lacks.

Used by ``colab/launcher.ipynb`` (and by any numbered notebook opened on its own in Colab).
Nothing here runs at import: no Drive mount, no install, no token read.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

# params is imported where it is used: the set-up cell imports this module on a bare Python (only
# PyYAML) to run install_missing's Python check, and params -> settings -> audio needs numpy

REPO_ROOT = Path(__file__).resolve().parent.parent
COLAB_REQUIREMENTS = REPO_ROOT / "colab" / "requirements-colab.txt"
COURSE_FILE = Path(__file__).resolve().parent / "data" / "course.yaml"
SETUP_MARKER = "# Colab set-up"


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
    return {
        "cuda": True,
        "name": props.name,
        "memory_gb": round(props.total_memory / 2**30, 1),
        "bf16": bool(torch.cuda.is_bf16_supported()),
        "count": torch.cuda.device_count(),
    }


def profile_requirements(profile: str) -> dict:
    """The ``requires:`` block of a profile (e.g. ``{gpu_memory_gb: 38}``); empty for demo."""
    from . import params

    return dict(params.load_profile(profile).get("requires") or {})


def check_gpu(profile: str, report: dict | None = None) -> dict:
    """Raise :class:`Stop` naming what is needed when this runtime cannot run ``profile``."""
    need = profile_requirements(profile)
    report = report if report is not None else gpu_report()
    want_gb = float(need.get("gpu_memory_gb") or 0)
    if want_gb <= 0:
        return report
    if not report.get("cuda"):
        raise Stop(
            f"STOP: profile {profile!r} needs a GPU with at least {want_gb:g} GB of memory and this "
            "runtime has none. In Colab: Runtime → Change runtime type → a GPU "
            f"({need.get('gpu_hint', 'A100')}), then run again."
        )
    if report["memory_gb"] + 0.5 < want_gb:
        alt = need.get("smaller_gpu_profile")
        raise Stop(
            f"STOP: profile {profile!r} needs at least {want_gb:g} GB of GPU memory; this runtime's "
            f"{report['name']} has {report['memory_gb']:g} GB. Choose a bigger GPU "
            f"({need.get('gpu_hint', 'A100')})" + (f", or the profile {alt!r}." if alt else ".")
        )
    return report


def mount_drive(mount_point: str) -> Path:
    """Mount Google Drive (asks the user in Colab); only called when the learner asks for Drive."""
    if not in_colab():
        raise Stop("STOP: Google Drive can only be mounted inside Colab; set use_drive = False here.")
    from google.colab import drive  # type: ignore[import-not-found]

    drive.mount(mount_point)
    return Path(mount_point) / "MyDrive"


#: Python versions the course is tested on (CI: 3.11; the Colab legs: 3.12 and 3.13). Older ones stop in the
#: set-up cell; newer ones get a warning (Colab moves first; see README "Supported stack").
PYTHON_REQUIRES = ">=3.11"
PYTHON_TESTED = ("3.11", "3.12", "3.13")
#: kept as the runtime ships them (Colab's CUDA build): never installed or upgraded by the course;
#: below its bound, a STOP says what to do.
KEEP = ("torch", "torchaudio")
#: pip's ``--no-deps --ignore-requires-python`` (see requirements-engine.txt: it pins torch==2.7.1
#: and declares Python <3.11)
NO_DEPS = ("stable-audio-tools",)


def _dist_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (what pip sees), or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pip(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def read_requirements(requirements: Path = COLAB_REQUIREMENTS, extras: tuple[str, ...] | set[str] = ()) -> list:
    """The requirement lines that apply here (``; extra == "x"`` lines only when ``x`` is asked),
    as :class:`packaging.requirements.Requirement` objects."""
    from packaging.requirements import Requirement

    reqs = []
    for line in Path(requirements).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.marker is not None:
            wanted = any(req.marker.evaluate({"extra": e}) for e in extras)
            if not wanted:
                continue
            req.marker = None
        reqs.append(req)
    return reqs


def plan_install(
    requirements: Path = COLAB_REQUIREMENTS,
    extras: tuple[str, ...] | set[str] = (),
    version_of=_dist_version,
    python: str | None = None,
) -> tuple[list[tuple], list[str], list[str]]:
    """Decide, without installing: ``(todo, stops, warnings)``.

    ``todo``: ``(requirement, found version or None)`` for each package missing or outside its
    bounds (pip then installs, upgrades or downgrades it). ``stops``: one line per bound this
    runtime cannot meet by itself (Python; Colab's torch/torchaudio, which are never replaced),
    each naming the package, the version found and the version needed. ``warnings``: newer than
    tested (still run).
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    python = python or ".".join(map(str, sys.version_info[:3]))
    todo, stops, warnings = [], [], []
    if Version(python) not in SpecifierSet(PYTHON_REQUIRES):
        stops.append(f"Python {python} found, Python {PYTHON_REQUIRES} needed")
    elif ".".join(python.split(".")[:2]) not in PYTHON_TESTED:
        warnings.append(
            f"Python {python} is not among the tested versions ({', '.join(PYTHON_TESTED)}); "
            "if a stage fails, pick a Colab runtime version with Python 3.12 or 3.13"
        )
    for req in read_requirements(requirements, extras):
        found = version_of(req.name)
        ok = found is not None and req.specifier.contains(Version(found), prereleases=True)
        if ok:
            continue
        if req.name in KEEP:
            stops.append(
                f"{req.name} {found + ' found' if found else 'not installed'}, {req.name}{req.specifier} needed"
            )
        else:
            todo.append((req, found))
    return todo, stops, warnings


def missing_requirements(
    requirements: Path = COLAB_REQUIREMENTS, extras: tuple[str, ...] | set[str] = (), version_of=_dist_version
) -> list[str]:
    """Requirement lines missing here or outside their bounds (Colab's torch is never among them)."""
    return [str(req) for req, _ in plan_install(requirements, extras, version_of)[0]]


def install_missing(
    requirements: Path = COLAB_REQUIREMENTS,
    extras: tuple[str, ...] | set[str] = (),
    version_of=_dist_version,
    pip=_pip,
    python: str | None = None,
    verbose: bool = True,
) -> list[str]:
    """Make this runtime meet ``colab/requirements-colab.txt``; return what changed.

    A package that is missing is installed; one that is too old (or too new) is upgraded (or
    downgraded) to its bounds; one within its bounds is left alone. Colab's torch/torchaudio are
    never touched: below their minimum (or on a Python outside the bounds) a :class:`Stop` names the
    package, the version found and the version needed, before anything is installed.
    ``extras`` adds the lines marked ``; extra == "<name>"`` (e.g. ``quantization``: bitsandbytes).
    """
    todo, stops, warnings = plan_install(requirements, extras, version_of, python)
    if stops:
        raise Stop(
            "STOP: this runtime cannot run the course: " + "; ".join(stops) + ". In Colab: Runtime → "
            f"Change runtime type → the latest runtime version (tested: Python {', '.join(PYTHON_TESTED)}, "
            "torch 2.9.0–2.13). The course never replaces the runtime's own torch; elsewhere, use a "
            "Python and a torch/torchaudio within these bounds. Nothing was installed."
        )
    for w in warnings:
        print("note:", w)
    engine = [str(r) for r, _ in todo if r.name in NO_DEPS]
    rest = [str(r) for r, _ in todo if r.name not in NO_DEPS]
    if rest:
        pip(rest)
    if engine:
        pip(["--no-deps", "--ignore-requires-python", *engine])
    changed = []
    for req, found in todo:
        now = version_of(req.name)
        changed.append(f"{req.name} {found or '(missing)'} → {now or '?'}")
    if verbose:
        print("installed/upgraded: " + ", ".join(changed) if changed else "every requirement already met")
    from . import compat

    compat.apply()
    return changed


def profile_extras(profile: str) -> set[str]:
    """The requirement extras a profile needs: ``quantization`` when a stage loads a model in 4/8 bit."""
    extras: set[str] = set()

    def walk(x) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                if k == "quantization" and v:
                    extras.add("quantization")
                walk(v)

    from . import params

    walk(params.every_stage(profile))  # what it resolves to: a profile lists only what differs from the defaults
    return extras


def install_for_profile(profile: str, **kw) -> list[str]:
    """What ``profile`` needs beyond the base set-up (bitsandbytes for a 4-bit LLM); nothing for
    most profiles, so it installs nothing (and checks nothing) there."""
    extras = profile_extras(profile)
    return install_missing(extras=extras, **kw) if extras else []


def gated_models(profile: str) -> list[str]:
    """The gated hub models (``models.GATED_PREFIXES``) that ``profile`` names, in any stage."""
    from . import models

    found: list[str] = []

    def walk(x) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, str) and x.startswith(models.GATED_PREFIXES) and x not in found:
            found.append(x)

    from . import params

    walk(params.every_stage(profile))  # the defaults name the card's gated models; a profile may leave them
    return found


def check_token(profile: str, token: str | None = None) -> None:
    """Stop before any work when ``profile`` downloads gated weights and there is no token."""
    from . import models

    gated = gated_models(profile)
    if not gated or (token if token is not None else models.hub_token()):
        return
    raise Stop(
        f"STOP: profile {profile!r} downloads gated models ({', '.join(gated)}) and needs a Hugging "
        "Face token: accept each model's terms on its hub page, create a read token, add it in Colab's "
        "secrets (🔑 in the left bar) as HF_TOKEN with notebook access, then run again."
    )


def locations(
    *,
    use_drive: bool,
    drive_mount: str,
    drive_folder: str,
    local_folder: str,
    input_subfolder: str,
    run_name: str,
    mount=None,
) -> tuple[str, str]:
    """The launcher's ``(input_dir, run_dir)``: on Drive when asked (mounted then), else under
    ``local_folder``. ``input_subfolder = "demo"`` picks the bundled demo beats. A missing beats folder
    is created and the learner is told to fill it (a :class:`Stop`), before any stage runs."""
    root = (mount or mount_drive)(drive_mount) / drive_folder if use_drive else Path(local_folder)
    run_dir = root / "runs" / run_name
    if input_subfolder == "demo":
        return "demo", str(run_dir)
    input_dir = root / input_subfolder
    if not input_dir.is_dir() or not any(p.is_file() for p in input_dir.rglob("*")):
        input_dir.mkdir(parents=True, exist_ok=True)
        raise Stop(
            f"STOP: no beats in {input_dir} yet. Put your tracks there (wav, mp3, flac, ogg, m4a, aiff; "
            'sub-folders are fine), or set input_subfolder = "demo" for the bundled beats, then run again.'
        )
    return str(input_dir), str(run_dir)


# --- where the course lives: Open-in-Colab badges and the notebooks' set-up cell -----------------


def course() -> dict:
    """``{'repo': 'owner/name', 'branch': 'main'}`` from ``data/course.yaml``."""
    return yaml.safe_load(COURSE_FILE.read_text())


def colab_url(notebook: str, info: dict | None = None) -> str:
    """The Open-in-Colab address of ``notebook`` (a path in the repository, e.g. ``notebooks/01_segment.ipynb``)."""
    info = info or course()
    return f"https://colab.research.google.com/github/{info['repo']}/blob/{info['branch']}/{notebook}"


def badge(notebook: str, info: dict | None = None) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook, info)})"


def setup_cell(info: dict | None = None) -> str:
    """The first code cell of every numbered notebook: on Colab, opened on its own, it fetches the
    course and installs only what Colab lacks; wherever the package is importable it does nothing.
    Written into the notebooks by :func:`write_links` (a test checks they carry this exact text)."""
    info = info or course()
    url = f"https://github.com/{info['repo']}"
    return f"""{SETUP_MARKER}: opened on its own in Colab, this fetches the course and installs only what
# Colab lacks (its own torch is kept). Wherever stablebeat_utils is installed (your venv, the
# launcher, CI) it does nothing. A fork: set STABLEBEAT_COURSE_REPO, or see data/course.yaml.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("stablebeat_utils") is None:
    course = os.environ.get("STABLEBEAT_COURSE_REPO", "{url}")
    if not os.path.isdir("stablebeat-course") and subprocess.run(
            ["git", "clone", "-q", "--depth", "1", "--branch", "{info["branch"]}", course, "stablebeat-course"],
            env={{**os.environ, "GIT_TERMINAL_PROMPT": "0"}}).returncode:
        raise RuntimeError(f"STOP: could not fetch the course from {{course}}; set STABLEBEAT_COURSE_REPO "
                           "to the repository this notebook came from, then run this cell again.")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--ignore-requires-python", "-e",
                    "stablebeat-course"], check=True)  # the Python check is install_missing's, with its message
    sys.path.insert(0, os.path.abspath("stablebeat-course"))  # this kernel; new ones see the install
    from stablebeat_utils import colab
    colab.install_missing()"""


_BADGE_RE = re.compile(
    r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
    r"\(https://colab\.research\.google\.com/[^)]*\)"
)


def _notebook_paths() -> list[Path]:
    return sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def write_links(repo: str | None = None, branch: str | None = None) -> list[Path]:
    """Point every badge and the set-up cells (launcher and notebooks) at ``repo``
    (``owner/name``) and ``branch``; records them in ``data/course.yaml``. Returns the files changed."""
    info = course()
    if repo:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+", repo):
            raise ValueError(f"--repo must look like owner/name, not {repo!r}")
        info["repo"] = repo
    if branch:
        info["branch"] = branch
    changed = []
    text = COURSE_FILE.read_text()
    new = re.sub(r"(?m)^repo: .*$", f"repo: {info['repo']}", text)
    new = re.sub(r"(?m)^branch: .*$", f"branch: {info['branch']}", new)
    if new != text:
        COURSE_FILE.write_text(new)
        changed.append(COURSE_FILE)
    readme = REPO_ROOT / "README.md"
    launcher = REPO_ROOT / "colab" / "launcher.ipynb"
    for path in [readme, launcher, *_notebook_paths()]:
        text = path.read_text()
        if path.suffix == ".ipynb":
            nb = json.loads(text)
            rel = path.relative_to(REPO_ROOT).as_posix()
            for cell in nb["cells"]:
                src = "".join(cell["source"])
                if cell["cell_type"] == "markdown":
                    src = _BADGE_RE.sub(badge(rel, info), src)
                elif src.startswith(SETUP_MARKER):
                    src = setup_cell(info)
                cell["source"] = src.splitlines(keepends=True)
            new = json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"  # as nbformat writes
        else:
            new = _BADGE_RE.sub(badge("colab/launcher.ipynb", info), text)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


# --- a numbered notebook opened on its own in Colab ---------------------------------------------


def drive_mount_points(values: dict) -> list[Path]:
    """Mount points of Google Drive that the parameters point into, derived from the paths
    themselves (``<mount>/MyDrive/...``): nothing about Drive is hard-coded."""
    points = []
    for value in values.values():
        if isinstance(value, str) and "/MyDrive" in value:
            mount = Path(value.split("/MyDrive", 1)[0] or "/")
            if mount not in points:
                points.append(mount)
    return points


def prepare(values: dict, *, colab: bool | None = None, report: dict | None = None, mount=None) -> None:
    """In Colab, before a notebook touches its paths: stop early if the GPU cannot run the profile,
    install what the profile needs beyond the set-up cell (:func:`install_for_profile`), and mount
    Drive when (and only when) a parameter points into it. Does nothing elsewhere."""
    if not (in_colab() if colab is None else colab):
        return
    check_gpu(values.get("profile", "demo"), report)
    install_for_profile(values.get("profile", "demo"))  # bitsandbytes for a 4-bit LLM; else nothing
    for point in drive_mount_points(values):
        if not (point / "MyDrive").is_dir():
            (mount or mount_drive)(str(point))
