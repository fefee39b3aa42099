"""A third-party plugin as a user would write it: an adapter for ``.npzmlp`` files.

An ``.npzmlp`` file is an ``.npz`` with ``W0, b0, W1, b1, …`` (``W`` as [out, in]) of a tanh MLP.
Tests install it by writing a ``*.dist-info`` with an ``nngraph`` entry point.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from nngraph import NeuralGraph, Origin, Param
from nngraph.hookspecs import AdapterSpec, hookimpl


def _read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def sniff(path: Path) -> bool:
    return path.suffix == ".npzmlp" and zipfile.is_zipfile(path)


def convert(path: Path, **_) -> NeuralGraph:
    p = _read(path)
    n = len([k for k in p if k.startswith("W")])
    g = NeuralGraph({"producer": "toy"})
    prev = g.add_set("x", p["W0"].shape[1], "input", fixed=True).name
    for i in range(n):
        W, b = p[f"W{i}"], p[f"b{i}"]
        last = i == n - 1
        s = g.add_set(f"h{i}", W.shape[0], "output" if last else "hidden", depth=i + 1, fixed=last,
                      activation=None if last else "tanh")
        for name in (f"W{i}", f"b{i}"):
            g.add_source(name, p[name].shape, p[name].dtype)
        g.add_block(f"W{i}", prev, s.name, "dense", Param(W, Origin(f"W{i}")))
        s.arrays["bias"] = Param(b, Origin(f"b{i}"))
        prev = s.name
    return g


def export(source: Path, params, out: Path) -> None:
    with open(out, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in params.items()})


def run(path: Path, inputs):
    p = _read(path)
    x = inputs["x"]
    n = len([k for k in p if k.startswith("W")])
    for i in range(n):
        x = x @ p[f"W{i}"].T + p[f"b{i}"]
        if i < n - 1:
            x = np.tanh(x)
    return {"y": x}


def example_inputs(path: Path, seed: int = 0):
    return {"x": np.random.default_rng(seed).standard_normal((3, _read(path)["W0"].shape[1]))}


@hookimpl
def nngraph_adapters():
    return [AdapterSpec("npzmlp", convert=convert, sniff=sniff, extensions=(".npzmlp",), export=export,
                        run=run, example_inputs=example_inputs, read_params=_read,
                        description="toy third-party format")]


# ---------------------------------------------------------------------------- a toy encoder
def make_sum_encoder(hidden: int = 16, layers: int = 2, **features):
    """Message passing with sums along and against edges: equivariant by construction."""
    import torch
    from torch import nn
    from torch_geometric.utils import scatter

    class SumEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.LazyLinear(hidden)
            self.edge = nn.LazyLinear(hidden)
            self.fwd = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
            self.bwd = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))

        def forward(self, batch):
            h = torch.tanh(self.inp(batch.x))
            e = self.edge(batch.edge_attr)
            src, dst = batch.edge_index
            for f, b in zip(self.fwd, self.bwd):
                along = scatter(e * h[src], dst, dim=0, dim_size=h.shape[0], reduce="sum")
                against = scatter(e * h[dst], src, dim=0, dim_size=h.shape[0], reduce="sum")
                h = torch.tanh(h + f(along) + b(against))
            return h, scatter(h, batch.batch, dim=0, reduce="mean")

    return SumEncoder()


@hookimpl
def nngraph_encoders():
    from nngraph.hookspecs import EncoderSpec
    return [EncoderSpec("toy-sum", factory=make_sum_encoder, description="sum message passing (test plugin)")]
