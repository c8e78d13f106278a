"""The package's layers import one way: base ← stages ← notebook-facing modules (docs/design.md).

Every ``from . import x`` / ``from .x import y`` counts, at module level or inside a function (the
lazy imports that keep a notebook's start fast are imports all the same)."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "stablebeat_utils"
BASE = {
    "layout",
    "modelspec",
    "settings",
    "clap",
    "tempo",
    "focus_results",
    "runs",
    "pool",
    "audio",
    "compat",
    "models",
    "params",
    "stage",
    "clipfacts",
    "clipstore",
    "plots",
    "storage",
    "preflight",
    "preflight_inference",
    "demo",
    "checkpoints",
    "planner",
    "loops",
    "evaluate_metrics",  # 07's metrics, shared: 05's demo scores, 06's variations
    "audio_checks",
}
STAGES = {
    "segment",
    "tag",
    "tag_calibration",
    "tempo_key",
    "prompts",
    "tag_space",
    "train",
    "train_lightning",
    "train_watch",
    "train_watch",
    "focus",
    "generate",
    "evaluate",
    "evaluate_report",
}
FACE = {"show", "playground", "lesson", "colab", "runner", "__main__", "publish"}
ALLOWED = {"base": BASE, "stage": BASE | STAGES, "face": BASE | STAGES | FACE}


def _layer(name: str) -> str:
    return "base" if name in BASE else "stage" if name in STAGES else "face"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            out |= {n for n in names if (PKG / f"{n}.py").is_file()}  # not the package's own names (STAGES)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stablebeat_utils."):
            out.add(node.module.split(".")[1])
    return out


# the notebook each stage module serves; a stage imports another notebook's module only when listed here
NOTEBOOK = {
    "segment": "01",
    "tag": "02",
    "tag_calibration": "02",
    "tempo_key": "03",
    "prompts": "04",
    "tag_space": "04",
    "train": "05",
    "train_lightning": "05",
    "train_watch": "05",
    "focus": "05b",
    "generate": "06",
    "evaluate": "07",
    "evaluate_report": "07",
}
STAGE_TO_STAGE = {("focus", "train")}  # 05b trains with 05's own code and settings; shared services live in base


def test_a_stage_imports_another_stage_only_from_the_list():
    assert set(NOTEBOOK) == STAGES
    crossing = sorted(
        (m, x)
        for m in STAGES
        for x in _imports(PKG / f"{m}.py")
        if x in STAGES and NOTEBOOK[x] != NOTEBOOK[m] and (m, x) not in STAGE_TO_STAGE
    )
    assert not crossing, f"stage → stage imports outside STAGE_TO_STAGE (move what they share to base): {crossing}"


def _family_words(node: ast.Tuple | ast.List | ast.Set) -> list[str]:
    """The strings of a literal, or the first string of each of its pairs, without a ``_tags`` suffix."""
    firsts = [e.elts[0] if isinstance(e, ast.Tuple) and e.elts else e for e in node.elts]
    return [e.value.removesuffix("_tags") for e in firsts if isinstance(e, ast.Constant) and isinstance(e.value, str)]


def test_one_key_parser_and_one_list_of_tag_families():
    parsers = [p.name for p in PKG.glob("*.py") if "def parse_key(" in p.read_text(encoding="utf-8")]
    assert parsers == ["clipfacts.py"], parsers
    families = ["instruments", "moods", "genres"]  # clipfacts.FAMILIES; another order is a deliberate one (the card's)
    spelled = [
        f"{p.name}:{n.lineno}"
        for p in sorted(PKG.glob("*.py"))
        if p.name != "clipfacts.py"
        for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(n, (ast.Tuple, ast.List, ast.Set)) and [w for w in _family_words(n) if w in families] == families
    ]
    assert not spelled, f"the tag families are clipfacts.FAMILIES: {spelled}"


def test_every_module_has_a_layer():
    modules = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    assert modules == BASE | STAGES | FACE, "a new module: give it its layer here and in docs/design.md"


@pytest.mark.parametrize("module", sorted(BASE | STAGES | FACE))
def test_imports_go_one_way(module):
    layer = _layer(module)
    wrong = sorted(m for m in _imports(PKG / f"{module}.py") if m not in ALLOWED[layer])
    assert not wrong, f"{module} ({layer}) imports {wrong} from a layer above it"


# -- readable functions (issue 19) --------------------------------------------------------------
MAX_BODY_LINES = 80  # a function a reader can follow without scrolling: its body, signature and docstring aside
LONG_FUNCTIONS_BEING_SPLIT: set[str] = set()  # empty: every function was split (kept for a future split in flight)


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the function's last line."""
    body = fn.body
    if (
        isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    return fn.end_lineno - body[0].lineno + 1 if body else 0


def _functions(node: ast.AST, prefix: str):
    """``(dotted name, function node)`` of every function and method, nested ones included."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}.{child.name}"
            if not isinstance(child, ast.ClassDef):
                yield name, child
            yield from _functions(child, name)
        else:
            yield from _functions(child, prefix)


def test_no_function_is_too_long_to_read():
    long = []
    for path in sorted(PKG.rglob("*.py")):
        module = ".".join(path.relative_to(PKG).with_suffix("").parts)
        for name, fn in _functions(ast.parse(path.read_text(encoding="utf-8")), module):
            n = _body_lines(fn)
            if n > MAX_BODY_LINES and name not in LONG_FUNCTIONS_BEING_SPLIT:
                long.append(f"{name} ({path.name}:{fn.lineno}): {n} lines")
    assert not long, f"functions over {MAX_BODY_LINES} lines: split them into named steps: {long}"


# -- the run folder's layout, spelled once (issue 28) -------------------------------------------
GENERIC_NAMES = {"config.json", "README.md"}  # also a Hugging Face model's / the repository's own files


def _layout_names() -> set[str]:
    from stablebeat_utils import layout

    values = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)}
    return {v for v in values if v in layout.STAGES or "." in v[1:]} - GENERIC_NAMES


def _spelled(path: Path, names: set[str]) -> list[str]:
    """String constants (docstrings aside) that name a stage folder or a run-folder file as a path: the
    whole string, or a ``/``-separated part of it. Prose ("run 04_prompts first") names a notebook."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            parts = {n.value} if " " in n.value else set(n.value.split("/"))
            if parts & names:
                out.append(f"{path.name}:{n.lineno}: {n.value!r}")
    return out


def test_the_run_folder_is_spelled_in_layout_only():
    names = _layout_names()
    assert {"01_segment", "05b_focus", "segments.jsonl", "model.safetensors", "storage_plan.json"} <= names
    spelled = [s for p in sorted(PKG.glob("*.py")) if p.name != "layout.py" for s in _spelled(p, names)]
    assert not spelled, f"name these through stablebeat_utils.layout: {spelled}"
