"""The test suite's own layout: shared helpers live in helper modules, test modules never import each other.

Read with ``ast`` only (nothing here imports the modules it inspects).
"""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TEST_MODULES = sorted(TESTS.glob("test_*.py"))
# One definition each, in tests/helpers.py: the PEFT adapter writer, the family writer and the
# explicit-unfolding reference (with its centering and its Gram / spectrum).
SINGLE = ("write_adapter", "write_family", "center_offset", "centered_sides", "unfolding",
          "reference_gram", "reference_spectrum")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported_modules(tree: ast.Module) -> set[str]:
    """Dotted names of every module an ``import`` / ``from ... import`` names (``from tests import x`` gives tests.x)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from . import x
                base = "tests" + ("." + node.module if node.module else "")
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _is_test_module(name: str) -> bool:
    """``tests.test_x...``, or a bare ``test_x`` naming a module of tests/ (rootdir-relative import)."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] == "tests" and parts[1].startswith("test_"):
        return True
    return parts[0].startswith("test_") and (TESTS / f"{parts[0]}.py").is_file()


def test_there_are_test_modules():
    assert len(TEST_MODULES) > 10 and (TESTS / "helpers.py").is_file()


@pytest.mark.parametrize("path", [p for p in sorted(TESTS.glob("*.py"))], ids=lambda p: p.name)
def test_no_module_imports_a_test_module(path):
    bad = sorted(m for m in _imported_modules(_tree(path)) if _is_test_module(m))
    assert not bad, f"{path.name} imports test modules {bad}: move what they share into tests/helpers.py"


def test_shared_helpers_are_defined_once_in_helpers():
    defs: Counter[str] = Counter()
    where: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in SINGLE:
                defs[node.name] += 1
                where.setdefault(node.name, []).append(f"{path.relative_to(TESTS)}:{node.lineno}")
    for name in SINGLE:
        assert defs[name] == 1, f"{name} must be defined exactly once under tests/, found {where.get(name, [])}"
        assert where[name][0].startswith("helpers.py:"), where[name]
