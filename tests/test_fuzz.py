"""Fuzzing the CLI with malformed and hostile inputs (fixed seed; ``benchmarks/fuzz.py`` runs more).

Every run must exit 0–4 with at most a one-line message and no traceback or internal error,
write nothing but its output path, leave a valid output when it succeeds, never run code from a
pickle, and answer within a minute. See ``tests/fuzzlib.py`` for the families and the checks.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fuzzlib

SEED = 20261129
CASES = {"onnx-bytes": 150, "onnx-proto": 250, "onnx-external": 100, "safetensors-bytes": 100,
         "safetensors-header": 120, "ngraph-bytes": 100, "ngraph-header": 150, "pt-bytes": 100, "pickle": 20,
         "npz-bytes": 60, "config-json": 60}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fuzzlib.make_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


@pytest.mark.parametrize("family", list(CASES))
def test_fuzz_family(family, seeds, tmp_path):
    if family in ("pt-bytes", "pickle"):
        pytest.importorskip("torch")
    n, problems = fuzzlib.run_family(family, seeds, tmp_path, CASES[family], SEED + fuzzlib.FAMILIES.index(family))
    assert n == CASES[family]
    assert not problems, "\n".join(problems[:20])


def test_fuzz_sees_both_outcomes(seeds, tmp_path):
    """The mutants are not all rejected up front: some still convert (the checks are not vacuous)."""
    fuzzlib.EXIT_CODES.clear()
    fuzzlib.run_family("onnx-proto", seeds, tmp_path, 40, SEED)
    assert fuzzlib.EXIT_CODES[0] > 0 and fuzzlib.EXIT_CODES[4] > 0, dict(fuzzlib.EXIT_CODES)


def test_hostile_pickles_never_run(seeds, tmp_path):
    pytest.importorskip("torch")
    for path in fuzzlib.hostile_pickles(tmp_path, seeds.get("pt2")):
        for command in ("convert", "verify"):
            assert fuzzlib.run_case(path, command, tmp_path / "work") == []
    assert not (tmp_path / fuzzlib.MARKER).exists()


def test_sigkill_mid_convert_leaves_no_partial_output(tmp_path):
    rng = np.random.default_rng(SEED)
    n = 1536          # ~19 MB of weights: the write takes long enough to be interrupted
    inits = [numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), f"W{i}") for i in range(2)]
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W1"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], inits)
    model = tmp_path / "big.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), model)
    delays = sorted(rng.uniform(0.3, 3.0, size=5))
    assert fuzzlib.sigkill_convert(model, tmp_path / "kills", list(delays)) == []
