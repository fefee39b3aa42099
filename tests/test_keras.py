"""Keras exports (tf2onnx and keras.Model.export, TensorFlow backend), made by
tests/fixtures/make_keras_fixtures.py: they verify, and a Keras network's graph equals the graph
of the same network written in PyTorch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nngraph
from conftest import ngraph
from nngraph.verify import verify

KERAS = Path(__file__).parent / "fixtures" / "keras"
MODELS = sorted(p.name for p in KERAS.glob("*.onnx"))


@pytest.mark.parametrize("name", MODELS)
def test_keras_exports_verify(name):
    report = verify(KERAS / name, trials=2)
    assert report.ok and report.roundtrip_exact and report.coverage == 1.0, report.problems
    assert all(report.groups_moved)


def test_keras_attention_has_heads():
    g = nngraph.convert(KERAS / "small_tf2onnx.onnx")
    heads = [s for s in g.sets.values() if s.role == "head"]
    assert len(heads) == 1 and heads[0].size == 3
    q = next(s for s in g.sets.values() if s.role == "query")
    assert g.groups[g.groups[q.group].parent].size == 3


def test_keras_graph_equals_pytorch_twin():
    torch = pytest.importorskip("torch")
    from torch import nn
    from nngraph.adapters.torch import from_torch

    w = np.load(KERAS / "twin_weights.npz")

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5, eps=float(w["bn_eps"])), nn.Linear(180, 4)

        def forward(self, x):          # NHWC in, flattened channels-last like Keras
            h = torch.relu(self.bn(self.conv(x.permute(0, 3, 1, 2))))
            return self.fc(h.permute(0, 2, 3, 1).flatten(1))

    twin = Twin().eval()
    with torch.no_grad():
        twin.conv.weight.copy_(torch.from_numpy(w["conv_kernel"].transpose(3, 2, 0, 1)))
        twin.conv.bias.copy_(torch.from_numpy(w["conv_bias"]))
        for name, key in (("weight", "bn_gamma"), ("bias", "bn_beta"), ("running_mean", "bn_mean"), ("running_var", "bn_var")):
            getattr(twin.bn, name).copy_(torch.from_numpy(w[key]))
        twin.fc.weight.copy_(torch.from_numpy(w["dense_kernel"].T))
        twin.fc.bias.copy_(torch.from_numpy(w["dense_bias"]))
    gk = nngraph.convert(KERAS / "twin_tf2onnx.onnx")
    gt = from_torch(twin, (torch.randn(2, 6, 6, 3),))

    def summary(g):
        sets = [(s.size, s.role) for s in g.sets.values()]
        blocks = [(b.kind, g.sets[b.source].size, g.sets[b.target].size, b.weight.shape if b.weight else None)
                  for b in g.blocks if b.kind in ("conv", "dense")]
        return sets, blocks

    (sk, bk), (st, bt) = summary(gk), summary(gt)
    assert bk == bt and [x for x in sk if x[1] in ("input", "output")] == [x for x in st if x[1] in ("input", "output")]
    for a, b in zip([b for b in gk.blocks if b.kind in ("conv", "dense")], [b for b in gt.blocks if b.kind in ("conv", "dense")]):
        np.testing.assert_allclose(np.asarray(a.weight.data), np.asarray(b.weight.data), rtol=1e-6, atol=1e-7)


def test_keras_file_without_keras_installed(tmp_path):
    import zipfile
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{}")
    try:
        import keras  # noqa: F401
        pytest.skip("keras is installed here")
    except ImportError:
        pass
    r = ngraph("convert", path)
    assert r.returncode == 4 and "nngraph[keras]" in r.stderr
