"""NG-GNN: message passing over neural graphs with edge features and edge updates.

Each layer updates every edge from its two endpoints, then every node from PNA-style
aggregates (mean, max, sum, std) of messages along the network's direction (from the inputs
of a neuron) and against it (from its outputs), with a residual connection.
Sparse scatter operations only: no loop over graphs or edges.

No normalization by default (``norm="layer"`` restores a LayerNorm after each update): LayerNorm
rescales every node's state to unit variance, which erases weight magnitude — on the
frequency-MLP task (benchmarks/learning) ng-gnn reached train/test accuracy 0.81/0.68 with it and
0.99/0.98 without (40 epochs, same seed), and statistics of weight magnitude alone reach 0.95.
"""
from __future__ import annotations

import torch
from torch import nn
from torch_geometric.utils import scatter

from .common import LayeredEncoder, mlp


def _aggregate(msg: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """PNA aggregates [mean, max, sum, std] per target node. Sum and sum of squares come from one
    scatter of ``[msg, msg²]`` (mean and std derived from them and the in-degree): two scatters
    per direction instead of four."""
    d = msg.shape[-1]
    sums = scatter(torch.cat([msg, msg * msg], dim=-1), index, dim=0, dim_size=size, reduce="sum")
    count = torch.bincount(index, minlength=size).clamp(min=1).unsqueeze(-1).to(msg.dtype)
    total, mean = sums[:, :d], sums[:, :d] / count
    std = torch.sqrt(torch.clamp(sums[:, d:] / count - mean * mean, min=0) + 1e-6)
    return torch.cat([mean, scatter(msg, index, dim=0, dim_size=size, reduce="max"), total, std], dim=-1)


class NGGNNLayer(nn.Module):
    r"""One NG-GNN layer (Kofinas et al., ICLR 2024, §3.2): edge update, then node update from PNA
    aggregates along and against the network's direction.

    .. math::
        \mathbf{e}'_{ij} = \mathbf{e}_{ij} + \phi_e\big(\mathbf{h}_i \,\|\, \mathbf{h}_j \,\|\,
            \mathbf{e}_{ij}\big)

        \mathbf{m}^{\rightarrow}_j = \bigoplus_{i \in \mathcal{N}^{\mathrm{in}}(j)}
            \phi_{\rightarrow}\big(\mathbf{h}_i \,\|\, \mathbf{e}'_{ij}\big), \qquad
        \mathbf{m}^{\leftarrow}_i = \bigoplus_{j \in \mathcal{N}^{\mathrm{out}}(i)}
            \phi_{\leftarrow}\big(\mathbf{h}_j \,\|\, \mathbf{e}'_{ij}\big)

        \mathbf{h}'_j = \mathbf{h}_j + \phi_h\big(\mathbf{h}_j \,\|\, \mathbf{m}^{\rightarrow}_j
            \,\|\, \mathbf{m}^{\leftarrow}_j\big)

    where edge :math:`(i, j)` runs from neuron :math:`i` to neuron :math:`j` in the network,
    :math:`\bigoplus` concatenates mean, max, sum and standard deviation (PNA without degree
    scalers), each :math:`\phi` is a two-layer SiLU MLP, and ``norm="layer"`` applies a LayerNorm
    after both residual updates. Every operation is per node or per edge followed by a
    permutation-invariant aggregation, so the layer is equivariant to any node permutation — in
    particular to the network's neuron symmetries.

    Args:
        hidden: width :math:`d` of node and edge states.
        norm: ``"none"`` (default) or ``"layer"``.

    Shapes:
        input: node states :math:`(N, d)`, edge states :math:`(E, d)`, ``edge_index`` :math:`(2, E)`
        (row 0 the source neuron, row 1 the target).
        output: :math:`(N, d)`, :math:`(E, d)`.
    """

    def __init__(self, hidden: int, norm: str = "none"):
        super().__init__()
        if norm not in ("none", "layer"):
            raise ValueError(f"ng-gnn norm must be 'none' or 'layer', got {norm!r}")
        self.edge = mlp(3 * hidden, hidden, hidden)
        self.msg_fwd = mlp(2 * hidden, hidden, hidden)
        self.msg_bwd = mlp(2 * hidden, hidden, hidden)
        self.node = mlp(9 * hidden, 2 * hidden, hidden)
        make = (lambda: nn.LayerNorm(hidden)) if norm == "layer" else nn.Identity
        self.norm_h, self.norm_e = make(), make()

    def forward(self, h, e, edge_index):
        src, dst = edge_index
        e = self.norm_e(e + self.edge(torch.cat([h[src], h[dst], e], dim=-1)))
        fwd = _aggregate(self.msg_fwd(torch.cat([h[src], e], dim=-1)), dst, h.shape[0])
        bwd = _aggregate(self.msg_bwd(torch.cat([h[dst], e], dim=-1)), src, h.shape[0])
        h = self.norm_h(h + self.node(torch.cat([h, fwd, bwd], dim=-1)))
        return h, e


class NGGNN(LayeredEncoder):
    def __init__(self, hidden: int = 64, layers: int = 3, out_dim: int | None = None, norm: str = "none", **features):
        super().__init__(lambda: NGGNNLayer(hidden, norm), layers, hidden, out_dim, **features)
