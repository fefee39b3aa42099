"""StatNN: statistics of the weights per depth, then an MLP (Unterthiner et al. 2020).

For each graph and each depth bucket (the target set's depth, clipped to ``max_depth``): mean,
standard deviation and quantiles (0, 25, 50, 75, 100 %) of the edge weights (first tap), and
mean/std of the node biases. Invariant by construction; node embeddings are the graph's,
broadcast to its nodes.

Streamed (:meth:`StatNN.forward_stream`, two passes over the edges, memory independent of them):
sums give mean and std; quantiles are exact order statistics found by radix selection — pass 1
counts each depth bucket's values by the high 16 bits of their order-preserving float32 key, which
fixes the 16-bit bin holding each wanted rank, pass 2 counts the low 16 bits inside those bins
(skipped when no value has low bits: bfloat16 weights read without rescaling).
Same result as the in-memory forward (float summation order aside).
"""
from __future__ import annotations

import torch
from torch import nn
from torch_geometric.utils import scatter

from nngraph.learn.featurize import SLOTS, param_columns

from .common import graph_index, mlp

BIAS = param_columns().start + SLOTS.index("bias")      # the featurizer's "bias" column

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
        rank = (q * (counts - 1).clamp(min=0).double()).round().long()     # float64: exact ranks past 2^24
        pos = starts + torch.clamp(rank, min=0)
        pick = values[order][pos.clamp(max=max(len(values) - 1, 0))] if len(values) else torch.zeros_like(mean)
        qs.append(torch.where(counts > 0, pick, torch.zeros_like(pick)))
    return torch.stack([mean, std, *qs], dim=-1)


class StatNN(nn.Module):
    r"""Per-depth weight statistics into an MLP, after "Predicting Neural Network Accuracy from Weights"
    (Unterthiner et al., 2020):

    .. math::
        \mathbf{g} = \phi\Big(\big\|_{d=0}^{D}\, [\mu, \sigma, q_{0}, q_{25}, q_{50}, q_{75}, q_{100}]
            \big(W_d\big) \;\big\|\; \big\|_{d=0}^{D}\, [\mu, \sigma]\big(b_d\big)\Big),
        \qquad \mathbf{n}_v = \mathbf{g}

    where :math:`W_d` is the multiset of the edges' first feature (the weight, or a kernel's first tap) over
    the edges whose target neuron has depth :math:`d`, :math:`b_d` the bias feature of every neuron of
    depth :math:`d` (0 where a neuron has none), depths clipped to :math:`D` = ``max_depth``, :math:`\sigma
    = \sqrt{\operatorname{mean}(x^2) - \mu^2}`, :math:`q_p` the order statistic of rank
    :math:`\operatorname{round}(p (n - 1) / 100)` (no interpolation), and every statistic of an empty
    multiset 0; :math:`\phi` is a two-layer SiLU MLP. Statistics of multisets are invariant to any neuron
    permutation by construction; the encoder sees no connectivity. Every node gets its graph's
    embedding. Training standardizes :math:`\phi`'s input (``readout_name``).

    Args:
        hidden: hidden width of :math:`\phi`.
        max_depth: :math:`D`; deeper neurons share the last bucket.
        out_dim: width of :math:`\mathbf{g}` (default ``hidden``).
        **features: ignored (other encoder options).

    Shapes:
        input: a PyG batch of featurized graphs: ``x`` :math:`(N, F_x)`, ``edge_attr`` :math:`(E, F_e)`,
        ``edge_index`` :math:`(2, E)`, ``edge_depth`` :math:`(E,)`, ``node_depth`` :math:`(N,)`, ``batch``
        :math:`(N,)`.
        output: :math:`(N, \text{out\_dim})`, :math:`(B, \text{out\_dim})`.
    """

    readout_name = "net"     # its input has no learned part: standardized (checkpoint.attach_readout_norm)

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

    stream_passes = 2                 # at most

    @torch.no_grad()
    def forward_stream(self, stream):
        """``(node_embeddings, graph_embedding [1, out])`` of one graph from a ``stream.GraphStream``."""
        D = self.max_depth + 1
        weights = streamed_group_stats(stream, self.max_depth).view(1, -1)
        zeros = torch.zeros(stream.num_nodes, dtype=torch.long, device=stream.x.device)
        g = self.net(torch.cat([weights, _bias_stats(stream.x, stream.node_depth, zeros, 1, D)], dim=-1))
        return g[zeros], g


def weight_statistics(batch, max_depth: int = 8) -> torch.Tensor:
    """[B, (max_depth + 1) · 9] per-depth statistics of a featurized batch: mean, std and quantiles of
    the edge weights (first tap), mean and std of the biases. StatNN's input; also the features of
    the gradient-boosting baseline in ``benchmarks/learning``."""
    index, B = graph_index(batch)
    D = max_depth + 1
    edge_bucket = index[batch.edge_index[0]] * D + batch.edge_depth.clamp(max=max_depth)
    weights = _group_stats(batch.edge_attr[:, 0], edge_bucket, B * D).view(B, -1)
    return torch.cat([weights, _bias_stats(batch.x, batch.node_depth, index, B, D)], dim=-1)


def _bias_stats(x, node_depth, index, B: int, D: int) -> torch.Tensor:
    """[B, 2 · D]: mean and std of the node biases per depth bucket."""
    bias = x[:, BIAS]
    node_bucket = index * D + node_depth.clamp(max=D - 1)
    bmean = scatter(bias, node_bucket, dim=0, dim_size=B * D, reduce="mean")
    bsq = scatter(bias * bias, node_bucket, dim=0, dim_size=B * D, reduce="mean")
    bstd = torch.sqrt(torch.clamp(bsq - bmean * bmean, min=0) + 1e-12)
    return torch.stack([bmean, bstd], -1).view(B, -1)


def _order_key(v: torch.Tensor) -> torch.Tensor:
    """float32 → int32 with the same order as signed integers (negative floats: all bits but the
    sign flipped)."""
    bits = v.contiguous().view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _from_key(key: torch.Tensor) -> torch.Tensor:
    key = key.to(torch.int32)
    return (key ^ ((key >> 31) & 0x7FFFFFFF)).view(torch.float32)


def streamed_group_stats(stream, max_depth: int) -> torch.Tensor:
    """[(max_depth + 1), 2 + len(QUANTILES)] for one graph: ``_group_stats`` of the first edge tap
    per target-depth bucket, from passes over ``stream`` (module docstring). The second pass is
    skipped when no value has low 16 bits (weights that were bfloat16 and are not rescaled): the
    high half then is the value."""
    D, dev = max_depth + 1, stream.x.device
    s1 = torch.zeros(D, dtype=torch.float64, device=dev)
    s2 = torch.zeros(D, dtype=torch.float64, device=dev)
    high = torch.zeros(D, 65536, dtype=torch.long, device=dev)
    low_bits = False
    for c in stream.chunks():                                       # pass 1: sums, high-half histogram
        v, b = c.taps[..., 0].reshape(-1), min(c.depth, max_depth)
        s1[b] += float(v.sum())
        s2[b] += float(torch.dot(v, v))
        key = _order_key(v)
        high[b] += torch.bincount((key >> 16) + 32768, minlength=65536)
        low_bits = low_bits or bool((v.view(torch.int32) & 0xFFFF).any())
    counts = high.sum(1)
    mean = s1 / counts.clamp(min=1)
    std = torch.sqrt(torch.clamp(s2 / counts.clamp(min=1) - mean * mean, min=0) + 1e-12)
    q = torch.tensor(QUANTILES, dtype=torch.float64, device=dev)
    rank = (q[None, :] * (counts[:, None] - 1).clamp(min=0).double()).round().long()  # [D, Q], as _group_stats
    cum = high.cumsum(1)
    hbin = torch.searchsorted(cum, rank, right=True).clamp(max=65535)                 # bin holding each rank
    rank = rank - torch.where(hbin > 0, cum.gather(1, (hbin - 1).clamp(min=0)), torch.zeros_like(rank))
    lbin = torch.where(hbin >= 32768, 0, 0xFFFF)      # no low bits: the low half of a negative key is all ones
    if low_bits:
        pairs, slot_of = torch.unique(torch.arange(D, device=dev)[:, None] * 65536 + hbin, return_inverse=True)
        wanted = torch.full((D * 65536,), -1, dtype=torch.long, device=dev)           # (bucket, high bin) → slot
        wanted[pairs] = torch.arange(len(pairs), device=dev)
        wanted = wanted.view(D, 65536)
        low = torch.zeros(len(pairs) * 65536, dtype=torch.long, device=dev)
        for c in stream.chunks():                                   # pass 2: low halves inside wanted bins
            v, b = c.taps[..., 0].reshape(-1), min(c.depth, max_depth)
            key = _order_key(v)
            slot = wanted[b][(key >> 16).long() + 32768]
            hit = slot >= 0
            low.index_add_(0, slot[hit] * 65536 + (key[hit] & 0xFFFF).long(), torch.ones_like(slot[hit]))
        lcum = low.view(-1, 65536).cumsum(1)[slot_of.view(-1)]                        # [D · Q, 65536]
        lbin = torch.searchsorted(lcum, rank.view(-1, 1), right=True).view(D, -1).clamp(max=65535)
    qs = _from_key((hbin - 32768) * 65536 + lbin)
    qs = torch.where(counts[:, None] > 0, qs, torch.zeros_like(qs))
    return torch.cat([mean.float()[:, None], std.float()[:, None], qs], dim=-1)
