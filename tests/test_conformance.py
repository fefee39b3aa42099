"""The conformance kit that third parties subclass, run on the built-in ONNX adapter and on
the toy third-party adapter."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import EXAMPLES
from nngraph.testing import AdapterConformance


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
