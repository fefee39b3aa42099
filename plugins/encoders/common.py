"""Pieces shared by the encoders: input embeddings, MLPs, pooling."""
from __future__ import annotations

import torch
from torch import nn
from torch_geometric.utils import scatter

from nngraph.learn.featurize import FeatureConfig

DEFAULT = FeatureConfig()


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class InputEmbedding(nn.Module):
    """Node and edge features to ``hidden``; fixed neurons (inputs/outputs) add a learned
    embedding of their position, since no symmetry moves them."""

    def __init__(self, hidden: int, node_dim: int = DEFAULT.node_dim, edge_dim: int = DEFAULT.edge_dim,
                 max_positions: int = DEFAULT.max_positions):
        super().__init__()
        self.node = mlp(node_dim, hidden, hidden)
        self.edge = mlp(edge_dim, hidden, hidden)
        self.position = nn.Embedding(max_positions, hidden)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.node(batch.x)
        fixed = batch.node_pos >= 0
        if bool(fixed.any()):
            h = h.clone()
            h[fixed] = h[fixed] + self.position(batch.node_pos[fixed])
        return h, self.edge(batch.edge_attr)


def pool(h: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean and max over each graph's nodes."""
    return torch.cat([scatter(h, index, dim=0, dim_size=size, reduce="mean"),
                      scatter(h, index, dim=0, dim_size=size, reduce="max")], dim=-1)


def graph_index(batch) -> tuple[torch.Tensor, int]:
    idx = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros(
        batch.num_nodes, dtype=torch.long, device=batch.x.device)
    return idx, int(batch.num_graphs) if hasattr(batch, "num_graphs") else 1


class LayeredEncoder(nn.Module):
    """Embed nodes and edges, run ``layers`` (each ``(h, e, edge_index) → (h, e)``), then pool
    mean and max per graph and read out. The message-passing encoders differ only in their layer."""

    def __init__(self, make_layer, layers: int, hidden: int, out_dim: int | None = None, **features):
        super().__init__()
        self.embed = InputEmbedding(hidden, **features)
        self.layers = nn.ModuleList(make_layer() for _ in range(layers))
        self.readout = mlp(2 * hidden, hidden, out_dim or hidden)
        self.out_dim = out_dim or hidden

    def forward(self, batch):
        h, e = self.embed(batch)
        for layer in self.layers:
            h, e = layer(h, e, batch.edge_index)
        index, size = graph_index(batch)
        return h, self.readout(pool(h, index, size))
