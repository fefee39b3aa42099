"""The torch adapter: modules, exported programs, TorchScript and state dicts; permuted weights
load back into the module and compute the same function."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import nngraph  # noqa: E402
from conftest import ngraph  # noqa: E402
from fixtures.make_torch_fixtures import Convs, Recurrent, randomize_  # noqa: E402
from nngraph.adapters.torch import from_torch, to_state_dict, verify_module  # noqa: E402


class ResBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.bn1(self.c1(x)))
        h = torch.relu(h + self.bn2(self.c2(h)))
        return self.fc(h.mean((2, 3)))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0)

    def forward(self, ids):
        return self.layer(self.emb(ids))


CASES = {
    "mlp": lambda: (nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 3)), (torch.randn(2, 5),)),
    "cnn_bn_residual": lambda: (ResBlock(), (torch.randn(2, 3, 6, 6),)),
    "transformer_layer": lambda: (Encoder(), (torch.randint(0, 50, (2, 7)),)),
    "lstm": lambda: (Recurrent("lstm", False), (torch.randn(2, 5, 6),)),
    "bigru": lambda: (Recurrent("gru", True), (torch.randn(2, 5, 6),)),
    "convs": lambda: (Convs(), (torch.randn(2, 4, 4, 4), torch.randn(2, 2, 2, 4, 4))),
}


@pytest.mark.parametrize("name", CASES)
def test_modules_convert_and_verify(name):
    module, args = CASES[name]()
    randomize_(module)
    report = verify_module(module, args, trials=2)
    assert report["ok"], report["problems"]
    assert report["coverage"] == 1.0 and report["roundtrip_exact"]
    g = from_torch(module, args)
    assert set(g.sources) <= set(module.state_dict())     # origins are the module's own names


def test_state_dict_round_trip_and_heads():
    module, args = CASES["transformer_layer"]()
    g = from_torch(randomize_(module), args)
    sd = to_state_dict(g, module.state_dict())
    for k, v in sd.items():
        assert torch.equal(v, module.state_dict()[k])
    roles = {s.role for s in g.sets.values()}
    assert {"query", "key", "value", "head", "token"} <= roles


def test_pt2_file(tmp_path):
    module, args = CASES["cnn_bn_residual"]()
    randomize_(module)
    torch.export.save(torch.export.export(module, args), tmp_path / "m.pt2")
    r = ngraph("convert", tmp_path / "m.pt2", "-o", tmp_path / "m.ngraph", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["format"] == "torch" and doc["coverage"] == 1.0


def test_state_dict_checkpoint_chain(tmp_path):
    """A plain .pt state dict: structure inferred by names and shapes, read with weights_only."""
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                           nn.ReLU(), nn.Conv2d(8, 12, 1, groups=4), nn.Flatten(), nn.Linear(12 * 2 * 2, 4)).eval()
    randomize_(module)
    torch.save(module.state_dict(), tmp_path / "m.pt")
    g = nngraph.convert(tmp_path / "m.pt")
    assert g.coverage == 1.0
    assert [b.kind for b in g.blocks] == ["conv", "conv", "conv", "dense"]
    assert [b.groups for b in g.blocks] == [1, 8, 4, 1]
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        ref = module(x)
        for seed in range(3):   # the inferred chain's symmetries are the module's
            permuted = g.permute(g.random_symmetry(seed)).to_params()
            clone = nn.Sequential(*[m for m in module]).eval()
            clone.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in permuted.items()},
                                  strict=False)
            torch.testing.assert_close(clone(x), ref, rtol=1e-5, atol=1e-5)
            clone.load_state_dict(module.state_dict())


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickles_are_never_executed(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        torch.save({"w": torch.zeros(2), "x": Evil()}, f)
    r = ngraph("convert", tmp_path / "evil.pt", "-o", tmp_path / "e.ngraph")
    assert r.returncode == 4 and "pwned" not in r.stdout and "tensors-only" in r.stderr and "never unpickled" in r.stderr


def test_torchscript_file_needs_and_takes_example_inputs(tmp_path):
    module = randomize_(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)))
    torch.jit.script(module).save(str(tmp_path / "ts.pt"))
    r = ngraph("convert", tmp_path / "ts.pt", "-o", tmp_path / "ts.ngraph")
    assert r.returncode == 4 and "--inputs" in r.stderr
    np.savez(tmp_path / "x.npz", **{"0": np.random.randn(2, 3, 6, 6).astype(np.float32)})
    r = ngraph("convert", tmp_path / "ts.pt", "-o", tmp_path / "ts.ngraph", "--inputs", tmp_path / "x.npz", "--json")
    assert r.returncode == 0, r.stderr
    g = nngraph.load(tmp_path / "ts.ngraph")
    assert set(g.sources) == {"0.weight", "0.bias", "3.weight", "3.bias"} and g.coverage == 1.0
