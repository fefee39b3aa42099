"""Quantized models from onnxruntime's own quantizers (tests/fixtures/make_quant_fixture.py):
QDQ, QOperator (QLinearConv, QLinearMatMul, QGemm, QLinearAdd) and dynamic quantization
(MatMulInteger, ConvInteger, DynamicQuantizeLSTM). Integer weights are parameters kept exactly;
per-channel weight scales and zero points permute with their channels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import nngraph
from nngraph.verify import verify

QUANT = Path(__file__).parent / "fixtures" / "quant"
MODELS = sorted(p.name for p in QUANT.glob("*.onnx"))


@pytest.mark.parametrize("name", MODELS)
def test_quantized_models_convert_and_verify(name):
    path = QUANT / name
    g = nngraph.convert(path)
    assert g.coverage == 1.0 and not g.meta["pins"], g.meta["pins"]
    assert g.free_fraction > 0.4
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    ints = [n for n, t in g.sources.items() if np.dtype(t.dtype).kind in "iu"]
    assert ints or "qdq" in name, "integer weights are parameters of the graph"   # QDQ: folded DequantizeLinear
    params = g.to_params()
    for n in ints:
        assert params[n].dtype == original[n].dtype
        np.testing.assert_array_equal(params[n], original[n])
    report = verify(path, trials=2)
    assert report.ok and report.roundtrip_exact, report.problems
    assert max(report.groups_moved) > 0


def test_per_channel_weight_scales_are_arrays_of_their_channels():
    g = nngraph.convert(QUANT / "mlp_dynamic_pc.onnx")
    scaled = [s for s in g.sets.values() if any("scale" in b.weight.origin.tensor for b in g.blocks
                                                if b.target == s.name and b.weight is not None and b.weight.origin)]
    assert scaled, "the per-channel scale of each layer multiplies its neurons one by one"
    assert all("weight_zero_point" in s.arrays for s in g.sets.values() if s.name.endswith("_quant"))


def test_dynamic_lstm_keeps_gates():
    g = nngraph.convert(QUANT / "lstm_dynamic.onnx")
    layers = sum(n.op_type == "DynamicQuantizeLSTM" for n in onnx.load(QUANT / "lstm_dynamic.onnx").graph.node)
    assert layers and sum(b.kind == "recurrent" for b in g.blocks) == 4 * layers
    assert all(np.dtype(b.weight.data.dtype).kind == "i" for b in g.blocks if b.kind == "recurrent")
