"""The CLI as a user meets it: convert → info, JSON output, one-line errors and exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import click
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import EXAMPLES, ROOT, ngraph
from inproc import run_cli


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


# ---------------------------------------------------------------------------- hardening (issue 13)


def _one_line(r, code):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def _save(model, path):
    onnx.save(model, path)
    return path


def _mlp_model(**gemm_attrs):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), "W")
    w2 = numpy_helper.from_array(np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32), "W2")
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h"], name="g1", transB=1, **gemm_attrs),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Gemm", ["r", "W2"], ["y"], name="g2", transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w, w2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_output_folder_must_exist(mlp_onnx, tmp_path):
    r = run_cli("convert", mlp_onnx, "-o", tmp_path / "nodir" / "m.ngraph")
    _one_line(r, 4)
    assert "does not exist" in r.stderr and not (tmp_path / "nodir").exists()
    r = run_cli("align", mlp_onnx, mlp_onnx, "-o", tmp_path / "nodir" / "a.onnx")
    _one_line(r, 4)
    (tmp_path / "labels.csv").write_text("model,acc\n")
    for cmd in ("train", "embed"):            # checked before any training or embedding
        args = ("train", tmp_path) if cmd == "train" else ("embed", tmp_path / "c.safetensors", tmp_path)
        _one_line(run_cli(*args, "-o", tmp_path / "nodir" / "x"), 4)
    assert not (tmp_path / "nodir").exists()


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_honour_umask(mlp_onnx, tmp_path, umask):
    old = os.umask(umask)
    try:
        assert run_cli("convert", mlp_onnx, "-o", tmp_path / "m.ngraph").returncode == 0
        from nngraph.adapters.onnx.writer import save_atomic
        save_atomic(onnx.load(str(mlp_onnx)), tmp_path / "copy.onnx")
    finally:
        os.umask(old)
    for name in ("m.ngraph", "copy.onnx"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_usage_errors_exit_2(mlp_onnx, tmp_path):
    out = tmp_path / "x.onnx"
    for args, needle in [(("align", mlp_onnx, mlp_onnx, "-o", out, "--method", "activation"), "--data"),
                         (("align", mlp_onnx, mlp_onnx, "-o", out, "--method", "embedding"), "--checkpoint"),
                         (("merge", mlp_onnx, mlp_onnx, "-o", out, "--align", "activation"), "--data"),  # old name
                         (("merge", mlp_onnx, mlp_onnx, "-o", out, "--method", "embedding"), "--checkpoint"),
                         (("merge", mlp_onnx, mlp_onnx, "-o", out, "--weights", "0.3,0.3"), "sum to 1"),
                         (("merge", mlp_onnx, mlp_onnx, "-o", out, "--weights", "0.5,0.5,0"), "3 values"),
                         (("merge", mlp_onnx, mlp_onnx, "-o", out, "--weights", "nan,1"), "finite")]:
        r = run_cli(*args)
        assert r.returncode == 2 and needle in r.stderr, (args, r.stderr)
        assert not out.exists()


_BASE_INSTALL = ("import sys\n"
                 "for m in ('torch', 'torch_geometric', 'scipy', 'onnxscript', 'sklearn'):\n"
                 "    sys.modules[m] = None   # as if not installed\n"
                 "from nngraph.cli import main\n"
                 "sys.exit(main(sys.argv[1:]))\n")


def test_base_install_names_the_extra(mlp_onnx, tmp_path):
    def base(*args):
        return subprocess.run([sys.executable, "-c", _BASE_INSTALL, *map(str, args)], capture_output=True,
                              text=True, timeout=300)

    other = onnx.load(str(mlp_onnx))          # same architecture, unrelated weights: a real assignment
    rng = np.random.default_rng(0)
    for t in other.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(rng.standard_normal(tuple(t.dims)).astype(np.float32), t.name))
    other = _save(other, tmp_path / "other.onnx")
    for args in [("align", mlp_onnx, other, "-o", tmp_path / "a.onnx"),
                 ("merge", mlp_onnx, other, "-o", tmp_path / "m.onnx"),
                 ("train", tmp_path, "-o", tmp_path / "c.safetensors")]:
        (tmp_path / "labels.csv").write_text("model,acc\nm.onnx,0.5\n")
        (tmp_path / "m.onnx").write_bytes(mlp_onnx.read_bytes())
        r = base(*args)
        _one_line(r, 3)
        assert 'pip install "nngraph[learn]"' in r.stderr, (args, r.stderr)
    r = base("plugins", "--json")
    status = {p["name"]: p for p in json.loads(r.stdout)}
    assert status["encoders"]["status"] == "needs-extra" and "nngraph[learn]" in status["encoders"]["error"]
    assert status["torch"]["status"] == "needs-extra" and status["onnx"]["status"] == "active"
    assert "needs-extra" in base("plugins").stdout


def test_verify_says_when_nothing_was_tested(tmp_path, mlp_onnx):
    n = 16
    w = numpy_helper.from_array(np.full((n, n), 0.01, np.float32), "W")          # constant weights
    w2 = numpy_helper.from_array(np.full((n, n), 0.02, np.float32), "W2")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [w, w2])
    model = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "const.onnx")
    r = run_cli("verify", model)
    assert r.returncode == 0, r.stdout
    assert "nothing tested" in r.stdout and "--randomize" in r.stdout and "✓" not in r.stdout
    assert "tie groups moved: 1, 1, 1" in r.stdout
    assert json.loads(run_cli("verify", model, "--json").stdout)["tested"] is False
    r = run_cli("verify", model, "--randomize")
    assert r.returncode == 0 and "✓ ok" in r.stdout
    g = helper.make_graph(nodes[:1], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                          [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, n])],
                          [numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32), "W")])
    single = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "one.onnx")
    r = run_cli("verify", single)                  # no free neurons: inputs and outputs are fixed
    assert r.returncode == 0 and "nothing tested" in r.stdout and "tie groups moved: 0, 0, 0" in r.stdout
    r = run_cli("verify", mlp_onnx)
    assert "✓ ok" in r.stdout and "tie groups moved: 2, 2, 2" in r.stdout


def test_constant_weights_stored_compactly(tmp_path):
    from onnx import numpy_helper as nh
    from nngraph import convert, load
    n = 1000              # a 4 MB weight from a few hundred bytes of ONNX
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["W"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [-0.0])),
             helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                          [nh.from_array(np.array([n, n], np.int64), "shape")])
    model = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "c.onnx")
    out = tmp_path / "c.ngraph"
    assert run_cli("convert", model, "-o", out).returncode == 0
    assert out.stat().st_size < 20_000
    a, b = convert(model).to_params(), load(out).to_params()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].tobytes() == np.ascontiguousarray(b[k]).tobytes()
                                        for k in a)
    assert run_cli("info", out).returncode == 0


def test_info_on_edited_ngraph(mlp_onnx, tmp_path):
    import struct
    src = tmp_path / "m.ngraph"
    assert run_cli("convert", mlp_onnx, "-o", src).returncode == 0
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    table = json.loads(data[8:8 + n])
    doc = json.loads(table["__metadata__"]["nngraph"])

    def edited(change, name):
        d = json.loads(json.dumps(doc))
        change(d)
        t = dict(table, __metadata__={"format": "nngraph", "nngraph": json.dumps(d)})
        blob = json.dumps(t).encode()
        blob += b" " * (-len(blob) % 8)
        path = tmp_path / f"{name}.ngraph"
        path.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n:])
        return path

    bad = {"no_blocks": lambda d: d.pop("blocks"),
           "role_int": lambda d: d["sets"][1].update(role=3),
           "sets_obj": lambda d: d.update(sets={"a": 1}),
           "size_neg": lambda d: d["sets"][0].update(size=-1),
           "kind_list": lambda d: d["blocks"][0].update(kind=["dense"]),
           "deep_meta": lambda d: d.update(meta=json.loads("[" * 100 + "]" * 100)),
           "unknown_tensor": lambda d: d["sources"][next(iter(d["sources"]))].update(tensor="nope"),
           "bad_origin": lambda d: d["blocks"][0]["weight"].update(origin={"tensor": "W", "steps": [["warp"]]}),
           "wrong_size": lambda d: [s.update(size=s["size"] + 1) for s in d["sets"][1:2]]}
    from nngraph import load
    from nngraph.errors import InputError
    header_level = {"no_blocks", "role_int", "sets_obj", "size_neg", "kind_list", "deep_meta"}
    for name, change in bad.items():
        path = edited(change, name)
        with pytest.raises(InputError):
            load(path)
        if name in header_level:
            _one_line(run_cli("info", path), 4)
    r = run_cli("info", edited(lambda d: d["sets"][1].update(name="[/bold]x"), "markup"))
    assert r.returncode == 0 and "[/bold]x" in r.stdout


def test_safetensors_headers_are_checked(tmp_path):
    import struct
    cases = {"not_object": b"[1, 2]", "deep": b"[" * 5000 + b"]" * 5000,
             "missing_offsets": json.dumps({"w": {"dtype": "F32", "shape": [2]}}).encode(),
             "wrong_type": json.dumps({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}).encode(),
             "past_end": json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 80]}}).encode(),
             "huge_shape": json.dumps({"w": {"dtype": "F32", "shape": [2 ** 62, 4], "data_offsets": [0, 0]}}).encode(),
             "metadata_list": json.dumps({"__metadata__": [1]}).encode(),
             "bad_utf8": b"\xff\xfe{}"}
    for name, header in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
        _one_line(run_cli("convert", path, "-o", tmp_path / "x.ngraph"), 4)
        _one_line(run_cli("info", path), 4)
    assert not (tmp_path / "x.ngraph").exists()


def test_onnx_structural_damage_exit_4(tmp_path):
    m = _mlp_model()
    m.graph.node[0].attribute[0].CopyFrom(helper.make_attribute("transB", "yes"))      # STRING, not INT
    _one_line(run_cli("convert", _save(m, tmp_path / "attr.onnx"), "-o", tmp_path / "o.ngraph"), 4)
    m = _mlp_model()
    m.graph.initializer[0].dims[:] = [3, 4 * 2 ** 40]                                   # huge dims, 48 bytes
    _one_line(run_cli("convert", _save(m, tmp_path / "dims.onnx"), "-o", tmp_path / "o.ngraph"), 4)
    m = _mlp_model()
    (tmp_path / "w.bin").write_bytes(bytes(48))
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "w.bin"), ("offset", "zero"), ("length", "48")):
        t.external_data.add(key=k, value=v)
    r = run_cli("convert", _save(m, tmp_path / "off.onnx"), "-o", tmp_path / "o.ngraph")
    _one_line(r, 4)
    assert "not a number" in r.stderr
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xff\xff")
    _one_line(run_cli("verify", fake), 4)
    assert not (tmp_path / "o.ngraph").exists()


def test_symbolic_shape_inference_leaves_no_file(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Gelu", ["h"], ["g"], name="ge", domain="com.microsoft"),
             helper.make_node("NoSuchOp", ["g"], ["y"], name="odd", domain="com.microsoft")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model = _save(m, tmp_path / "ms.onnx")
    work = tmp_path / "cwd"
    work.mkdir()
    r = run_cli("convert", model, "-o", tmp_path / "ms.ngraph", cwd=work)
    assert r.returncode in (0, 4), r.stderr
    assert list(work.iterdir()) == []


def test_damaged_pt2_is_one_line_exit_4(tmp_path):
    torch = pytest.importorskip("torch")
    import zipfile
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    good = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(m, (torch.randn(2, 4),)), str(good))
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[: len(data) // 2] + b"\x00junk" if "weight_0" in name else data)
    for cmd in ("convert", "verify"):
        r = run_cli(cmd, bad)
        _one_line(r, 4)
        assert "not a readable torch.export program" in r.stderr


def test_pipe_output_not_wrapped(mlp_onnx, tmp_path):
    deep = tmp_path / ("a_rather_long_folder_name_" * 4) / "and_another_long_one_to_pass_eighty_columns"
    deep.mkdir(parents=True)
    out = deep / "model_with_a_long_name.ngraph"
    r = ngraph("convert", mlp_onnx, "-o", out)       # a real pipe, not a terminal
    assert r.returncode == 0 and str(out) in r.stdout.splitlines()[0]


def test_json_and_seed_options_have_help():
    from nngraph.cli import cli
    for name, cmd in cli.commands.items():
        for p in cmd.params:
            if isinstance(p, click.Option) and ({"--json", "--seed", "-k"} & set(p.opts)):
                assert p.help, (name, p.opts)
    assert "--top" in cli.commands["search"].params[[p.name for p in cli.commands["search"].params].index("k")].opts


def test_readme_command_table_lists_every_option():
    from nngraph.cli import cli
    readme = (ROOT / "README.md").read_text()
    for name in ("convert", "info", "verify", "plugins", "align", "merge"):
        row = next(line for line in readme.splitlines() if line.startswith(f"| `ngraph {name} "))
        for p in cli.commands[name].params:
            if isinstance(p, click.Option):
                assert any(o in row for o in p.opts), (name, p.opts)


def test_make_zoo_without_sklearn_leaves_nothing(tmp_path):
    code = ("import runpy, sys; sys.modules['sklearn'] = None; "
            f"sys.argv = ['make_zoo.py', r'{tmp_path / 'zoo'}', '--n', '2']; "
            f"runpy.run_path(r'{EXAMPLES / 'make_zoo.py'}', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "scikit-learn" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "zoo").exists()


def test_hugging_face_config_is_checked(tmp_path):
    import shutil
    src = ROOT / "tests" / "fixtures" / "safetensors" / "gpt2"
    cfg = json.loads((src / "config.json").read_text())
    for name, text in [("deep", "[" * 5000 + "]" * 5000), ("array", "[1]"), ("heads_zero", json.dumps({**cfg, "n_head": 0})),
                       ("heads_text", json.dumps({**cfg, "n_head": "12"})),
                       ("no_layers", json.dumps({k: v for k, v in cfg.items() if k != "n_layer"}))]:
        folder = tmp_path / name
        shutil.copytree(src, folder)
        (folder / "config.json").write_text(text)
        r = run_cli("convert", folder / "model.safetensors", "-o", tmp_path / "x.ngraph")
        _one_line(r, 4)
        assert "config.json" in r.stderr, r.stderr
    assert not (tmp_path / "x.ngraph").exists()
