"""NG-Transformer: a relational transformer whose attention runs only along graph edges.

The NG-T of Kofinas et al., "Graph Neural Networks for Learning Equivariant Representations of Neural
Networks" (ICLR 2024), a relational transformer over the neural graph (after Diao & Loynd, ICLR 2023).
Here queries come from a node, keys and values from the source node and the edge; each node attends
over its incoming edges and, separately, its outgoing ones (softmax per node with
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
    r"""Multi-head attention of each node over its incoming edges only (the attention of
    :class:`NGTransformerLayer`; Kofinas et al., ICLR 2024, NG-T):

    .. math::
        \alpha^{(m)}_{ij} = \operatorname{softmax}_{i \in \mathcal{N}(j)}
            \frac{\big(Q^{(m)} \mathbf{h}_j\big)^\top K^{(m)} \big(\mathbf{h}_i \,\|\, \mathbf{e}_{ij}\big)}{\sqrt{d_h}},
        \qquad
        \mathbf{a}_j = \big\|_{m=1}^{M} \sum_{i \in \mathcal{N}(j)} \alpha^{(m)}_{ij}\,
            V^{(m)} \big(\mathbf{h}_i \,\|\, \mathbf{e}_{ij}\big)

    for heads :math:`m = 1 \dots M` of width :math:`d_h = d / M`, where :math:`\mathcal{N}(j)` are the sources
    of the edges into :math:`j` (``dst``), one term per edge, and :math:`Q, K, V` are affine (with bias). A
    node without incoming edges gets 0. The softmax is over each target's edges
    (``torch_geometric.utils.softmax``), so memory is :math:`O(E \cdot d)`, never :math:`O(N^2)`; calling it
    with ``src`` and ``dst`` swapped attends over outgoing edges instead.

    Args:
        hidden: width :math:`d` of node and edge states.
        heads: :math:`M`; must divide ``hidden`` (``ValueError`` otherwise).

    Shapes:
        input: ``h`` :math:`(N, d)`, ``e`` :math:`(E, d)`, ``src``, ``dst`` :math:`(E,)`.
        output: :math:`(N, d)`.
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
    r"""One NG-Transformer layer (Kofinas et al., ICLR 2024, NG-T): attention along and against the
    network's direction, a feed-forward block, then an edge update, each a post-norm residual.

    .. math::
        \mathbf{h}' = \operatorname{LN}\big(\mathbf{h} + W_o\big[\mathbf{a}^{\rightarrow} \,\|\,
            \mathbf{a}^{\leftarrow}\big] + \mathbf{b}_o\big), \qquad
        \mathbf{h}'' = \operatorname{LN}\big(\mathbf{h}' + \phi_f(\mathbf{h}')\big)

        \mathbf{e}'_{ij} = \operatorname{LN}\big(\mathbf{e}_{ij} + \phi_e(\mathbf{h}''_i \,\|\,
            \mathbf{h}''_j \,\|\, \mathbf{e}_{ij})\big)

    where edge :math:`(i, j)` runs from neuron :math:`i` to :math:`j`, :math:`\mathbf{a}^{\rightarrow}_j` is
    :class:`EdgeAttention` of :math:`j` over its incoming edges (keys and values from their sources
    :math:`\mathbf{h}_i` and :math:`\mathbf{e}_{ij}`), :math:`\mathbf{a}^{\leftarrow}_i` a second
    :class:`EdgeAttention` of :math:`i` over its outgoing edges (keys and values from their targets
    :math:`\mathbf{h}_j` and :math:`\mathbf{e}_{ij}`), :math:`\phi_f` a SiLU MLP of hidden width :math:`2d`,
    :math:`\phi_e` a two-layer SiLU MLP, and each LN a separate LayerNorm. The edge update reads the
    updated node states. Per-node and per-edge maps and per-node softmax aggregations: equivariant to any
    node permutation.

    Args:
        hidden: width :math:`d` of node and edge states.
        heads: attention heads; must divide ``hidden`` (``ValueError`` otherwise).

    Shapes:
        input: node states :math:`(N, d)`, edge states :math:`(E, d)`, ``edge_index`` :math:`(2, E)`
        (row 0 the source neuron, row 1 the target).
        output: :math:`(N, d)`, :math:`(E, d)`.
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
    r"""The NG-Transformer encoder (Kofinas et al., ICLR 2024): :class:`~.common.LayeredEncoder` with
    ``layers`` :class:`NGTransformerLayer` layers — embed, attend along edges, pool, read out.

    Args:
        hidden: width :math:`d` of node and edge states.
        layers: number of layers.
        heads: attention heads; must divide ``hidden`` (``ValueError`` otherwise).
        out_dim: width of the graph embedding (default ``hidden``).
        **features: :class:`~.common.LayeredEncoder`'s options (``pool_norm``, ``pool_fixed``,
            ``summary_dim``) and its input sizes; other encoder options are ignored.

    Shapes: as :class:`~.common.LayeredEncoder`: node embeddings :math:`(N, d)`, graph embeddings
    :math:`(B, \text{out\_dim})`. No streamed forward.
    """

    def __init__(self, hidden: int = 64, layers: int = 3, heads: int = 4, out_dim: int | None = None, **features):
        _check_heads(hidden, heads)
        super().__init__(lambda: NGTransformerLayer(hidden, heads), layers, hidden, out_dim, **features)
