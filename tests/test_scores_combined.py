"""Scores of two attentions combined before one softmax (q1·k1ᵀ + q2·k2ᵀ, Sum, Max, Where, Concat along
the keys): one permutation of heads must serve both — their heads sets are tied. Before, the second
operand's scores were ignored and each attention's heads permuted on their own (verify failed); since
ee3b6a6 a TorchScript chunk of one fused projection (Slices) reached the same hole."""
from __future__ import annotations

import numpy as np
import pytest

from nngraph.verify import verify
from onnxbuild import Builder

H, D, T = 2, 16, 4


def _heads(b, n, width=4, chunk=False):
    if chunk:   # one fused projection cut per head by Slices (TorchScript's chunk)
        view = b.T(b.reshape(b.lin("x", D, H * width * n), [1, T, H, width * n]), [0, 2, 1, 3])
        return [b.op("Slice", [view, b.const([i * width]), b.const([(i + 1) * width]), b.const([-1])])
                for i in range(n)]
    return [b.T(b.reshape(b.lin("x", D, H * width), [1, T, H, width]), [0, 2, 1, 3]) for _ in range(n)]


def two_scores(path, op: str, chunk: bool = False):
    b = Builder(17)
    a, c, e, f, v = _heads(b, 5, chunk=chunk)
    s1, s2 = (b.op("MatMul", [p, b.T(r, [0, 1, 3, 2])]) for p, r in ((a, c), (e, f)))
    if op == "Where":
        cond = b.op("Greater", [b.const(b.rng.standard_normal((T, T))), b.const(np.float32(0))])
        s = b.op("Where", [cond, s1, s2])
    elif op == "Concat":
        s, v = b.op("Concat", [s1, s2], axis=-1), b.op("Concat", [v, v], axis=2)
    else:
        s = b.op(op, [s1, s2])
    o = b.op("MatMul", [b.op("Softmax", [s], axis=-1), v])
    z = b.reshape(b.T(o, [0, 2, 1, 3]), [1, T, H * 4])
    return b.save(path, [("x", [1, T, D])], b.lin(z, H * 4, D), [1, T, D])


@pytest.mark.parametrize("op,chunk", [("Add", False), ("Sub", False), ("Add", True), ("Sum", False),
                                      ("Max", False), ("Where", False), ("Concat", False)])
def test_combined_scores_verify(tmp_path, op, chunk):
    report = verify(two_scores(tmp_path / "m.onnx", op, chunk), trials=5)
    assert report.ok, report.problems
