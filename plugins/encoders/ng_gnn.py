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

from .common import LayeredEncoder, mlp


class _ScatterMax(torch.autograd.Function):
    """Per-target, per-channel max of edge messages: ``scatter_reduce(amax)`` with a lighter
    backward than autograd's (which scatters over all E×d messages): the gradient goes to the
    messages equal to their target's max, split evenly on ties as autograd does, with one gather,
    one compare and one small index_add. The aggregation takes 35 % less time on the
    frequency-MLP batches."""

    @staticmethod
    def forward(ctx, msg, index, size: int):
        E, d = msg.shape
        out = msg.new_zeros(size, d).scatter_reduce_(0, index.unsqueeze(1).expand(E, d), msg, "amax",
                                                     include_self=False)
        ctx.save_for_backward(msg, index, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        msg, index, out = ctx.saved_tensors
        hit = (msg == out.index_select(0, index)).to(grad.dtype)
        ties = grad.new_zeros(out.shape).index_add_(0, index, hit).clamp(min=1)
        return hit * (grad / ties).index_select(0, index), None, None


def _aggregate(msg: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """PNA aggregates [mean, max, sum, std] per target node. Sum and sum of squares by
    ``index_add_`` (its backward is a gather), mean and std derived from them and the in-degree, the
    max by ``_ScatterMax``: three passes over the messages instead of four scatters."""
    d = msg.shape[-1]
    total = msg.new_zeros(size, d).index_add_(0, index, msg)
    squares = msg.new_zeros(size, d).index_add_(0, index, msg * msg)
    count = torch.bincount(index, minlength=size).clamp(min=1).unsqueeze(-1).to(msg.dtype)
    mean = total / count
    std = torch.sqrt(torch.clamp(squares / count - mean * mean, min=0) + 1e-6)
    return torch.cat([mean, _ScatterMax.apply(msg, index, size), total, std], dim=-1)


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
        hd = h.shape[-1]
        # The first Linear of each edge-level MLP acts on [h[src], h[dst], e] / [h[src], e] /
        # [h[dst], e]: its node blocks are applied to the N node states before the gather instead of
        # to the E ≫ N gathered copies (the same function and parameters, a fraction of the work).
        # index_select, not h[src]: its backward is one index_add instead of a slow index_put.
        e_w, fwd_w, bwd_w = self.edge[0].weight, self.msg_fwd[0].weight, self.msg_bwd[0].weight
        at_src = torch.index_select(h @ torch.cat([e_w[:, :hd], fwd_w[:, :hd]]).T, 0, src)
        at_dst = torch.index_select(h @ torch.cat([e_w[:, hd:2 * hd], bwd_w[:, :hd]]).T, 0, dst)
        first = torch.nn.functional.linear(e, e_w[:, 2 * hd:], self.edge[0].bias) + at_src[:, :hd] + at_dst[:, :hd]
        e = self.norm_e(e + self.edge[2](self.edge[1](first)))
        msgs = torch.nn.functional.linear(e, torch.cat([fwd_w[:, hd:], bwd_w[:, hd:]]),
                                          torch.cat([self.msg_fwd[0].bias, self.msg_bwd[0].bias]))
        fwd = _aggregate(self.msg_fwd[2](self.msg_fwd[1](msgs[:, :hd] + at_src[:, hd:])), dst, h.shape[0])
        bwd = _aggregate(self.msg_bwd[2](self.msg_bwd[1](msgs[:, hd:] + at_dst[:, hd:])), src, h.shape[0])
        h = self.norm_h(h + self.node(torch.cat([h, fwd, bwd], dim=-1)))
        return h, e


class NGGNN(LayeredEncoder):
    def __init__(self, hidden: int = 64, layers: int = 3, out_dim: int | None = None, norm: str = "none", **features):
        super().__init__(lambda: NGGNNLayer(hidden, norm), layers, hidden, out_dim, **features)
