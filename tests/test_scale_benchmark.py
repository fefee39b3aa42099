"""benchmarks/scale.py writes checkpoints exactly as the Hub ships LLaMA-family models (the
generator is what the scale numbers rest on): they convert, load in transformers, verify."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import nngraph

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", ROOT / "benchmarks" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_checkpoint_converts_and_verifies(scale, tmp_path):
    cfg = scale.llama_config("tiny", vocab=120)
    cfg.update(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8)
    index = scale.write_checkpoint(tmp_path / "m", cfg, shards=3)
    assert len(set(json.loads(index.read_text())["weight_map"].values())) == 3
    g = nngraph.convert(index)
    assert g.coverage == 1.0 and g.num_parameters == sum(int(np.prod(s)) for s in scale.llama_shapes(cfg).values())
    assert {t.dtype for t in g.sources.values()} == {"bfloat16"} and g.sets["layers.0.heads"].size == 4
    pytest.importorskip("transformers")
    from nngraph.verify import verify
    report = verify(index, trials=1)
    assert report.ok and report.roundtrip_exact, report.problems


def test_growth_exponent(scale):
    x = np.array([1e6, 1e7, 1e8])
    assert scale.growth_exponent(x, 3 * x ** 1.5) == pytest.approx(1.5)
    assert scale.growth_exponent([1e6], [2.0]) is None


def test_encode_step_with_a_trained_checkpoint(scale, tmp_path):
    """``--checkpoint``: the encode step embeds through ``train.embed`` (the checkpoint's features,
    input scales, streamed forward) and reports its measures; a missing checkpoint is a usage error."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_geometric")
    from nngraph.learn.checkpoint import GraphModel, save_checkpoint
    from nngraph.learn.featurize import FeatureConfig
    from nngraph.learn.train import embed
    cfg = scale.llama_config("nano", vocab=50)
    cfg.update(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4)
    g = nngraph.convert(scale.write_checkpoint(tmp_path / "m", cfg, shards=1))
    nngraph.save(g, tmp_path / "m.ngraph")
    torch.manual_seed(0)
    model = GraphModel.build("ng-gnn", {"hidden": 8, "layers": 2}, "regression", 1, FeatureConfig(), True)
    model.encoder.input_edge_scale.fill_(0.7)
    meta = {"encoder": "ng-gnn", "encoder_config": {"hidden": 8, "layers": 2}, "head": "regression",
            "head_config": {}, "out_dim": 1, "task": "regression", "target": "y", "classes": None, "y_mean": 0.0,
            "y_std": 1.0, "features": FeatureConfig().to_json(), "input_scaling": True}
    ckpt = save_checkpoint(tmp_path / "c.safetensors", model, meta)
    out = scale.step_encode(str(tmp_path / "m.ngraph"), "statnn", "4", "1", "stream", "1", "0", str(ckpt), "2")
    assert out["encode_finite"] and out["encode_checkpoint"] == str(ckpt) and out["encode_s"] > 0
    streamed = embed(ckpt, [g], "cpu", stream=True, workers=2)
    np.testing.assert_allclose(streamed, embed(ckpt, [g], "cpu", stream=False), rtol=1e-4, atol=1e-5)
    with pytest.raises(SystemExit) as e:
        scale.main(["--sizes", "nano", "--checkpoint", str(tmp_path / "none.safetensors")])
    assert e.value.code == 2
