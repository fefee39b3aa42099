"""The ONNX adapter on exporter-made MLPs: structure, and verification in onnxruntime."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nngraph
from conftest import EXAMPLES, ngraph
from nngraph.adapters.onnx import export, run
from nngraph.verify import verify


@pytest.mark.parametrize("name", ["mlp.onnx", "mlp_dynamo.onnx"])
def test_exported_mlp_structure(name):
    g = nngraph.convert(EXAMPLES / name)
    assert [(s.size, s.role, s.activation) for s in g.sets.values()] == [
        (64, "input", None), (32, "hidden", "relu"), (16, "hidden", "tanh"), (10, "output", None)]
    assert [b.kind for b in g.blocks] == ["dense"] * 3
    assert all("bias" in s.arrays for s in list(g.sets.values())[1:])
    assert g.coverage == 1.0


@pytest.mark.parametrize("name", ["mlp.onnx", "mlp_dynamo.onnx"])
def test_verify_cli(name):
    r = ngraph("verify", EXAMPLES / name, "--trials", "2", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["roundtrip_exact"] and doc["trials"] == 2 and doc["max_abs_diff"] < 1e-4


def test_verify_inputs_file(tmp_path):
    x = np.random.default_rng(3).standard_normal((7, 64)).astype(np.float32)
    np.savez(tmp_path / "in.npz", pixels=x)
    r = ngraph("verify", EXAMPLES / "mlp.onnx", "--inputs", tmp_path / "in.npz", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"]


def test_permuted_model_really_differs_in_weights_and_not_in_function(tmp_path):
    path = EXAMPLES / "mlp.onnx"
    g = nngraph.convert(path)
    sym = g.random_symmetry(0)
    export(path, g.permute(sym).to_params(), tmp_path / "p.onnx")
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    permuted = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "p.onnx").graph.initializer}
    assert not np.array_equal(original["0.weight"], permuted["0.weight"])
    assert np.array_equal(np.sort(original["0.bias"]), np.sort(permuted["0.bias"]))
    x = {"pixels": np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)}
    np.testing.assert_allclose(run(tmp_path / "p.onnx", x)["logits"], run(path, x)["logits"], rtol=1e-5, atol=1e-5)
    # control: breaking the graph's ties must be caught
    bad = g.permute(sym)
    bad.blocks[1].weight = g.blocks[1].weight
    export(path, bad.to_params(), tmp_path / "bad.onnx")
    assert not np.allclose(run(tmp_path / "bad.onnx", x)["logits"], run(path, x)["logits"], atol=1e-3)


def _hand_model(tmp_path, transB: int, constant_weight: bool):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 4) if transB else (4, 6)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    W2 = rng.standard_normal((6, 3)).astype(np.float32)
    b2 = rng.standard_normal(3).astype(np.float32)
    nodes, inits = [], [numpy_helper.from_array(b, "b"), numpy_helper.from_array(W2, "W2"),
                        numpy_helper.from_array(b2, "b2")]
    if constant_weight:
        nodes.append(helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(W, "W")))
    else:
        inits.append(numpy_helper.from_array(W, "W"))
    nodes += [helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=transB, name="fc1"),
              helper.make_node("Sigmoid", ["h"], ["a"]),
              helper.make_node("MatMul", ["a", "W2"], ["m"], name="fc2"),
              helper.make_node("Add", ["m", "b2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
    path = tmp_path / f"hand_{transB}_{constant_weight}.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("transB", [0, 1])
@pytest.mark.parametrize("constant_weight", [False, True])
def test_gemm_layouts_and_constant_nodes(tmp_path, transB, constant_weight):
    path = _hand_model(tmp_path, transB, constant_weight)
    g = nngraph.convert(path)
    assert g.coverage == 1.0 and g.blocks[0].weight.shape == (6, 4)
    report = verify(path, trials=3)
    assert report.ok and report.roundtrip_exact, report.problems
