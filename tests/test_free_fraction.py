"""No model that converted before loses free neurons: a regression test against the free
fraction every fixture had when pinning was introduced (tests/fixtures/free_fraction_baseline.json,
made by converting each with the engine of that time)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest

import nngraph

ROOT = Path(__file__).parent.parent
LIGHT = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
BASELINE = json.loads((Path(__file__).parent / "fixtures" / "free_fraction_baseline.json").read_text())


def _path(key: str) -> Path:
    return LIGHT / key[len("light:"):] if key.startswith("light:") else ROOT / key


@pytest.mark.parametrize("key", sorted(BASELINE))
def test_free_neurons_not_lost(key):
    path = _path(key)
    if not path.exists():
        pytest.skip(f"{path} not present")
    g = nngraph.convert(path)
    hidden = [s for s in g.sets.values() if s.role not in ("input", "output")]
    fixed = g.fixed_groups()
    free = sum(s.size for s in hidden if s.group not in fixed)
    assert free >= BASELINE[key]["free"], (key, free, BASELINE[key])
    assert g.coverage == 1.0
