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


@pytest.mark.parametrize("change, command", [
    ({"architectures": 10 ** 30}, "convert"),               # was an internal TypeError (fuzz, config-json)
    ({"partial_rotary_factor": "half"}, "convert"),
    ({"vocab_size": 10 ** 30}, "verify"),                   # no range to draw token ids from
    ({"vocab_size": 2 ** 30}, "verify"),                    # transformers refuses the mismatched embedding
    ({"n_head": 2 ** 63}, "convert"),                       # exit 1 before (a tie group error; fuzz, config-json)
    ({"n_head": 5}, "convert"),                             # 32 query neurons are no 5 heads
])
def test_hostile_config_values_are_one_line_errors(tmp_path, change, command):
    shutil.copytree(ST / "gpt2", tmp_path / "g")
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    (tmp_path / "g" / "config.json").write_text(json.dumps({**cfg, **change}))
    extra = ["-o", str(tmp_path / "x.ngraph")] if command == "convert" else ["--trials", "1"]
    r = ngraph(command, str(tmp_path / "g" / "model.safetensors"), *extra)
    assert r.returncode in (3, 4), r.stderr
    assert "internal error" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x.ngraph").exists()
    if "n_head" in change:
        assert "config.json n_head" in r.stderr


# ------------------------------------------------------------------ LLM layouts (issue 12)
LLMS = {"tinyllama": "model.safetensors.index.json", "mistral_mqa": "model.safetensors",
        "qwen2": "model.safetensors", "phi3": "model.safetensors", "llama_fp8": "model.safetensors",
        "gpt_neox": "model.safetensors", "gemma": "model.safetensors", "stablelm": "model.safetensors",
        "phi": "model.safetensors"}


@pytest.mark.parametrize("name", LLMS)
def test_llm_layout_structure(name):
    """GQA/MQA as query slots under key/value heads, lm_head tied or not, stored dtype kept."""
    cfg = json.loads((ST / name / "config.json").read_text())
    g = nngraph.convert(ST / name / LLMS[name])
    assert g.coverage == 1.0 and g.meta["model_type"] == cfg["model_type"]
    H = cfg["num_attention_heads"]
    G = cfg.get("num_key_value_heads", H)                    # GPT-NeoX: multi-head attention
    heads = g.sets["layers.0.heads"]
    assert heads.size == G and g.groups[heads.group].parent is None
    slots = [s for s in g.sets if s.startswith("layers.0.q") and not s.endswith("/pass")]
    assert len(slots) == H // G
    for s in slots:                                          # every slot tied to the keys, under kv heads
        assert g.sets[s].group == g.sets[slots[0]].group
        assert g.groups[g.sets[s].group].parent == heads.group and g.groups[g.sets[s].group].rigid
    v = g.groups[g.sets["layers.0.v"].group]
    assert v.parent == heads.group and not v.rigid            # value dims permute inside their head
    logits = g.sets["logits"]
    assert logits.role == "output" and g.groups[logits.group].fixed and logits.size == cfg["vocab_size"]
    assert not g.groups[g.sets["final_norm"].group].fixed     # with a head, the residual stream moves
    lm = next(b for b in g.blocks if b.name == "lm_head")
    assert lm.weight.shared == cfg["tie_word_embeddings"]
    dtypes = {t.dtype for t in g.sources.values()}
    assert dtypes == {"tinyllama": {"bfloat16"}, "llama_fp8": {"float8_e4m3fn"}}.get(name, {"float32"})
    if name == "phi3":                                        # partial rotary: rigid /rot, free /pass
        assert g.groups[g.sets["layers.0.q0/rot"].group].rigid
        assert not g.groups[g.sets["layers.0.q0/pass"].group].rigid
        assert g.sets["layers.0.q0/rot"].size == g.sets["layers.0.q0/pass"].size == G * 4
    if name == "gpt_neox":                                    # parallel residual: the MLP's norm reads x
        norm2 = next(b for b in g.blocks if b.target == "layers.1.norm2")
        assert norm2.source == "layers.0.residual2" and "embed_out.weight" in g.sources
        assert g.sets["layers.0.q/rot"].size == H * 2 and g.sets["layers.0.q/pass"].size == H * 6
    if name in ("stablelm", "phi"):                         # parallel residual off one norm: no second norm
        assert "layers.0.norm2" not in g.sets
        assert {b.source for b in g.blocks if b.target in ("layers.0.up", "layers.0.gate")} == {"layers.0.norm1"}
    if name == "tinyllama":
        index = json.loads((ST / name / LLMS[name]).read_text())
        assert len(set(index["weight_map"].values())) == 3 and "lm_head.weight" in g.sources


@pytest.mark.parametrize("name", LLMS)
def test_llm_layout_verifies_with_transformers(name):
    pytest.importorskip("transformers")
    report = verify(ST / name / LLMS[name], trials=2)
    assert report.ok and report.roundtrip_exact and report.coverage == 1.0, report.problems
    assert all(report.groups_moved)


def _neox_sequential_old_keys(cfg, tensors):
    cfg["use_parallel_residual"] = False               # the MLP reads the attention's residual
    cfg["rotary_pct"] = cfg.pop("rope_parameters", {}).get("partial_rotary_factor")   # older config.json


def _neox_odd_rotary(cfg, tensors):
    cfg.pop("rope_parameters", None)
    cfg["rotary_pct"] = 0.375                          # 3 of 8 dims: transformers rotates 4 (pairs)


def _neox_disagreeing_keys(cfg, tensors):
    cfg["partial_rotary_factor"] = 0.0                 # GPT-NeoX reads rope_parameters' 0.25, not this


def _neox_lm_head_name(cfg, tensors):
    tensors["lm_head.weight"] = tensors.pop("embed_out.weight")    # state_dict() of transformers 5


@pytest.mark.parametrize("change", [_neox_sequential_old_keys, _neox_odd_rotary, _neox_disagreeing_keys,
                                    _neox_lm_head_name])
def test_gpt_neox_variants_verify(tmp_path, change):
    """Config and naming variants of the GPT-NeoX layout: each converts and verifies through transformers
    (an odd rotated count and keys that disagree once claimed a rotated dimension free)."""
    pytest.importorskip("transformers")
    from safetensors.numpy import load_file, save_file
    shutil.copytree(ST / "gpt_neox", tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    change(cfg, tensors)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    g = nngraph.convert(tmp_path / "m" / "model.safetensors")
    norm2 = next(b for b in g.blocks if b.target == "layers.0.norm2").source
    assert norm2 == ("layers.0.residual1" if cfg.get("use_parallel_residual") is False else "word")
    report = verify(tmp_path / "m" / "model.safetensors", trials=2)
    assert report.ok and all(report.groups_moved), report.problems


def test_whole_head_rotary_families_ignore_a_rotary_fraction(tmp_path):
    """transformers' Gemma (like LLaMA and Qwen2) rotates whole heads whatever partial_rotary_factor says:
    reading it declared the unrotated half free (verify failed, relative 1.3)."""
    pytest.importorskip("transformers")
    shutil.copytree(ST / "gemma", tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["partial_rotary_factor"] = 0.5
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    g = nngraph.convert(tmp_path / "m" / "model.safetensors")
    assert not [s for s in g.sets if s.endswith("/pass")]
    report = verify(tmp_path / "m" / "model.safetensors", trials=2)
    assert report.ok, report.problems


def test_gpt_neox_without_its_second_norm_is_refused(tmp_path):
    """GPT-NeoX's parallel branches read two norms; a checkpoint lacking one is refused, naming it."""
    from safetensors.numpy import load_file, save_file
    shutil.copytree(ST / "gpt_neox", tmp_path / "m")
    tensors = {k: v for k, v in load_file(tmp_path / "m" / "model.safetensors").items()
               if "post_attention_layernorm" not in k}
    save_file(tensors, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    r = ngraph("convert", str(tmp_path / "m" / "model.safetensors"), "-o", str(tmp_path / "x.ngraph"))
    assert r.returncode == 4 and "post_attention_layernorm" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_tinyllama_cli_convert_and_verify(tmp_path):
    pytest.importorskip("transformers")
    path = ST / "tinyllama" / LLMS["tinyllama"]
    r = ngraph("convert", path, "-o", tmp_path / "t.ngraph", "--json")
    assert r.returncode == 0, r.stderr
    g = nngraph.load(tmp_path / "t.ngraph")
    assert g.sources["model.embed_tokens.weight"].dtype == "bfloat16"
    original = nngraph.convert(path).to_params()
    for k, v in g.to_params().items():
        assert v.dtype == original[k].dtype and np.array_equal(v.view(np.uint16), original[k].view(np.uint16))
    r = ngraph("verify", path, "--trials", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"]


def test_gqa_symmetry_is_what_the_graph_says():
    """Through transformers: the value dimensions of a key/value head must move alike for all its
    query heads (the graph ties the ctx slots to V), and exchanging two query heads of one key/value
    head is a symmetry too (the factor the IR leaves out); moving one slot's o_proj columns alone is not."""
    pytest.importorskip("transformers")
    from nngraph.adapters.safetensors.families import hf_run, hf_example_inputs
    from safetensors.numpy import save_file
    import tempfile
    src = ST / "qwen2"
    cfg = json.loads((src / "config.json").read_text())
    H, G, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    d, r = D // H, H // G
    x = hf_example_inputs(src / "model.safetensors")
    ref = hf_run(src / "model.safetensors", x)["logits"]
    base = {k: np.array(v) for k, v in nngraph.adapters.safetensors.read_tensors(src / "model.safetensors").items()}
    L = "model.layers.0.self_attn."

    def run(params):
        with tempfile.TemporaryDirectory() as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, f"{tmp}/model.safetensors")
            shutil.copy(src / "config.json", f"{tmp}/config.json")
            return hf_run(Path(tmp) / "model.safetensors", x)["logits"]

    def rows(h):            # q rows (and o columns) of query head h
        return np.arange(h * d, (h + 1) * d)

    p = {k: v.copy() for k, v in base.items()}                 # exchange query heads 0 and 1 (kv head 0)
    order = np.arange(H * d)
    order[rows(0)], order[rows(1)] = rows(1), rows(0)
    p[L + "q_proj.weight"], p[L + "q_proj.bias"] = base[L + "q_proj.weight"][order], base[L + "q_proj.bias"][order]
    p[L + "o_proj.weight"] = base[L + "o_proj.weight"][:, order]
    np.testing.assert_allclose(run(p), ref, rtol=1e-4, atol=1e-4)
    perm = np.roll(np.arange(d), 1)                             # value dims of kv head 0
    vrows = np.arange(G * d)
    vrows[:d] = perm
    p = {k: v.copy() for k, v in base.items()}
    p[L + "v_proj.weight"], p[L + "v_proj.bias"] = base[L + "v_proj.weight"][vrows], base[L + "v_proj.bias"][vrows]
    cols = np.arange(H * d)
    for h in range(r):                                          # all r query heads of kv head 0 follow
        cols[h * d:(h + 1) * d] = h * d + perm
    p[L + "o_proj.weight"] = base[L + "o_proj.weight"][:, cols]
    np.testing.assert_allclose(run(p), ref, rtol=1e-4, atol=1e-4)
    cols[d:2 * d] = np.arange(d, 2 * d)                         # … but not only one of them
    p[L + "o_proj.weight"] = base[L + "o_proj.weight"][:, cols]
    assert np.max(np.abs(run(p) - ref)) > 1e-2
