"""Per-rule tests: one- or few-node ONNX models per op family, checking the structure each rule
lowers to (neuron sets, block kinds, ties, which groups are free or fixed, pins) and that the
graph is faithful: exact round trip, and random symmetries compute the same function in
onnxruntime (``verify``). Whole-model behaviour is in test_onnx_*.py, pins in test_pins.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nngraph
from nngraph.adapters.onnx.registry import RuleTable, rule, rules_in
from nngraph.verify import verify

MS = "com.microsoft"


def _model(tmp_path, nodes, inputs, outputs, inits, opset=17, ms=False):
    tensors = [numpy_helper.from_array(np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f"
                                       else np.asarray(v), k) for k, v in inits.items()]
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(MS, 1)] if ms else [])
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, tensors), opset_imports=opsets)
    model.ir_version = 8
    if not ms:
        onnx.checker.check_model(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


def _lower(path, **verify_kw):
    """Convert, check accounting and the exact round trip, verify two random symmetries."""
    g = nngraph.convert(path).validate()
    assert g.coverage == 1.0
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    for name, value in g.to_params().items():
        if name in original:
            np.testing.assert_array_equal(value, original[name])
    report = verify(path, trials=2, **verify_kw)
    assert report.ok and report.roundtrip_exact, report.problems
    return g


def _f(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _w(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32) / np.sqrt(shape[0])


def _group(g, s: str) -> str:
    return g.sets[s].group


def _free(g, s: str) -> bool:
    return g.sets[s].group not in g.fixed_groups()


def _kinds(g) -> list[str]:
    return sorted(b.kind for b in g.blocks)


# ------------------------------------------------------------------ dense
def test_gemm_and_matmul(tmp_path, rng):
    """Gemm (transB=1, bias) and MatMul + Add: one dense block each in [out, in] layout, the bias
    attached to the layer's set; hidden sets free, the ends fixed."""
    inits = {"W1": _w(rng, 6, 8), "b1": rng.standard_normal(6), "W2": _w(rng, 6, 3), "b2": rng.standard_normal(3)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["a"], name="act"),
             helper.make_node("MatMul", ["a", "W2"], ["m"], name="fc2"),
             helper.make_node("Add", ["m", "b2"], ["y"], name="fc2/bias")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [2, 8])], [_f("y", [2, 3])], inits))
    assert [(s.name, s.size, s.role) for s in g.sets.values()] == [("x", 8, "input"), ("fc1", 6, "hidden"),
                                                                     ("fc2", 3, "output")]
    assert g.sets["fc1"].activation == "relu" and "bias" in g.sets["fc1"].arrays and "bias" in g.sets["fc2"].arrays
    assert _kinds(g) == ["dense", "dense"]
    assert {b.name: b.weight.data.shape for b in g.blocks} == {"fc1": (6, 8), "fc2": (3, 6)}
    assert _free(g, "fc1") and not _free(g, "x") and not _free(g, "fc2")
    assert not g.meta["pins"] and g.free_fraction == 1.0


def test_matmul_constant_on_the_left(tmp_path, rng):
    """W @ x with the neurons on axis -2 (after a transpose): the weight is already [out, in]."""
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["h"], name="first"),
             helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["W1", "ht"], ["l"], name="left"), helper.make_node("Tanh", ["l"], ["a"]),
             helper.make_node("MatMul", ["W2", "a"], ["y"], name="out")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [2, 3, 4])], [_f("y", [2, 2, 3])],
                      {"W0": _w(rng, 4, 5), "W1": _w(rng, 6, 5), "W2": _w(rng, 2, 6)}))
    assert [(s.name, s.size) for s in g.sets.values()] == [("x", 4), ("first", 5), ("left", 6), ("out", 2)]
    assert next(b for b in g.blocks if b.target == "left").weight.data.shape == (6, 5)
    assert _free(g, "first") and _free(g, "left") and not g.meta["pins"]


# ------------------------------------------------------------------ conv
def test_grouped_and_depthwise_conv(tmp_path, rng):
    """A grouped conv's output permutes within its groups and the groups as blocks (a parent
    group of 2); a depthwise conv ties its output to its input."""
    inits = {"W1": _w(rng, 8, 2, 3, 3), "W2": _w(rng, 8, 1, 3, 3), "b2": rng.standard_normal(8),
             "W3": _w(rng, 3, 8, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], name="grouped", group=2, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["a1"]),
             helper.make_node("Conv", ["a1", "W2", "b2"], ["c2"], name="depthwise", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["a2"]),
             helper.make_node("Conv", ["a2", "W3"], ["y"], name="pointwise")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [1, 4, 5, 5])], [_f("y", [1, 3, 5, 5])], inits))
    assert _kinds(g) == ["conv"] * 3
    grouped = next(b for b in g.blocks if b.target == "grouped")
    assert grouped.attrs["groups"] == 2 and grouped.weight.data.shape == (8, 2, 3, 3)
    parent = g.groups[_group(g, "grouped")].parent
    assert parent is not None and g.groups[parent].size == 2
    assert _group(g, "depthwise") == _group(g, "grouped")          # depthwise: channel c → channel c
    assert "bias" in g.sets["depthwise"].arrays
    assert _free(g, "grouped") and g.free_fraction == 1.0 and not g.meta["pins"]


def test_conv_transpose(tmp_path, rng):
    """ConvTranspose stores [in, out, *k]: the block holds the canonical [out, in, *k]."""
    nodes = [helper.make_node("ConvTranspose", ["x", "W"], ["c"], name="up", strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["a"]), helper.make_node("Conv", ["a", "W2"], ["y"], name="out")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [1, 3, 4, 4])], [_f("y", [1, 2, 9, 9])],
                      {"W": _w(rng, 3, 5, 3, 3), "W2": _w(rng, 2, 5, 1, 1)}))
    up = next(b for b in g.blocks if b.target == "up")
    assert up.weight.data.shape == (5, 3, 3, 3) and up.attrs["strides"] == [2, 2]
    assert g.sets["up"].size == 5 and _free(g, "up")


# ------------------------------------------------------------------ pool
def test_pooling_passes_through_and_flatten_keeps_taps(tmp_path, rng):
    """Pooling makes no sets; a dense layer after Flatten sees each spatial position as a tap of
    its channel ([out, channels, positions])."""
    inits = {"W": _w(rng, 4, 3, 3, 3), "Wf": _w(rng, 16, 5)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["a"]),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "Wf"], ["y"], name="fc")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [1, 3, 4, 4])], [_f("y", [1, 5])], inits))
    assert list(g.sets) == ["x", "conv", "fc"]
    fc = next(b for b in g.blocks if b.target == "fc")
    assert fc.kind == "dense" and fc.weight.data.shape == (5, 4, 4)     # 4 channels × 2·2 positions
    assert _free(g, "conv")


def test_global_pool_and_reduction_over_space(tmp_path, rng):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("ReduceMean", ["p", "axes"], ["r"], keepdims=0),
             helper.make_node("Gemm", ["r", "Wf"], ["y"], name="fc")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [1, 2, 3, 3])], [_f("y", [1, 2])],
                      {"W": _w(rng, 4, 2, 1, 1), "Wf": _w(rng, 4, 2), "axes": np.array([2, 3], np.int64)}, opset=18))
    assert list(g.sets) == ["x", "conv", "fc"] and _free(g, "conv")


# ------------------------------------------------------------------ norm
def test_batchnorm_folds_into_the_conv(tmp_path, rng):
    """BatchNormalization right after a conv nobody else reads: its arrays join the conv's set."""
    inits = {"W": _w(rng, 4, 3, 3, 3), "s": rng.standard_normal(4), "t": rng.standard_normal(4),
             "m": rng.standard_normal(4), "v": rng.random(4) + 0.5, "W2": _w(rng, 2, 4, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["b"], name="bn"),
             helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Conv", ["a", "W2"], ["y"], name="out")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [1, 3, 4, 4])], [_f("y", [1, 2, 4, 4])], inits))
    assert list(g.sets) == ["x", "conv", "out"]
    assert {"bn_scale", "bn_shift", "bn_mean", "bn_var"} <= set(g.sets["conv"].arrays)
    assert g.sets["conv"].attrs["BatchNormalization_epsilon"] == pytest.approx(1e-5)


def test_layernorm_is_a_tied_norm_set(tmp_path, rng):
    inits = {"W1": _w(rng, 5, 6), "g": rng.standard_normal(6), "b": rng.standard_normal(6), "W2": _w(rng, 6, 2)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], name="ln", axis=-1),
             helper.make_node("MatMul", ["n", "W2"], ["y"], name="fc2")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [2, 3, 5])], [_f("y", [2, 3, 2])], inits))
    ln = g.sets["ln"]
    assert ln.role == "norm" and set(ln.arrays) == {"ln_scale", "ln_shift"}
    assert _group(g, "ln") == _group(g, "fc1") and _free(g, "ln")
    assert ("norm", "fc1", "ln") in {(b.kind, b.source, b.target) for b in g.blocks}


def test_group_norm_makes_channel_blocks(tmp_path, rng):
    inits = {"W": _w(rng, 6, 2, 1, 1), "s": rng.standard_normal(6), "t": rng.standard_normal(6),
             "W2": _w(rng, 2, 6, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("GroupNormalization", ["c", "s", "t"], ["n"], name="gn", num_groups=3),
             helper.make_node("Conv", ["n", "W2"], ["y"], name="out")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [1, 2, 3, 3])], [_f("y", [1, 2, 3, 3])], inits, opset=21))
    parent = g.groups[_group(g, "conv")].parent
    assert parent is not None and g.groups[parent].size == 3 and _free(g, "gn")


# ------------------------------------------------------------------ elementwise
def test_residual_sum_ties_its_operands(tmp_path, rng):
    """Add of two activations: a residual set tied to both; the per-channel Mul a tied scale set."""
    inits = {"W0": _w(rng, 4, 6), "W1": _w(rng, 6, 6), "k": rng.standard_normal(6), "W2": _w(rng, 6, 2)}
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["h0"], name="stem"),
             helper.make_node("Relu", ["h0"], ["a0"]),
             helper.make_node("MatMul", ["a0", "W1"], ["h1"], name="branch"),
             helper.make_node("Add", ["a0", "h1"], ["r"], name="residual"),
             helper.make_node("Mul", ["r", "k"], ["s"], name="scale"),
             helper.make_node("MatMul", ["s", "W2"], ["y"], name="head")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [2, 4])], [_f("y", [2, 2])], inits))
    assert g.sets["residual"].role == "residual"
    assert _group(g, "stem") == _group(g, "branch") == _group(g, "residual") == _group(g, "scale")
    assert sorted((b.kind, b.source) for b in g.blocks if b.target == "residual") == [
        ("identity", "branch"), ("identity", "stem")]
    assert next(b for b in g.blocks if b.target == "scale").kind == "scale"
    assert _free(g, "residual") and g.free_fraction == 1.0


def test_activation_in_place_and_prelu_slope(tmp_path, rng):
    """An activation read once is recorded on its set; PRelu's slope is a per-neuron array."""
    inits = {"W1": _w(rng, 3, 5), "slope": rng.random(5), "W2": _w(rng, 5, 2)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("Sigmoid", ["h"], ["a"], name="sig"),
             helper.make_node("PRelu", ["a", "slope"], ["p"], name="prelu"),
             helper.make_node("MatMul", ["p", "W2"], ["y"], name="fc2")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [2, 3])], [_f("y", [2, 2])], inits))
    assert g.sets["fc1"].activation == "sigmoid"
    assert g.sets["prelu"].activation == "prelu" and "prelu_slope" in g.sets["prelu"].arrays
    assert _group(g, "prelu") == _group(g, "fc1")


# ------------------------------------------------------------------ shape ops
def test_concat_split_slice_follow_the_neuron_axis(tmp_path, rng):
    """Two layers concatenated along the neurons, then split and sliced back at other
    boundaries: the sets are split into parts that still move together with their copies."""
    inits = {"Wa": _w(rng, 4, 3), "Wb": _w(rng, 4, 5), "split": np.array([4, 4], np.int64),
             "lo": np.array([6], np.int64), "hi": np.array([8], np.int64), "ax": np.array([1], np.int64),
             "Wc": _w(rng, 4, 2), "Wd": _w(rng, 4, 2), "We": _w(rng, 2, 2)}
    nodes = [helper.make_node("MatMul", ["x", "Wa"], ["a"], name="A"),
             helper.make_node("MatMul", ["x", "Wb"], ["b"], name="B"),
             helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
             helper.make_node("Relu", ["ab"], ["r"]),
             helper.make_node("Split", ["r", "split"], ["s0", "s1"], axis=1, name="split"),
             helper.make_node("Slice", ["r", "lo", "hi", "ax"], ["tail"], name="slice"),
             helper.make_node("MatMul", ["s0", "Wc"], ["c"]), helper.make_node("MatMul", ["s1", "Wd"], ["d"]),
             helper.make_node("MatMul", ["tail", "We"], ["e"]),
             helper.make_node("Sum", ["c", "d", "e"], ["y"])]
    g = _lower(_model(tmp_path, nodes, [_f("x", [2, 4])], [_f("y", [2, 2])], inits))
    a_parts = sorted(s for s in g.sets if s.startswith("A"))
    b_parts = sorted(s for s in g.sets if s.startswith("B"))
    assert [g.sets[s].size for s in a_parts] == [3] and [g.sets[s].size for s in b_parts] == [1, 2, 2]
    assert all(_free(g, s) for s in a_parts + b_parts) and not g.meta["pins"]


def test_reshape_transpose_flatten_to_heads_and_back(tmp_path, rng):
    """Transpose moves the neuron axis; a Reshape splitting it into [heads, dim] makes a parent
    group of the heads; merging back keeps the set."""
    inits = {"W1": _w(rng, 3, 8), "split": np.array([2, 4, 2, 4], np.int64), "merge": np.array([2, 4, 8], np.int64),
             "W2": _w(rng, 8, 2)}
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),           # [2, 3, 4] → [2, 4, 3]
             helper.make_node("MatMul", ["xt", "W1"], ["h"], name="proj"),
             helper.make_node("Reshape", ["h", "split"], ["hs"], name="heads"),
             helper.make_node("Softmax", ["hs"], ["p"], axis=-1),
             helper.make_node("Reshape", ["p", "merge"], ["m"], name="merge"),
             helper.make_node("MatMul", ["m", "W2"], ["y"], name="out")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [2, 3, 4])], [_f("y", [2, 4, 2])], inits))
    assert g.sets["x"].size == 3                      # the input's features are on the axis the MatMul reads
    parent = g.groups[_group(g, "proj")].parent
    assert parent is not None and g.groups[parent].size == 2 and _free(g, "proj")
    assert list(g.sets) == ["x", "proj", "out"] and not g.meta["pins"]


# ------------------------------------------------------------------ attention
def _mha(rng, T=3, H=2, d=4):
    D = H * d
    inits = {"Wq": _w(rng, D, D), "Wk": _w(rng, D, D), "Wv": _w(rng, D, D), "Wo": _w(rng, D, 5),
             "split": np.array([1, T, H, d], np.int64), "merge": np.array([1, T, D], np.int64),
             "scale": np.array(1 / np.sqrt(d), np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "Wq"], ["q0"], name="q"), helper.make_node("Reshape", ["q0", "split"], ["q1"]),
             helper.make_node("Transpose", ["q1"], ["qh"], perm=[0, 2, 1, 3]),
             helper.make_node("MatMul", ["x", "Wk"], ["k0"], name="k"), helper.make_node("Reshape", ["k0", "split"], ["k1"]),
             helper.make_node("Transpose", ["k1"], ["kh"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["x", "Wv"], ["v0"], name="v"), helper.make_node("Reshape", ["v0", "split"], ["v1"]),
             helper.make_node("Transpose", ["v1"], ["vh"], perm=[0, 2, 1, 3]),
             helper.make_node("MatMul", ["qh", "kh"], ["s"], name="scores"),
             helper.make_node("Mul", ["s", "scale"], ["ss"]),
             helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "vh"], ["o0"], name="context"),
             helper.make_node("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["o1", "merge"], ["o"]), helper.make_node("MatMul", ["o", "Wo"], ["y"], name="out")]
    return nodes, inits


def test_matmul_softmax_matmul_attention(tmp_path, rng):
    """Q and K tied, heads a parent group shared by Q, K and V, one head node per head, and a
    diagonal attention block pairing q_i with k_i."""
    nodes, inits = _mha(rng)
    g = _lower(_model(tmp_path, nodes, [_f("x", [1, 3, 8])], [_f("y", [1, 3, 5])], inits))
    assert (g.sets["q"].role, g.sets["k"].role, g.sets["v"].role) == ("query", "key", "value")
    assert _group(g, "q") == _group(g, "k") != _group(g, "v")
    heads = g.groups[_group(g, "q")].parent
    assert heads is not None and g.groups[heads].size == 2 and g.groups[_group(g, "v")].parent == heads
    head_sets = [s for s in g.sets.values() if s.role == "head"]
    assert len(head_sets) == 1 and head_sets[0].size == 2 and head_sets[0].group == heads
    assert ("attention", "q", "k") in {(b.kind, b.source, b.target) for b in g.blocks}
    assert {b.source for b in g.blocks if b.kind == "head"} == {"q", "v"}
    assert all(_free(g, s) for s in ("q", "k", "v")) and not g.meta["pins"]


def test_onnx_attention_op(tmp_path, rng):
    """ONNX Attention (opset 23) on projected [B, T, H·d] inputs: the same structure."""
    D = 8
    inits = {"Wq": _w(rng, D, D), "Wk": _w(rng, D, D), "Wv": _w(rng, D, D), "Wo": _w(rng, D, 3)}
    nodes = [helper.make_node("MatMul", ["x", "Wq"], ["q"], name="q"),
             helper.make_node("MatMul", ["x", "Wk"], ["k"], name="k"),
             helper.make_node("MatMul", ["x", "Wv"], ["v"], name="v"),
             helper.make_node("Attention", ["q", "k", "v"], ["o"], name="attn", q_num_heads=2, kv_num_heads=2),
             helper.make_node("MatMul", ["o", "Wo"], ["y"], name="out")]
    try:
        path = _model(tmp_path, nodes, [_f("x", [1, 3, D])], [_f("y", [1, 3, 3])], inits, opset=23)
    except onnx.checker.ValidationError:
        pytest.skip("this onnx has no opset-23 Attention")
    g = _lower(path)
    assert _group(g, "q") == _group(g, "k") and g.groups[g.groups[_group(g, "q")].parent].size == 2
    assert g.sets["v"].role == "value" and not g.meta["pins"]


# ------------------------------------------------------------------ embedding
def test_gather_from_a_table_is_an_embedding(tmp_path, rng):
    """Gather(table, ids): one fixed token node per row, an embedding block to the free
    embedding dimensions."""
    inits = {"table": rng.standard_normal((10, 6)), "W": _w(rng, 6, 3)}
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "W"], ["y"], name="fc")]
    g = _lower(_model(tmp_path, nodes, [_f("ids", [2, 4], TensorProto.INT64)], [_f("y", [2, 4, 3])], inits))
    tokens = [s for s in g.sets.values() if s.role == "token"]
    assert len(tokens) == 1 and tokens[0].size == 10 and not _free(g, tokens[0].name)
    emb = next(b for b in g.blocks if b.kind == "embedding")
    assert emb.weight.data.shape == (6, 10) and emb.source == tokens[0].name
    assert g.sets[emb.target].size == 6 and _free(g, emb.target) and not g.meta["pins"]


def test_learned_position_table_is_a_per_neuron_array(tmp_path, rng):
    inits = {"W": _w(rng, 4, 6), "pos": rng.standard_normal((1, 3, 6)), "W2": _w(rng, 6, 2)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"),
             helper.make_node("Add", ["h", "pos"], ["p"], name="pos"),
             helper.make_node("MatMul", ["p", "W2"], ["y"], name="out")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [2, 3, 4])], [_f("y", [2, 3, 2])], inits))
    assert g.sets["pos"].arrays["pos"].data.shape == (6, 3) and _group(g, "pos") == _group(g, "fc")


# ------------------------------------------------------------------ recurrent
@pytest.mark.parametrize("op, gates", [("LSTM", "iofc"), ("GRU", "zrh")])
def test_recurrent_gates_share_one_permutation(tmp_path, rng, op, gates):
    """Per gate, a dense block from the input and a recurrent block from the state; all sets of
    one direction tied (one permutation of the hidden units)."""
    H, I, G = 4, 3, len(gates)
    inits = {"W": rng.standard_normal((1, G * H, I)), "R": rng.standard_normal((1, G * H, H)),
             "B": rng.standard_normal((1, 2 * G * H)), "ax": np.array([1], np.int64), "Wo": _w(rng, H, 2)}
    nodes = [helper.make_node(op, ["x", "W", "R", "B"], ["Y"], name="rnn", hidden_size=H),
             helper.make_node("Squeeze", ["Y", "ax"], ["h"]),
             helper.make_node("MatMul", ["h", "Wo"], ["y"], name="head")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [5, 2, I])], [_f("y", [5, 2, 2])], inits))
    gate_sets = [s for s in g.sets.values() if s.role == "gate"]
    assert sorted(s.attrs["gate"] for s in gate_sets) == sorted(gates)
    assert all("bias" in s.arrays and "recurrent_bias" in s.arrays for s in gate_sets)
    assert _kinds(g).count("recurrent") == G and sum(b.kind == "dense" and b.target != "head" for b in g.blocks) == G
    rnn_sets = [s for s in g.sets.values() if s.name.startswith("rnn")]
    assert len({s.group for s in rnn_sets}) == 1 and _free(g, rnn_sets[0].name)
    assert not g.meta["pins"]


# ------------------------------------------------------------------ quantized
def test_qlinear_matmul_keeps_integer_weights_and_per_channel_scales(tmp_path, rng):
    """QLinearMatMul: the int8 weight is the parameter (kept exactly); a per-output-channel weight
    scale is an array of the output set; activation scales are data."""
    N = 4
    inits = {"xs": np.array(0.05, np.float32), "xz": np.array(128, np.uint8),
             "Wq": rng.integers(-20, 20, (3, N)).astype(np.int8), "ws": (rng.random(N) * 0.1 + 0.01).astype(np.float32),
             "wz": np.zeros(N, np.int8), "ys": np.array(0.1, np.float32), "yz": np.array(128, np.uint8),
             "W2": _w(rng, N, 2)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("QLinearMatMul", ["xq", "xs", "xz", "Wq", "ws", "wz", "ys", "yz"], ["yq"], name="qmm"),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["h"]),
             helper.make_node("MatMul", ["h", "W2"], ["y"], name="out")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [2, 3])], [_f("y", [2, 2])], inits))
    qmm = next(b for b in g.blocks if b.target == "qmm")
    assert qmm.kind == "dense" and qmm.weight.data.dtype == np.int8 and qmm.weight.data.shape == (N, 3)
    assert "weight_scale" in g.sets["qmm"].arrays and _free(g, "qmm")
    assert g.to_params()["Wq"].dtype == np.int8


def test_dequantized_weight_is_folded(tmp_path, rng):
    """QDQ: DequantizeLinear of a constant int8 weight is folded into a derived float weight."""
    inits = {"Wq": rng.integers(-50, 50, (3, 5)).astype(np.int8), "s": np.array(0.02, np.float32),
             "z": np.array(0, np.int8), "W2": _w(rng, 5, 2)}
    nodes = [helper.make_node("DequantizeLinear", ["Wq", "s", "z"], ["W"]),
             helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "W2"], ["y"], name="out")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [2, 3])], [_f("y", [2, 2])], inits))
    fc = next(b for b in g.blocks if b.target == "fc")
    assert fc.weight.origin.tensor == "W" and "W" in g.meta["derived"] and _free(g, "fc")


# ------------------------------------------------------------------ control
def test_if_lowers_both_branches_and_ties_their_outputs(tmp_path, rng):
    inits = {"W0": _w(rng, 3, 4), "W2": _w(rng, 4, 2)}

    def branch(name, w):
        body = [helper.make_node("MatMul", ["a", f"W{name}"], [f"o{name}"], name=f"branch_{name}")]
        return helper.make_graph(body, name, [], [_f(f"o{name}", [2, 4])],
                                 [numpy_helper.from_array(w.astype(np.float32), f"W{name}")])

    nodes = [helper.make_node("MatMul", ["x", "W0"], ["h"], name="stem"), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("If", ["cond"], ["o"], name="if", then_branch=branch("t", _w(rng, 4, 4)),
                              else_branch=branch("e", _w(rng, 4, 4))),
             helper.make_node("MatMul", ["o", "W2"], ["y"], name="out")]
    path = _model(tmp_path, nodes, [_f("x", [2, 3]), _f("cond", [], TensorProto.BOOL)], [_f("y", [2, 2])], inits)
    g = _lower(path)
    assert {"Wt", "We"} <= set(g.sources)
    assert _group(g, "branch_t") == _group(g, "branch_e") == _group(g, "if")
    assert _free(g, "if") and not g.meta["pins"]


# ------------------------------------------------------------------ registration
def test_rule_decorator_and_opset_lookup():
    """``@rule`` marks a function for several ops and domains; the table picks the highest
    ``since`` version not above the model's opset, a later rule winning ties."""
    import types

    mod = types.ModuleType("third_party_rules")

    @rule("Foo", "Bar")
    @rule("Foo", domain="my.domain")
    def lower_old(ctx, node):
        pass

    @rule("Foo", since=13)
    def lower_new(ctx, node):
        pass

    lower_old.__module__ = lower_new.__module__ = mod.__name__
    mod.lower_old, mod.lower_new, mod.imported = lower_old, lower_new, test_rule_decorator_and_opset_lookup
    found = rules_in(mod)
    assert [(r.op_type, r.domain, r.since_version) for r in found] == [
        ("Foo", "", 1), ("Bar", "", 1), ("Foo", "my.domain", 1), ("Foo", "", 13)]
    table = RuleTable(found)
    assert table.lookup("", "Foo", 12).lower is lower_old and table.lookup("", "Foo", 18).lower is lower_new
    assert table.lookup("ai.onnx", "Foo", None).lower is lower_new
    assert table.lookup("my.domain", "Foo", 1).lower is lower_old and table.lookup("", "Baz", 18) is None
    override = rule("Bar")(lambda ctx, node: None)
    table.add(override.op_rules[0])
    assert table.lookup("", "Bar", 17).lower is override


def test_builtin_rules_are_registered_by_decorator():
    from nngraph.adapters.onnx.rules import BUILTIN_RULES
    keys = [(r.domain, r.op_type, r.since_version) for r in BUILTIN_RULES]
    assert len(keys) == len(set(keys))
    have = {(r.domain, r.op_type) for r in BUILTIN_RULES}
    assert {("", "Gemm"), ("", "Conv"), ("", "LSTM"), ("", "If"), ("", "Unsqueeze"), (MS, "Gelu"),
            (MS, "EmbedLayerNormalization"), ("", "Attention")} <= have


def test_readme_rule_example_as_a_plugin(tmp_path, rng, install_plugin):
    """The README's *Writing a rule* example, installed as a plugin: Hardmax (pinned without it,
    see test_pins.py) becomes an activation on a tied copy, nothing is pinned and permuted models
    still agree."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### Writing a rule"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("\n```", section.index("```python"))]
    (tmp_path / "site").mkdir(exist_ok=True)
    (tmp_path / "site" / "hardmax_rule_nngraph.py").write_text(code)
    install_plugin("hardmax-rule", {"hardmax_rule": "hardmax_rule_nngraph"})
    inits = {"W1": _w(rng, 4, 6), "W2": _w(rng, 6, 3)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("Hardmax", ["h"], ["m"], name="hard", axis=-1),
             helper.make_node("MatMul", ["m", "W2"], ["y"], name="fc2")]
    g = _lower(_model(tmp_path, nodes, [_f("x", [2, 4])], [_f("y", [2, 3])], inits))
    assert not g.meta["pins"] and g.sets["hard"].activation == "other" and g.sets["hard"].attrs["op"] == "Hardmax"
    assert _group(g, "hard") == _group(g, "fc1") and _free(g, "fc1") and g.free_fraction == 1.0
