"""The import rule of explorer/ (docs/architecture.md): one folder per stage, imports run one way.

Every import statement counts, function-local ones included: a stage imports only the stages
below it (and itself); no module imports back up, and there is no cycle among modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "explorer"
# Bottom to top.  The top-level modules (__init__, __main__ and the CLI package, one module per
# family of commands) may import any stage.
STAGES = ("core", "zoo", "sources", "catalog", "engine", "metrics", "cluster", "pipeline", "apply", "present", "figures", "outputs")
TOP_MODULES = {"explorer", "explorer.cli", "explorer.__main__"}
CLI_PACKAGE = "explorer.cli."
MAX_LINES = 400
MAX_TOP_LEVEL = 6


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported explorer module) for every import statement of one module, at any depth."""
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in MODULES:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name and t.startswith("explorer"):
                found.append((node.lineno, t))
    return found


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


EDGES = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_module_sits_in_a_stage_or_is_one_of_the_few_top_level_ones():
    top = sorted(m for m in MODULES if _stage(m) is None and not m.startswith(CLI_PACKAGE))
    assert set(top) <= TOP_MODULES | {f"explorer.{s}" for s in STAGES}, top
    assert len([m for m in top if m not in TOP_MODULES]) <= MAX_TOP_LEVEL


def test_each_stage_imports_only_the_stages_below_it():
    bad = []
    for m, edges in EDGES.items():
        own = _stage(m)
        if own is None:
            continue
        for line, t in edges:
            other = _stage(t)
            if other is None:
                bad.append(f"{m}:{line} imports top-level {t}")
            elif STAGES.index(other) > STAGES.index(own):
                bad.append(f"{m}:{line} imports {t} ({other} is above {own})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_among_modules():
    # A package's own __init__ re-exporting its children is not a cycle of concepts.
    graph = {m: {t for _, t in e if not (MODULES[t].name == "__init__.py" and m.startswith(t + "."))}
             for m, e in EDGES.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(v: str) -> None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(w):] + [w]))
            if w not in state:
                visit(w)
        path.pop()
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v)


def test_modules_stay_small():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, big


def test_each_kernel_is_defined_once():
    """The shared numerical kernels live in explorer.core.linalg (and the Gram stack in engine.gram)."""
    kernels = {"sign_fix", "eigh_desc", "eigh_top", "eigvalsh_desc", "center_matrix", "centered_gram",
               "double_center", "k_at", "k_table", "psd_sqrt", "StackedGram"}
    where: dict[str, list[str]] = {}
    for m, p in MODULES.items():
        for node in ast.parse(p.read_text(encoding="utf-8")).body:  # module level (not methods)
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                name = node.name
                if name in kernels or ("sign" in name and ("fix" in name or "flip" in name)):
                    where.setdefault(name, []).append(m)
    assert all(len(v) == 1 for v in where.values()), where
    assert len([n for n in where if "sign" in n]) == 1, where
