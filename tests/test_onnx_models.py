"""Real models nobody on the team wrote: converted, then verified in onnxruntime.

* the nine ONNX test models shipped inside the ``onnx`` package (weights made by
  ``ConstantOfShape``; some parameters are graph inputs), verified with redrawn weights;
* Hugging Face BERT, GPT-2, ViT and ResNet from tiny configs with random weights, exported by
  the dynamo exporter at opset 18 and 23 and by the TorchScript exporter, plus an
  onnxruntime-optimized BERT (fused Attention, SkipLayerNormalization, EmbedLayerNormalization).
  Made by tests/fixtures/make_hf_fixtures.py.
"""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import nngraph
from nngraph.adapters.onnx import example_inputs, export, run
from nngraph.verify import verify

LIGHT = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.name for p in LIGHT.glob("*.onnx"))
HF = Path(__file__).parent / "fixtures" / "hf"
HF_MODELS = sorted(p.name for p in HF.glob("*.onnx"))


def test_fixtures_present():
    assert len(LIGHT_MODELS) == 9
    assert {"bert_dynamo18.onnx", "bert_dynamo23.onnx", "bert_torchscript.onnx", "bert_ortopt.onnx",
            "gpt2_dynamo18.onnx", "gpt2_dynamo23.onnx", "vit_dynamo18.onnx", "vit_dynamo23.onnx",
            "vit_torchscript.onnx", "resnet_dynamo18.onnx", "resnet_dynamo23.onnx",
            "resnet_torchscript.onnx"} <= set(HF_MODELS)


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_models_verify(name):
    report = verify(LIGHT / name, trials=1, randomize=True)
    assert report.ok, report.problems
    assert report.coverage == 1.0 and report.roundtrip_exact
    if name != "light_shufflenet.onnx":    # channel shuffles fix its sets (see README)
        assert report.groups_moved[0] > 0


@pytest.mark.parametrize("name", HF_MODELS)
def test_hf_models_verify(name):
    report = verify(HF / name, trials=2)
    assert report.ok, report.problems
    assert report.coverage == 1.0 and report.roundtrip_exact
    assert all(report.groups_moved)


@pytest.mark.parametrize("name", [n for n in HF_MODELS if not n.startswith(("resnet", "mobilenet"))])
def test_transformer_structure(name):
    g = nngraph.convert(HF / name)
    roles = collections.Counter(s.role for s in g.sets.values())
    kinds = collections.Counter(b.kind for b in g.blocks)
    assert roles["query"] == roles["key"] == roles["value"] == roles["head"] == 2       # two layers
    assert kinds["attention"] == 2 and kinds["head"] == 4
    for s in g.sets.values():
        if s.role == "query":
            key = next(t for t in g.sets.values() if t.role == "key" and t.group == s.group)
            heads = g.groups[g.groups[s.group].parent]
            assert heads.size == 4 and key.size == s.size == 32 and key is not s
        if s.role == "value":
            assert g.groups[s.group].parent is not None


def test_wrong_attention_tie_is_caught(tmp_path):
    """Control on a real transformer: permuting keys independently of queries must change outputs."""
    path = HF / "bert_dynamo23.onnx"
    g = nngraph.convert(path)
    key = next(s for s in g.sets.values() if s.role == "key")
    parent = g.groups[key.group].parent
    g.add_group("keys-alone", key.size, parent=parent)
    key.group = "keys-alone"
    sym = g.random_symmetry(0)
    export(path, g.permute(sym).to_params(), tmp_path / "bad.onnx")
    feeds = example_inputs(path)
    a, b = run(path, feeds)["hidden"], run(tmp_path / "bad.onnx", feeds)["hidden"]
    assert not np.allclose(a, b, atol=1e-3)


def test_parameter_inputs_without_values_pin_their_layer(tmp_path):
    """Weights fed as graph inputs (allowed before IR 4) are not in the file: convert keeps the rest of the
    model and pins the layer that reads them, the reason naming the input and ``--inputs`` (``--strict``
    refuses); given with ``--inputs`` they are parameters like any other; verify binds them."""
    from conftest import EXAMPLES, ngraph
    m = onnx.load(EXAMPLES / "mlp.onnx")
    w = next(t for t in m.graph.initializer if t.name == "2.weight")
    m.graph.input.append(onnx.helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)))
    m.graph.initializer.remove(w)
    path = tmp_path / "fed.onnx"
    onnx.save(m, path)
    r = ngraph("convert", path, "-o", tmp_path / "r.ngraph", "--json")
    assert r.returncode == 0, r.stderr
    (pin,) = json.loads(r.stdout)["pins"]
    assert pin["op"] == "Gemm" and "'2.weight'" in pin["reason"] and "--inputs" in pin["reason"]
    assert nngraph.load(tmp_path / "r.ngraph").coverage == 1.0
    r = ngraph("convert", path, "-o", tmp_path / "s.ngraph", "--strict")
    assert r.returncode == 4 and "2.weight" in r.stderr and not (tmp_path / "s.ngraph").exists()
    feeds = example_inputs(path)
    np.savez(tmp_path / "in.npz", **feeds)
    r = ngraph("convert", path, "-o", tmp_path / "r.ngraph", "--inputs", tmp_path / "in.npz", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pins"] == [] and json.loads(r.stdout)["free_fraction"] == 1.0
    report = verify(path, trials=2)
    assert report.ok and report.coverage == 1.0, report.problems
    assert report.bound_inputs == ["2.weight"]        # verify ran a different graph from convert's: it says so


def test_product_of_two_inputs_from_the_onnx_test_data_converts_and_verifies():
    """onnx's own ``test_operator_addmm`` (opset 6, IR 3): Gemm of two graph inputs plus a third, no
    weights in the file. It used to be refused as 'weights fed as inputs'; now the Gemms are pinned, and
    verify (which binds the inputs as weights) runs its round trip through the opset-7 upgrade."""
    path = Path(onnx.__file__).parent / "backend/test/data/pytorch-operator/test_operator_addmm/model.onnx"
    if not path.is_file():
        pytest.skip("this onnx build ships no backend test data")
    graph = nngraph.convert(path)
    assert graph.coverage == 1.0 and {p["op"] for p in graph.meta["pins"]} == {"Gemm"}
    report = verify(path, trials=1)
    assert report.ok, report.problems


TORCH = Path(__file__).parent / "fixtures" / "torch"
TORCH_MODELS = sorted(p.name for p in TORCH.glob("*.onnx"))


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_torch_modules_verify(name):
    """LSTM/GRU/RNN (1 and 2 directions; the dynamo exporter unrolls some over time, sharing
    weights), grouped/depthwise/dilated/transposed convs in 1-3 d, hand-written norms, einsum."""
    report = verify(TORCH / name, trials=2)
    assert report.ok, report.problems
    assert report.coverage == 1.0 and report.roundtrip_exact and all(report.groups_moved)


def test_recurrent_structure():
    g = nngraph.convert(TORCH / "bilstm_torchscript.onnx")
    gates = [s for s in g.sets.values() if s.role == "gate"]
    states = [s for s in g.sets.values() if s.role == "state"]
    assert len(gates) == 2 * 2 * 4 and len(states) == 2 * 2 * 2       # layers × directions × (gates | h, c)
    assert collections.Counter(b.kind for b in g.blocks)["recurrent"] == 16
    for s in gates:   # each gate shares its direction's permutation with the hidden state
        assert any(t.role == "state" and t.group == s.group for t in states)


def test_grouped_conv_symmetry_keeps_groups():
    g = nngraph.convert(TORCH / "convs_torchscript.onnx")
    grouped = [b for b in g.blocks if b.kind == "conv" and b.groups > 1]
    assert {b.groups for b in grouped} >= {2, 4, 12}
    for b in grouped:
        src, tgt = g.sets[b.source], g.sets[b.target]
        if b.groups == src.size == tgt.size:
            assert src.group == tgt.group               # depthwise: tied
        else:
            assert g.ancestor(src.group, b.groups) == g.ancestor(tgt.group, b.groups) is not None


def test_rotary_heads_are_rigid_inside():
    """LLaMA's rotary embedding pins head dimensions in place; whole heads still permute."""
    g = nngraph.convert(HF / "llama_dynamo18.onnx")
    queries = [s for s in g.sets.values() if s.role == "query"]
    assert len(queries) == 2
    for q in queries:
        assert g.groups[q.group].rigid and g.groups[q.group].parent is not None
    sym = g.random_symmetry(3)
    heads = g.groups[queries[0].group].parent
    assert not np.array_equal(sym.perm(heads, 4), np.arange(4)) or not np.array_equal(
        g.random_symmetry(4).perm(heads, 4), np.arange(4))


def test_relative_position_bias_is_per_head():
    """T5's relative attention bias (a table folded to [heads, T, T] for a static shape, shared by
    both layers) becomes an array of the head nodes: heads keep their symmetry, tied across layers."""
    g = nngraph.convert(HF / "t5enc_torchscript.onnx")
    heads = [s for s in g.sets.values() if s.role == "head"]
    assert len(heads) == 2 and heads[0].group == heads[1].group
    assert all("score_add" in h.arrays for h in heads)
    assert not next(x for x in g.symmetry_groups() if x.name == heads[0].group).fixed


def test_qdq_quantized_model_verifies():
    """int8 QDQ (onnxruntime static quantization): weights are dequantized constants (derived
    leaves), activation Q/DQ pairs pass through."""
    path = Path(__file__).parent / "fixtures" / "quant" / "resnet_qdq.onnx"
    report = verify(path, trials=2)
    assert report.ok and report.coverage == 1.0 and all(report.groups_moved), report.problems
    g = nngraph.convert(path)
    assert [b.kind for b in g.blocks].count("conv") >= 5


def test_a_failing_verify_copy_is_reported_under_the_models_name(tmp_path):
    """verify runs temporary copies of the model (parameters written back, permuted); onnxruntime failing on
    one must name the user's file and the copy, not a path in a temporary folder that no longer exists."""
    from nngraph.errors import InputError
    from nngraph.verify import errors_named_after
    tmp = str(tmp_path / "nngraph-verify-x")
    with pytest.raises(InputError) as e:
        with errors_named_after(Path("model.onnx"), tmp):
            raise InputError(f"{tmp}/roundtrip.onnx: onnxruntime cannot load the model (NOT_IMPLEMENTED)")
    assert str(e.value) == ("model.onnx: its copy 'roundtrip' (parameters written back by verify): "
                            "onnxruntime cannot load the model (NOT_IMPLEMENTED)")
    with pytest.raises(InputError, match="^other.onnx: bad$"):
        with errors_named_after(Path("model.onnx"), tmp):
            raise InputError("other.onnx: bad")


def test_partial_rotary_keeps_heads_free():
    """Phi rotates half of each head (rotate_half inside that half) and passes the other half through:
    the part of a part, put back by two Concats, pins nothing (it pinned 11 nodes per layer); head
    dimensions stay in place and whole heads permute."""
    g = nngraph.convert(HF / "phi_dynamo18.onnx")
    assert g.meta["pins"] == [] and g.coverage == 1.0
    queries = [s for s in g.sets.values() if s.role == "query"]
    assert len(queries) == 2 and all(g.groups[q.group].rigid for q in queries)
    assert g.free_fraction > 0.85          # 0.497 before


def test_dynamic_shape_dynamo_export_keeps_attention_free():
    """GPT-2 exported by dynamo with dynamic batch and sequence: kᵀ is taken by folding the heads into the
    batch ([B·H, T, d], a symbolic dim the engine must know holds B·H) and the heads are merged back into
    rows computed at run time ([?, 32]); both were pinned (8 pins, free 0.64)."""
    g = nngraph.convert(HF / "gpt2_dynamo18dynamic.onnx")
    assert g.meta["pins"] == [] and g.coverage == 1.0
    assert g.free_fraction > 0.8


def _one_projection_two_head_views(path, swap: bool, view_first: bool):
    """x → p = x·W viewed as 6 heads of 4 (attention with q = p) and as 2 heads of 12, where every
    12-dim head is multiplied by a table over positions and dims (``swap``: its 4-dim thirds put back
    rotated by Slice + Concat instead); both views summed (``view_first``: the 2-head view lowered
    before the attention splits p finer). Only whole 12-dim heads may move with their 4-dim blocks in
    place: a rigid 2-head view over a free 6-head partition was a wrong claim, in either order."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    B, T, D = 1, 4, 24
    nodes, inits = [], []

    def const(a):
        inits.append(numpy_helper.from_array(np.asarray(a, np.int64 if np.asarray(a).dtype.kind in "iu"
                                                        else np.float32), f"c{len(inits)}"))
        return inits[-1].name

    def op(kind, ins, **kw):
        nodes.append(helper.make_node(kind, ins, [f"v{len(nodes)}"], **kw))
        return nodes[-1].output[0]

    def lin(x):
        return op("MatMul", [x, const(rng.standard_normal((D, D)) / 4)])

    def heads(x, H):
        return op("Transpose", [op("Reshape", [x, const([B, T, H, D // H])])], perm=[0, 2, 1, 3])

    def merge(x):
        return op("Reshape", [op("Transpose", [x], perm=[0, 2, 1, 3]), const([B, T, D])])

    def attention(p):
        q, k, v = heads(p, 6), heads(lin("x"), 6), heads(lin("x"), 6)
        scores = op("Softmax", [op("MatMul", [q, op("Transpose", [k], perm=[0, 1, 3, 2])])], axis=-1)
        return lin(merge(op("MatMul", [scores, v])))

    def view(p):
        y = heads(p, 2)
        if swap:
            cut = lambda a, b: op("Slice", [y, const([a]), const([b]), const([-1])])  # noqa: E731
            return merge(op("Concat", [cut(4, 12), cut(0, 4)], axis=-1))
        return merge(op("Mul", [y, const(rng.standard_normal((T, D // 2)))]))

    p = lin("x")
    if view_first:
        y = view(p)
        attn = attention(p)
    else:
        attn = attention(p)
        y = view(p)
    out = lin(op("Add", [attn, op("Add", [p, y])]))
    graph = helper.make_graph(nodes, "two_views", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, D])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [B, T, D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("view_first", [False, True])
@pytest.mark.parametrize("swap", [False, True])
def test_head_dims_stay_in_place_across_two_head_views(tmp_path, swap, view_first):
    report = verify(_one_projection_two_head_views(tmp_path / "m.onnx", swap, view_first), trials=5)
    assert report.ok, report.problems
    assert any(report.groups_moved)      # heads still permute: the test is not vacuous


def test_batchnorm_scale_fed_as_input_pins_the_norm(tmp_path):
    """The case the old exporters made (BatchNormalization's scale a graph input, no initializer): without
    its value the norm is pinned, the reason naming the input (a 1-D input once reached the data-input
    path and crashed); with --inputs it is a parameter."""
    from onnx import TensorProto, helper, numpy_helper
    from conftest import ngraph
    rng = np.random.default_rng(0)
    init = lambda a, n: numpy_helper.from_array(np.asarray(a, np.float32), n)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"]),
             helper.make_node("Relu", ["b"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], kernel_shape=[1, 1])]
    inits = [init(rng.standard_normal((4, 2, 3, 3)), "w"), init(rng.standard_normal(4), "beta"),
             init(rng.standard_normal(4), "mean"), init(rng.random(4) + 0.5, "var"),
             init(rng.standard_normal((3, 4, 1, 1)), "w2")]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5]),
                                            helper.make_tensor_value_info("gamma", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5, 5])], inits)
    path = tmp_path / "bn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    r = ngraph("convert", path, "-o", tmp_path / "bn.ngraph", "--json")
    assert r.returncode == 0, r.stderr
    (pin,) = json.loads(r.stdout)["pins"]
    assert pin["op"] == "BatchNormalization" and "'gamma'" in pin["reason"]
    np.savez(tmp_path / "in.npz", gamma=rng.random(4).astype(np.float32) + 0.5)
    r = ngraph("convert", path, "-o", tmp_path / "bn.ngraph", "--inputs", tmp_path / "in.npz", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["pins"] == [], r.stderr


def test_fused_qkv_laid_out_per_head_is_split_into_q_k_v():
    """GPT-NeoX (Pythia) fuses q, k and v per head: the projection is viewed as [B, T, H, 3·d] and chunked
    along the last axis. Each chunk becomes a set of its own (rows taken per head), so attention ties them
    as if they were separate projections (22 pins, free 0.38 before)."""
    g = nngraph.convert(HF / "gpt_neox_dynamo18.onnx")
    assert g.meta["pins"] == [] and g.coverage == 1.0
    roles = collections.Counter(s.role for s in g.sets.values())
    assert roles["query"] == roles["key"] == roles["value"] == 2
    assert g.free_fraction > 0.8


def test_mask_sliced_from_a_buffer_does_not_vary_across_heads():
    """GPT-Neo's causal mask is a [1, 1, 64, 64] buffer sliced along its last two axes by run-time bounds and
    selected into the scores by Where: it does not vary across heads (the axes the Slice does not cut keep
    their size 1), so heads stay free."""
    g = nngraph.convert(HF / "gpt_neo_torchscript_dynamic.onnx")
    assert g.meta["pins"] == [] and g.coverage == 1.0 and g.free_fraction > 0.75


def test_two_shape_inferences_do_not_mix_their_symbols():
    """Shape inference runs twice (again with computed shape values fed back); each run names unknown sizes
    unk__0, unk__1 … on its own, so a symbolic shape of the second run next to one of the first could claim
    two different sizes equal. Only static shapes cross (BEiT's dynamic export: its heads were pinned by a
    reshape read with mixed symbols, free 0.81)."""
    g = nngraph.convert(HF / "beit_torchscript_dynamic.onnx")
    assert not any(p["op"] == "Reshape" for p in g.meta["pins"]) and g.free_fraction > 0.95


@pytest.mark.parametrize("name", ["bloom_dynamo18", "bloom_torchscript"])
def test_bloom_qkv_slots_split_and_alibi_keeps_heads_in_place(name):
    """Bloom views its fused QKV as [B, T, H, 3, d] and takes q, k, v by Gather: the projection splits into
    one set per slot. ALiBi adds a bias per head made at run time: the heads stay in place (pinned), the
    dimensions inside each head still permute (the slopes × positions computation itself stays pinned).
    Before: 13 pins, free 0.73."""
    g = nngraph.convert(HF / f"{name}.onnx")
    assert g.coverage == 1.0 and g.free_fraction > 0.85
    assert sum("ALiBi" in p["reason"] for p in g.meta["pins"]) == 2          # one per layer
    assert all(p["op"] != "MatMul" for p in g.meta["pins"])                  # attention itself is followed
    roles = collections.Counter(s.role for s in g.sets.values())
    assert roles["query"] == roles["key"] == roles["value"] == 2
    fixed = {x.name for x in g.symmetry_groups() if x.fixed}
    heads = [s for s in g.sets.values() if s.role == "head"]
    assert heads and all(s.group in fixed for s in heads)
    assert any(s.group not in fixed for s in g.sets.values() if s.role == "query")


@pytest.mark.parametrize("name", ["gptj_dynamo18", "gptj_torchscript"])
def test_interleaved_rotary_keeps_heads_free(name):
    """GPT-J rotates pairs of neighbouring head dimensions (rotate_every_two: x[..., ::2], x[..., 1::2], one
    negated, stacked on a new axis, flattened back): a head-local computation, so heads still permute as
    wholes. Before: the strided slices pinned every attention (22 / 26 pins, free 0.66 / 0.69)."""
    g = nngraph.convert(HF / f"{name}.onnx")
    assert g.meta["pins"] == [] and g.coverage == 1.0
    assert g.free_fraction > 0.85


@pytest.mark.parametrize("name", ["gpt_neox_masked_torchscript", "gpt_neox_masked_torchscript_dynamic"])
def test_torchscript_chunk_of_fused_qkv_is_split_into_q_k_v(name):
    """TorchScript writes GPT-NeoX's ``qkv.chunk(3, -1)`` as three Slices whose bounds it computes from
    Shape (constants defined after the first Slice); the dynamic export also needs the sequence length
    carried through the attention products to flatten heads back ([B, T, H, d] → [B, T, -1]). Before:
    4 pins, free 0.19 (static); 22 pins, free 0.46 (dynamic)."""
    g = nngraph.convert(HF / f"{name}.onnx")
    assert g.meta["pins"] == [] and g.coverage == 1.0
    roles = collections.Counter(s.role for s in g.sets.values())
    assert roles["query"] == roles["key"] == roles["value"] == 2
    assert g.free_fraction > 0.8
