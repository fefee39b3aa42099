"""StatNN: statistics of the weights per depth, then an MLP (Unterthiner et al. 2020).

For each graph and each depth bucket (the target set's depth, clipped to ``max_depth``): mean,
standard deviation and quantiles (0, 25, 50, 75, 100 %) of the edge weights (first tap), and
mean/std of the node biases. Invariant by construction; node embeddings are the graph's,
broadcast to its nodes.
"""
from __future__ import annotations

import torch
from torch import nn
from torch_geometric.utils import scatter

from nngraph.graph.vocab import ACTIVATIONS, ROLES

from .common import graph_index, mlp

BIAS = len(ROLES) + len(ACTIVATIONS) + 1      # the featurizer's "bias" slot

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def _group_stats(values: torch.Tensor, group: torch.Tensor, groups: int) -> torch.Tensor:
    """[groups, 2 + len(QUANTILES)]: mean, std and quantiles of ``values`` per group (0 if empty)."""
    mean = scatter(values, group, dim=0, dim_size=groups, reduce="mean")
    sq = scatter(values * values, group, dim=0, dim_size=groups, reduce="mean")
    std = torch.sqrt(torch.clamp(sq - mean * mean, min=0) + 1e-12)
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(group[order], stable=True)]          # by group, then by value
    counts = torch.bincount(group, minlength=groups)
    starts = torch.cumsum(counts, 0) - counts
    qs = []
    for q in QUANTILES:
        pos = starts + torch.clamp((q * (counts - 1).clamp(min=0)).round().long(), min=0)
        pick = values[order][pos.clamp(max=max(len(values) - 1, 0))] if len(values) else torch.zeros_like(mean)
        qs.append(torch.where(counts > 0, pick, torch.zeros_like(pick)))
    return torch.stack([mean, std, *qs], dim=-1)


class StatNN(nn.Module):
    def __init__(self, hidden: int = 64, max_depth: int = 8, out_dim: int | None = None, **features):
        super().__init__()
        self.max_depth = max_depth
        stats = 2 + len(QUANTILES)
        self.net = mlp((max_depth + 1) * (stats + 2), hidden, out_dim or hidden)
        self.out_dim = out_dim or hidden

    def forward(self, batch):
        index, _ = graph_index(batch)
        g = self.net(weight_statistics(batch, self.max_depth))
        return g[index], g


def weight_statistics(batch, max_depth: int = 8) -> torch.Tensor:
    """[B, (max_depth + 1) · 9] per-depth statistics of a featurized batch: mean, std and quantiles of
    the edge weights (first tap), mean and std of the biases. StatNN's input; also the features of
    the gradient-boosting baseline in ``benchmarks/learning``."""
    index, B = graph_index(batch)
    D = max_depth + 1
    edge_bucket = index[batch.edge_index[0]] * D + batch.edge_depth.clamp(max=max_depth)
    weights = _group_stats(batch.edge_attr[:, 0], edge_bucket, B * D).view(B, -1)
    bias = batch.x[:, BIAS]
    node_bucket = index * D + batch.node_depth.clamp(max=max_depth)
    bmean = scatter(bias, node_bucket, dim=0, dim_size=B * D, reduce="mean")
    bsq = scatter(bias * bias, node_bucket, dim=0, dim_size=B * D, reduce="mean")
    bstd = torch.sqrt(torch.clamp(bsq - bmean * bmean, min=0) + 1e-12)
    return torch.cat([weights, torch.stack([bmean, bstd], -1).view(B, -1)], dim=-1)
