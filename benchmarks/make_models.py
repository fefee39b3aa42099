"""Export the full-size benchmark models (random weights) from transformers configs.

    python benchmarks/make_models.py [OUT_DIR]      # default: benchmarks/models/ (git-ignored)

resnet50.onnx: transformers ResNetConfig() defaults (ResNet-50, 25.6 M parameters).
vit_b16.onnx:  transformers ViTConfig() defaults (ViT-B/16 at 224², 86 M parameters).
Both through the dynamo exporter (opset 18), weights inline.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch


def main() -> None:
    import transformers as tf

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "models"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    models = {
        "resnet50": tf.ResNetModel(tf.ResNetConfig()),
        "vit_b16": tf.ViTModel(tf.ViTConfig(), add_pooling_layer=False),
    }
    x = torch.randn(1, 3, 224, 224)
    for name, model in models.items():
        model.eval()

        class Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, pixel_values):
                return self.m(pixel_values=pixel_values).last_hidden_state

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(Wrap(model).eval(), (x,), dynamo=True, input_names=["pixel_values"],
                                     output_names=["hidden"], opset_version=18)
        prog.save(str(out / f"{name}.onnx"), external_data=False)
        print("wrote", out / f"{name}.onnx", (out / f"{name}.onnx").stat().st_size // 2**20, "MiB")


if __name__ == "__main__":
    main()
