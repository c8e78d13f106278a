import dataclasses
import json
import subprocess
import sys

import nbformat
import pytest

from stablebeat_utils import STAGES, lesson, params, runner
from stablebeat_utils.params import ParameterError


def test_every_stage_has_a_schema_with_common_parameters():
    for stage in STAGES:
        names = params.schema(stage)
        assert {"run_dir", "profile"} <= set(names)


def test_stage_names():
    assert params.canonical_stage("01") == "01_segment"
    assert params.canonical_stage("tag") == "02_tag"
    assert params.canonical_stage("3") == "03_tempo_key"
    with pytest.raises(ParameterError, match="unknown stage 'tagz'"):
        params.canonical_stage("tagz")


def test_unknown_profile_is_refused():
    with pytest.raises(ParameterError, match="unknown profile 'nope'.*demo"):
        params.load_profile("nope")


def test_types_are_checked_and_gently_converted():
    assert params.coerce("01_segment", "workers", "3") == 3
    assert params.coerce("01_segment", "workers", 2.0) == 2
    with pytest.raises(ParameterError, match="'workers' must be int"):
        params.coerce("01_segment", "workers", "many")
    with pytest.raises(ParameterError, match="has no parameter 'wrokers'"):
        params.coerce("01_segment", "wrokers", 1)


def test_secret_like_names_are_refused():
    with pytest.raises(ParameterError, match="secret"):
        params.coerce("01_segment", "hf_token", "x")


def test_profile_fills_untouched_parameters_only(tmp_path, monkeypatch):
    prof = tmp_path / "big.yaml"
    prof.write_text("workers: 8\nstages:\n  01_segment:\n    input_dir: /data/beats\n")
    ns = {"run_dir": str(tmp_path / "run"), "profile": str(prof), "input_dir": "demo", "workers": 2}
    P = lesson.settle("01_segment", ns)
    assert P["workers"] == 8 and P["input_dir"] == "/data/beats"
    ns["workers"] = 4  # changed by the learner: kept
    assert lesson.settle("01_segment", ns)["workers"] == 4
    ns_runner = dict(ns, workers=2, _resolved_by_runner=True)  # the runner already resolved
    assert lesson.settle("01_segment", ns_runner)["workers"] == 2
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["params"]["01_segment"]["workers"] == 2 and info["versions"]["python"]


def test_resolve_precedence():
    v = params.resolve("01_segment", "demo", files=[{"workers": 3}], overrides={"workers": 5})
    assert v["workers"] == 5
    v = params.resolve("01_segment", "demo", files=[{"workers": 3}])
    assert v["workers"] == 3


def _echo_notebook(path):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(
        'run_dir = "runs/demo"  # @param {type:"string"}\n'
        'profile = "demo"  # @param {type:"string"}\n'
        'input_dir = "demo"  # @param {type:"string"}\n'
        'workers = 2  # @param {type:"integer"}\n'
    )
    p.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import json, os, pathlib\n"
        "from stablebeat_utils import lesson\n"
        "P = lesson.settle('01_segment', globals())\n"
        "pathlib.Path(P['run_dir'], 'echo.json').write_text(json.dumps(P))\n"
        "print('HF_TOKEN' in os.environ)\n"
    )
    nb.cells = [nbformat.v4.new_markdown_cell("# echo"), p, body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def echo_course(tmp_path, monkeypatch):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    _echo_notebook(nbdir / "01_segment.ipynb")
    monkeypatch.setenv("STABLEBEAT_NOTEBOOKS", str(nbdir))
    return tmp_path


def test_runner_executes_with_overrides_and_keeps_secrets_out(echo_course, monkeypatch):
    secret = "hf_SENTINEL_do_not_leak_123"
    monkeypatch.setenv("HF_TOKEN", secret)
    inputs = echo_course / "beats"
    inputs.mkdir()
    (inputs / "a.wav").write_bytes(b"x")
    run_dir = echo_course / "run"
    outs = runner.run(overrides={"run_dir": str(run_dir), "workers": 3, "input_dir": str(inputs)})
    echoed = json.loads((run_dir / "echo.json").read_text())
    assert echoed["workers"] == 3 and echoed["input_dir"] == str(inputs)
    assert outs == [run_dir / "notebooks" / "01_segment.ipynb"]
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert secret not in f.read_text(errors="ignore"), f


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"workers": "lots"}, "must be int"),
        ({"nope": 1}, "unknown parameter"),
        ({"profile": "missing"}, "unknown profile"),
        ({"input_dir": "/definitely/not/here"}, "not a folder"),
    ],
)
def test_runner_refuses_bad_parameters_before_any_work(echo_course, overrides, message):
    run_dir = echo_course / "run"
    with pytest.raises(ParameterError, match=message):
        runner.run(overrides={"run_dir": str(run_dir), **overrides})
    assert not run_dir.exists()


def test_runner_refuses_empty_input_folder_and_unknown_stage(echo_course):
    empty = echo_course / "empty"
    empty.mkdir()
    with pytest.raises(ParameterError, match="contains no files"):
        runner.plan(overrides={"input_dir": str(empty)})
    with pytest.raises(ParameterError, match="no notebook for stage"):
        runner.plan(["05_train"])


def test_cli_help_lists_stages_and_parameters():
    out = subprocess.run(
        [sys.executable, "-m", "stablebeat_utils", "run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for stage in STAGES:
        assert stage in out
    assert "workers" in out and "profiles:" in out


def test_cli_reports_errors_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "stablebeat_utils", "run", "nostage"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown stage 'nostage'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("profile", params.list_profiles())
def test_every_bundled_profile_resolves_for_every_stage(profile):
    for stage in STAGES:
        values = params.resolve(stage, profile)
        assert set(values) == set(params.schema(stage))


# parameters a stage's run() takes that are no setting (a caller's convenience): keyword-only hooks
CALL_ONLY = {"01_segment": {"progress"}, "05_train": {"stage", "clips"}}  # 05b_focus runs 05 on a subset


@pytest.mark.parametrize("stage", STAGES)
def test_run_takes_the_stages_settings_and_their_demo_values(stage):
    """One source of truth: ``run()`` takes the settings of settings.py (its body receives every field
    by name, plus its keyword-only hooks); called with nothing, it runs on the demo profile's values —
    the notebook's parameters cell (tests/test_notebooks_static.py holds the cell to the same values)."""
    import importlib
    import inspect

    from stablebeat_utils import settings, stage as stage_mod

    module = importlib.import_module(f"stablebeat_utils.{stage.split('_', 1)[1]}")
    assert module.run.settings_class is settings.of(stage)
    sig = inspect.signature(module.run.__wrapped__).parameters
    hooks = {n for n, p in sig.items() if p.kind is p.KEYWORD_ONLY}
    assert hooks == CALL_ONLY.get(stage, set())
    assert set(sig) - hooks == set(settings.spec(stage))
    built = stage_mod.settings_for(stage)
    assert dataclasses.asdict(built) == params.schema(stage)
