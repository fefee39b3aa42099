"""NG-Transformer: a relational transformer whose attention runs only along graph edges.

Keys and values are built from the source node and the edge; each node attends over its
incoming edges and, separately, its outgoing ones (softmax per node with
``torch_geometric.utils.softmax``): no N×N tensor is ever formed.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch_geometric.utils import scatter, softmax

from .common import LayeredEncoder, mlp


def _check_heads(hidden: int, heads: int) -> None:
    if heads < 1 or hidden % heads:
        raise ValueError(f"heads {heads} must divide hidden {hidden}")


class EdgeAttention(nn.Module):
    r"""Multi-head attention of each node over its incoming edges only.

    .. math::
        \alpha_{ij} = \operatorname{softmax}_{i \in \mathcal{N}(j)}
            \frac{(W_q \mathbf{h}_j)^\top W_k (\mathbf{h}_i \,\|\, \mathbf{e}_{ij})}{\sqrt{d_h}},
        \qquad
        \mathbf{a}_j = \sum_{i \in \mathcal{N}(j)} \alpha_{ij}\, W_v (\mathbf{h}_i \,\|\, \mathbf{e}_{ij})

    per head (:math:`d_h` = hidden / heads). The softmax is over each target's edges
    (``torch_geometric.utils.softmax``), so memory is :math:`O(E \cdot d)`, never :math:`N^2`.

    Shapes: ``h`` :math:`(N, d)`, ``e`` :math:`(E, d)`, ``src``/``dst`` :math:`(E,)` → :math:`(N, d)`.
    """

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        _check_heads(hidden, heads)
        self.heads, self.dh = heads, hidden // heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(2 * hidden, hidden)
        self.v = nn.Linear(2 * hidden, hidden)

    def forward(self, h, e, src, dst):
        H, d = self.heads, self.dh
        q = self.q(h)[dst].view(-1, H, d)
        kv_in = torch.cat([h[src], e], dim=-1)
        k, v = self.k(kv_in).view(-1, H, d), self.v(kv_in).view(-1, H, d)
        score = (q * k).sum(-1) / math.sqrt(d)                      # [E, H]
        alpha = softmax(score, dst, num_nodes=h.shape[0])
        return scatter(alpha.unsqueeze(-1) * v, dst, dim=0, dim_size=h.shape[0], reduce="sum").view(-1, H * d)


class NGTransformerLayer(nn.Module):
    r"""One NG-Transformer layer: attention along and against the network's direction, a
    feed-forward block, then an edge update (post-norm residuals).

    .. math::
        \mathbf{h} \leftarrow \operatorname{LN}\big(\mathbf{h} + W_o[\mathbf{a}^{\rightarrow}
            \,\|\, \mathbf{a}^{\leftarrow}]\big), \qquad
        \mathbf{h} \leftarrow \operatorname{LN}\big(\mathbf{h} + \phi_f(\mathbf{h})\big), \qquad
        \mathbf{e}_{ij} \leftarrow \operatorname{LN}\big(\mathbf{e}_{ij} + \phi_e(\mathbf{h}_i \,\|\,
            \mathbf{h}_j \,\|\, \mathbf{e}_{ij})\big)

    :math:`\mathbf{a}^{\rightarrow}` is :class:`EdgeAttention` over incoming edges,
    :math:`\mathbf{a}^{\leftarrow}` over outgoing ones (edges reversed).

    Shapes: as :class:`~nngraph.plugins.encoders.ng_gnn.NGGNNLayer`.
    """

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.fwd, self.bwd = EdgeAttention(hidden, heads), EdgeAttention(hidden, heads)
        self.mix = nn.Linear(2 * hidden, hidden)
        self.ffn = mlp(hidden, 2 * hidden, hidden)
        self.edge = mlp(3 * hidden, hidden, hidden)
        self.n1, self.n2, self.ne = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)

    def forward(self, h, e, edge_index):
        src, dst = edge_index
        att = torch.cat([self.fwd(h, e, src, dst), self.bwd(h, e, dst, src)], dim=-1)
        h = self.n1(h + self.mix(att))
        h = self.n2(h + self.ffn(h))
        e = self.ne(e + self.edge(torch.cat([h[src], h[dst], e], dim=-1)))
        return h, e


class NGTransformer(LayeredEncoder):
    def __init__(self, hidden: int = 64, layers: int = 3, heads: int = 4, out_dim: int | None = None, **features):
        _check_heads(hidden, heads)
        super().__init__(lambda: NGTransformerLayer(hidden, heads), layers, hidden, out_dim, **features)
