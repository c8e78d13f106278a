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
    "plots",
    "storage",
    "preflight",
    "preflight_inference",
    "demo",
}
STAGES = {
    "segment",
    "tag",
    "tag_calibration",
    "tempo_key",
    "prompts",
    "tag_space",
    "train",
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
