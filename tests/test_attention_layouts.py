"""Attention layouts that dynamic exports and fused projections produce, built small: each must convert
(pinning what it cannot follow) and pass ngraph verify — a wrong order of heads and batch, a fused view
read twice, a one-head key rotated before the same projection is split into heads elsewhere."""
from __future__ import annotations

import pytest

from nngraph.verify import verify
from onnxbuild import Builder

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
