"""The .ngraph file: exact save/load, memory-mapped reading, plain safetensors, atomic writes."""
from __future__ import annotations

import numpy as np
import pytest

import netlib
from nngraph import InputError, load, read_header, save
from nngraph.graph.ir import NeuralGraph, Param
from nngraph.graph.origin import Origin


@pytest.fixture(params=["conv", "attention"])
def graph(request, rng):
    p = getattr(netlib, f"{request.param}_params")(rng)
    return getattr(netlib, f"{request.param}_graph")(p)


def test_save_load_roundtrip(graph, tmp_path):
    path = save(graph, tmp_path / "g.ngraph")
    h = load(path).validate()
    assert list(h.sets) == list(graph.sets)
    for name, s in graph.sets.items():
        t = h.sets[name]
        assert (t.size, t.role, t.depth, t.group, t.activation) == (s.size, s.role, s.depth, s.group, s.activation)
        for k, a in s.arrays.items():
            assert np.array_equal(t.arrays[k].data, a.data) and t.arrays[k].origin == a.origin
    for a, b in zip(graph.blocks, h.blocks):
        assert (a.name, a.source, a.target, a.kind, a.attrs) == (b.name, b.source, b.target, b.kind, b.attrs)
        assert (a.weight is None) == (b.weight is None)
        if a.weight is not None:
            assert np.array_equal(a.weight.data, b.weight.data) and a.weight.origin == b.weight.origin
    assert {k: vars(v) for k, v in h.groups.items()} == {k: vars(v) for k, v in graph.groups.items()}
    p1, p2 = graph.to_params(), h.to_params()
    assert p1.keys() == p2.keys() and all(np.array_equal(p1[k], p2[k]) for k in p1)
    sym = graph.random_symmetry(7)
    q1, q2 = graph.permute(sym).to_params(), h.permute(sym).to_params()
    assert all(np.array_equal(q1[k], q2[k]) for k in q1)


def test_load_is_memory_mapped(graph, tmp_path):
    h = load(save(graph, tmp_path / "g.ngraph"))
    def root(a):
        while getattr(a, "base", None) is not None and not isinstance(a, np.memmap):
            a = a.base
        return a

    arrays = [p.data for _, p in h.params()]
    assert arrays and all(isinstance(root(a), np.memmap) for a in arrays)
    assert not arrays[0].flags.writeable


def test_plain_safetensors(graph, tmp_path):
    from safetensors import safe_open

    path = save(graph, tmp_path / "g.ngraph")
    params = graph.to_params()
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata()["format"] == "nngraph"
        stored = {k: f.get_tensor(k) for k in f.keys()}
    # each source tensor stored once, in its own layout
    assert sorted(a.tobytes() for a in stored.values()) == sorted(a.tobytes() for a in params.values())


def test_header_only(graph, tmp_path):
    path = save(graph, tmp_path / "g.ngraph")
    doc, table, start = read_header(path)
    assert doc["summary"]["nodes"] == graph.num_nodes and doc["summary"]["coverage"] == 1.0
    assert start < path.stat().st_size


def test_truncated_and_garbage_files(graph, tmp_path):
    path = save(graph, tmp_path / "g.ngraph")
    data = path.read_bytes()
    for i, cut in enumerate([len(data) - 1, len(data) // 2, 12, 3, 0]):
        bad = tmp_path / f"cut{i}.ngraph"
        bad.write_bytes(data[:cut])
        with pytest.raises(InputError):
            load(bad)
    junk = tmp_path / "junk.ngraph"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}        ")
    with pytest.raises(InputError, match="not an .ngraph"):
        load(junk)
    with pytest.raises(InputError, match="no such file"):
        load(tmp_path / "missing.ngraph")


def test_failed_write_leaves_nothing(graph, tmp_path):
    graph.sets[next(iter(graph.sets))].arrays["bad"] = type(next(graph.params())[1])(
        np.zeros(graph.sets[next(iter(graph.sets))].size, dtype=np.complex64))
    with pytest.raises(ValueError):
        save(graph, tmp_path / "g.ngraph")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic(graph, tmp_path):
    path = save(graph, tmp_path / "g.ngraph")
    save(graph, path)
    assert [p.name for p in tmp_path.iterdir()] == ["g.ngraph"]
    load(path).validate()


def _header_file(path, header: bytes, body: bytes = b""):
    import struct
    path.write_bytes(struct.pack("<Q", len(header)) + header + body)
    return path


def test_schema_errors_name_the_field(tmp_path):
    import json
    from nngraph.graph.headers import HeaderError
    doc = {"schema": 1, "groups": [], "sets": [{"name": "a", "size": "3", "role": "input", "depth": 0, "group": "a",
                                                "activation": None, "attrs": {}, "arrays": {}}],
           "blocks": [], "sources": {}, "unmapped": {}}
    header = json.dumps({"__metadata__": {"format": "nngraph", "nngraph": json.dumps(doc)}}).encode()
    with pytest.raises(HeaderError, match=r"sets\[0\]\.size: expected a non-negative integer, got a string"):
        read_header(_header_file(tmp_path / "a.ngraph", header))
    for bad, needle in [(b"[" * 100000, "nested too deeply"), (b"7", "not an object"), (b"{\"x\": {}}", "missing key"),
                        (json.dumps({"x": {"dtype": "F32", "shape": [3], "data_offsets": [4, 0]}}).encode(), "corrupt")]:
        with pytest.raises(HeaderError, match=needle):
            read_header(_header_file(tmp_path / "b.ngraph", bad, bytes(16)))


def test_constant_tensors_are_stored_once(tmp_path):
    """Constant source tensors (also NaN and -0.0, bit for bit) are one stored value + shape, and a
    loaded graph saved again stays compact (its leaves are broadcast views)."""
    from nngraph.graph.fileformat import constant_value
    for value in (0.0, -0.0, np.nan, 3.5):
        a = np.full((64, 64), value, np.float32)
        assert constant_value(a) is not None and constant_value(a).tobytes() == a.reshape(-1)[:1].tobytes()
    b = np.full((64, 64), np.nan, np.float32)
    b.view(np.uint32)[0, 0] ^= 1                      # another NaN payload: not the same bits
    assert constant_value(b) is None
    c = np.zeros((64, 64), np.float32)
    c[-1, -1] = 1e-30
    assert constant_value(c) is None and constant_value(np.zeros(4, np.float32)) is None   # tiny: not worth it

    g = NeuralGraph()
    g.add_source("W", (256, 128), "float32")
    g.add_source("U", (10, 256), "float32")
    g.add_set("x", 128, "input", fixed=True)
    g.add_set("h", 256, depth=1)
    g.add_set("y", 10, "output", depth=2, fixed=True)
    w = np.full((256, 128), -0.0, np.float32)
    u = np.random.default_rng(0).standard_normal((10, 256)).astype(np.float32)
    g.add_block("W", "x", "h", "dense", Param(w, Origin("W")))
    g.add_block("U", "h", "y", "dense", Param(u, Origin("U")))
    first = save(g.validate(), tmp_path / "c.ngraph")
    assert first.stat().st_size < w.nbytes
    h = load(first)
    assert h.to_params()["W"].tobytes() == w.tobytes() and np.array_equal(h.to_params()["U"], u)
    second = save(h, tmp_path / "again.ngraph")
    assert second.stat().st_size == first.stat().st_size


def test_output_path_checks(graph, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        save(graph, tmp_path / "missing" / "g.ngraph")
    with pytest.raises(InputError, match="is a folder"):
        save(graph, tmp_path)
    assert list(tmp_path.iterdir()) == []
