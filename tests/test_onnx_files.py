"""Reading ONNX files safely: external data memory-mapped and confined to the model's folder;
corrupt, truncated and hostile files get exit code 4 and a clear message."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import nngraph
from conftest import EXAMPLES, ngraph
from nngraph.errors import InputError
from nngraph.verify import verify


def _external(tmp_path, name="ext"):
    folder = tmp_path / name
    folder.mkdir()
    m = onnx.load(EXAMPLES / "mlp.onnx")
    onnx.save_model(m, folder / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return folder / "model.onnx"


def _set_location(path, key, value, which=0):
    m = onnx.load(path, load_external_data=False)
    ext = [t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL][which]
    for e in ext.external_data:
        if e.key == key:
            e.value = value
    onnx.save(m, path)


def test_external_data_is_memory_mapped_and_verifies(tmp_path):
    path = _external(tmp_path)
    g = nngraph.convert(path)
    weights = [b.weight.data for b in g.blocks]
    assert all(isinstance(w, np.memmap) or isinstance(getattr(w, "base", None), np.memmap) for w in weights)
    report = verify(path, trials=2)
    assert report.ok and report.roundtrip_exact, report.problems


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_external_data_outside_folder_rejected(tmp_path, location):
    path = _external(tmp_path)
    (tmp_path / "outside.bin").write_bytes(b"\0" * 10_000)
    _set_location(path, "location", location)
    with pytest.raises(InputError, match="outside|escapes"):
        nngraph.convert(path)
    r = ngraph("convert", path, "-o", tmp_path / "x.ngraph")
    assert r.returncode == 4 and ("outside" in r.stderr or "escapes" in r.stderr)
    assert not (tmp_path / "x.ngraph").exists()


def test_symlink_out_of_folder_rejected(tmp_path):
    path = _external(tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes((path.parent / "weights.bin").read_bytes())
    os.symlink(secret, path.parent / "link.bin")
    _set_location(path, "location", "link.bin")
    with pytest.raises(InputError, match="escapes"):
        nngraph.convert(path)


def test_offset_past_end_rejected(tmp_path):
    path = _external(tmp_path)
    _set_location(path, "offset", str(10 ** 9))
    r = ngraph("convert", path, "-o", tmp_path / "x.ngraph")
    assert r.returncode == 4 and "past the end" in r.stderr


def test_truncated_external_file_rejected(tmp_path):
    path = _external(tmp_path)
    data = (path.parent / "weights.bin").read_bytes()
    (path.parent / "weights.bin").write_bytes(data[: len(data) // 2])
    r = ngraph("convert", path, "-o", tmp_path / "x.ngraph")
    assert r.returncode == 4 and ("past the end" in r.stderr or "truncated" in r.stderr)


def test_corrupt_and_truncated_models(tmp_path):
    data = (EXAMPLES / "mlp.onnx").read_bytes()
    cases = {"half.onnx": data[: len(data) // 2], "empty.onnx": b"", "noise.onnx": os.urandom(3000),
             "text.onnx": b"this is not a model\n" * 20}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        r = ngraph("convert", tmp_path / name, "-o", tmp_path / "out.ngraph")
        assert r.returncode == 4, (name, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "out.ngraph").exists()


def _if_model(tmp_path):
    """x → Gemm → Relu → If(cond): then Gemm(W1, a branch initializer) + Tanh, else Gemm(W2) → y."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    then = helper.make_graph([helper.make_node("Gemm", ["h", "W1", "b1"], ["t0"], transB=1),
                              helper.make_node("Tanh", ["t0"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [None, 3])],
                             [numpy_helper.from_array(f(3, 5), "W1"), numpy_helper.from_array(f(3), "b1")])
    other = helper.make_graph([helper.make_node("Gemm", ["h", "W2", "b2"], ["e"], transB=1)], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [None, 3])])
    nodes = [helper.make_node("Gemm", ["x", "W0", "b0"], ["g"], transB=1), helper.make_node("Relu", ["g"], ["h"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4]),
                                       helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
                          [numpy_helper.from_array(a, n) for n, a in
                           (("W0", f(5, 4)), ("b0", f(5)), ("W2", f(3, 5)), ("b2", f(3)))])
    path = tmp_path / "if.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("cond", [True, False])
def test_if_both_branches(tmp_path, cond):
    path = _if_model(tmp_path)
    g = nngraph.convert(path)
    assert set(g.sources) == {"W0", "b0", "W1", "b1", "W2", "b2"} and g.coverage == 1.0
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    report = verify(path, trials=3, inputs={"x": x, "cond": np.array(cond)})
    assert report.ok and report.roundtrip_exact, report.problems
