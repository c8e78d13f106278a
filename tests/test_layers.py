"""The package's layers import one way: base ← stages ← notebook-facing modules (docs/design.md).

Every ``from . import x`` / ``from .x import y`` counts, at module level or inside a function (the
lazy imports that keep a notebook's start fast are imports all the same)."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "stablebeat_utils"
BASE = {
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
    "focus",
    "generate",
    "evaluate",
    "evaluate_metrics",
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
