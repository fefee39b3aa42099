"""DeepSets over edges: each edge (its features and its endpoints' own features) is encoded
alone, then summed per graph — a structure-blind baseline. Node embeddings sum the encodings
of their incident edges."""
from __future__ import annotations

import torch
from torch import nn
from torch_geometric.utils import scatter

from .common import InputEmbedding, graph_index, mlp


class DeepSets(nn.Module):
    r"""Edges as a set (Zaheer et al. 2017), structure ignored beyond each edge's endpoints:

    .. math::
        \mathbf{z}_{ij} = \phi\big(\mathbf{h}_i \,\|\, \mathbf{h}_j \,\|\, \mathbf{e}_{ij}\big),
        \qquad \mathbf{g} = \rho\Big(\sum_{(i,j)} \mathbf{z}_{ij}\Big)

    with :math:`\mathbf{h}, \mathbf{e}` the input embeddings. Node embeddings are the sums of
    :math:`\mathbf{z}` over each node's edges, both directions. Invariant to every permutation of
    nodes — a baseline that shows what message passing adds.
    """

    def __init__(self, hidden: int = 64, out_dim: int | None = None, **features):
        super().__init__()
        self.embed = InputEmbedding(hidden, **features)
        self.phi = mlp(3 * hidden, hidden, hidden)
        self.rho = mlp(hidden, hidden, out_dim or hidden)
        self.out_dim = out_dim or hidden

    def forward(self, batch):
        h, e = self.embed(batch)
        src, dst = batch.edge_index
        z = self.phi(torch.cat([h[src], h[dst], e], dim=-1))
        index, B = graph_index(batch)
        nodes = scatter(z, dst, dim=0, dim_size=h.shape[0], reduce="sum") + scatter(
            z, src, dim=0, dim_size=h.shape[0], reduce="sum")
        return nodes, self.rho(scatter(z, index[src], dim=0, dim_size=B, reduce="sum"))
