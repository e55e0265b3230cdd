"""The layering of docs/architecture.md, checked on the source: sizes, imports between the
layers, no duck typing between the loop and the methods, no network-kind branches."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mgrit_nn"
MODULES = sorted(PKG.rglob("*.py"))

# layer -> packages it must not import (at run time; typing-only imports are fine)
FORBIDDEN = {
    "mgrit": ("model", "methods", "train", "io", "commands", "data", "analysis"),
    "model": ("methods", "train", "io", "commands"),
    "methods": ("train", "io", "commands"),
    "io": ("model", "methods", "train", "commands", "mgrit", "data"),
    "train": ("commands",),
}


def layer(path: Path) -> str:
    return path.relative_to(PKG).parts[0] if len(path.relative_to(PKG).parts) > 1 else ""


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def runtime_imports(mod: ast.Module) -> list[str]:
    """Modules imported by ``mod`` outside ``if TYPE_CHECKING:`` blocks."""
    skip = {id(n) for node in ast.walk(mod) if isinstance(node, ast.If)
            and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    out = []
    for node in ast.walk(mod):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_module_and_function_sizes(path):
    assert len(path.read_text().splitlines()) <= 400, f"{path.name}: over 400 lines"
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = node.end_lineno - node.lineno + 1
            assert n <= 60, f"{path.name}:{node.lineno} {node.name} has {n} lines"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_layers_import_only_downwards(path):
    banned = FORBIDDEN.get(layer(path), ())
    bad = [m for m in runtime_imports(tree(path))
           if any(m == f"mgrit_nn.{b}" or m.startswith(f"mgrit_nn.{b}.") for b in banned)]
    assert not bad, f"{path.relative_to(PKG)} imports {bad}"


def test_no_duck_typing_between_the_loop_and_the_methods():
    for path in sorted((PKG / "train").glob("*.py")) + sorted((PKG / "methods").glob("*.py")):
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("hasattr",
                                                                                "getattr"):
                # the registry's lazy import of a method class is the one getattr
                assert path.name == "registry.py", f"{path.name}:{node.lineno} {node.func.id}"


def test_no_network_kind_branch_outside_the_operators():
    """``"dense"``/``"conv"`` compared anywhere but the operator objects, the config checks of
    the registry, and the critic (whose own ``critic.kind`` picks its first layer)."""
    allowed = {"model/operators.py", "methods/registry.py", "model/critic.py"}
    for path in MODULES:
        if str(path.relative_to(PKG)) in allowed:
            continue
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in [node.left, *node.comparators]
                          if isinstance(c, ast.Constant)]
                assert not {"dense", "conv"} & set(consts), \
                    f"{path.relative_to(PKG)}:{node.lineno} branches on the network kind"
