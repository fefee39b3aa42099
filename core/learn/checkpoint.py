"""A trained model as one file: encoder + head rebuilt from their plugin names and configuration.

Checkpoints are safetensors (the model's tensors) with a JSON document in the header naming the
encoder and head plugins and their configuration, the feature configuration and the target's
normalisation — no pickle anywhere. Everything that applies a trained encoder (prediction,
embedding, embedding-based alignment) needs this module, not the training loop.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..files import atomic_output
from ..graph.vocab import EDGE_KINDS
from ..loader import registry
from .featurize import FeatureConfig, apply_scales


def resolve_device(name: str):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    return torch.device(name)


def build_encoder(encoder: str, encoder_config: dict, features: FeatureConfig):
    """The registered ``encoder`` with ``encoder_config`` and the input sizes of ``features``."""
    summary = {"summary_dim": features.summary_dim} if features.summary_dim else {}   # older plugins never see it
    return registry().encoder(encoder).factory(**encoder_config, node_dim=features.node_dim,
                                               edge_dim=features.edge_dim, max_positions=features.max_positions,
                                               **summary)


class GraphModel:
    """Encoder + head as one torch module (built lazily so that importing this file is cheap)."""

    @staticmethod
    def build(encoder: str, encoder_config: dict, head: str, out_dim: int, features: FeatureConfig,
              input_scaling: bool = False, head_config: dict | None = None, readout_norm: bool = False):
        import torch
        reg = registry()
        enc = build_encoder(encoder, encoder_config, features)
        if input_scaling:
            attach_input_scales(enc, features)
        if readout_norm:
            attach_readout_norm(enc)
        width = getattr(enc, "out_dim", encoder_config.get("hidden", 64))
        hd = reg.head(head).factory(width, out_dim, **(head_config or {}))

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder, self.head = enc, hd

            def forward(self, batch):
                return self.head(self.encoder(batch)[1])

        return Model()


def attach_input_scales(enc, features: FeatureConfig) -> None:
    """Buffers ``input_node_scale``/``input_edge_scale`` on the encoder (saved in its state dict) and a
    forward pre-hook that applies them, so every caller of the encoder (training, prediction, embedding
    alignment) sees the same scaled inputs."""
    import torch

    enc.register_buffer("input_node_scale", torch.ones(features.node_dim))
    enc.register_buffer("input_edge_scale", torch.ones(len(EDGE_KINDS)))

    def scale(module, args):
        return (apply_scales(args[0], module.input_node_scale, module.input_edge_scale, features), *args[1:])

    enc.register_forward_pre_hook(scale)


def readout_module(enc):
    """The module that maps an encoder's graph vector to its graph embedding, named by the encoder's
    ``readout_name`` — which an encoder declares only when that vector has no learned part upstream
    (statnn's weight statistics): constants measured once stay right. Standardizing a learned pooled
    vector by constants measured at init does not: ng-gnn's pools move by more than their 1 % spread
    within a few steps and training diverged (tasks population, loss 18 after 3 epochs). None when
    not declared or not starting with a linear layer."""
    import torch
    mod = getattr(enc, getattr(enc, "readout_name", "") or "", None)
    first = mod[0] if isinstance(mod, torch.nn.Sequential) and len(mod) else mod
    return mod if isinstance(first, torch.nn.Linear) else None


def attach_readout_norm(enc) -> bool:
    """Buffers ``readout_shift``/``readout_scale`` on the encoder and a forward pre-hook on its readout
    module (:func:`readout_module`) that standardizes the pooled vector, ``(p - shift) * scale``. Training
    sets them to the mean and inverse std of each dimension over the training networks
    (``train.readout_stats``): statnn's statistics mix quantities of very different scales (weights of
    RMS 0.1, counts, biases) and an MLP on them raw could not fit the tasks population (train 0.49 where
    gradient boosting on the same statistics fits 1.0). Returns False (nothing attached) for an encoder
    without a declared readout."""
    import torch
    mod = readout_module(enc)
    if mod is None:
        return False
    d = (mod[0] if isinstance(mod, torch.nn.Sequential) else mod).in_features
    enc.register_buffer("readout_shift", torch.zeros(d))
    enc.register_buffer("readout_scale", torch.ones(d))

    def standardize(module, args):
        return ((args[0] - enc.readout_shift) * enc.readout_scale, *args[1:])

    mod.register_forward_pre_hook(standardize)
    return True


def save_checkpoint(path, model, meta: dict) -> Path:
    """Write ``model``'s tensors and ``meta`` (plugin names, configuration, normalisation) as one
    safetensors file; the folder is created if needed."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "nngraph-checkpoint", "nngraph": json.dumps(meta)})
    return path


def load_checkpoint(path, device: str = "auto"):
    """``(model in eval mode on the device, meta, device)``; a file that is not a checkpoint is exit 4."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["nngraph"])
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: not an nngraph checkpoint ({type(e).__name__}: {e})") from None
    features = FeatureConfig(**meta["features"])
    try:
        model = GraphModel.build(meta["encoder"], meta["encoder_config"], meta["head"], meta["out_dim"], features,
                                 meta.get("input_scaling", False), meta.get("head_config"),
                                 meta.get("readout_norm", False))
        model.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError) as e:
        raise InputError(f"{path}: checkpoint does not match its encoder/head ({type(e).__name__}: "
                         f"{str(e).splitlines()[0]})") from None
    dev = resolve_device(device)
    return model.to(dev).eval(), meta, dev
