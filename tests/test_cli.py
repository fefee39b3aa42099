"""The CLI as a user meets it: convert → info, JSON output, one-line errors and exit codes."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import ngraph


def test_convert_then_info(mlp_onnx, tmp_path):
    out = tmp_path / "mlp.ngraph"
    r = ngraph("convert", mlp_onnx, "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["output"] == str(out) and out.is_file()
    assert (doc["nodes"], doc["edges"], doc["parameters"]) == (64 + 32 + 16 + 10, 64 * 32 + 32 * 16 + 16 * 10,
                                                                 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10)
    assert doc["mapped_parameters"] == doc["parameters"] and doc["coverage"] == 1.0
    r = ngraph("info", out, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["nodes"] == doc["nodes"] and info["block_kinds"] == {"dense": 3}
    assert [s["role"] for s in info["sets"]] == ["input", "hidden", "hidden", "output"]
    assert [s["activation"] for s in info["sets"]] == [None, "relu", "tanh", None]
    r = ngraph("info", out)
    assert r.returncode == 0 and "coverage 1.0000" in r.stdout


def test_default_output_next_to_model(mlp_onnx, tmp_path):
    model = tmp_path / "net.onnx"
    model.write_bytes(mlp_onnx.read_bytes())
    r = ngraph("convert", model)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "net.ngraph").is_file() and "coverage 1.0000" in r.stdout


def _only_new_files(tmp_path, before):
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in before)


def test_bad_input_exit_4_and_nothing_written(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xff\xff")
    before = {p.name for p in tmp_path.iterdir()}
    for args, needle in [((tmp_path / "missing.onnx",), "no such file"),
                         ((text,), "not a model format"),
                         ((fake,), "not a readable ONNX model")]:
        r = ngraph("convert", *args, "-o", tmp_path / "out.ngraph")
        assert r.returncode == 4, (args, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert _only_new_files(tmp_path, before) == []


def test_truncated_ngraph_exit_4(mlp_onnx, tmp_path):
    out = tmp_path / "m.ngraph"
    assert ngraph("convert", mlp_onnx, "-o", out).returncode == 0
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - 100])
    r = ngraph("info", out)
    assert r.returncode == 4 and "truncated" in r.stderr and "Traceback" not in r.stderr
    r = ngraph("info", tmp_path / "nope.ngraph")
    assert r.returncode == 4


def test_ops_without_rules_are_pinned_and_strict_refuses(tmp_path):
    import json
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    w2 = numpy_helper.from_array(np.ones((3, 3), np.float32), "W2")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Hardmax", ["h"], ["a"], name="hm"),
             helper.make_node("Frobnicate", ["a", "W2"], ["y"], name="frob", domain="com.example")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w, w2])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "odd.onnx"
    onnx.save(model, path)
    r = ngraph("convert", path, "-o", tmp_path / "odd.ngraph", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["coverage"] == 1.0
    assert [(p["node"], p["op"]) for p in doc["pins"]] == [("hm", "Hardmax"), ("frob", "com.example::Frobnicate")]
    r = ngraph("convert", path, "-o", tmp_path / "strict.ngraph", "--strict")
    assert r.returncode == 4 and "'hm' (Hardmax)" in r.stderr and "Frobnicate" not in r.stderr
    assert not (tmp_path / "strict.ngraph").exists()


def test_usage_and_plugin_errors(mlp_onnx):
    assert ngraph("convert").returncode == 2
    assert ngraph("frobnicate").returncode == 2
    r = ngraph("convert", mlp_onnx, "--format", "nosuchformat")
    assert r.returncode == 3 and "no adapter named 'nosuchformat'" in r.stderr


def test_debug_shows_traceback(tmp_path):
    r = ngraph("--debug", "convert", tmp_path / "missing.onnx")
    assert r.returncode == 4 and "Traceback" in r.stderr


def test_plugins_lists_onnx():
    r = ngraph("plugins", "--json")
    assert r.returncode == 0
    plugins = {p["name"]: p for p in json.loads(r.stdout)}
    assert plugins["onnx"]["status"] == "active" and "onnx" in plugins["onnx"]["provides"]["adapters"]
    r = ngraph("plugins")
    assert r.returncode == 0 and "onnx" in r.stdout


def test_convert_does_not_import_torch(mlp_onnx, tmp_path):
    import subprocess
    import sys
    code = ("import sys; from nngraph.cli import main; "
            f"rc = main(['convert', r'{mlp_onnx}', '-o', r'{tmp_path / 'm.ngraph'}']); "
            "assert rc == 0; assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_analyse_example(mlp_onnx, tmp_path):
    import subprocess
    import sys
    from conftest import EXAMPLES
    out = tmp_path / "m.ngraph"
    assert ngraph("convert", mlp_onnx, "-o", out).returncode == 0
    r = subprocess.run([sys.executable, str(EXAMPLES / "analyse.py"), str(out), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [b["count"] for b in doc["blocks"]] == [64 * 32, 32 * 16, 16 * 10]
    assert doc["kinds"]["dense"]["count"] == 2720 and (tmp_path / "m_weights.png").stat().st_size > 1000
