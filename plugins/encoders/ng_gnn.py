"""NG-GNN: message passing over neural graphs with edge features and edge updates.

Each layer updates every edge from its two endpoints, then every node from PNA-style
aggregates (mean, max, sum, std) of messages along the network's direction (from the inputs
of a neuron) and against it (from its outputs), with a residual connection.
Sparse scatter operations only: no loop over graphs or edges. The first linear layer of each
per-edge MLP is split into per-node and per-edge parts (:meth:`NGGNNLayer.node_terms`): node
parts are projected once per node and gathered, so no ``[edges, 3 · hidden]`` concatenation is
built, and the in-memory and streamed forwards share every formula.

No normalization by default (``norm="layer"`` restores a LayerNorm after each update): LayerNorm
rescales every node's state to unit variance, which erases weight magnitude — on the
frequency-MLP task (benchmarks/learning) ng-gnn reached train/test accuracy 0.81/0.68 with it and
0.99/0.98 without (40 epochs, same seed), and statistics of weight magnitude alone reach 0.95.

**Streamed forward** (:meth:`NGGNN.forward_stream`, for graphs too large for ``edges × hidden``
floats): one pass over the edges per layer (``stream.GraphStream``), memory O(nodes × hidden × layers
+ one chunk). Per-edge state cannot be kept between passes, so each pass recomputes a chunk's edge
states from its features and the stored node states of all earlier layers: layer ℓ's pass runs the
edge updates of layers 1..ℓ again (ℓ(ℓ+1)/2 edge updates per edge in all instead of L). The result is
the in-memory forward's, exactly up to float summation order — no approximation.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .common import LayeredEncoder, StreamedPNA, mlp, pna_combine, split_first


def _tail(net: nn.Sequential, z: torch.Tensor) -> torch.Tensor:
    """SiLU then the second linear layer of ``net``; the SiLU is in place when no gradient is
    recorded (streamed and inference forwards), saving one edge-sized tensor."""
    z = F.silu(z, inplace=not torch.is_grad_enabled())
    return F.linear(z, net[2].weight, net[2].bias)


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
    return pna_combine(total, squares, _ScatterMax.apply(msg, index, size), torch.bincount(index, minlength=size))


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
        self.hidden = hidden
        self.edge = mlp(3 * hidden, hidden, hidden)
        self.msg_fwd = mlp(2 * hidden, hidden, hidden)
        self.msg_bwd = mlp(2 * hidden, hidden, hidden)
        self.node = mlp(9 * hidden, 2 * hidden, hidden)
        make = (lambda: nn.LayerNorm(hidden)) if norm == "layer" else nn.Identity
        self.norm_h, self.norm_e = make(), make()

    def node_terms(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-node projections entering the per-edge MLPs: the edge update's source and target
        parts, the forward message's source part and the backward message's target part (the
        first linear layers' node blocks, applied to the N node states instead of E gathered copies)."""
        d = self.hidden
        es, ed, _ = split_first(self.edge, d, d, d)
        fs, _ = split_first(self.msg_fwd, d, d)
        bd, _ = split_first(self.msg_bwd, d, d)
        return {"edge_src": h @ es.T, "edge_dst": h @ ed.T, "fwd_src": h @ fs.T, "bwd_dst": h @ bd.T}

    def edge_update(self, e: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor) -> torch.Tensor:
        """New edge state from the old one and the gathered node terms (broadcastable to ``e``)."""
        z = F.linear(e, split_first(self.edge, *(3 * [self.hidden]))[2], self.edge[0].bias)
        z = z + edge_src + edge_dst
        out = _tail(self.edge, z)
        out += e
        return self.norm_e(out)

    def messages(self, e: torch.Tensor, fwd_src: torch.Tensor, bwd_dst: torch.Tensor):
        """Messages along the edge (to its target) and against it (to its source)."""
        d = self.hidden
        zf = F.linear(e, split_first(self.msg_fwd, d, d)[1], self.msg_fwd[0].bias) + fwd_src
        zb = F.linear(e, split_first(self.msg_bwd, d, d)[1], self.msg_bwd[0].bias) + bwd_dst
        return _tail(self.msg_fwd, zf), _tail(self.msg_bwd, zb)

    def node_update(self, h: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor) -> torch.Tensor:
        return self.norm_h(h + self.node(torch.cat([h, fwd, bwd], dim=-1)))

    def forward(self, h, e, edge_index):
        src, dst = edge_index
        t = self.node_terms(h)
        # index_select, not h[src]: its backward is one index_add instead of a slow index_put.
        e = self.edge_update(e, torch.index_select(t["edge_src"], 0, src), torch.index_select(t["edge_dst"], 0, dst))
        fwd, bwd = self.messages(e, torch.index_select(t["fwd_src"], 0, src), torch.index_select(t["bwd_dst"], 0, dst))
        N = h.shape[0]
        return self.node_update(h, _aggregate(fwd, dst, N), _aggregate(bwd, src, N)), e


class NGGNN(LayeredEncoder):
    def __init__(self, hidden: int = 64, layers: int = 3, out_dim: int | None = None, norm: str = "none", **features):
        super().__init__(lambda: NGGNNLayer(hidden, norm), layers, hidden, out_dim, **features)

    @property
    def stream_passes(self) -> int:
        return len(self.layers)

    @torch.no_grad()
    def forward_stream(self, stream):
        """``(node_embeddings, graph_embedding [1, out])`` of one graph from a ``stream.GraphStream``
        (see the module docstring: same result as ``forward``, memory independent of edges)."""
        h = self.embed.nodes(stream.x, stream.node_pos)
        terms = []
        for layer in self.layers:
            terms.append(layer.node_terms(h))
            fwd = StreamedPNA(h.shape[0], h.shape[1], "dst", h)
            bwd = StreamedPNA(h.shape[0], h.shape[1], "src", h)
            for chunk in stream.chunks():
                e = self.embed.edges_from_taps(chunk.taps, chunk.kind)
                for earlier, t in zip(self.layers, terms):         # edge updates of layers 1..ℓ
                    e = earlier.edge_update(e, chunk.at_src(t["edge_src"]), chunk.at_dst(t["edge_dst"]))
                t = terms[-1]
                mf, mb = layer.messages(e, chunk.at_src(t["fwd_src"]), chunk.at_dst(t["bwd_dst"]))
                fwd.add(chunk, mf)
                bwd.add(chunk, mb)
                del e, mf, mb
            h = layer.node_update(h, fwd.result(), bwd.result())
        return h, self.read_out(h)
