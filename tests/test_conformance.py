"""The conformance kit that third parties subclass, run on the built-in ONNX adapter and on
the toy third-party adapter."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import EXAMPLES
from nngraph.testing import AdapterConformance, EncoderConformance


class TestOnnxConformance(AdapterConformance):
    adapter = "onnx"

    def model_paths(self):
        return [EXAMPLES / "mlp.onnx", EXAMPLES / "mlp_dynamo.onnx"]


class TestToyConformance(AdapterConformance):
    adapter = "npzmlp"

    @pytest.fixture(autouse=True)
    def _install(self, install_plugin, tmp_path):
        install_plugin("toy-nngraph", {"toy": "toy_nngraph"})
        rng = np.random.default_rng(1)
        self.path = tmp_path / "m.npzmlp"
        with open(self.path, "wb") as f:
            np.savez(f, W0=rng.standard_normal((4, 3)), b0=rng.standard_normal(4),
                     W1=rng.standard_normal((2, 4)), b1=rng.standard_normal(2))

    def model_paths(self):
        return [self.path]


class TestKerasConformance(AdapterConformance):
    """Keras-exported ONNX (the .keras path needs TensorFlow, not installed for the tests)."""

    adapter = "keras"

    def model_paths(self):
        return [EXAMPLES.parent / "tests" / "fixtures" / "keras" / n for n in ("small_tf2onnx.onnx", "twin_tf2onnx.onnx")]


class TestSafetensorsConformance(AdapterConformance):
    adapter = "safetensors"

    @pytest.fixture(autouse=True)
    def _needs(self):
        pytest.importorskip("transformers")
        pytest.importorskip("torch")

    def model_paths(self):
        root = EXAMPLES.parent / "tests" / "fixtures" / "safetensors"
        return [root / "bert" / "model.safetensors", root / "llama" / "model.safetensors"]


class TestTorchConformance(AdapterConformance):
    adapter = "torch"

    @pytest.fixture(autouse=True)
    def _program(self, tmp_path):
        torch = pytest.importorskip("torch")
        from fixtures.make_torch_fixtures import randomize_
        from test_torch_adapter import ResBlock
        module = randomize_(ResBlock())
        self.path = tmp_path / "res.pt2"
        torch.export.save(torch.export.export(module, (torch.randn(2, 3, 6, 6),)), self.path)

    def model_paths(self):
        return [self.path]


class TestToyEncoderConformance(EncoderConformance):
    """The encoder kit on a third party's encoder, loaded through its entry point."""

    encoder = "toy-sum"

    @pytest.fixture(autouse=True)
    def _install(self, install_plugin):
        pytest.importorskip("torch_geometric")
        install_plugin("toy-nngraph", {"toy": "toy_nngraph"})


def test_encoder_kit_catches_a_non_equivariant_encoder():
    """Control: an encoder that looks at node order fails the kit's symmetry test."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_geometric")
    from torch_geometric.utils import scatter

    class OrderAware(torch.nn.Module):
        def forward(self, batch):
            h = torch.arange(batch.num_nodes, dtype=torch.float32)[:, None] * batch.x[:, -2:]
            return h, scatter(h, batch.batch, dim=0, reduce="sum")

    class Broken(EncoderConformance):
        def _model(self, device="cpu"):
            return OrderAware()

    with pytest.raises(AssertionError):
        Broken().test_symmetry()
