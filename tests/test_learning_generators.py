"""The learning benchmark's population generators (benchmarks/learning/make_*.py): a tiny population
is the same for the same seed, differs for another, and every network it writes converts with
coverage 1."""
from __future__ import annotations

import csv
import runpy
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import nngraph  # noqa: E402

HERE = Path(__file__).resolve().parents[1] / "benchmarks" / "learning"
# (script, fast options, label column)
GENERATORS = [("make_freq.py", ["--steps", "5"], "label"), ("make_tasks.py", ["--steps", "5"], "task"),
              ("make_inr.py", ["--steps", "5", "--size", "12"], "label"), ("make_hetero.py", ["--max-epochs", "1"], "test_acc")]


def generate(script: str, out: Path, seed: int, options: list[str]) -> list[dict]:
    argv, path = sys.argv, list(sys.path)
    sys.argv = [script, str(out), "--n", "8", "--seed", str(seed), *options]
    sys.path.insert(0, str(HERE))                  # the generators import make_freq's writer by module name
    try:
        runpy.run_path(str(HERE / script), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = argv, path
    with open(out / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def weights(path: Path) -> list:
    import onnx
    from onnx import numpy_helper
    return [numpy_helper.to_array(t).tolist() for t in onnx.load(str(path)).graph.initializer]


@pytest.mark.parametrize("script,options,label", GENERATORS, ids=[g[0] for g in GENERATORS])
def test_generator_is_deterministic_and_converts(tmp_path, script, options, label):
    a = generate(script, tmp_path / "a", 0, options)
    b = generate(script, tmp_path / "b", 0, options)
    c = generate(script, tmp_path / "c", 1, options)
    assert len(a) == 8 and {r["split"] for r in a} == {"train", "test"} and all(r[label] != "" for r in a)
    assert a == b
    assert [weights(tmp_path / "a" / r["model"]) for r in a] == [weights(tmp_path / "b" / r["model"]) for r in b]
    assert [weights(tmp_path / "a" / r["model"]) for r in a] != [weights(tmp_path / "c" / r["model"]) for r in c]
    for r in a:
        g = nngraph.convert(tmp_path / "a" / r["model"])
        assert g.coverage == 1.0, (r["model"], g.coverage)
        assert g.num_edges > 0
