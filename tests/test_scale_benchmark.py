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
