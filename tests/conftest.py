from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PLUGIN_DIR = Path(__file__).resolve().parent / "plugins"


def write_dist_info(site: Path, dist: str, entry_points: dict[str, str], version: str = "0.1.0") -> None:
    """Make ``site`` look like a folder where a package called ``dist`` was pip-installed."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[nngraph]\n{lines}\n")


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """install_plugin(dist, {entry_name: "module"}) → env for subprocesses; also active in-process."""
    from nngraph.loader import registry

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.syspath_prepend(str(site))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")]))

    def install(dist: str, entry_points: dict[str, str]) -> dict[str, str]:
        write_dist_info(site, dist, entry_points)
        import importlib
        importlib.invalidate_caches()
        registry(reload=True)
        return env

    yield install
    monkeypatch.undo()
    for mod in [m for m in sys.modules if m.endswith("_nngraph")]:
        del sys.modules[mod]
    registry(reload=True)


def ngraph(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "nngraph.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


@pytest.fixture
def mlp_onnx() -> Path:
    return EXAMPLES / "mlp.onnx"


@pytest.fixture
def rng():
    return np.random.default_rng(0)
