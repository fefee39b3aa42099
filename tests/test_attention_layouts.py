"""Attention layouts that dynamic exports and fused projections produce, built small: each must convert
(pinning what it cannot follow) and pass ngraph verify — a wrong order of heads and batch, a fused view
read twice, a one-head key rotated before the same projection is split into heads elsewhere."""
from __future__ import annotations

import collections

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import nngraph
from nngraph.verify import verify
from onnxbuild import BIG, Builder

H, d = 2, 8
D = H * d


def batch_first_heads(path, wrong: bool):
    """nn.MultiheadAttention's layout: x [T, B, E], heads folded into the batch ([T, B·H, d] → [B·H, T, d]);
    ``wrong`` splits that axis back as [H, B] instead of [B, H]."""
    b = Builder(9)
    T0, B0 = b.dim("x", 0), b.dim("x", 1)

    def fold(y):
        return b.T(b.reshape(y, b.cat([T0, b.op("Mul", [B0, b.const([H])]), [d]])), [1, 0, 2])

    q, k, v = (fold(b.lin("x", D, D)) for _ in range(3))
    o = b.attention(q, b.T(k, [0, 2, 1]), v)                                     # [B·H, T, d]
    if wrong:
        n0 = b.dims(o, 0, 1)
        hb = b.reshape(o, b.cat([[H], b.op("Div", [n0, b.const([H])]), T0, [d]]))  # [H, B, T, d]
        z = b.reshape(b.T(hb, [2, 1, 0, 3]), b.cat([T0, B0, [D]]))
    else:
        z = b.reshape(b.T(o, [1, 0, 2]), b.cat([T0, B0, [D]]))
    return b.save(path, [("x", ["seq", "batch", D])], b.lin(z, D, D), ["seq", "batch", D])


def heads_into_sequence(path):
    """Heads merged into the symbolic sequence axis ([B, T·H, d]) and split back out as [H, T]."""
    b = Builder(8)
    B0, T0 = b.dim("x", 0), b.dim("x", 1)
    m = b.reshape(b.reshape(b.lin("x", D, D), b.cat([B0, T0, [H, d]])), b.cat([B0, [-1], [d]]))
    n1 = b.dims(m, 1, 2)
    u = b.T(b.reshape(m, b.cat([B0, [H], b.op("Div", [n1, b.const([H])]), [d]])), [0, 2, 1, 3])
    out = b.lin(b.reshape(b.op("Relu", [u]), b.cat([B0, T0, [D]])), D, D)
    return b.save(path, [("x", ["batch", "seq", D])], out, ["batch", "seq", D])


def fused_view_read_twice(path):
    """A fused [B, T, H, 3·4] projection split into q, k, v — and the 4-D view also read by a Relu."""
    b = Builder(1)
    p = b.lin("x", D, H * 12)
    view = b.reshape(p, [1, 4, H, 12])
    q, k, v = b.op("Split", [view, b.const([4, 4, 4])], n_out=3, axis=-1)
    o = b.attention(b.T(q, [0, 2, 1, 3]), b.T(k, [0, 2, 3, 1]), b.T(v, [0, 2, 1, 3]))
    a = b.reshape(b.T(o, [0, 2, 1, 3]), [1, 4, H * 4])
    r = b.lin(b.reshape(b.op("Relu", [view]), [1, 4, H * 12]), H * 12, H * 4)
    return b.save(path, [("x", [1, 4, D])], b.lin(b.op("Add", [a, r]), H * 4, D), [1, 4, D])


def one_head_key_rotated_first(path):
    """Projection p is a one-head key multiplied by a position table (lowered first), and the query of
    a 2-head attention elsewhere: its dimensions may not move as 4-dim blocks."""
    b = Builder(31)
    p = b.lin("x", D, 8)
    q1 = b.T(b.reshape(b.lin("x", D, 16), [1, 4, 2, 8]), [0, 2, 1, 3])
    k1 = b.op("Mul", [b.T(b.reshape(p, [1, 4, 1, 8]), [0, 2, 1, 3]), b.const(b.rng.standard_normal((4, 8)))])
    v1 = b.T(b.reshape(b.lin("x", D, 8), [1, 4, 1, 8]), [0, 2, 1, 3])
    a1 = b.lin(b.reshape(b.T(b.attention(q1, b.T(k1, [0, 1, 3, 2]), v1), [0, 2, 1, 3]), [1, 4, 16]), 16, D)
    q2 = b.T(b.reshape(p, [1, 4, 2, 4]), [0, 2, 1, 3])
    k2, v2 = (b.T(b.reshape(b.lin("x", D, 8), [1, 4, 2, 4]), [0, 2, 1, 3]) for _ in range(2))
    a2 = b.lin(b.reshape(b.T(b.attention(q2, b.T(k2, [0, 1, 3, 2]), v2), [0, 2, 1, 3]), [1, 4, 8]), 8, D)
    return b.save(path, [("x", [1, 4, D])], b.lin(b.op("Add", [a1, a2]), D, D), [1, 4, D])


@pytest.mark.parametrize("make", [
    lambda p: batch_first_heads(p, wrong=False), lambda p: batch_first_heads(p, wrong=True),
    heads_into_sequence, fused_view_read_twice, one_head_key_rotated_first,
], ids=["batch-first", "batch-first-split-as-HB", "heads-into-sequence", "fused-view-read-twice",
        "one-head-key-rotated-first"])
def test_layout_converts_and_verifies(tmp_path, make):
    report = verify(make(tmp_path / "m.onnx"), trials=5)
    assert report.ok, report.problems
    assert report.coverage == 1.0


def _const_node(b: Builder, values) -> str:
    """An int64 Constant *node* (not an initializer): TorchScript writes them just before their reader,
    after earlier nodes that a rule may inspect ahead of time."""
    return b.op("Constant", [], value=numpy_helper.from_array(np.asarray(values, np.int64)))


def chunked_heads(path, pieces: tuple = (4, 4, 4), rejoin: bool = False):
    """A fused projection viewed as [B, H, T, 3·4] and cut by Slices (TorchScript's ``chunk(3, -1)``),
    their bounds computed from Shape with Constant nodes that come after the first Slice. ``rejoin``:
    two pieces, the second passed through a Relu and concatenated back (partial rotary's shape: the
    pieces stay parts of one set)."""
    b = Builder(5)
    width = sum(pieces)
    view = b.T(b.reshape(b.lin("x", D, H * width), [1, 4, H, width]), [0, 2, 1, 3])
    last = b.dim(view, 3)
    cuts, start = [], b.const([0])
    for i, size in enumerate(pieces):
        end = b.op("Mul", [b.op("Div", [last, _const_node(b, [width])]), _const_node(b, [sum(pieces[:i + 1])])])
        cuts.append(b.op("Slice", [view, start, end, _const_node(b, [-1])]))
        start = end
    if rejoin:
        head = b.op("Concat", [cuts[0], b.op("Relu", [cuts[1]])], axis=-1)
        o = b.attention(head, b.T(head, [0, 1, 3, 2]), head)
        width_out = width
    else:
        q, k, v = cuts
        o = b.attention(q, b.T(k, [0, 1, 3, 2]), v)
        width_out = pieces[2]
    z = b.reshape(b.T(o, [0, 2, 1, 3]), [1, 4, H * width_out])
    return b.save(path, [("x", [1, 4, D])], b.lin(z, H * width_out, D), [1, 4, D])


def slice_with_runtime_axes(path):
    """A Slice of the neuron axis whose ``axes`` operand is computed (rank − 1): it is not axis 0."""
    b = Builder(6)
    p = b.lin("x", D, D)
    axis = b.op("Sub", [b.op("Shape", [b.op("Shape", [p])]), b.const([1])])
    s = b.op("Slice", [p, b.const([0]), b.const([8]), axis])
    return b.save(path, [("x", [1, 4, D])], b.lin(s, 8, D), [1, 4, D])


@pytest.mark.parametrize("make", [
    chunked_heads, lambda p: chunked_heads(p, (4, 4, 6)), lambda p: chunked_heads(p, (6, 6), True),
    slice_with_runtime_axes,
], ids=["chunk-as-slices", "uneven-chunk", "pieces-rejoined", "slice-runtime-axes"])
def test_slice_layouts_convert_and_verify(tmp_path, make):
    report = verify(make(tmp_path / "m.onnx"), trials=5)
    assert report.ok, report.problems
    assert report.coverage == 1.0


def test_chunk_as_slices_splits_q_k_v(tmp_path):
    """The three Slices of a TorchScript ``chunk`` split the projection into q, k and v sets (each head's
    pieces), so the heads stay free instead of the projection being pinned."""
    g = nngraph.convert(chunked_heads(tmp_path / "m.onnx"))
    assert g.meta["pins"] == []
    roles = collections.Counter(s.role for s in g.sets.values())
    assert roles["query"] == roles["key"] == roles["value"] == 1


def test_rejoined_pieces_stay_one_set(tmp_path):
    """Pieces that meet again in a Concat (through a Relu here) are parts of one head, not projections
    of their own: the projection is not split."""
    g = nngraph.convert(chunked_heads(tmp_path / "m.onnx", (6, 6), rejoin=True))
    assert not any("[piece" in s.name for s in g.sets.values())
    assert nngraph.convert(chunked_heads(tmp_path / "n.onnx")).sets.keys() & {"v0[piece0]", "v0[piece2]"}


def rotate_every_two(path, leak: bool = False, across_heads: bool = False):
    """Attention whose q and k go through GPT-J's rotate_every_two (strided slices of the head dimensions,
    one negated, stacked on a new last axis and flattened back) before a position table. ``leak``: one
    strided slice also feeds the output (outside the rotation); ``across_heads``: the two halves are
    stacked along the heads axis instead, which mixes heads."""
    b = Builder(12)
    table = b.const(b.rng.standard_normal((1, 4, 1, d)))

    def rotated(y):
        x1 = b.op("Slice", [y, b.const([0]), b.const([BIG]), b.const([3]), b.const([2])])
        x2 = b.op("Slice", [y, b.const([1]), b.const([BIG]), b.const([3]), b.const([2])])
        axis = 2 if across_heads else -1
        st = b.op("Concat", [b.op("Unsqueeze", [b.op("Neg", [x2]), b.const([axis])]),
                             b.op("Unsqueeze", [x1, b.const([axis])])], axis=axis)
        r = b.reshape(st, [1, 4, H, d])
        return b.op("Add", [b.op("Mul", [y, table]), b.op("Mul", [r, table])]), x1

    q, leaked = rotated(b.reshape(b.lin("x", D, D), [1, 4, H, d]))
    k, _ = rotated(b.reshape(b.lin("x", D, D), [1, 4, H, d]))
    v = b.reshape(b.lin("x", D, D), [1, 4, H, d])
    o = b.attention(b.T(q, [0, 2, 1, 3]), b.T(k, [0, 2, 3, 1]), b.T(v, [0, 2, 1, 3]))
    z = b.lin(b.reshape(b.T(o, [0, 2, 1, 3]), [1, 4, D]), D, D)
    if leak:
        z = b.op("Add", [z, b.lin(b.reshape(leaked, [1, 4, D // 2]), D // 2, D)])
    return b.save(path, [("x", [1, 4, D])], z, [1, 4, D])


@pytest.mark.parametrize("leak,across", [(False, False), (True, False), (False, True)],
                         ids=["rotation", "slice-read-outside", "stacked-across-heads"])
def test_head_local_rotation_converts_and_verifies(tmp_path, leak, across):
    path = rotate_every_two(tmp_path / "m.onnx", leak, across)
    report = verify(path, trials=5)
    assert report.ok, report.problems
    g = nngraph.convert(path)
    assert (g.meta["pins"] == []) == (not leak and not across)


def gathered_table(path, per_head: bool = False):
    """q and k scaled by rows of a position table gathered at run time (GPT-J's ``embed_positions`` indexed
    by positions in a dynamic export): a table shared by all heads (its columns and the head dimensions
    stay put, heads still permute), or with ``per_head`` a table with a column per dimension of every head
    (reshaped into heads: a parameter whose columns move with the heads)."""
    b = Builder(14)
    B0, T0 = b.dim("x", 0), b.dim("x", 1)
    pos = b.op("Range", [b.const(0), b.op("Squeeze", [T0, b.const([0])]), b.const(1)])
    rows = b.op("Gather", [b.const(b.rng.standard_normal((64, D if per_head else d))), pos], axis=0)
    table = b.reshape(rows, b.cat([[1], T0, [H, d]])) if per_head else b.op("Unsqueeze", [rows, b.const([0, 2])])

    def heads(y):
        return b.reshape(y, b.cat([B0, T0, [H, d]]))

    q, k, v = (heads(b.lin("x", D, D)) for _ in range(3))
    q, k = b.op("Mul", [q, table]), b.op("Mul", [k, table])
    o = b.attention(b.T(q, [0, 2, 1, 3]), b.T(k, [0, 2, 3, 1]), b.T(v, [0, 2, 1, 3]))
    z = b.lin(b.reshape(b.T(o, [0, 2, 1, 3]), b.cat([B0, T0, [D]])), D, D)
    return b.save(path, [("x", ["batch", "seq", D])], z, ["batch", "seq", D])


@pytest.mark.parametrize("per_head", [False, True], ids=["shared-table", "per-head-table"])
def test_gathered_position_table_converts_and_verifies(tmp_path, per_head):
    path = gathered_table(tmp_path / "m.onnx", per_head)
    report = verify(path, trials=5)
    assert report.ok, report.problems
    g = nngraph.convert(path)
    fixed = {x.name for x in g.symmetry_groups() if x.fixed}
    assert any(s.role == "head" and s.group not in fixed for s in g.sets.values())
    assert any("position table" in p["reason"] for p in g.meta["pins"]) == (not per_head)


def slots_of_heads(path, picks=(0, 1, 2)):
    """A fused projection viewed as [1, T, H, 3, d] and q, k, v taken by Gather along the 3-axis (Bloom);
    ``picks`` other than one of each slot (a slot read twice) must not split it."""
    b = Builder(21)
    view = b.reshape(b.lin("x", D, H * 3 * d), [1, 4, H, 3, d])
    q, k, v = (b.T(b.op("Gather", [view, b.const(np.int64(c))], axis=3), [0, 2, 1, 3]) for c in picks)
    o = b.attention(q, b.T(k, [0, 1, 3, 2]), v)
    z = b.reshape(b.T(o, [0, 2, 1, 3]), [1, 4, D])
    return b.save(path, [("x", [1, 4, D])], b.lin(z, D, D), [1, 4, D])


@pytest.mark.parametrize("picks", [(0, 1, 2), (2, 0, 1), (0, 1, 1)], ids=["qkv", "kvq", "slot-twice"])
def test_slots_of_heads_convert_and_verify(tmp_path, picks):
    path = slots_of_heads(tmp_path / "m.onnx", picks)
    report = verify(path, trials=5)
    assert report.ok, report.problems
    assert (nngraph.convert(path).meta["pins"] == []) == (sorted(picks) == [0, 1, 2])


def rotation_read_outside(path, where: str):
    """rotate_every_two whose strided slice ``x[..., ::2]`` (a value inside the region) is also returned:
    as a second graph output (``output``), or by an If branch through an Identity (``branch``), which the
    region's walk would otherwise take for one of its own nodes."""
    b = Builder(17)
    table = b.const(b.rng.standard_normal((1, 4, 1, d)))
    y = b.reshape(b.lin("x", D, D), [1, 4, H, d])
    x1 = b.op("Slice", [y, b.const([0]), b.const([BIG]), b.const([3]), b.const([2])])
    x2 = b.op("Slice", [y, b.const([1]), b.const([BIG]), b.const([3]), b.const([2])])
    st = b.op("Concat", [b.op("Unsqueeze", [b.op("Neg", [x2]), b.const([-1])]),
                         b.op("Unsqueeze", [x1, b.const([-1])])], axis=-1)
    q = b.op("Add", [b.op("Mul", [y, table]), b.op("Mul", [b.reshape(st, [1, 4, H, d]), table])])
    k, v = (b.reshape(b.lin("x", D, D), [1, 4, H, d]) for _ in range(2))
    o = b.attention(b.T(q, [0, 2, 1, 3]), b.T(k, [0, 2, 3, 1]), b.T(v, [0, 2, 1, 3]))
    z = b.lin(b.reshape(b.T(o, [0, 2, 1, 3]), [1, 4, D]), D, D)
    outs = [z]
    if where == "output":
        outs.append(x1)
    else:
        half = [1, 4, H, d // 2]
        then_g = helper.make_graph([helper.make_node("Identity", [x1], ["t_out"])], "then", [],
                                   [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, half)])
        else_g = helper.make_graph([helper.make_node("Identity", [x2], ["e_out"])], "else", [],
                                   [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, half)])
        cond = b.op("Greater", [b.op("ReduceSum", ["x"], keepdims=0), b.const(np.float32(1e9))])
        branch = b.op("If", [cond], then_branch=then_g, else_branch=else_g)
        outs[0] = b.op("Add", [z, b.lin(b.reshape(branch, [1, 4, D // 2]), D // 2, D)])
    return b.save(path, [("x", [1, 4, D])], outs[0], [1, 4, D], [(o, [1, 4, H, d // 2]) for o in outs[1:]])


@pytest.mark.parametrize("where", ["output", "branch"])
def test_head_local_region_value_read_outside_is_pinned(tmp_path, where):
    path = rotation_read_outside(tmp_path / "m.onnx", where)
    report = verify(path, trials=5)
    assert report.ok, report.problems
    assert any("stride" in p["reason"] for p in nngraph.convert(path).meta["pins"])


def reduced_over_heads(path, source: str):
    """q scaled by a reduction over the heads axis only (keepdims: ``[B, T, 1, d]``, one value per head
    dimension): of q itself or of v. Not a statistic of the neuron axis: it moves with the head dimensions."""
    b = Builder(21)
    q, k, v = (b.reshape(b.lin("x", D, D), [1, 4, H, d]) for _ in range(3))
    t = b.op("ReduceSum", [q if source == "q" else v, b.const([2])], keepdims=1)
    q = b.op("Mul", [q, t])
    o = b.attention(b.T(q, [0, 2, 1, 3]), b.T(k, [0, 2, 3, 1]), b.T(v, [0, 2, 1, 3]))
    z = b.lin(b.reshape(b.T(o, [0, 2, 1, 3]), [1, 4, D]), D, D)
    return b.save(path, [("x", [1, 4, D])], z, [1, 4, D])


@pytest.mark.parametrize("source", ["q", "v"])
def test_reduction_over_heads_only_verifies(tmp_path, source):
    report = verify(reduced_over_heads(tmp_path / "m.onnx", source), trials=5)
    assert report.ok, report.problems


def per_head_statistic(path, cross: bool):
    """q normalized per head (RMS over each head's dimensions, as qk-norm does), or with ``cross`` that
    per-head statistic of q scaling the heads of a second, independent attention."""
    b = Builder(20)
    q, k, v = (b.reshape(b.lin("x", D, D), [1, 4, H, d]) for _ in range(3))
    s = b.op("Sqrt", [b.op("Add", [b.op("ReduceMean", [b.op("Mul", [q, q])], axes=[3], keepdims=1),
                                   b.const(np.float32(1e-6))])])

    def attend(q, k, v):
        o = b.attention(b.T(q, [0, 2, 1, 3]), b.T(k, [0, 2, 3, 1]), b.T(v, [0, 2, 1, 3]))
        return b.lin(b.reshape(b.T(o, [0, 2, 1, 3]), [1, 4, D]), D, D)

    if not cross:
        z = attend(b.op("Div", [q, s]), k, v)
    else:
        q2, k2, v2 = (b.reshape(b.lin("x", D, D), [1, 4, H, d]) for _ in range(3))
        z = b.op("Add", [attend(q, k, v), attend(b.op("Div", [q2, s]), k2, v2)])
    return b.save(path, [("x", [1, 4, D])], z, [1, 4, D])


@pytest.mark.parametrize("cross", [False, True], ids=["own-heads", "other-attention"])
def test_per_head_statistic_verifies(tmp_path, cross):
    path = per_head_statistic(tmp_path / "m.onnx", cross)
    report = verify(path, trials=5)
    assert report.ok, report.problems
    assert (nngraph.convert(path).meta["pins"] == []) == (not cross)


def per_head_bias(path):
    """ALiBi: a bias per head made at run time from no parameter (a constant slope per head would be one,
    moving with its head) added to the scores; heads must stay in place, their dimensions may still move."""
    b = Builder(23)
    B0, T0 = b.dim("x", 0), b.dim("x", 1)
    n = b.op("Squeeze", [b.op("Mul", [T0, b.const([H])]), b.const([0])])
    ramp = b.op("Cast", [b.op("Range", [b.const(0), n, b.const(1)])], to=1)
    bias = b.reshape(ramp, [1, H, 1, -1])

    def heads(y):
        return b.T(b.reshape(y, b.cat([B0, T0, [H, d]])), [0, 2, 1, 3])

    q, k, v = (heads(b.lin("x", D, D)) for _ in range(3))
    s = b.op("Add", [b.op("MatMul", [q, b.T(k, [0, 1, 3, 2])]), bias])
    o = b.op("MatMul", [b.op("Softmax", [s], axis=-1), v])
    z = b.lin(b.reshape(b.T(o, [0, 2, 1, 3]), b.cat([B0, T0, [D]])), D, D)
    return b.save(path, [("x", ["batch", "seq", D])], z, ["batch", "seq", D])


def test_per_head_bias_keeps_heads_in_place(tmp_path):
    path = per_head_bias(tmp_path / "m.onnx")
    report = verify(path, trials=5)
    assert report.ok, report.problems
    g = nngraph.convert(path)
    fixed = {x.name for x in g.symmetry_groups() if x.fixed}
    assert all(s.group in fixed for s in g.sets.values() if s.role == "head")
    assert any(s.group not in fixed for s in g.sets.values() if s.role == "query")


def per_head_runtime_table(path, sliced: bool):
    """Two parameter tables scaled at run time — one by a slope per head (fed as ``ids``) — and summed
    (plain run-time data now) added to the scores: the run-time part of a parameter combined with
    data varies across heads though the parameter's own shape has size 1 there, so the heads must
    stay in place. ``sliced``: the sum cut to the sequence by a Slice with constant axes first."""
    b = Builder(29)
    B0, T0 = b.dim("x", 0), b.dim("x", 1)
    L = 6 if sliced else 4
    slopes = b.reshape(b.op("Cast", ["ids"], to=1), [1, H, 1, 1])
    scale = b.reshape(b.op("Cast", ["ids2"], to=1), [1, 1, 1, 1])
    bias = b.op("Add", [b.op("Mul", [b.const(b.rng.standard_normal((1, 1, 1, L))), slopes]),
                        b.op("Mul", [b.const(b.rng.standard_normal((1, 1, 1, L))), scale])])
    if sliced:
        bias = b.op("Slice", [bias, b.const([0]), T0, b.const([3])])

    def heads(y):
        return b.T(b.reshape(y, b.cat([B0, T0, [H, d]])), [0, 2, 1, 3])

    q, k, v = (heads(b.lin("x", D, D)) for _ in range(3))
    s = b.op("Add", [b.op("MatMul", [q, b.T(k, [0, 1, 3, 2])]), bias])
    o = b.op("MatMul", [b.op("Softmax", [s], axis=-1), v])
    z = b.lin(b.reshape(b.T(o, [0, 2, 1, 3]), b.cat([B0, T0, [D]])), D, D)
    return b.save(path, [("x", ["batch", 4, D]), ("ids", [1, H], TensorProto.INT64), ("ids2", [1], TensorProto.INT64)],
                  z, ["batch", 4, D])


@pytest.mark.parametrize("sliced", [False, True], ids=["summed", "summed-sliced"])
def test_per_head_runtime_table_keeps_heads_in_place(tmp_path, sliced):
    path = per_head_runtime_table(tmp_path / "m.onnx", sliced)
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 4, D)).astype(np.float32),
             "ids": np.array([[1, 5]]), "ids2": np.array([2])}
    report = verify(path, trials=5, inputs=feeds)
    assert report.ok, report.problems
    g = nngraph.convert(path)
    fixed = {x.name for x in g.symmetry_groups() if x.fixed}
    assert all(s.group in fixed for s in g.sets.values() if s.role == "head")


def scores_with_runtime_table(path, op: str):
    """Scores combined by an n-ary op (Max, Sum) with a parameter table times a slope per head fed at
    run time: the table's own shape has size 1 on the heads axis, its run-time part does not."""
    b = Builder(47)
    slopes = b.reshape(b.op("Cast", ["ids"], to=1), [1, H, 1, 1])
    bias = b.op("Mul", [b.const(b.rng.standard_normal((1, 1, 1, 4))), slopes])

    def heads(y):
        return b.T(b.reshape(y, [1, 4, H, d]), [0, 2, 1, 3])

    q, k, v = (heads(b.lin("x", D, D)) for _ in range(3))
    s = b.op(op, [b.op("MatMul", [q, b.T(k, [0, 1, 3, 2])]), bias])
    o = b.op("MatMul", [b.op("Softmax", [s], axis=-1), v])
    z = b.lin(b.reshape(b.T(o, [0, 2, 1, 3]), [1, 4, D]), D, D)
    return b.save(path, [("x", [1, 4, D]), ("ids", [H], TensorProto.INT64)], z, [1, 4, D])


@pytest.mark.parametrize("op", ["Max", "Sum"])
def test_scores_with_per_head_runtime_table_verifies(tmp_path, op):
    path = scores_with_runtime_table(tmp_path / "m.onnx", op)
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 4, D)).astype(np.float32), "ids": np.array([1, 7])}
    report = verify(path, trials=5, inputs=feeds)
    assert report.ok, report.problems


def argmax_bias(path, shared: bool):
    """The index of each head's largest query dimension (ArgMax: run-time data, but it depends on the
    order of the dimensions) added to the scores; ``shared``: its maximum over heads (no heads axis)."""
    b = Builder(53)

    def heads(y):
        return b.T(b.reshape(y, [1, 4, H, d]), [0, 2, 1, 3])

    q, k, v = (heads(b.lin("x", D, D)) for _ in range(3))
    am = b.op("Cast", [b.op("ArgMax", [q], axis=-1, keepdims=1)], to=1)
    if shared:
        am = b.op("ReduceMax", [am], axes=[1], keepdims=1)
    s = b.op("Add", [b.op("MatMul", [q, b.T(k, [0, 1, 3, 2])]), am])
    o = b.op("MatMul", [b.op("Softmax", [s], axis=-2), v])
    z = b.lin(b.reshape(b.T(o, [0, 2, 1, 3]), [1, 4, D]), D, D)
    return b.save(path, [("x", [1, 4, D])], z, [1, 4, D])


@pytest.mark.parametrize("shared", [False, True], ids=["per-head", "shared"])
def test_argmax_of_head_dims_verifies(tmp_path, shared):
    report = verify(argmax_bias(tmp_path / "m.onnx", shared), trials=5)
    assert report.ok, report.problems
