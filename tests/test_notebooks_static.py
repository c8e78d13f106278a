"""The notebooks follow the course's conventions (docs/conventions.md) — checked without running them."""

import ast
import re
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
    assert found == params.schema(stage), f"{stage}: parameters cell and the demo profile's settings disagree"


FORM_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _form(line: str) -> tuple[str, str]:
    """``(name, annotation)`` of a parameters-cell line: ``x = 1  # @param {type:"integer"}``."""
    return line.split("=", 1)[0].strip(), line.split("# @param", 1)[1].strip()


@pytest.mark.parametrize("stage", PRESENT)
def test_parameters_cell_forms_offer_what_the_settings_allow(stage):
    """Each Colab form field is checked against settings.py: a free field's type is the setting's type;
    a drop-down offers only allowed values — a closed setting's choices (no free input), or exactly an
    open setting's suggestions (with free input); a setting with choices is never a free field."""
    from stablebeat_utils import settings

    spec = settings.spec(stage)
    (cell,) = [c for c in _nb(stage).cells if "parameters" in c.metadata.get("tags", [])]
    for line in cell.source.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, note = _form(line)
        meta, where = spec[name].metadata, f"{stage}: {name}: {note}"
        if note.startswith('{type:"slider"'):  # a number in a range: within the setting's bounds
            lo, hi = (float(re.search(rf"{k}:\s*([-\d.]+)", note).group(1)) for k in ("min", "max"))
            assert spec[name].type in (int, float) and not settings.problem(stage, name, lo), where
            assert not settings.problem(stage, name, hi), where
            continue
        if not note.startswith("["):
            assert note == f'{{type:"{FORM_TYPES[spec[name].type]}"}}', where
            assert not meta["choices"], f"{where}: offer its choices {meta['choices']} as a drop-down"
            continue
        offered = ast.literal_eval(note[: note.index("]") + 1])
        free = "allow-input: true" in note
        if meta["choices"]:
            assert set(offered) <= set(meta["choices"]) and not free, f"{where}: allowed {meta['choices']}"
        else:
            assert meta["suggest"] and tuple(offered) == meta["suggest"] and free, f"{where}: {meta['suggest']}"


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
