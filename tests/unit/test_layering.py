"""House rule: dependencies point inward (mindscript never imports prefect; dsp only numpy/scipy)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2] / "mindscript"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_nothing_under_mindscript_imports_prefect() -> None:
    files = list(ROOT.rglob("*.py"))
    assert len(files) > 10
    offenders = [str(p) for p in files if "prefect" in _imports(p)]
    assert offenders == []


def test_dsp_imports_only_numpy_scipy_and_stdlib() -> None:
    import sys

    allowed = {"numpy", "scipy", "mindscript", "__future__"} | set(sys.stdlib_module_names)
    for path in (ROOT / "dsp").rglob("*.py"):
        assert _imports(path) <= allowed, (path, _imports(path) - allowed)
