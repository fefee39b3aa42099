"""The ONNX adapter's modules import one way: no cycles (also none hidden in function bodies),
and no module imports another's private names (rule authors use what the toolkit makes public)."""
from __future__ import annotations

import ast
from pathlib import Path

import nngraph.adapters.onnx as onnx_adapter

ROOT = Path(onnx_adapter.__file__).parent
PACKAGE = "nngraph.adapters.onnx"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([PACKAGE, *parts])] = path
    return out


def _imports(name: str, path: Path):
    """(imported module, imported names, inside a function?) for each package-relative import."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    local = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local.update(id(n) for n in ast.walk(fn) if isinstance(n, ast.ImportFrom))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            yield target, [a.name for a in node.names], id(node) in local


def test_no_import_cycles_and_no_private_names():
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for name, path in mods.items():
        for target, names, _ in _imports(name, path):
            for n in names:
                full = f"{target}.{n}"
                dep = full if full in mods else target
                if dep in mods and dep != name:
                    graph[name].add(dep)
                if n.startswith("_") and full not in mods:
                    private.append(f"{name} imports {target}.{n}")
    assert not private, private
    # the package __init__ only imports lazily (plugin loading stays cheap); its submodules never import it
    assert all(PACKAGE not in deps for m, deps in graph.items())
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for d in sorted(graph[m]):
            visit(d)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, cycles


def test_rule_modules_import_siblings_at_module_level():
    """A function-local import between rule or engine modules is how cycles were hidden before."""
    late = [f"{name} → {target}" for name, path in _modules().items() if name != PACKAGE
            and not name.endswith(".runtime")      # runtime defers reading onnx until a model is run
            for target, _, local in _imports(name, path) if local]
    assert not late, late
