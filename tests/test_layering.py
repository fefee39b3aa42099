"""core/'s packages depend one way (README "Layout"): the graph knows nothing of learning, alignment or
the CLI; learning knows nothing of alignment or the CLI; alignment may use learning's building blocks
(featurize, checkpoint, probes) but not its training loop, nor the CLI. Function-local imports count
too: they hide a dependency from import time, not from the design."""
from __future__ import annotations

import ast
from pathlib import Path

import nngraph

ROOT = Path(nngraph.__file__).parent
PACKAGE = "nngraph"

#: package → modules it must not import (a module or anything inside it)
FORBIDDEN = {
    "nngraph.graph": ("nngraph.learn", "nngraph.alignment", "nngraph.cli", "nngraph.api", "nngraph.verify"),
    "nngraph.learn": ("nngraph.alignment", "nngraph.cli"),
    "nngraph.alignment": ("nngraph.learn.train", "nngraph.cli"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGE, *parts])


def imported_modules(name: str, source: str, is_package: bool = False) -> set[str]:
    """Every module an import statement anywhere in ``source`` (module ``name``) may load: ``from X
    import y`` gives X and X.y (y may be a submodule); relative imports resolved against ``name``."""
    base = name.split(".") if is_package else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)
    return out


def _violations(name: str, imported: set[str]) -> list[str]:
    bad = []
    for package, forbidden in FORBIDDEN.items():
        if name == package or name.startswith(package + "."):
            bad += [f"{name} imports {m}" for m in sorted(imported)
                    if any(m == f or m.startswith(f + ".") for f in forbidden)]
    return bad


def test_core_packages_import_one_way():
    modules = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
    assert {"nngraph.graph.ir", "nngraph.learn.train", "nngraph.alignment.merge", "nngraph.cli.app"} <= set(modules)
    bad = [v for name, path in modules.items()
           for v in _violations(name, imported_modules(name, path.read_text(), path.name == "__init__.py"))]
    assert not bad, bad


def test_the_check_sees_each_kind_of_import():
    """Control: relative, absolute and function-local imports of a forbidden module are all caught; the
    allowed edge alignment → learn.featurize is not."""
    cases = {
        "nngraph.graph.ir": "def f():\n    from ..learn import featurize\n",
        "nngraph.learn.featurize": "import nngraph.cli.app\n",
        "nngraph.alignment.matching": "from nngraph.learn.train import train\n",
        "nngraph.learn.train": "from ..alignment.matching import align\n",
    }
    for name, source in cases.items():
        assert _violations(name, imported_modules(name, source)), name
    assert not _violations("nngraph.alignment.matching",
                           imported_modules("nngraph.alignment.matching", "from ..learn.featurize import featurize\n"
                                            "from ..learn import checkpoint, probes\n"))
