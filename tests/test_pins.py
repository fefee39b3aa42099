"""Sound degradation: what the engine cannot follow is pinned locally, never refused.

Each model is hand-built around one structure the engine cannot (or could not) follow. For
every one: the conversion succeeds with coverage 1, the pin names the node and why, the sets
away from it stay free, the round trip is exact and permuted models compute the same function
in onnxruntime; ``strict=True`` refuses instead.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nngraph
from conftest import ngraph
from nngraph.errors import UnsupportedModelError
from nngraph.verify import verify


def _save(tmp_path, nodes, inputs, outputs, inits, name="m.onnx", opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f"
                                                       else np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _w(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32) / np.sqrt(shape[0])


def _fin(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _mlp_around(tmp_path, rng, middle: list, mid_out: str, mid_inits: dict | None = None):
    """x → Gemm 16 → Relu → Gemm 16 → Relu → [middle] → Gemm 16 → Relu → Gemm 4: the layers
    away from the middle op must keep their symmetry."""
    inits = {"W1": _w(rng, 8, 16), "W2": _w(rng, 16, 16), "W3": _w(rng, 16, 16), "W4": _w(rng, 16, 4),
             "b1": rng.standard_normal(16), "b3": rng.standard_normal(16), **(mid_inits or {})}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h1"], name="fc1"),
             helper.make_node("Add", ["h1", "b1"], ["h1b"], name="fc1/bias"),
             helper.make_node("Relu", ["h1b"], ["a1"], name="act1"),
             helper.make_node("MatMul", ["a1", "W2"], ["h2"], name="fc2"),
             helper.make_node("Relu", ["h2"], ["a2"], name="act2"),
             *middle,
             helper.make_node("MatMul", [mid_out, "W3"], ["h3"], name="fc3"),
             helper.make_node("Add", ["h3", "b3"], ["h3b"], name="fc3/bias"),
             helper.make_node("Relu", ["h3b"], ["a3"], name="act3"),
             helper.make_node("MatMul", ["a3", "W4"], ["y"], name="fc4")]
    return _save(tmp_path, nodes, [_fin("x", [2, 8])], [_fin("y", [2, 4])], inits)


def _free_sets(g) -> set[str]:
    fixed = g.fixed_groups()
    return {s.name for s in g.sets.values() if s.group not in fixed}


def _check_sound(path, **kw):
    g = nngraph.convert(path).validate()
    assert g.coverage == 1.0
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    for name, value in g.to_params().items():
        np.testing.assert_array_equal(value, original[name])
    report = verify(path, trials=3, **kw)
    assert report.ok, report.problems
    assert report.roundtrip_exact
    return g, report


def test_op_without_rule_is_pinned_locally(tmp_path, rng):
    path = _mlp_around(tmp_path, rng, [helper.make_node("Hardmax", ["a2"], ["m"], name="hard", axis=-1)], "m")
    g, report = _check_sound(path)
    pins = g.meta["pins"]
    assert [(p["node"], p["op"]) for p in pins] == [("hard", "Hardmax")]
    assert "no lowering rule" in pins[0]["reason"]
    free = _free_sets(g)
    # the first layer and the layer after the pinned op keep their symmetry; the sets next to it do not
    assert any(s.startswith("fc1") for s in free) and any(s.startswith("fc3") for s in free)
    assert not any(s.startswith("fc2") for s in free)
    assert 0 < g.free_fraction < 1
    assert max(report.groups_moved) >= 2
    with pytest.raises(UnsupportedModelError, match="hard.*Hardmax"):
        nngraph.convert(path, strict=True)


def test_opaque_parameters_round_trip(tmp_path, rng):
    """An op with parameters and no rule (a ScatterElements writing activations into a weight
    tensor): its parameters stay in the graph as an opaque block, exactly."""
    idx = np.tile(np.arange(16, dtype=np.int64), (2, 1))
    mid = [helper.make_node("ScatterElements", ["T", "idx", "a2"], ["m"], name="scatter", axis=1)]
    path = _mlp_around(tmp_path, rng, mid, "m", {"T": rng.standard_normal((2, 16)), "idx": idx})
    g, _ = _check_sound(path)
    opaque = [b for b in g.blocks if b.kind == "opaque"]
    assert len(opaque) == 1 and opaque[0].weight.origin.tensor == "T"
    assert g.meta["pins"][0]["parameters"] == 32
    assert nngraph.load  # the .ngraph file keeps them too
    nngraph.save(g, tmp_path / "m.ngraph")
    back = nngraph.load(tmp_path / "m.ngraph")
    np.testing.assert_array_equal(back.to_params()["T"], g.to_params()["T"])
    assert back.meta["pins"] == g.meta["pins"] and back.free_fraction == g.free_fraction


def test_rule_failure_is_pinned_and_lowering_starts_over(tmp_path, rng):
    """Reflect-padding the neuron axis copies neurons: the Pad rule refuses it, the engine pins it."""
    pads = np.array([0, 2, 0, 2], np.int64)
    mid = [helper.make_node("Pad", ["a2", "pads"], ["p"], name="pad", mode="reflect")]
    path = _mlp_around(tmp_path, rng, mid, "p", {"pads": pads, "W3": _w(rng, 20, 16)})
    g, _ = _check_sound(path)
    assert [p["op"] for p in g.meta["pins"]] == ["Pad"] and "reflect" in g.meta["pins"][0]["reason"]
    assert any(s.startswith("fc1") for s in _free_sets(g)) and any(s.startswith("fc3") for s in _free_sets(g))


def test_constant_pad_of_channels_pins_only_the_pad_range(tmp_path, rng):
    pads = np.array([0, 2, 0, 3], np.int64)
    mid = [helper.make_node("Pad", ["a2", "pads"], ["p"], name="pad")]
    path = _mlp_around(tmp_path, rng, mid, "p", {"pads": pads, "W3": _w(rng, 21, 16)})
    g, _ = _check_sound(path)
    assert not g.meta["pins"] and g.free_fraction < 1
    free = _free_sets(g)
    assert {s for s in g.sets if s.startswith("pad")} & free == set()
    assert any(s.startswith("fc2") for s in free)


def test_concat_of_multi_set_activations_along_tokens(tmp_path, rng):
    """Two branches, each a concatenation of two sets along channels, concatenated along tokens
    (detection heads): tied set by set, not refused."""
    inits = {"Wa": _w(rng, 8, 3), "Wb": _w(rng, 8, 5), "Wc": _w(rng, 8, 3), "Wd": _w(rng, 8, 5),
             "Wo": _w(rng, 8, 2)}
    nodes = [helper.make_node("MatMul", ["x1", "Wa"], ["a"]), helper.make_node("MatMul", ["x1", "Wb"], ["b"]),
             helper.make_node("MatMul", ["x2", "Wc"], ["c"]), helper.make_node("MatMul", ["x2", "Wd"], ["d"]),
             helper.make_node("Concat", ["a", "b"], ["ab"], axis=2), helper.make_node("Concat", ["c", "d"], ["cd"], axis=2),
             helper.make_node("Concat", ["ab", "cd"], ["t"], axis=1, name="tokens"),
             helper.make_node("Relu", ["t"], ["r"]), helper.make_node("MatMul", ["r", "Wo"], ["y"])]
    path = _save(tmp_path, nodes, [_fin("x1", [2, 3, 8]), _fin("x2", [2, 4, 8])], [_fin("y", [2, 7, 2])], inits)
    g, _ = _check_sound(path)
    assert not g.meta["pins"] and g.free_fraction == 1.0


def test_dynamic_feature_axis_sized_from_the_first_layer(tmp_path, rng):
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "W2"], ["y"], name="fc2")]
    path = _save(tmp_path, nodes, [_fin("x", ["batch", "features"])], [_fin("y", ["batch", 3])],
                 {"W1": _w(rng, 6, 10), "W2": _w(rng, 10, 3)})
    g = nngraph.convert(path)
    assert [s.size for s in g.sets.values()] == [6, 10, 3] and not g.meta["pins"]
    assert g.free_fraction == 1.0


def test_cli_reports_pins(tmp_path, rng):
    import json
    path = _mlp_around(tmp_path, rng, [helper.make_node("Hardmax", ["a2"], ["m"], name="hard", axis=-1)], "m")
    r = ngraph("convert", path, "-o", tmp_path / "m.ngraph", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["coverage"] == 1.0 and 0 < doc["free_fraction"] < 1 and doc["pins"][0]["op"] == "Hardmax"
    r = ngraph("convert", path, "-o", tmp_path / "s.ngraph", "--strict")
    assert r.returncode == 4 and "Hardmax" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.ngraph").exists()
    r = ngraph("info", tmp_path / "m.ngraph", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["pins"][0]["node"] == "hard"


def test_from_torch_at_package_level():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    module = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 2))
    g = nngraph.from_torch(module, (torch.randn(3, 5),))
    assert [s.size for s in g.sets.values()] == [5, 7, 2] and g.coverage == 1.0 and g.free_fraction == 1.0
    assert set(g.to_params()) == set(module.state_dict())


def test_gru_with_run_time_initial_state(tmp_path, rng):
    """initial_h fed at run time: the state's hidden units are pinned, the weights recorded."""
    H, I = 6, 4
    nodes = [helper.make_node("MatMul", ["x", "Win"], ["xi"], name="embed"),
             helper.make_node("GRU", ["xi", "W", "R", "B", "", "h0"], ["y", "hT"], name="gru", hidden_size=H),
             helper.make_node("Squeeze", ["hT", "ax0"], ["h"]),
             helper.make_node("MatMul", ["h", "Wout"], ["out"], name="head")]
    inits = {"Win": _w(rng, 3, I), "W": rng.standard_normal((1, 3 * H, I)), "R": rng.standard_normal((1, 3 * H, H)),
             "B": rng.standard_normal((1, 6 * H)), "Wout": _w(rng, H, 2), "ax0": np.array([0], np.int64)}
    path = _save(tmp_path, nodes, [_fin("x", [5, 2, 3]), _fin("h0", [1, 2, H])], [_fin("out", [2, 2])], inits)
    g, _ = _check_sound(path)
    assert [p["op"] for p in g.meta["pins"]] == ["GRU"] and "initial_h" in g.meta["pins"][0]["reason"]
    assert sum(b.kind == "recurrent" for b in g.blocks) == 3          # weights still recorded as recurrent blocks
    assert any(s.startswith("embed") for s in _free_sets(g))           # the layer before stays free
    with pytest.raises(UnsupportedModelError, match="initial_h"):
        nngraph.convert(path, strict=True)


def _conv(name, x, w, y, **kw):
    return helper.make_node("Conv", [x, w], [y], name=name, pads=[1, 1, 1, 1], **kw)


def test_channel_split_of_a_tied_set(tmp_path, rng):
    """YOLOv8's C2f: a conv, SiLU (x · sigmoid x ties two sets), split into halves, one half
    through a bottleneck, everything concatenated: the tie group splits, both halves stay free."""
    inits = {"W1": rng.standard_normal((8, 3, 3, 3)), "Wb": rng.standard_normal((4, 4, 3, 3)),
             "W2": rng.standard_normal((2, 12, 3, 3)), "split": np.array([4, 4], np.int64)}
    nodes = [_conv("cv1", "x", "W1", "c1"), helper.make_node("Sigmoid", ["c1"], ["sg"]),
             helper.make_node("Mul", ["c1", "sg"], ["a"], name="cv1/act/Mul"),
             helper.make_node("Split", ["a", "split"], ["a0", "a1"], axis=1, name="split"),
             _conv("bottleneck", "a1", "Wb", "bc"), helper.make_node("Relu", ["bc"], ["b"]),
             helper.make_node("Concat", ["a0", "a1", "b"], ["cat"], axis=1),
             _conv("cv2", "cat", "W2", "y")]
    path = _save(tmp_path, nodes, [_fin("x", [1, 3, 6, 6])], [_fin("y", [1, 2, 6, 6])], inits, opset=18)
    g, _ = _check_sound(path)
    assert not g.meta["pins"] and g.free_fraction == 1.0
    assert sum(1 for s in g.sets if s.startswith("cv1") and not s.startswith("cv1/")) == 2   # cv1 split in two


def test_residual_added_to_part_of_the_channels(tmp_path, rng):
    """As in the reference CNN zoo: a block's input added to the first channels of a wider output."""
    inits = {"W1": rng.standard_normal((4, 3, 3, 3)), "W2": rng.standard_normal((6, 4, 3, 3)),
             "W3": rng.standard_normal((2, 6, 3, 3)), "lo": np.array([0], np.int64), "hi": np.array([4], np.int64),
             "ax": np.array([1], np.int64), "lo2": np.array([4], np.int64), "hi2": np.array([6], np.int64),
             "W4": rng.standard_normal((2, 6, 3, 3))}
    nodes = [_conv("c1", "x", "W1", "h1"), helper.make_node("Relu", ["h1"], ["a"]),
             _conv("c2", "a", "W2", "h2"), helper.make_node("Relu", ["h2"], ["b"]),
             _conv("side", "b", "W4", "y2"),                  # b is consumed whole before it is sliced
             helper.make_node("Slice", ["b", "lo", "hi", "ax"], ["b0"]),
             helper.make_node("Slice", ["b", "lo2", "hi2", "ax"], ["b1"]),
             helper.make_node("Add", ["b0", "a"], ["r"], name="residual"),
             helper.make_node("Concat", ["r", "b1"], ["cat"], axis=1),
             _conv("c3", "cat", "W3", "y")]
    path = _save(tmp_path, nodes, [_fin("x", [1, 3, 6, 6])], [_fin("y", [1, 2, 6, 6]), _fin("y2", [1, 2, 6, 6])],
                 inits, opset=18)
    g, _ = _check_sound(path)
    assert not g.meta["pins"] and g.free_fraction == 1.0


def test_einsum_forms_with_a_constant_operand(tmp_path, rng):
    """Keras MultiHeadAttention's kernels: a projection into [heads, head_dim] and back out of it
    ('abcd,cde->abe' contracts the heads and the head dimension together), and an ellipsis form."""
    inits = {"Wq": rng.standard_normal((8, 2, 3)), "Wo": rng.standard_normal((2, 3, 5)), "Wf": _w(rng, 5, 4)}
    nodes = [helper.make_node("Einsum", ["x", "Wq"], ["q"], equation="abc,cde->abde", name="query"),
             helper.make_node("Relu", ["q"], ["r"]),
             helper.make_node("Einsum", ["r", "Wo"], ["o"], equation="abcd,cde->abe", name="out_proj"),
             helper.make_node("Tanh", ["o"], ["t"]),
             helper.make_node("Einsum", ["t", "Wf"], ["y"], equation="...i,ij->...j", name="final")]
    path = _save(tmp_path, nodes, [_fin("x", [2, 3, 8])], [_fin("y", [2, 3, 4])], inits)
    g, _ = _check_sound(path)
    assert not g.meta["pins"] and g.free_fraction == 1.0
    assert [b.kind for b in g.blocks].count("dense") == 3


def test_reshape_with_symbolic_batch_spelled_out_by_the_target(tmp_path, rng):
    """TorchScript exports: ('unk__1', 8, 32) reshaped to [1, 8, -1, 8] — the target fixes the
    batch to 1, so the 32 neurons split into 4 heads of 8."""
    inits = {"W1": _w(rng, 16, 32), "W2": _w(rng, 32, 4), "split": np.array([1, 8, -1, 8], np.int64),
             "merge": np.array([1, 8, 32], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("Reshape", ["h", "split"], ["hs"], name="heads"),
             helper.make_node("Softmax", ["hs"], ["sm"], axis=-1),
             helper.make_node("Reshape", ["sm", "merge"], ["hm"], name="merge"),
             helper.make_node("MatMul", ["hm", "W2"], ["y"], name="fc2")]
    path = _save(tmp_path, nodes, [_fin("x", ["unk__1", 8, 16])], [_fin("y", ["unk__1", 8, 4])], inits)
    g = nngraph.convert(path).validate()
    assert not g.meta["pins"] and g.free_fraction == 1.0
    assert any(grp.size == 4 for grp in g.groups.values())      # the four heads
    x = {"x": rng.standard_normal((1, 8, 16)).astype(np.float32)}
    report = verify(path, trials=3, inputs=x)
    assert report.ok, report.problems


def test_symbolic_minus_one_cancels_the_batch():
    from nngraph.adapters.onnx.rules.shape import infer_minus_one
    assert infer_minus_one(("B", 8, 4, 4), ["B", None]) == 128
    assert infer_minus_one(("B", "T", 32), ["B", "T", 4, None]) == 8
    assert infer_minus_one(("B", "T", 32), ["B", None, 32]) == "T"
    assert infer_minus_one(("B", "T", 32), [None, 4]) is None


def _attention_with_bias(tmp_path, rng, mask_shape):
    """Two heads of 4; the scores get a per-head position bias (a parameter) plus a run-time mask."""
    T = 3
    inits = {"Wq": _w(rng, 8, 8), "Wk": _w(rng, 8, 8), "Wv": _w(rng, 8, 8), "Wo": _w(rng, 8, 5),
             "bias": rng.standard_normal((1, 2, T, T)), "split": np.array([1, T, 2, 4], np.int64),
             "merge": np.array([1, T, 8], np.int64), "neg": np.array(-1e4, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "Wq"], ["q0"]), helper.make_node("Reshape", ["q0", "split"], ["q1"]),
             helper.make_node("Transpose", ["q1"], ["q"], perm=[0, 2, 1, 3]),
             helper.make_node("MatMul", ["x", "Wk"], ["k0"]), helper.make_node("Reshape", ["k0", "split"], ["k1"]),
             helper.make_node("Transpose", ["k1"], ["k"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["x", "Wv"], ["v0"]), helper.make_node("Reshape", ["v0", "split"], ["v1"]),
             helper.make_node("Transpose", ["v1"], ["v"], perm=[0, 2, 1, 3]),
             helper.make_node("MatMul", ["q", "k"], ["s"], name="scores"),
             helper.make_node("Cast", ["mask"], ["mb"], to=TensorProto.BOOL),
             helper.make_node("Where", ["mb", "bias", "neg"], ["bm"], name="bias+mask"),
             helper.make_node("Add", ["s", "bm"], ["sb"], name="biased"),
             helper.make_node("Softmax", ["sb"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["o0"]), helper.make_node("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["o1", "merge"], ["o"]), helper.make_node("MatMul", ["o", "Wo"], ["y"])]
    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, list(mask_shape))
    return _save(tmp_path, nodes, [_fin("x", [1, T, 8]), mask], [_fin("y", [1, T, 5])], inits)


def test_position_bias_plus_mask_keeps_heads(tmp_path, rng):
    """T5 with an attention mask: the mask added to the per-head bias does not vary across heads,
    so the bias stays a parameter of the heads and the heads stay free."""
    g, report = _check_sound(_attention_with_bias(tmp_path, rng, (1, 1, 1, 3)))
    assert not g.meta["pins"] and g.free_fraction == 1.0
    heads = [s for s in g.sets.values() if s.role == "head"]
    assert heads and "score_add" in heads[0].arrays


def test_run_time_data_varying_across_heads_is_pinned(tmp_path, rng):
    """Control: a mask that differs per head would not move with the heads — pinned, still sound."""
    g, report = _check_sound(_attention_with_bias(tmp_path, rng, (1, 2, 1, 3)))
    assert any("varies across heads" in p["reason"] for p in g.meta["pins"])


def test_bidirectional_directions_sliced_apart_and_batch_sized_zero_state(tmp_path, rng):
    """tf2onnx's Bidirectional(LSTM): a zero initial state built from the batch size (Shape →
    ConstantOfShape, then Concat of both directions — data, not a parameter), and Y sliced into
    its directions, each squeezed and read by its own layer."""
    H, I = 4, 3
    inits = {"W": rng.standard_normal((2, 4 * H, I)), "R": rng.standard_normal((2, 4 * H, H)),
             "Wf": _w(rng, H, 2), "Wb": _w(rng, H, 2), "one": np.array([1], np.int64), "zero": np.array([0], np.int64),
             "two": np.array([2], np.int64), "hdim": np.array([H], np.int64), "ax1": np.array([1], np.int64)}
    nodes = [helper.make_node("Shape", ["x"], ["shp"]),
             helper.make_node("Slice", ["shp", "one", "two", "zero"], ["batch"]),
             helper.make_node("Concat", ["one", "batch", "hdim"], ["zshape"], axis=0),
             helper.make_node("ConstantOfShape", ["zshape"], ["z"]),
             helper.make_node("Concat", ["z", "z"], ["h0"], axis=0, name="state"),
             helper.make_node("LSTM", ["x", "W", "R", "", "", "h0", "h0"], ["y"], name="lstm", hidden_size=H,
                              direction="bidirectional"),
             helper.make_node("Slice", ["y", "zero", "one", "ax1"], ["yf"]), helper.make_node("Squeeze", ["yf", "ax1"], ["sf"]),
             helper.make_node("Slice", ["y", "one", "two", "ax1"], ["yb"]), helper.make_node("Squeeze", ["yb", "ax1"], ["sb"]),
             helper.make_node("MatMul", ["sf", "Wf"], ["of"]), helper.make_node("MatMul", ["sb", "Wb"], ["ob"]),
             helper.make_node("Add", ["of", "ob"], ["out"])]
    path = _save(tmp_path, nodes, [_fin("x", [5, "batch", I])], [_fin("out", [5, "batch", 2])], inits)
    g, _ = _check_sound(path)
    assert not g.meta["pins"] and g.free_fraction == 1.0
    assert "state" not in g.sources and "state:0" not in g.sources       # the zero state is data


def test_one_hot_lookup_and_normalization_gain(tmp_path, rng):
    """jax2tf exports: an embedding as OneHot → MatMul, and a layer norm whose gain multiplies
    rsqrt(var) before the activations do (rsqrt(var) · γ)."""
    inits = {"E": rng.standard_normal((10, 6)), "gamma": rng.standard_normal(6) + 2, "W": _w(rng, 6, 3),
             "depth": np.array(10, np.int64), "vals": np.array([0, 1], np.float32), "ax": np.array([-1], np.int64),
             "eps": np.array(1e-5, np.float32)}
    nodes = [helper.make_node("OneHot", ["ids", "depth", "vals"], ["oh"], axis=-1),
             helper.make_node("MatMul", ["oh", "E"], ["e"], name="embed"),
             helper.make_node("ReduceMean", ["e", "ax"], ["mu"]), helper.make_node("Sub", ["e", "mu"], ["c"]),
             helper.make_node("Mul", ["c", "c"], ["c2"]), helper.make_node("ReduceMean", ["c2", "ax"], ["var"]),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Reciprocal", ["sd"], ["rs"]), helper.make_node("Mul", ["rs", "gamma"], ["g"], name="gain"),
             helper.make_node("Mul", ["c", "g"], ["n"]), helper.make_node("MatMul", ["n", "W"], ["y"])]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 4])
    path = _save(tmp_path, nodes, [ids], [_fin("y", [2, 4, 3])], inits, opset=18)
    g, _ = _check_sound(path)
    assert not g.meta["pins"] and g.free_fraction == 1.0
    assert any(b.weight is not None and b.weight.origin and b.weight.origin.tensor == "gamma" for b in g.blocks) or \
        any(p.origin and p.origin.tensor == "gamma" for s in g.sets.values() for p in s.arrays.values())


def test_reshape_targets_computed_from_symbolic_shapes(tmp_path, rng):
    """TorchScript exports with dynamic axes build reshape targets from Shape → Gather →
    Unsqueeze → Concat of symbolic dims: followed entry by entry (heads split and merged back)."""
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    inits = {"W1": _w(rng, 8, 8), "W2": _w(rng, 8, 3), "i0": np.array(0, np.int64), "i1": np.array(1, np.int64), "ax0": i64(0),
             "m1": i64(-1), "four": i64(4)}

    def dim(src, idx, out):
        return [helper.make_node("Shape", [src], [f"{out}_s"]), helper.make_node("Gather", [f"{out}_s", idx], [f"{out}_g"]),
                helper.make_node("Unsqueeze", [f"{out}_g", "ax0"], [out])]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             *dim("h", "i0", "b"), *dim("h", "i1", "t"),
             helper.make_node("Concat", ["b", "t", "m1", "four"], ["split"], axis=0),
             helper.make_node("Reshape", ["h", "split"], ["hs"], name="heads"),
             helper.make_node("Softmax", ["hs"], ["sm"], axis=-1),
             *dim("sm", "i0", "b2"), *dim("sm", "i1", "t2"),
             helper.make_node("Concat", ["b2", "t2", "m1"], ["merge"], axis=0),
             helper.make_node("Reshape", ["sm", "merge"], ["hm"], name="merge"),
             helper.make_node("MatMul", ["hm", "W2"], ["y"], name="fc2")]
    path = _save(tmp_path, nodes, [_fin("x", ["batch", "seq", 8])], [_fin("y", ["batch", "seq", 3])], inits)
    g, _ = _check_sound(path)
    assert not g.meta["pins"] and g.free_fraction == 1.0
    assert any(grp.size == 2 for grp in g.groups.values())          # two heads of four


def test_rotary_computed_at_run_time(tmp_path, rng):
    """Dynamic-axes LLaMA exports: cos/sin of positions computed at run time multiply the head
    dimensions (which become rigid), rotate_half slices with bounds read off the shape; heads
    stay free."""
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    inits = {"Wq": _w(rng, 8, 8), "Wo": _w(rng, 8, 3), "split": i64(1, -1, 2, 4), "merge": i64(1, -1, 8),
             "inv": np.array([1.0, 0.5, 0.25, 0.125], np.float32), "i1": np.array(1, np.int64),
             "im1": np.array(-1, np.int64), "zero": np.array(0, np.int64), "one": np.array(1, np.int64),
             "two": np.array(2, np.int64), "big": i64(1 << 30), "ax": i64(-1), "ax0": i64(0)}
    nodes = [helper.make_node("MatMul", ["x", "Wq"], ["h"]), helper.make_node("Reshape", ["h", "split"], ["hs"]),
             helper.make_node("Transpose", ["hs"], ["q"], perm=[0, 2, 1, 3]),
             helper.make_node("Shape", ["x"], ["xs"]), helper.make_node("Gather", ["xs", "i1"], ["T"]),
             helper.make_node("Range", ["zero", "T", "one"], ["pos"]), helper.make_node("Cast", ["pos"], ["posf"], to=1),
             helper.make_node("Unsqueeze", ["posf", "ax"], ["pos2"]),
             helper.make_node("Mul", ["pos2", "inv"], ["ang"]), helper.make_node("Cos", ["ang"], ["cos"]),
             helper.make_node("Mul", ["q", "cos"], ["qc"], name="rope_cos"),
             helper.make_node("Shape", ["q"], ["qs"]), helper.make_node("Gather", ["qs", "im1"], ["d"]),
             helper.make_node("Div", ["d", "two"], ["half"]), helper.make_node("Unsqueeze", ["half", "ax0"], ["h1"]),
             helper.make_node("Slice", ["q", "h1", "big", "ax"], ["x2"], name="rot_hi"),
             helper.make_node("Slice", ["q", "ax0", "h1", "ax"], ["x1"], name="rot_lo"),
             helper.make_node("Neg", ["x2"], ["nx2"]),
             helper.make_node("Concat", ["nx2", "x1"], ["rot"], axis=-1),
             helper.make_node("Add", ["qc", "rot"], ["qr"]),
             helper.make_node("Transpose", ["qr"], ["o1"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["o1", "merge"], ["o"]), helper.make_node("MatMul", ["o", "Wo"], ["y"])]
    path = _save(tmp_path, nodes, [_fin("x", [1, "T", 8])], [_fin("y", [1, "T", 3])], inits)
    g, _ = _check_sound(path)
    assert not [p for p in g.meta["pins"] if p["parameters"] == 0], g.meta["pins"]
    assert any(grp.rigid for grp in g.groups.values()) and g.free_fraction > 0


@pytest.mark.parametrize("name", ["test_BatchNorm2d_eval", "test_GLU"])
def test_opset6_models_verify_through_an_upgraded_copy(name):
    """onnxruntime has no kernels before opset 7: verify runs the same graph converted to opset 7."""
    import os
    path = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "pytorch-converted" / name / "model.onnx"
    if not path.exists():
        pytest.skip("not shipped with this onnx")
    report = verify(path, trials=1, randomize=True)
    assert report.ok and report.roundtrip_exact, report.problems


def test_written_ir3_model_converts_like_its_source(tmp_path):
    """Old (IR 3) models whose weights come from ConstantOfShape: written back with weights as
    initializers, each is declared as a graph input with its shape (not twice), so the written
    model converts to the same graph — a permuted copy aligns back to distance 0."""
    import os
    from nngraph.adapters.onnx import export
    from nngraph.graph.randomize import randomize
    path = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light" / "light_squeezenet.onnx"
    g = randomize(nngraph.convert(path), 0)
    export(path, g.to_params(), tmp_path / "base.onnx")
    export(path, g.permute(g.random_symmetry(3)).to_params(), tmp_path / "perm.onnx")
    written = onnx.load(tmp_path / "base.onnx")
    names = [t.name for t in written.graph.initializer]
    assert len(names) == len(set(names))
    a, b = nngraph.convert(tmp_path / "base.onnx"), nngraph.convert(tmp_path / "perm.onnx")
    assert list(a.sets) == list(g.sets) and a.free_fraction == g.free_fraction
    assert nngraph.align(a, b, method="weight").distance_after == 0


def test_nonzero_of_an_activation_pins_it(tmp_path):
    """NonZero's indices depend on the order of the neurons it reads: summed and added to the output,
    a permutation of the hidden neurons would change them."""
    from onnxbuild import Builder
    b = Builder(61)
    h = b.op("Relu", [b.lin("x", 8, 8)])
    nz = b.op("NonZero", [h])
    aux = b.op("Cast", [b.op("ReduceSum", [b.op("Gather", [nz, b.const(np.int64(1))], axis=0)], keepdims=1)], to=1)
    path = b.save(tmp_path / "m.onnx", [("x", [4, 8])], b.op("Add", [b.lin(h, 8, 8), aux]), [4, 8])
    report = verify(path, trials=5)
    assert report.ok, report.problems
