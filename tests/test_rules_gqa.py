"""Grouped-query and multi-query attention in the ONNX engine: tiny attention layers built with
``onnx.helper`` in the node sequences the exporters write (TorchScript's and dynamo's
``repeat_kv`` — Unsqueeze → Expand → Reshape — and the ``Attention`` op), checked for the
structure the safetensors adapter gives GQA (queries split into one set per query slot, each
tied to the keys; key/value heads as blocks; one head node per key/value head), for free
key/value neurons, and with ``verify`` (permuted models compute the same function in
onnxruntime). Multi-query attention (one key/value head, no heads axis) is followed through
repeat_kv, Tile, Concat, broadcasting and Attention, and through a real transformers export with
rotary keys. Repeats the engine cannot follow (copies before the heads: head h reads key/value
head h mod G) stay pinned, and still verify."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nngraph
from nngraph.verify import verify

B, T, D = 2, 3, 8          # batch, tokens, model width


def _w(rng, *shape):
    return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def _i(*v):
    return np.array(v, np.int64)


def _save(tmp_path, nodes, inits, opset=17):
    tensors = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    graph = helper.make_graph(nodes, "gqa", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, T, 5])], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    onnx.checker.check_model(model)
    path = tmp_path / "gqa.onnx"
    onnx.save(model, path)
    return path


def _projections(rng, H, G, d, bias=True):
    """q/k/v projections (Qwen2-style biases) split into heads [B, heads, T, d]; rotary-free."""
    inits = {"Wq": _w(rng, D, H * d), "Wk": _w(rng, D, G * d), "Wv": _w(rng, D, G * d), "Wo": _w(rng, H * d, 5),
             "bq": rng.standard_normal(H * d).astype(np.float32), "bk": rng.standard_normal(G * d).astype(np.float32),
             "bv": rng.standard_normal(G * d).astype(np.float32),
             "qshape": _i(B, T, H, d), "kvshape": _i(B, T, G, d), "merge": _i(B, T, H * d),
             "scale": np.array(d ** -0.25, np.float32), "ax2": _i(2)}
    nodes = []
    for name, heads in (("q", H), ("k", G), ("v", G)):
        W, shape = f"W{name}", "qshape" if name == "q" else "kvshape"
        nodes.append(helper.make_node("MatMul", ["x", W], [f"{name}0"], name=f"{name}_proj"))
        src = f"{name}0"
        if bias:
            nodes.append(helper.make_node("Add", [src, f"b{name}"], [f"{name}b"], name=f"{name}_bias"))
            src = f"{name}b"
        nodes += [helper.make_node("Reshape", [src, shape], [f"{name}1"]),
                  helper.make_node("Transpose", [f"{name}1"], [f"{name}h"], perm=[0, 2, 1, 3])]
    return nodes, inits


def _tail(nodes, H, d, kt, vr):
    """Scaled scores, softmax, values, heads merged back, the output projection."""
    return nodes + [
        helper.make_node("Mul", ["qh", "scale"], ["qs"]),
        helper.make_node("Mul", [kt, "scale"], ["ks"]),
        helper.make_node("MatMul", ["qs", "ks"], ["s"], name="scores"),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", vr], ["o0"], name="context"),
        helper.make_node("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["o1", "merge"], ["o"]),
        helper.make_node("MatMul", ["o", "Wo"], ["y"], name="o_proj")]


def repeat_kv_torchscript(rng, H=4, G=2, d=4):
    """TorchScript (ts14): k/v [B, G, T, d] → Unsqueeze(2) → Expand [B, G, r, T, d] →
    Reshape [B, H, T, d]; keys transposed after the repeat."""
    nodes, inits = _projections(rng, H, G, d)
    inits["expand"], inits["rep"] = _i(B, G, H // G, T, d), _i(B, H, T, d)
    for name in ("k", "v"):
        nodes += [helper.make_node("Unsqueeze", [f"{name}h", "ax2"], [f"{name}u"]),
                  helper.make_node("Expand", [f"{name}u", "expand"], [f"{name}e"], name=f"repeat_{name}"),
                  helper.make_node("Reshape", [f"{name}e", "rep"], [f"{name}r"])]
    nodes.append(helper.make_node("Transpose", ["kr"], ["kt"], perm=[0, 1, 3, 2]))
    return _tail(nodes, H, d, "kt", "vr"), inits


def repeat_kv_dynamo(rng, H=4, G=2, d=4):
    """Dynamo (opset 18): the repeated keys are folded into the batch for the transpose —
    Reshape [B·H, T, d] → Transpose → Reshape [B, H, d, T]; values Reshape [B, H, T, d]."""
    nodes, inits = _projections(rng, H, G, d)
    inits.update(expand=_i(B, G, H // G, T, d), rep=_i(B, H, T, d), fold=_i(B * H, T, d), unfold=_i(B, H, d, T))
    for name in ("k", "v"):
        nodes += [helper.make_node("Unsqueeze", [f"{name}h", "ax2"], [f"{name}u"]),
                  helper.make_node("Expand", [f"{name}u", "expand"], [f"{name}e"], name=f"repeat_{name}")]
    nodes += [helper.make_node("Reshape", ["ve", "rep"], ["vr"]),
              helper.make_node("Reshape", ["ke", "fold"], ["kf"]),
              helper.make_node("Transpose", ["kf"], ["kft"], perm=[0, 2, 1]),
              helper.make_node("Reshape", ["kft", "unfold"], ["kt"])]
    return _tail(nodes, H, d, "kt", "vr"), inits


def _moved_heads(g, trials=4, seed=0) -> bool:
    """Whether one of the symmetries ``verify`` draws (seeds seed+1 …) moves the heads blocks."""
    heads = g.groups[g.sets["k_proj"].group].parent
    return any(not np.array_equal(g.random_symmetry(seed + 1 + t).perm(heads, g.groups[heads].size),
                                  np.arange(g.groups[heads].size)) for t in range(trials))


def _check_gqa(path, H, G, d):
    g = nngraph.convert(path).validate()
    assert g.coverage == 1.0 and not g.meta["pins"], g.meta["pins"]
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    for name, value in g.to_params().items():
        np.testing.assert_array_equal(value, original[name])
    r = H // G
    # the queries are split into r sets of G heads, each tied to the keys (one permutation of a
    # key head's dimensions for all its query heads)
    queries = [s for s in g.sets.values() if s.name.startswith("q_proj[slot")]
    assert len(queries) == r and all(s.size == G * d and s.role == "query" for s in queries)
    kgroup = g.sets["k_proj"].group
    assert g.sets["k_proj"].role == "key" and all(s.group == kgroup for s in queries)
    assert g.groups[kgroup].size == G * d and g.sets["v_proj"].group != kgroup
    # key/value heads as blocks (with their query heads), one head node per key/value head
    heads = g.groups[kgroup].parent
    if G > 1:
        assert heads is not None and g.groups[heads].size == G and g.groups[g.sets["v_proj"].group].parent == heads
        assert [s.size for s in g.sets.values() if s.role == "head"] == [G]
    else:
        assert heads is None and g.groups[g.sets["v_proj"].group].parent is None
    # key and value neurons free; the output projection reads r copies of the values slot by slot
    fixed = g.fixed_groups()
    assert kgroup not in fixed and g.sets["v_proj"].group not in fixed
    reads = [b for b in g.blocks if b.target == "o_proj" and b.kind == "dense"]
    assert len(reads) == r and all(g.sets[b.source].group == g.sets["v_proj"].group for b in reads)
    assert {b.kind for b in g.blocks if b.source == "q_proj[slot0]" or b.target == "q_proj[slot0]"} >= {"dense",
                                                                                                     "attention"}
    report = verify(path, trials=4)
    assert report.ok and report.roundtrip_exact, report.problems
    return g


@pytest.mark.parametrize("make", [repeat_kv_torchscript, repeat_kv_dynamo])
@pytest.mark.parametrize("H,G", [(4, 2), (6, 3)])
def test_repeat_kv_is_followed(tmp_path, rng, make, H, G):
    """Each key/value head is a parent block shared by its query heads; nothing pinned; the
    symmetries verify draws swap key/value heads (with their query heads) and pass."""
    d = 4
    nodes, inits = make(rng, H, G, d)
    g = _check_gqa(_save(tmp_path, nodes, inits), H, G, d)
    assert _moved_heads(g)


def _moved_key_dims(g, trials=4, seed=0) -> bool:
    """Whether one of the symmetries ``verify`` draws permutes the dimensions of the key head(s)
    (and so, tied to them, those of every query head)."""
    key = g.sets["k_proj"].group
    return any(not np.array_equal(g.random_symmetry(seed + 1 + t).perm(key, g.groups[key].size),
                                  np.arange(g.groups[key].size)) for t in range(trials))


@pytest.mark.parametrize("make", [repeat_kv_torchscript, repeat_kv_dynamo])
@pytest.mark.parametrize("H", [4, 3])
def test_multi_query_repeat_kv_is_followed(tmp_path, rng, make, H):
    """repeat_kv of a single key/value head (MQA; the keys reshaped to [B, T, 1, d], no heads
    axis): the queries become H slots of one head, each tied to the keys, the output projection
    reads H copies of the values; verify permutes the head dimensions and passes."""
    d = 4
    nodes, inits = make(rng, H, 1, d)
    g = _check_gqa(_save(tmp_path, nodes, inits), H, 1, d)
    assert _moved_key_dims(g)
    assert not any(s.role == "head" for s in g.sets.values())


def _mqa_broadcast(rng, H=4, d=4, how="broadcast"):
    """Multi-query keys and values of shape [B, 1, T, d] read by H query heads without
    repeat_kv: broadcast by the products themselves, tiled or concatenated to H heads (with one
    key/value head, every order of copies is repeat order), or gathered from the tokens rolled by h for query head h (the
    H key copies then differ: still one permutation of d for all of them, which verify checks)."""
    nodes, inits = _projections(rng, H, 1, d)
    k, v = "kh", "vh"
    if how == "tile":
        inits["reps"] = _i(1, H, 1, 1)
        nodes += [helper.make_node("Tile", ["kh", "reps"], ["kr"], name="tile_k"),
                  helper.make_node("Tile", ["vh", "reps"], ["vr"], name="tile_v")]
        k, v = "kr", "vr"
    elif how == "concat":
        nodes += [helper.make_node("Concat", ["kh"] * H, ["kr"], axis=1, name="cat_k"),
                  helper.make_node("Concat", ["vh"] * H, ["vr"], axis=1, name="cat_v")]
        k, v = "kr", "vr"
    elif how == "gathered":
        inits["rolled"] = (np.arange(T)[None, :] + np.arange(H)[:, None]) % T
        nodes.append(helper.make_node("Gather", ["kb", "rolled"], ["kr"], name="roll_k", axis=1))
        k = "kr"
    nodes.append(helper.make_node("Transpose", [k], ["kt"], perm=[0, 1, 3, 2]))
    return _tail(nodes, H, d, "kt", v), inits


@pytest.mark.parametrize("how", ["broadcast", "tile", "concat", "gathered"])
def test_multi_query_without_repeat_kv_is_followed(tmp_path, rng, how):
    nodes, inits = _mqa_broadcast(rng, how=how)
    g = _check_gqa(_save(tmp_path, nodes, inits), 4, 1, 4)
    assert _moved_key_dims(g)


def test_single_head_attention_is_not_multi_query(tmp_path, rng):
    """One query head and one key head, both reshaped to [B, T, 1, d]: plain attention (the unit
    axes are no heads), q and k tied as whole sets, nothing split into slots."""
    nodes, inits = _projections(rng, 1, 1, 8)
    nodes.append(helper.make_node("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2]))
    path = _save(tmp_path, _tail(nodes, 1, 8, "kt", "vh"), inits)
    g = nngraph.convert(path).validate()
    assert not g.meta["pins"] and not any("[slot" in s for s in g.sets)
    assert g.sets["q_proj"].group == g.sets["k_proj"].group and g.groups[g.sets["k_proj"].group].parent is None
    report = verify(path, trials=3)
    assert report.ok and report.roundtrip_exact, report.problems


def test_one_query_head_for_several_key_heads_stays_pinned(tmp_path, rng):
    """The mirror image — queries of one head ([B, 1, T, d]) broadcast over 4 key/value heads —
    is not multi-query attention and is not followed: the scores are pinned, and verify passes."""
    G, d = 4, 4
    nodes, inits = _projections(rng, 1, G, d)
    inits["merge"], inits["Wo"] = _i(B, T, G * d), _w(rng, G * d, 5)
    nodes.append(helper.make_node("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2]))
    path = _save(tmp_path, _tail(nodes, G, d, "kt", "vh"), inits)
    g = nngraph.convert(path).validate()
    assert [p["node"] for p in g.meta["pins"]][:1] == ["scores"]
    assert g.sets["k_proj"].group in g.fixed_groups()
    report = verify(path, trials=2)
    assert report.ok and report.roundtrip_exact, report.problems


def test_unit_axis_that_is_no_head_stays_a_channel_split(tmp_path, rng):
    """A unit axis before the neurons that is no attention head ([B, T, 2C] → [B, T, 1, 2C], then
    a GLU: halves sliced apart and multiplied) is not taken for one head: the halves are a
    channel split tied to each other, free, not rigid halves of a head."""
    C = 6
    inits = {"W1": _w(rng, D, 2 * C), "W2": _w(rng, C, 5), "unit": _i(B, T, 1, 2 * C), "back": _i(B, T, C),
             "s0": _i(0), "sc": _i(C), "s2": _i(2 * C), "ax": _i(3)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="up"),
             helper.make_node("Reshape", ["h", "unit"], ["hu"]),
             helper.make_node("Slice", ["hu", "s0", "sc", "ax"], ["a"], name="first"),
             helper.make_node("Slice", ["hu", "sc", "s2", "ax"], ["b"], name="second"),
             helper.make_node("Sigmoid", ["b"], ["gate"]),
             helper.make_node("Mul", ["a", "gate"], ["m"]),
             helper.make_node("Reshape", ["m", "back"], ["mb"]),
             helper.make_node("MatMul", ["mb", "W2"], ["y"], name="down")]
    path = _save(tmp_path, nodes, inits)
    g = nngraph.convert(path).validate()
    assert not g.meta["pins"] and g.free_fraction == 1.0
    halves = [s for s in g.sets.values() if s.name.startswith("up[")]
    assert len(halves) == 2 and not any(g.groups[s.group].rigid for s in halves)
    report = verify(path, trials=3)
    assert report.ok and report.roundtrip_exact, report.problems


def _attention_op(rng, H, G, d, repeat):
    """Opset-23 Attention: key/value repeated before it (dynamo at opset 23) or by the op
    (4-D key/value with G heads)."""
    nodes, inits = _projections(rng, H, G, d)
    if repeat:
        inits["expand"], inits["rep"] = _i(B, G, H // G, T, d), _i(B, H, T, d)
        for name in ("k", "v"):
            nodes += [helper.make_node("Unsqueeze", [f"{name}h", "ax2"], [f"{name}u"]),
                      helper.make_node("Expand", [f"{name}u", "expand"], [f"{name}e"], name=f"repeat_{name}"),
                      helper.make_node("Reshape", [f"{name}e", "rep"], [f"{name}r"])]
    k, v = ("kr", "vr") if repeat else ("kh", "vh")
    nodes += [helper.make_node("Attention", ["qh", k, v], ["o0"], name="attn"),
              helper.make_node("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["o1", "merge"], ["o"]),
              helper.make_node("MatMul", ["o", "Wo"], ["y"], name="o_proj")]
    return nodes, inits


@pytest.mark.parametrize("G", [2, 1])
@pytest.mark.parametrize("repeat", [True, False])
def test_onnx_attention_op_with_fewer_kv_heads(tmp_path, rng, repeat, G):
    """G = 1: 4-D keys and values of one head ([B, 1, T, d], or repeated to [B, H, T, d])."""
    nodes, inits = _attention_op(rng, 4, G, 4, repeat)
    try:
        path = _save(tmp_path, nodes, inits, opset=23)
    except onnx.checker.ValidationError:
        pytest.skip("this onnx has no opset-23 Attention")
    g = _check_gqa(path, 4, G, 4)
    assert _moved_key_dims(g)


@pytest.mark.parametrize("G", [2, 1])
def test_attention_op_3d_kv_num_heads(tmp_path, rng, G):
    """3-D Attention with q_num_heads / kv_num_heads: the op splits and repeats the heads
    (kv_num_heads=1: multi-query attention, every query slot tied to the one key head)."""
    H, d = 4, 4
    inits = {"Wq": _w(rng, D, H * d), "Wk": _w(rng, D, G * d), "Wv": _w(rng, D, G * d), "Wo": _w(rng, H * d, 5)}
    nodes = [helper.make_node("MatMul", ["x", "Wq"], ["q"], name="q_proj"),
             helper.make_node("MatMul", ["x", "Wk"], ["k"], name="k_proj"),
             helper.make_node("MatMul", ["x", "Wv"], ["v"], name="v_proj"),
             helper.make_node("Attention", ["q", "k", "v"], ["o"], name="attn", q_num_heads=H, kv_num_heads=G),
             helper.make_node("MatMul", ["o", "Wo"], ["y"], name="o_proj")]
    try:
        path = _save(tmp_path, nodes, inits, opset=23)
    except onnx.checker.ValidationError:
        pytest.skip("this onnx has no opset-23 Attention")
    _check_gqa(path, H, G, d)


def test_tile_of_kv_heads_stays_pinned(tmp_path, rng):
    """Tile along the heads axis (head h reads key/value head h mod G) is pinned, and verifies."""
    H, G, d = 4, 2, 4
    nodes, inits = _projections(rng, H, G, d)
    inits["reps"] = _i(1, H // G, 1, 1)
    nodes += [helper.make_node("Tile", ["kh", "reps"], ["kr0"], name="tile_k"),
              helper.make_node("Transpose", ["kr0"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("Tile", ["vh", "reps"], ["vr"], name="tile_v")]
    path = _save(tmp_path, _tail(nodes, H, d, "kt", "vr"), inits)
    g = nngraph.convert(path).validate()
    assert {p["node"] for p in g.meta["pins"]} >= {"tile_k", "tile_v"}
    assert all(p["reason"].startswith("tiles attention heads") for p in g.meta["pins"] if p["op"] == "Tile")
    report = verify(path, trials=2)
    assert report.ok and report.roundtrip_exact, report.problems


def _tiled(rng, H=4, G=2, d=4, transpose=False):
    """Copies placed before the heads (head h reads key/value head h mod G, as torch's
    ``repeat`` would): by an Expand of a unit axis in front of the heads, or by the repeat_kv
    Expand followed by a transpose that moves the copies in front of the heads."""
    nodes, inits = _projections(rng, H, G, d)
    r = H // G
    inits["rep"] = _i(B, H, T, d)
    for name in ("k", "v"):
        if transpose:
            inits["expand"] = _i(B, G, r, T, d)
            nodes += [helper.make_node("Unsqueeze", [f"{name}h", "ax2"], [f"{name}u"]),
                      helper.make_node("Expand", [f"{name}u", "expand"], [f"{name}e0"], name=f"repeat_{name}"),
                      helper.make_node("Transpose", [f"{name}e0"], [f"{name}e"], perm=[0, 2, 1, 3, 4])]
        else:
            inits["ax1"], inits["expand"] = _i(1), _i(B, r, G, T, d)
            nodes += [helper.make_node("Unsqueeze", [f"{name}h", "ax1"], [f"{name}u"]),
                      helper.make_node("Expand", [f"{name}u", "expand"], [f"{name}e"], name=f"repeat_{name}")]
        nodes.append(helper.make_node("Reshape", [f"{name}e", "rep"], [f"{name}r"]))
    nodes.append(helper.make_node("Transpose", ["kr"], ["kt"], perm=[0, 1, 3, 2]))
    return _tail(nodes, H, d, "kt", "vr"), inits


@pytest.mark.parametrize("transpose,op,reason", [
    (False, "Expand", "repeats attention heads other than each key/value head r times right after itself"),
    (True, "Reshape", "reshapes repeated key/value heads")])
def test_heads_repeated_another_way_stay_pinned(tmp_path, rng, transpose, op, reason):
    """Copies that do not pair query head g·r + j with key/value head g are not followed: the
    node is pinned with a reason, the keys and values it reads are fixed, and verify passes."""
    nodes, inits = _tiled(rng, transpose=transpose)
    path = _save(tmp_path, nodes, inits)
    g = nngraph.convert(path).validate()
    pins = g.meta["pins"]
    assert pins and all(p["op"] == op and p["reason"].startswith(reason) for p in pins[:2]), pins
    fixed = g.fixed_groups()
    assert g.sets["k_proj"].group in fixed and g.sets["v_proj"].group in fixed
    # the pinned copies are a fixed set of one head's width: queries read against it stay put
    assert all(s.group in fixed for s in g.sets.values() if s.name.startswith("q_proj"))
    report = verify(path, trials=3)
    assert report.ok and report.roundtrip_exact, report.problems


def _export_transformers(tmp_path, family: str, dynamic: bool):
    """A one-layer transformers causal LM with one key/value head for 4 query heads and random
    weights, exported by TorchScript (opset 17; with ``dynamic``, dynamic batch/sequence axes)."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if family == "mistral":      # rotary keys, repeat_kv
        model = tf.MistralForCausalLM(tf.MistralConfig(
            vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=1, max_position_embeddings=32, use_cache=False))
    else:                        # GPT-BigCode (StarCoder): fused c_attn split into q, k, v; no rotary
        model = tf.GPTBigCodeForCausalLM(tf.GPTBigCodeConfig(vocab_size=50, n_positions=32, n_embd=32, n_layer=1,
                                                             n_head=4, multi_query=True, use_cache=False))
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.2 + (1.0 if p.ndim == 1 else 0.0))

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, ids, mask):
            return self.m(input_ids=ids, attention_mask=mask, return_dict=False)[0]

    path = tmp_path / f"{family}_mqa.onnx"
    seq = {0: "batch", 1: "seq"}
    axes = {"ids": seq, "mask": seq, "logits": seq} if dynamic else None
    ids, mask = torch.randint(0, 50, (2, 6)), torch.ones(2, 6, dtype=torch.int64)
    mask[1, 4:] = 0
    torch.onnx.export(Logits(), (ids, mask), str(path), dynamo=False, opset_version=17,
                      input_names=["ids", "mask"], output_names=["logits"], dynamic_axes=axes)
    return path


@pytest.mark.parametrize("family,dynamic", [("mistral", False), ("mistral", True), ("bigcode", True)])
def test_transformers_multi_query_exported_is_followed(tmp_path, family, dynamic):
    """Real multi-query models exported by TorchScript: Mistral with one key/value head (rotary
    keys; with dynamic axes the -1 heads dim of the key reshape leaves inference a symbol) and
    GPT-BigCode (its fused c_attn split after the projection; with dynamic axes a unit axis sits
    among symbolic dims). Nothing is pinned but a run-time rotary table, the queries are 4 slots
    tied to the key, the output projection reads 4 copies of the value head, and verify passes."""
    path = _export_transformers(tmp_path, family, dynamic)
    g = nngraph.convert(path).validate()
    assert all(p["node"].startswith("/m/model/rotary_emb/") for p in g.meta["pins"]), g.meta["pins"]
    queries = [s for s in g.sets.values() if "[slot" in s.name and s.role == "query"]
    key = next(s for s in g.sets.values() if s.role == "key" and g.sets[s.name].group == queries[0].group)
    assert len(queries) == 4 and all(s.group == key.group and s.size == key.size == 8 for s in queries)
    value = next(s for s in g.sets.values() if s.role == "value" and "/slot" not in s.name)
    assert value.group not in g.fixed_groups()
    out = "o_proj/MatMul" if family == "mistral" else "attn/c_proj/MatMul"
    reads = [b for b in g.blocks if b.target.endswith(out) and b.kind == "dense"]
    assert len(reads) == 4 and all(g.sets[b.source].group == value.group for b in reads)
    if family == "mistral":      # rotary keeps the key's dimensions in place (one head: nothing of it moves)
        assert g.groups[key.group].rigid
    else:                        # no rotary: the key head's dimensions move, and all query heads with them
        assert key.group not in g.fixed_groups()
    report = verify(path, trials=3)
    assert report.ok and report.roundtrip_exact and all(report.groups_moved), report.problems
