import pytest

from stablebeat_utils import colab


def test_demo_profile_needs_no_gpu():
    assert colab.check_gpu("demo", {"cuda": False, "memory_gb": 0.0}) == {"cuda": False, "memory_gb": 0.0}


def test_stop_messages_name_what_is_needed(tmp_path):
    prof = tmp_path / "big.yaml"
    prof.write_text("requires:\n  gpu_memory_gb: 38\n  gpu_hint: A100 40 GB\n  smaller_gpu_profile: colab_lora\n")
    with pytest.raises(colab.Stop, match="needs a GPU with at least 38 GB.*has none.*A100 40 GB"):
        colab.check_gpu(str(prof), {"cuda": False, "memory_gb": 0.0})
    with pytest.raises(colab.Stop, match="Tesla T4 has 15 GB.*'colab_lora'"):
        colab.check_gpu(str(prof), {"cuda": True, "name": "Tesla T4", "memory_gb": 15.0})
    ok = {"cuda": True, "name": "A100", "memory_gb": 40.0}
    assert colab.check_gpu(str(prof), ok) is ok


def test_only_missing_requirements_are_installed(tmp_path):
    req = tmp_path / "req.txt"
    req.write_text("# comment\nnumpy>=1\nPyYAML>=5\ndefinitely-not-installed-pkg==1.0\n")
    assert colab.missing_requirements(req) == ["definitely-not-installed-pkg==1.0"]


# --- install_missing enforces the bounds: the real decision code, fake versions and a fake pip ----


class FakeRuntime:
    """Installed versions and a pip that 'installs' by recording and bumping them."""

    def __init__(self, **versions):
        self.versions = {k.replace("_", "-"): v for k, v in versions.items()}
        self.calls = []

    def version_of(self, name):
        return self.versions.get(name)

    def pip(self, args):
        self.calls.append(list(args))
        from packaging.requirements import Requirement

        for a in args:
            if not a.startswith("-"):
                r = Requirement(a)
                self.versions[r.name] = "9.9" if r.name != "transformers" else "5.24.0"


COLAB_2026_01 = dict(torch="2.9.0+cu126", torchaudio="2.9.0+cu126", transformers="4.57.6")


def _all_met(**over):
    """Every requirement of the real file met at its lower bound (or exact pin)."""
    v = {}
    for req in colab.read_requirements(extras={"quantization"}):
        spec = sorted(req.specifier, key=lambda s: s.operator)
        v[req.name] = next((s.version for s in spec if s.operator in ("==", ">=")), "1")
    v.update({k.replace("_", "-"): x for k, x in over.items()})
    return v


def test_install_missing_upgrades_a_package_that_is_too_old_and_reports_it():
    rt = FakeRuntime(**_all_met(**COLAB_2026_01))
    rt.versions.pop("bitsandbytes")
    changed = colab.install_missing(version_of=rt.version_of, pip=rt.pip, python="3.12.12", verbose=False)
    assert rt.calls == [["transformers<6,>=5.0"]] or rt.calls == [["transformers>=5.0,<6"]], rt.calls
    assert changed == ["transformers 4.57.6 → 5.24.0"]
    # met now: a second run changes nothing, and never touches torch
    assert colab.install_missing(version_of=rt.version_of, pip=rt.pip, python="3.12.12", verbose=False) == []
    assert all("torch" not in a for call in rt.calls for a in call)


def test_install_missing_installs_what_is_missing_engine_without_deps():
    rt = FakeRuntime(**_all_met())
    for gone in ("stable-audio-tools", "auraloss", "bitsandbytes"):
        rt.versions.pop(gone)
    changed = colab.install_missing(version_of=rt.version_of, pip=rt.pip, python="3.12.1", verbose=False)
    assert rt.calls == [["auraloss>=0.4.0"], ["--no-deps", "--ignore-requires-python", "stable-audio-tools==0.0.20"]]
    assert changed == ["stable-audio-tools (missing) → 9.9", "auraloss (missing) → 9.9"]


def test_colab_torch_is_never_touched_and_too_old_a_torch_stops():
    rt = FakeRuntime(**_all_met(torch="2.13.0+cu130", torchaudio="2.13.0+cu130"))
    assert colab.install_missing(version_of=rt.version_of, pip=rt.pip, python="3.12.1", verbose=False) == []
    assert rt.calls == []  # newer than the minimum: kept
    rt = FakeRuntime(**_all_met(torch="2.8.0+cu126", transformers="4.57.6"))
    with pytest.raises(colab.Stop, match=r"torch 2\.8\.0\+cu126 found, torch>=2\.9\.0 needed.*runtime version"):
        colab.install_missing(version_of=rt.version_of, pip=rt.pip, python="3.12.12")
    assert rt.calls == []  # nothing installed before the STOP


def test_a_python_below_the_bound_stops_with_one_message():
    rt = FakeRuntime(**_all_met())
    with pytest.raises(colab.Stop) as err:
        colab.install_missing(version_of=rt.version_of, pip=rt.pip, python="3.10.13")
    msg = str(err.value)
    assert msg.count("STOP") == 1 and "Python 3.10.13 found, Python >=3.11 needed" in msg
    assert rt.calls == []


def test_python_bound_is_the_package_s():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["requires-python"] == colab.PYTHON_REQUIRES


def test_bitsandbytes_only_for_a_profile_that_quantizes():
    assert colab.profile_extras("colab_lora") == {"quantization"}
    assert colab.profile_extras("demo") == colab.profile_extras("colab_a100") == set()
    rt = FakeRuntime(**_all_met())
    rt.versions.pop("bitsandbytes")
    assert colab.install_for_profile("demo", version_of=rt.version_of, pip=rt.pip) == []
    assert rt.calls == []  # nothing checked or installed for demo
    assert colab.install_for_profile(
        "colab_lora", version_of=rt.version_of, pip=rt.pip, python="3.12.1", verbose=False
    ) == ["bitsandbytes (missing) → 9.9"]
    assert "bitsandbytes" not in {r.name for r in colab.read_requirements()}


def test_a_lesson_opened_alone_in_colab_installs_what_its_profile_needs(monkeypatch):
    asked = []
    monkeypatch.setattr(colab, "install_missing", lambda **kw: asked.append(kw.get("extras")) or [])
    gpu = {"cuda": True, "name": "L4", "memory_gb": 22.0}
    colab.prepare({"profile": "colab_lora", "run_dir": "/tmp/x"}, colab=True, report=gpu, mount=None)
    colab.prepare({"profile": "demo", "run_dir": "/tmp/x"}, colab=True, report=gpu, mount=None)
    colab.prepare({"profile": "colab_lora", "run_dir": "/tmp/x"}, colab=False, report=gpu, mount=None)
    assert asked == [{"quantization"}]  # colab_lora in Colab only; nothing for demo or outside Colab


def test_drive_is_never_mounted_outside_colab(monkeypatch, tmp_path):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    with pytest.raises(colab.Stop, match="only be mounted inside Colab"):
        colab.mount_drive(str(tmp_path))


# --- Open-in-Colab links and the numbered notebooks' set-up cell ----------------------------------

import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_every_notebook_opens_on_its_own_in_colab():
    assert len(NOTEBOOKS) == 7
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        rel = path.relative_to(ROOT).as_posix()
        assert colab.badge(rel) in nb.cells[0].source, f"{rel}: Open-in-Colab badge missing or stale"
        assert nb.cells[1].cell_type == "code" and nb.cells[1].source == colab.setup_cell(), (
            f"{rel}: cell 2 must be the Colab set-up cell; run `python -m stablebeat_utils colab-links`"
        )
        assert "parameters" in nb.cells[2].metadata.get("tags", []), rel


def test_readme_and_launcher_point_at_the_course_repo():
    assert colab.badge("colab/launcher.ipynb") in (ROOT / "README.md").read_text()
    launcher = nbformat.read(ROOT / "colab" / "launcher.ipynb", as_version=4)
    assert colab.badge("colab/launcher.ipynb") in launcher.cells[0].source
    assert launcher.cells[1].source == colab.setup_cell()  # it sets up exactly as the lessons do
    assert "parameters" in launcher.cells[2].metadata.get("tags", [])


def test_launcher_runs_a_profile_and_resumes(tmp_path):
    """The launcher end to end outside Colab (the set-up cell is a no-op where the package is
    installed): demo profile, local folder, stage 01 only; run twice, the second resumes."""
    import papermill as pm

    args = dict(
        profile="demo",
        use_drive=False,
        local_folder=str(tmp_path / "stablebeat"),
        input_subfolder="demo",
        run_name="t",
        stages="01",
        publish_repo_id="",
    )
    run_dir = tmp_path / "stablebeat" / "runs" / "t"
    for attempt in range(2):
        pm.execute_notebook(
            str(ROOT / "colab" / "launcher.ipynb"),
            str(tmp_path / f"launcher{attempt}.ipynb"),
            parameters=args,
            cwd=str(tmp_path),
            progress_bar=False,
        )
        rows = (run_dir / "01_segment" / "segments.jsonl").read_text()
        if attempt == 0:
            first = rows
    assert rows == first and '"status": "ok"' in rows
    assert (run_dir / "notebooks" / "01_segment.ipynb").exists()
    assert not (run_dir / "02_tag").exists()  # only the stages asked for
    # clip_dir (latents only on Drive): the launcher passes it on; 01 moves the clips there, same rows
    pm.execute_notebook(
        str(ROOT / "colab" / "launcher.ipynb"),
        str(tmp_path / "launcher2.ipynb"),
        parameters=dict(args, clip_dir=str(tmp_path / "content" / "stablebeat_clips")),
        cwd=str(tmp_path),
        progress_bar=False,
    )
    assert (run_dir / "01_segment" / "segments.jsonl").read_text() == first
    moved = list((tmp_path / "content" / "stablebeat_clips").glob("t-*/*.wav"))
    assert moved and not (run_dir / "01_segment" / "clips").exists()


def test_colab_links_rewrites_every_link_and_nothing_else(tmp_path, monkeypatch):
    # a copy of the repository's files that carry links, so the real ones stay untouched
    root = tmp_path / "repo"
    for rel in [
        "README.md",
        "colab/launcher.ipynb",
        "stablebeat_utils/data/course.yaml",
        *[p.relative_to(ROOT).as_posix() for p in NOTEBOOKS],
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((ROOT / rel).read_bytes())
    monkeypatch.setattr(colab, "REPO_ROOT", root)
    monkeypatch.setattr(colab, "COURSE_FILE", root / "stablebeat_utils/data/course.yaml")
    assert colab.write_links() == []  # the committed files already agree: nothing to rewrite
    with pytest.raises(ValueError, match="owner/name"):
        colab.write_links("not a repo")
    changed = colab.write_links("beatmaker/stablebeat-course", "v1")
    assert len(changed) == 1 + 1 + 1 + len(NOTEBOOKS)  # course.yaml, README, launcher, lessons
    assert colab.course() == {"repo": "beatmaker/stablebeat-course", "branch": "v1"}
    nb = nbformat.read(root / "notebooks/03_tempo_key.ipynb", as_version=4)
    assert (
        "https://colab.research.google.com/github/beatmaker/stablebeat-course/blob/v1/notebooks/03_tempo_key.ipynb"
    ) in nb.cells[0].source
    assert '"https://github.com/beatmaker/stablebeat-course"' in nb.cells[1].source
    assert '"--branch", "v1"' in nb.cells[1].source
    assert "OWNER" not in (root / "colab/launcher.ipynb").read_text()
    # only the links changed: every other line of every notebook is as it was
    before = nbformat.read(ROOT / "notebooks/03_tempo_key.ipynb", as_version=4)
    assert [c.source for c in nb.cells[2:]] == [c.source for c in before.cells[2:]]


def test_setup_cell_does_nothing_where_the_package_is_installed(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", colab.setup_cell() + "\nprint('ok')"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert list(tmp_path.iterdir()) == []  # no clone, no install


def _git(*args, cwd):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True
    )


def test_setup_cell_on_a_fresh_colab_runtime_fetches_and_installs(tmp_path, monkeypatch):
    """The package is not importable (a fresh runtime): the cell clones the course and installs
    only what is missing. A local git repository stands in for GitHub (no network here)."""
    import importlib.util

    origin = tmp_path / "origin"
    (origin / "stablebeat_utils").mkdir(parents=True)
    (origin / "stablebeat_utils" / "marker.txt").write_text("course")
    _git("init", "-q", "-b", "main", cwd=origin)
    _git("add", ".", cwd=origin)
    _git("commit", "-q", "-m", "course", cwd=origin)
    runtime = tmp_path / "content"
    runtime.mkdir()
    monkeypatch.chdir(runtime)
    monkeypatch.setenv("STABLEBEAT_COURSE_REPO", origin.as_uri())
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "stablebeat_utils" else real_find_spec(name, *a)
    )
    installed, pip = [], []
    monkeypatch.setattr(colab, "install_missing", lambda: installed.append(True))
    monkeypatch.setattr(sys, "path", list(sys.path))
    real_run = subprocess.run

    def run(cmd, *a, **kw):  # git for real; pip recorded, never run (it would repoint this venv)
        if cmd[:3] == [sys.executable, "-m", "pip"]:
            pip.append(cmd[3:])
            return subprocess.CompletedProcess(cmd, 0)
        return real_run(cmd, *a, **kw)

    monkeypatch.setattr(subprocess, "run", run)
    exec(colab.setup_cell(), {})
    assert (runtime / "stablebeat-course" / "stablebeat_utils" / "marker.txt").read_text() == "course"
    assert pip == [
        ["install", "-q", "--no-deps", "--ignore-requires-python", "-e", "stablebeat-course"]
    ]  # the course, not its deps
    assert sys.path[0] == str(runtime / "stablebeat-course") and installed == [True]
    exec(colab.setup_cell(), {})  # run again: the clone is reused
    assert installed == [True, True]


def test_setup_cell_names_the_repository_it_could_not_fetch(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STABLEBEAT_COURSE_REPO", (tmp_path / "nowhere").as_uri())
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "stablebeat_utils" else real_find_spec(name, *a)
    )
    with pytest.raises(RuntimeError, match="STOP: could not fetch the course from file://.*nowhere"):
        exec(colab.setup_cell(), {})


def test_prepare_mounts_drive_only_when_a_parameter_points_into_it(tmp_path):
    mounted = []
    gpu = {"cuda": True, "name": "A100", "memory_gb": 40.0}
    local = {"profile": "demo", "run_dir": str(tmp_path / "runs/x"), "input_dir": "demo"}
    colab.prepare(local, colab=True, report=gpu, mount=mounted.append)
    assert mounted == []
    drive = {
        "profile": "demo",
        "run_dir": f"{tmp_path}/gdrive/MyDrive/stablebeat/runs/x",
        "input_dir": f"{tmp_path}/gdrive/MyDrive/stablebeat/beats",
    }
    colab.prepare(drive, colab=True, report=gpu, mount=mounted.append)
    assert mounted == [str(tmp_path / "gdrive")]  # derived from the paths, asked once
    (tmp_path / "gdrive" / "MyDrive").mkdir(parents=True)
    colab.prepare(drive, colab=True, report=gpu, mount=mounted.append)
    assert mounted == [str(tmp_path / "gdrive")]  # already mounted: not asked again
    colab.prepare(drive, colab=False, mount=mounted.append)  # outside Colab: nothing at all
    assert mounted == [str(tmp_path / "gdrive")]


def test_prepare_stops_before_work_when_the_gpu_is_too_small():
    with pytest.raises(colab.Stop, match="colab_a100.*Tesla T4"):
        colab.prepare(
            {"profile": "colab_a100", "run_dir": "/tmp/x"},
            colab=True,
            report={"cuda": True, "name": "Tesla T4", "memory_gb": 15.0},
            mount=None,
        )


def test_colab_requirements_cover_what_colab_does_not_ship():
    """Every runtime requirement is either in colab/requirements-colab.txt or one Colab ships."""
    colab_ships = {
        "numpy",
        "scipy",
        "soundfile",
        "librosa",
        "tokenizers",
        "sentencepiece",
        "safetensors",
        "huggingface_hub",
        "filelock",
        "einops",
        "scikit-learn",
        "pandas",
        "matplotlib",
        "tqdm",
        "PyYAML",
        "nbformat",
        "nbclient",
        "ipykernel",
        "ipywidgets",
    }
    names = lambda text: {
        l.split("#")[0].split("==")[0].split(">=")[0].strip() for l in text.splitlines() if l.split("#")[0].strip()
    }
    needed = names((ROOT / "requirements.txt").read_text()) - colab_ships
    listed = names(colab.COLAB_REQUIREMENTS.read_text())
    assert needed <= listed, f"add to colab/requirements-colab.txt: {sorted(needed - listed)}"


def test_launcher_tells_where_to_put_the_beats(tmp_path):
    common = dict(use_drive=False, drive_mount="", drive_folder="", local_folder=str(tmp_path), run_name="r")
    with pytest.raises(colab.Stop, match=f'no beats in {tmp_path}/beats yet.*"demo"'):
        colab.locations(input_subfolder="beats", **common)
    assert (tmp_path / "beats").is_dir()  # created, ready to be filled
    (tmp_path / "beats" / "sub").mkdir()
    (tmp_path / "beats" / "sub" / "a.wav").write_bytes(b"RIFF")
    assert colab.locations(input_subfolder="beats", **common) == (str(tmp_path / "beats"), str(tmp_path / "runs/r"))
    assert colab.locations(input_subfolder="demo", **common) == ("demo", str(tmp_path / "runs/r"))
    drive = dict(common, use_drive=True, drive_mount=str(tmp_path / "gd"), drive_folder="sb")
    mounted = []
    assert colab.locations(
        input_subfolder="demo",
        mount=lambda m: mounted.append(m) or Path(m) / "MyDrive",
        **{k: v for k, v in drive.items()},
    ) == ("demo", str(tmp_path / "gd/MyDrive/sb/runs/r"))
    assert mounted == [str(tmp_path / "gd")]


def test_a_profile_with_the_gated_model_needs_a_token(monkeypatch):
    colab.check_token("demo", token="")  # tiny local models: no token needed
    colab.check_token("colab_a100", token="hf_x")
    with pytest.raises(colab.Stop, match="colab_lora.*gated.*stabilityai/stable-audio-open-1.0.*secrets.*HF_TOKEN"):
        colab.check_token("colab_lora", token="")
    assert colab.gated_models("demo") == []


def test_the_setup_cells_import_needs_only_pyyaml():
    """The set-up cell imports colab on a bare Python (PyYAML only) so that install_missing can STOP
    naming an old Python: colab must not pull numpy/torch in at import (params -> settings -> audio did)."""
    blocked = ["numpy", "torch", "scipy", "soundfile", "librosa", "essentia", "transformers"]
    code = (
        "import sys\n"
        f"for m in {blocked!r}: sys.modules[m] = None\n"  # an import of any of them raises ImportError
        "from stablebeat_utils import colab\n"
        "assert callable(colab.install_missing)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-800:]
