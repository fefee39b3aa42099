"""Regenerate the example models shipped in examples/ (needs torch; onnxscript for dynamo).

    python examples/make_examples.py

mlp.onnx: a 64-32-16-10 ReLU MLP (the shape of a scikit-learn digits classifier), random
weights and biases from seed 0, exported by the TorchScript exporter (Gemm nodes).
mlp_dynamo.onnx: the same network through the dynamo exporter (MatMul/Add or Gemm nodes).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 10)).eval()


def main() -> None:
    model, x = mlp(), torch.randn(2, 64)
    torch.onnx.export(model, (x,), HERE / "mlp.onnx", dynamo=False, input_names=["pixels"],
                      output_names=["logits"], dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}})
    torch.onnx.export(model, (x,), HERE / "mlp_dynamo.onnx", dynamo=True, optimize=False,
                      input_names=["pixels"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)


if __name__ == "__main__":
    main()
