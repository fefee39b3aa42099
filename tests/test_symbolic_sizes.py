"""onnxruntime's symbolic shape inference (run since ee3b6a6 where ONNX's leaves sizes unknown) must not
decide comparisons of sizes it cannot decide: it evaluated ``Equal(seq, 4)`` as sympy's structural ``==``
(False), so a head count computed as ``Where(Equal(T, 4), 2, 4)`` became 4 — at T = 4 (verify's sequence
length) there are 2 heads of 8, and the graph claimed 4 heads of 4 (verify failed)."""
from __future__ import annotations

from nngraph.verify import verify
from onnxbuild import Builder

D = 16


def heads_from_equal(path):
    b = Builder(60)
    B0, T0 = b.dim("x", 0), b.dim("x", 1)
    count = b.op("Where", [b.op("Equal", [T0, b.const([4])]), b.const([2]), b.const([4])])

    def heads():
        return b.T(b.reshape(b.lin("x", D, D), b.cat([B0, T0, count, [-1]])), [0, 2, 1, 3])

    q, k, v = heads(), heads(), heads()
    o = b.attention(q, b.T(k, [0, 1, 3, 2]), v)
    z = b.reshape(b.T(o, [0, 2, 1, 3]), b.cat([B0, T0, [D]]))
    return b.save(path, [("x", ["batch", "seq", D])], b.lin(z, D, D), ["batch", "seq", D])


def test_head_count_from_an_undecidable_equal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = verify(heads_from_equal(tmp_path / "m.onnx"), trials=5)
    assert report.ok, report.problems
    assert not list(tmp_path.glob("sym_shape_infer_temp*"))
