"""The layering the README's architecture section draws, checked on the code: every import (module level, inside
functions, under TYPE_CHECKING) points down the allowed directions, and no modules import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fields", "renderers", "scenes", "viewer")

# Each part of the code and the parts it may import (besides itself). The arrows of the README, listed once.
BELOW_BACKENDS = {"renderers", "scenes"}
ALLOWED: dict[str, set[str]] = {
    "scenes": set(),
    "renderers": {"scenes"},
    "fields.backends": BELOW_BACKENDS,
    "fields.run": {"fields.backends"} | BELOW_BACKENDS,
    "fields.training": {"fields.run", "fields.backends"} | BELOW_BACKENDS,
    "fields.evaluation": BELOW_BACKENDS,
    "fields.export": {"fields.run", "fields.backends"} | BELOW_BACKENDS,
    "fields.process": BELOW_BACKENDS,
    "viewer": BELOW_BACKENDS,  # draws any renderers.model.Renderable; knows no backend, run folder or trainer
    "fields.cli": {"fields", "fields.backends", "fields.run", "fields.training", "fields.evaluation",
                   "fields.export", "fields.process", "viewer"} | BELOW_BACKENDS,
    "fields": set(),  # fields/__init__.py
    "fields.__main__": {"fields.cli"},  # `python -m fields`
}


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def part_of(module: str) -> str | None:
    """The longest key of ALLOWED that ``module`` lies in."""
    best = None
    for part in ALLOWED:
        if (module == part or module.startswith(part + ".")) and (best is None or len(part) > len(best)):
            best = part
    return best


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules that module ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t.split(".")[0] in PACKAGES and t in known}
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_belongs_to_a_layer():
    assert [m for m in modules() if part_of(m) is None] == []


def test_imports_point_only_down():
    upward = []
    for module, targets in graph().items():
        mine = part_of(module)
        for target in targets:
            theirs = part_of(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                upward.append(f"{module} -> {target}")
    assert upward == [], "imports against the layering:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(g):
        if module not in state:
            visit(module, [module])
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_the_checks_see_an_upward_import(tmp_path):
    """The parser finds imports inside functions and under TYPE_CHECKING, the kinds a layering slip hides in."""
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fields.run.folder import LoadedRun\n"
                   "def f():\n    from fields.training import trainer\n")
    known = {"fields.run.folder": Path(), "fields.training": Path(), "fields.training.trainer": Path()}
    assert imports("renderers.m", src, known) == {"fields.run.folder", "fields.training.trainer"}
