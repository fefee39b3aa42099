"""safetensors: Hugging Face checkpoints (save_pretrained) from names, shapes and config.json,
plain layer chains, sharded indexes; memory-mapped; unplaceable tensors are named."""
from __future__ import annotations

import collections
import json
import shutil
import struct

import numpy as np
import pytest

import nngraph
from conftest import ngraph
from nngraph.verify import verify

from pathlib import Path

ST = Path(__file__).parent / "fixtures" / "safetensors"
FAMILIES = ["bert", "gpt2", "llama", "vit"]


@pytest.mark.parametrize("name", FAMILIES)
def test_family_structure(name):
    g = nngraph.convert(ST / name / "model.safetensors")
    assert g.coverage == 1.0 and g.meta["model_type"] == name
    roles = collections.Counter(s.role for s in g.sets.values())
    assert roles["query"] == roles["key"] == roles["value"] == roles["head"] == 2
    for s in g.sets.values():
        if s.role == "query":
            group = g.groups[s.group]
            assert g.groups[group.parent].size == 4
            assert group.rigid == (name == "llama")          # rotary embeddings pin head dimensions
    params = [p.data for _, p in g.params()]
    assert any(isinstance(getattr(a, "base", None), np.memmap) or isinstance(a, np.memmap) for a in params)


@pytest.mark.parametrize("name", [*FAMILIES, "gpt2_sharded"])
def test_family_verifies_with_transformers(name):
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    path = ST / name / ("model.safetensors.index.json" if name.endswith("sharded") else "model.safetensors")
    report = verify(path, trials=2)
    assert report.ok and report.roundtrip_exact and report.coverage == 1.0, report.problems
    assert all(report.groups_moved)


def test_layer_chain_matches_module():
    torch = pytest.importorskip("torch")
    from torch import nn
    from safetensors.torch import load_file
    g = nngraph.convert(ST / "chain" / "mlp.safetensors")
    assert [b.kind for b in g.blocks] == ["dense"] * 3 and g.coverage == 1.0
    assert any("norm_scale" in s.arrays and "norm_shift" in s.arrays for s in g.sets.values())
    module = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.LayerNorm(8), nn.Linear(8, 3)).eval()
    module.load_state_dict(load_file(str(ST / "chain" / "mlp.safetensors")))
    x = torch.randn(4, 6)
    with torch.no_grad():
        ref = module(x)
        for seed in range(3):
            p = g.permute(g.random_symmetry(seed)).to_params()
            module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in p.items()})
            torch.testing.assert_close(module(x), ref, rtol=1e-5, atol=1e-5)


def test_unplaceable_tensors_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file
    shutil.copytree(ST / "bert", tmp_path / "bert")
    tensors = load_file(str(tmp_path / "bert" / "model.safetensors"))
    tensors["classifier.weight"] = np.zeros((3, 32), np.float32)
    save_file(tensors, str(tmp_path / "bert" / "model.safetensors"))
    r = ngraph("convert", tmp_path / "bert" / "model.safetensors", "-o", tmp_path / "b.ngraph")
    assert r.returncode == 4 and "classifier.weight" in r.stderr and not (tmp_path / "b.ngraph").exists()
    save_file({"a.weight": np.zeros((4, 3), np.float32), "b.weight": np.zeros((5, 7), np.float32)},
              str(tmp_path / "bad.safetensors"))
    r = ngraph("convert", tmp_path / "bad.safetensors")
    assert r.returncode == 4 and "b.weight" in r.stderr


def test_corrupt_and_hostile_files(tmp_path):
    data = (ST / "chain" / "mlp.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    r = ngraph("convert", tmp_path / "cut.safetensors")
    assert r.returncode == 4 and "truncated" in r.stderr
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 10 ** 9) + b"{}")
    assert ngraph("convert", tmp_path / "junk.safetensors").returncode == 4
    index = {"weight_map": {"x.weight": "../outside.safetensors"}}
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.safetensors.index.json").write_text(json.dumps(index))
    r = ngraph("convert", tmp_path / "sub" / "model.safetensors.index.json")
    assert r.returncode == 4 and "outside" in r.stderr


def test_plugins_list_all_adapters():
    r = ngraph("plugins", "--json")
    names = {p["name"] for p in json.loads(r.stdout) if p["status"] == "active"}
    assert {"onnx", "torch", "safetensors"} <= names


def test_verify_without_config_is_a_clear_error():
    """A bare state dict has no computation to run: a one-line error, not a traceback."""
    path = ST / "chain" / "mlp.safetensors"
    r = ngraph("verify", str(path))
    assert r.returncode == 3, r.stderr
    assert "config.json" in r.stderr and "internal error" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
