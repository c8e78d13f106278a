"""The notebooks follow the course's conventions (docs/conventions.md) — checked without running them."""

import ast
from pathlib import Path

import nbformat
import pytest

from stablebeat_utils import STAGES, params

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PRESENT = [s for s in STAGES if (NOTEBOOKS / f"{s}.ipynb").exists()]


def _nb(stage):
    return nbformat.read(NOTEBOOKS / f"{stage}.ipynb", as_version=4)


def test_notebooks_exist_in_order():
    assert PRESENT, "no notebooks"
    assert PRESENT == list(STAGES[: len(PRESENT)]), "notebooks must arrive in course order"


@pytest.mark.parametrize("stage", PRESENT)
def test_committed_without_outputs(stage):
    for cell in _nb(stage).cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{stage}: strip outputs before committing"


@pytest.mark.parametrize("stage", PRESENT)
def test_parameters_cell_matches_the_demo_profile(stage):
    nb = _nb(stage)
    assert nb.cells[0].cell_type == "markdown" and "What you will learn" in nb.cells[0].source
    pcells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(pcells) == 1, f"{stage}: exactly one cell tagged `parameters`"
    found = {}
    for line in pcells[0].source.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assert "# @param" in line, f"{stage}: every parameter needs a Colab `# @param` annotation: {line!r}"
        tree = ast.parse(line.split("#", 1)[0])
        (assign,) = tree.body
        found[assign.targets[0].id] = ast.literal_eval(assign.value)  # literals only
    assert found == params.schema(stage), f"{stage}: parameters cell and data/profiles/demo.yaml disagree"


@pytest.mark.parametrize("stage", PRESENT)
def test_settles_parameters_and_holds_no_logic(stage):
    nb = _nb(stage)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert any(f'lesson.settle("{stage}", globals())' in src for src in code), stage
    for src in code:
        body = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(body)):
            assert not isinstance(node, (ast.For, ast.While, ast.FunctionDef, ast.ClassDef)), (
                f"{stage}: loops and definitions belong in stablebeat_utils, not in a notebook cell"
            )
