"""Training throughput of nngraph's ng-gnn next to the reference NG-GNN (Kofinas et al.'s PNA-based
model, mkofinas/neural-graphs), on the same MLP population, in one process, back to back.

    python benchmarks/learning/throughput.py DATASET --reference PATH_TO_NEURAL_GRAPHS
        [--target label] [--epochs 5] [--threads 1] [--hidden 32] [--layers 2] [--batch-size 32] [--json]

DATASET is a population of plain MLPs (``make_freq.py``: [2, 32, 32, 1] ReLU, exported to ONNX).
Both models train on its training split with the same hidden size, number of layers, batch size,
number of torch threads and epochs; graphs/s = epochs × training networks / seconds, by the wall
clock and by the process's CPU time (the steadier of the two on a machine shared with other jobs:
with ``--threads 1`` it is the compute each model needed).

* ours: ``nngraph.learn.train.train`` with the ``TrainConfig`` defaults (ng-gnn) — everything a user's
  ``ngraph train`` does, featurization and per-epoch metrics included.
* reference: ``nn.gnn.GNNForClassification`` with the ``PNA`` backbone and the graph constructor
  configured as its INR-classification ``model/pna.yaml`` (sin embedding, edge updates, modulated
  edges, LayerNorm, cat pooling of the output neurons), ``d_hid``/``num_layers`` set to ours, trained
  as its ``main.py`` does (AdamW with amsgrad, gradient clipping 10, cross entropy). Its inputs are
  the same ONNX weights in its own format (``experiments/data.py`` ``INRDataset``: per layer
  ``weights[i]`` [B, in, out, 1], ``biases[i]`` [B, out, 1]), loaded once into memory beforehand
  (not timed — the reference itself re-reads every file every epoch, so this favours it).

The reference needs ``hydra``, ``rff`` and ``einops`` at import time (and torchvision for its
datasets); this script writes minimal stand-ins for whichever of them is not installed into a
temporary folder on ``sys.path`` (``rff.layers.GaussianEncoding`` is reimplemented as rff defines
it: ``[cos 2πvBᵀ, sin 2πvBᵀ]`` with ``B ~ N(0, σ²)``), and aliases
``torch_geometric.utils.trim_to_layer``, which newer PyG renamed to ``_trim_to_layer``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STUBS = {
    "hydra/__init__.py": "from . import utils\n",
    "hydra/utils.py": '''
import importlib


def instantiate(config, **kwargs):
    """The part of hydra.utils.instantiate the reference uses: ``_target_`` + keyword arguments."""
    cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    cfg.update(kwargs)
    module, _, name = config["_target_"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**cfg)
''',
    "rff/__init__.py": "from . import layers\n",
    "rff/layers.py": '''
import math

import torch
from torch import nn


class GaussianEncoding(nn.Module):
    """Random Fourier features as rff defines them: [cos(2π v Bᵀ), sin(2π v Bᵀ)], B ~ N(0, σ²)."""

    def __init__(self, sigma, input_size, encoded_size):
        super().__init__()
        self.register_buffer("b", torch.randn(encoded_size, input_size) * sigma)

    def forward(self, v):
        vp = 2 * math.pi * v @ self.b.T
        return torch.cat([torch.cos(vp), torch.sin(vp)], dim=-1)


class PositionalEncoding(nn.Module):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("rff stand-in: PositionalEncoding is not needed by this benchmark")
''',
    "einops/__init__.py": "",
    "einops/layers/__init__.py": "",
    "einops/layers/torch.py": '''
class Rearrange:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("einops stand-in: only the reference's probe features use Rearrange")
''',
    "torchvision/__init__.py": "from . import transforms\n",
    "torchvision/transforms.py": "",
}


def write_stubs(folder: Path) -> list[str]:
    """Stand-ins for the reference's import-time dependencies that are not installed; returns their names."""
    written = set()
    for rel, text in STUBS.items():
        top = rel.split("/")[0]
        if importlib.util.find_spec(top) is not None:
            continue
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.add(top)
    try:                          # PyG ≥ 2.4 renamed the module the reference imports TrimToLayer from
        importlib.import_module("torch_geometric.utils.trim_to_layer")
    except ModuleNotFoundError:
        renamed = importlib.import_module("torch_geometric.utils._trim_to_layer")
        sys.modules["torch_geometric.utils.trim_to_layer"] = renamed
        written.add("torch_geometric.utils.trim_to_layer")
    return sorted(written)


def mlp_weights(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Weights [in, out] and biases [out] of each Gemm of an ONNX MLP, in order (the reference's
    ``INRDataset`` layout: torch ``weight.permute(1, 0)``)."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    Ws, bs = [], []
    for node in model.graph.node:
        if node.op_type == "Gemm":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            W = init[node.input[1]]
            Ws.append(W.T if attrs.get("transB", 0) else W)       # → [in, out]
            bs.append(init[node.input[2]])
        elif node.op_type == "MatMul" and node.input[1] in init:
            Ws.append(init[node.input[1]])
        elif node.op_type == "Add" and node.input[1] in init and len(bs) < len(Ws):
            bs.append(init[node.input[1]])
    if not Ws or len(Ws) != len(bs):
        raise SystemExit(f"{path}: not a plain MLP (Gemm / MatMul+Add layers with biases)")
    return Ws, bs


def reference_model(layout: list[int], hidden: int, layers: int, n_classes: int):
    """The reference's NG-GNN for MLP classification (its ``model/pna.yaml``)."""
    from nn.gnn import GNNForClassification
    backbone = dict(_target_="nn.gnn.PNA", in_channels=hidden, hidden_channels=hidden, out_channels=hidden,
                    num_layers=layers, aggregators=["mean", "min", "max", "std"],
                    scalers=["identity", "amplification"], edge_dim=hidden, dropout=0.0, norm="layernorm",
                    act="silu", deg=None, update_edge_attr=True, modulate_edges=True, gating_edges=False,
                    final_edge_update=False)
    constructor = dict(_target_="nn.graph_constructor.GraphConstructor", d_in=1, d_edge_in=1,
                       zero_out_bias=False, zero_out_weights=False, sin_emb=True, sin_emb_dim=128,
                       use_pos_embed=True, input_layers=1, inp_factor=3, num_probe_features=0, inr_model=None,
                       stats=None)
    return GNNForClassification(d_hid=hidden, d_out=n_classes, graph_constructor=constructor,
                                gnn_backbone=backbone, layer_layout=layout, rev_edge_features=False,
                                pooling_method="cat", pooling_layer_idx="last")


def run_reference(entries, target: str, args) -> dict:
    import torch
    Ws, bs = zip(*(mlp_weights(e.path) for e in entries))
    shapes = {tuple(w.shape for w in ws) for ws in Ws}
    if len(shapes) != 1:
        raise SystemExit("the reference NG-GNN needs one architecture for the whole population")
    weights = [torch.tensor(np.stack([w[i] for w in Ws]))[..., None] for i in range(len(Ws[0]))]
    biases = [torch.tensor(np.stack([b[i] for b in bs]))[..., None] for i in range(len(bs[0]))]
    raw = [e.row[target] for e in entries]
    classes = sorted(set(raw))
    labels = torch.tensor([classes.index(v) for v in raw])
    layout = [weights[0].shape[1]] + [b.shape[1] for b in biases]
    torch.manual_seed(args.seed)
    model = reference_model(layout, args.hidden, args.layers, len(classes))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=5e-4, amsgrad=True)
    criterion = torch.nn.CrossEntropyLoss()
    n = len(entries)
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.epochs):
        correct, total = 0, 0.0
        for idx in torch.randperm(n, generator=g).split(args.batch_size):
            inputs = (tuple(w[idx] for w in weights), tuple(b[idx] for b in biases))
            out = model(inputs)
            loss = criterion(out, labels[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            total += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == labels[idx]).sum())
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"graphs_per_s": n * args.epochs / seconds, "graphs_per_cpu_s": n * args.epochs / cpu,
            "seconds": seconds, "cpu_seconds": cpu, "last_train_loss": total / n,
            "last_train_accuracy": correct / n, "parameters": sum(p.numel() for p in params)}


def run_ours(data, target: str, args) -> dict:
    from nngraph.learn.train import TrainConfig, train
    # architecture for architecture: the reference has no pool norm and no probe features, so neither has
    # ours here (TrainConfig's plain features; pool_norm="none" where "auto" would give ng-gnn's default)
    cfg = TrainConfig(target=target, task="classification", encoder="ng-gnn", epochs=args.epochs,
                      hidden=args.hidden, layers=args.layers, batch_size=args.batch_size, seed=args.seed,
                      pool_norm="none",
                      device="cpu" if args.device == "auto" else args.device)
    start, cpu = time.perf_counter(), time.process_time()
    model, meta, history = train(data, cfg, progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    n = meta["n_train"] * len(history)
    return {"graphs_per_s": n / seconds, "graphs_per_cpu_s": n / cpu, "seconds": seconds, "cpu_seconds": cpu,
            "last_train_loss": history[-1]["train_loss"], "last_train_accuracy": history[-1]["train_accuracy"],
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--reference", required=True, type=Path, help="a checkout of mkofinas/neural-graphs")
    ap.add_argument("--target", default="label")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="ours; the reference runs on CPU here")
    ap.add_argument("--order", choices=["ours-first", "reference-first"], default="reference-first")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not (args.reference / "nn" / "gnn.py").is_file():
        ap.error(f"--reference {args.reference}: not a neural-graphs checkout (no nn/gnn.py)")
    import torch
    torch.set_num_threads(args.threads)
    import torch_geometric.nn  # noqa: F401 - imported before either clock starts
    from nngraph.learn.dataset import load_dataset
    from nngraph.plugins.encoders import ng_gnn  # noqa: F401
    data = load_dataset(args.dataset, progress=False)
    train_entries = data.split("train")
    with tempfile.TemporaryDirectory() as tmp:
        stubs = write_stubs(Path(tmp))
        sys.path[:0] = [tmp, str(args.reference.resolve())]
        runs = {}
        order = ["reference", "ours"] if args.order == "reference-first" else ["ours", "reference"]
        for name in order:
            runs[name] = run_reference(train_entries, args.target, args) if name == "reference" \
                else run_ours(data, args.target, args)
    doc = {"dataset": args.dataset, "n_train": len(train_entries), "epochs": args.epochs, "hidden": args.hidden,
           "layers": args.layers, "batch_size": args.batch_size, "threads": args.threads, "stubs": stubs,
           "ours": runs["ours"], "reference": runs["reference"],
           "ratio": runs["ours"]["graphs_per_s"] / runs["reference"]["graphs_per_s"],
           "ratio_cpu": runs["ours"]["graphs_per_cpu_s"] / runs["reference"]["graphs_per_cpu_s"]}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for name in ("ours", "reference"):
            r = runs[name]
            print(f"{name:10s} {r['graphs_per_s']:8.1f} graphs/s wall, {r['graphs_per_cpu_s']:8.1f} per CPU-second  "
                  f"({r['seconds']:.1f} s, {r['parameters']} parameters, "
                  f"last epoch train loss {r['last_train_loss']:.3f})")
        print(f"ratio ours / reference: {doc['ratio']:.2f}× wall-clock, {doc['ratio_cpu']:.2f}× CPU time")


if __name__ == "__main__":
    main()
