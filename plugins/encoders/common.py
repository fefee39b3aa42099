"""Pieces shared by the encoders: input embeddings, MLPs, pooling, PNA aggregation, and the
per-node / per-edge halves of linear layers that let in-memory and streamed forwards share math."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.utils import scatter

from nngraph.graph.vocab import EDGE_KINDS
from nngraph.learn.featurize import FeatureConfig, role_column, summary_columns

DEFAULT = FeatureConfig()


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


def split_first(net: nn.Sequential, *widths: int) -> list[torch.Tensor]:
    """The first linear layer of ``net`` cut along its input into column blocks of ``widths``: a
    linear map of a concatenation is the sum of each part's map, so parts that are per-node
    (``h[src]``) can be projected once per node and gathered, never concatenated per edge."""
    return list(torch.split(net[0].weight, list(widths), dim=1))


class InputEmbedding(nn.Module):
    """Node and edge features to ``hidden``; fixed neurons (inputs/outputs) add a learned
    embedding of their position, since no symmetry moves them.

    The first linear layers (node and edge) start with weights of std ``input_init`` (1), not
    PyTorch's 1/√fan-in (≈ 0.13): their inputs are one-hots and values of RMS 1 (after input
    scaling), and at std 0.13 the first SiLU is nearly linear over the weights' range — a linear
    function of weights averages to ≈ 0 over a node's edges and a graph's nodes, so pooled embeddings
    of different networks differed by ~1 % of their common part (behaviour population: 0.010, while
    their weight statistics differ by 0.23) and ng-gnn sat at ln(classes) for its first ~60 steps. At
    std 1 each input is a nonlinear random feature and pooled means see the weights' distribution
    (spread 0.09). One-hot columns get std 1 too: with only the value columns at std 1, the
    activation one-hot was drowned (tests/test_learning.py's activation task: train 0.78 / test 0.5,
    with every column at std 1: 1.0 / 1.0). The fixed neurons' position embedding starts at std
    ``position_init`` (1; it was 0.02): next to std-1 features a 0.02 position is invisible, and which
    input neuron (pixel) a weight leaves is what the behaviour population's label depends on — ng-gnn
    seed 1 went from train/test 0.58/0.53 to 0.98/0.93, ng-transformer seed 0 from 0.59/0.55 to
    1.00/0.98 (25 epochs). Initialization only: no layer computes anything new."""

    def __init__(self, hidden: int, node_dim: int = DEFAULT.node_dim, edge_dim: int = DEFAULT.edge_dim,
                 max_positions: int = DEFAULT.max_positions, input_init: float = 1.0,
                 position_init: float = 1.0, **unused):   # other encoder options (EncoderSpec)
        super().__init__()
        self.node = mlp(node_dim, hidden, hidden)
        self.edge = mlp(edge_dim, hidden, hidden)
        self.position = nn.Embedding(max_positions, hidden)
        self.taps = edge_dim - len(EDGE_KINDS)
        nn.init.normal_(self.position.weight, std=position_init)
        if input_init:
            nn.init.normal_(self.node[0].weight, std=input_init)
            nn.init.normal_(self.edge[0].weight, std=input_init)

    def nodes(self, x: torch.Tensor, node_pos: torch.Tensor) -> torch.Tensor:
        h = self.node(x)
        fixed = node_pos >= 0
        if bool(fixed.any()):
            h = h.clone()
            h[fixed] = h[fixed] + self.position(node_pos[fixed])
        return h

    def edges_from_taps(self, taps: torch.Tensor, kind: int) -> torch.Tensor:
        """The edge embedding of edges of one ``kind`` from their unpadded taps ``[..., k]`` (a
        streamed chunk): equal to embedding the padded ``[taps, one-hot]`` row, without the zeros."""
        w, b = self.edge[0].weight, self.edge[0].bias
        k, const = taps.shape[-1], w[:, self.taps + kind] + b
        z = torch.addcmul(const, taps, w[:, 0]) if k == 1 else torch.matmul(taps, w[:, :k].T) + const
        z = F.silu(z, inplace=not torch.is_grad_enabled())
        return F.linear(z, self.edge[2].weight, self.edge[2].bias)

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.nodes(batch.x, batch.node_pos), self.edge(batch.edge_attr)


def pool(h: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean and max over each graph's nodes."""
    return torch.cat([scatter(h, index, dim=0, dim_size=size, reduce="mean"),
                      scatter(h, index, dim=0, dim_size=size, reduce="max")], dim=-1)


def graph_index(batch) -> tuple[torch.Tensor, int]:
    idx = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros(
        batch.num_nodes, dtype=torch.long, device=batch.x.device)
    return idx, int(batch.num_graphs) if hasattr(batch, "num_graphs") else 1


SUM_SCALERS = ("linear", "log")


def pna_combine(total: torch.Tensor, squares: torch.Tensor, maximum: torch.Tensor, count: torch.Tensor,
                sum_scaler: str = "linear") -> torch.Tensor:
    """PNA aggregates ``[mean, max, sum, std]`` per node from the per-node sum of messages, sum of
    their squares, max (any value where ``count`` is 0: it becomes 0) and in-degree ``count``.
    ``sum_scaler="log"`` replaces the sum (= mean · degree) by mean · log(1 + degree) (PNA's
    logarithmic amplification scaler): the sum grows in proportion to a layer's width, so on
    networks wider than any training one it lies outside what the node update was trained on
    (CNN zoo, widths 4–16 → 24–32: layer-2 sums 2.6× the widest training width's)."""
    if sum_scaler not in SUM_SCALERS:
        raise ValueError(f"sum_scaler must be one of {SUM_SCALERS}, got {sum_scaler!r}")
    c = count.clamp(min=1).unsqueeze(-1).to(total.dtype)
    mean = total / c
    std = torch.sqrt(torch.clamp(squares / c - mean * mean, min=0) + 1e-6)
    maximum = torch.where(count.unsqueeze(-1) > 0, maximum, torch.zeros_like(maximum))
    third = total if sum_scaler == "linear" else mean * torch.log1p(count.unsqueeze(-1).to(total.dtype))
    return torch.cat([mean, maximum, third, std], dim=-1)


class StreamedPNA:
    """PNA aggregation accumulated over streamed chunks (``stream.EdgeChunk``): per node the sum,
    sum of squares, running max and count of the messages it received (``toward`` "dst": along
    edges, "src": against them). ``result()`` equals the in-memory aggregation of all edges at once (``pna_combine`` of the same sums)."""

    def __init__(self, size: int, d: int, toward: str, like: torch.Tensor, bias: torch.Tensor | None = None,
                 sum_scaler: str = "linear"):
        self.sums = like.new_zeros(size, 2 * d)
        self.max = like.new_full((size, d), float("-inf"))
        self.count = like.new_zeros(size)
        self.toward, self.d, self.bias, self.sum_scaler = toward, d, bias, sum_scaler

    def add(self, chunk, msg: torch.Tensor) -> None:
        """Accumulate one chunk's messages (squares ``msg`` in place: it is not needed after)."""
        d = self.d
        total, squares = self.sums[:, :d], self.sums[:, d:]
        if self.toward == "dst":
            chunk.sum_to_dst(total, msg)
            chunk.max_to_dst(self.max, msg)
            chunk.sum_to_dst(squares, msg.square_())
            chunk.count_to_dst(self.count)
        else:
            chunk.sum_to_src(total, msg)
            chunk.max_to_src(self.max, msg)
            chunk.sum_to_src(squares, msg.square_())
            chunk.count_to_src(self.count)

    def merge(self, other: "StreamedPNA") -> None:
        """Add another accumulator's messages (the same nodes, other chunks) to this one."""
        self.sums += other.sums
        torch.maximum(self.max, other.max, out=self.max)
        self.count += other.count

    def result(self, nodes: slice = slice(None)) -> torch.Tensor:
        """The aggregates of ``nodes`` (all by default). ``bias``: every message was ``m + bias`` but
        ``m`` was added: the sum gains ``count · bias``, the sum of squares ``2 bias · Σm + count ·
        bias²``, the max ``bias``."""
        total, squares, maximum = self.sums[nodes, :self.d], self.sums[nodes, self.d:], self.max[nodes]
        count = self.count[nodes]
        if self.bias is not None:
            c = count.unsqueeze(-1)
            squares = squares + 2 * self.bias * total + c * self.bias.square()
            total = total + c * self.bias
            maximum = maximum + self.bias
        return pna_combine(total, squares, maximum, count, self.sum_scaler)


POOL_NORMS = ("none", "batch")


def pool_norm_layer(kind: str, width: int) -> nn.Module:
    """The ``pool_norm`` option of an encoder with a pooled vector of ``width``: :class:`PoolBatchNorm`
    for ``"batch"``, the identity for ``"none"``."""
    if kind not in POOL_NORMS:
        raise ValueError(f"pool_norm must be one of {POOL_NORMS}, got {kind!r}")
    return PoolBatchNorm(width) if kind == "batch" else nn.Identity()


class PoolBatchNorm(nn.BatchNorm1d):
    """BatchNorm of pooled graph vectors; a training batch of one graph (the last of an epoch) has no
    spread to standardize by, so it is normalized by the running statistics instead."""

    #: ``train.refresh_batch_norms`` sets its statistics from the whole training set after each epoch.
    refresh_statistics = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class LayeredEncoder(nn.Module):
    r"""The frame of the message-passing encoders, which differ only in their layer: embed nodes and
    edges, run ``layers`` layers, pool each graph's node states and read out.

    .. math::
        \mathbf{h}^{(0)}_i = \phi_x(\mathbf{x}_i) + [i \in F]\, \boldsymbol{\pi}_i, \qquad
        \mathbf{e}^{(0)}_{ij} = \phi_e(\mathbf{a}_{ij}), \qquad
        \big(\mathbf{h}^{(\ell)}, \mathbf{e}^{(\ell)}\big) = \operatorname{layer}_\ell\big(\mathbf{h}^{(\ell-1)},
            \mathbf{e}^{(\ell-1)}\big)

        \mathbf{p} = \operatorname{mean}_{i} \mathbf{h}^{(L)}_i \,\|\, \max_{i} \mathbf{h}^{(L)}_i
            \,\big[\|\, \operatorname{mean}_{i \in F} \mathbf{h}^{(L)}_i\big]
            \,\Big[\|\, \sum_{k \in O} (A \mathbf{s}_k + \mathbf{c}) \odot \boldsymbol{\pi}_k\Big], \qquad
        \mathbf{g} = \rho\big(\operatorname{norm}(\mathbf{p})\big)

    per graph, where :math:`\mathbf{x}, \mathbf{a}` are the node and edge features, :math:`F` the graph's
    fixed neurons (inputs and outputs, ``node_pos >= 0``: no symmetry moves them), :math:`\boldsymbol{\pi}_i`
    the learned embedding of fixed neuron :math:`i`'s position, :math:`\phi_x, \phi_e, \rho` two-layer SiLU
    MLPs (:class:`InputEmbedding`), and the bracketed terms are present with ``pool_fixed`` and
    ``summary_dim`` (below). Every pooling is invariant and touches fixed neurons only through their
    positions, so with equivariant layers (both built-in ones) :math:`\mathbf{g}` is invariant to the
    network's neuron symmetries.

    ``pool_norm="batch"`` makes ``norm`` a BatchNorm over the graphs of a batch (:class:`PoolBatchNorm`:
    running statistics at evaluation, set by ``train.refresh_batch_norms`` after each epoch; ``"none"``:
    the identity). Why: on a population whose networks share most of their weights (INRs fitted from one
    init), the pooled vectors differ by a tiny part of their common value, the readout's units all die while
    the common part swings, and ng-gnn sat at chance on its training set (train accuracy 0.14);
    standardizing each pooled dimension across the batch takes the common part out (train 0.80; with 64
    probe features test 0.500 against 0.462 without it). Alone, across the other populations, it is a wash
    for ng-gnn (3 seeds: −0.06 to +0.02; README "Pool norm"); with probe features and ``pool_fixed`` it is
    part of ng-gnn's training defaults, as it is of ng-transformer's and deepsets' (their
    ``EncoderSpec.train_defaults``). The class default is ``"none"`` so that older checkpoints load as they
    were trained.

    ``pool_fixed=True`` adds the mean state of the graph's fixed neurons: on INRs (probe features: the
    output neuron's values are the rendered image) mean and max over all neurons dilute the one output
    neuron, and with it ng-gnn's INR test accuracy went from 0.592 to 0.662 (benchmarks/learning, README
    "Pool fixed"); on the CNN zoos it changed nothing.

    ``summary_dim`` > 0 (``FeatureConfig.probe_summary``: the node features end with
    ``featurize.output_summary``) adds the sum over the fixed output neurons :math:`O` of the affine map
    :math:`A \mathbf{s}_k + \mathbf{c}` of neuron :math:`k`'s summary columns :math:`\mathbf{s}_k` — read from
    the input features, not after message passing — times its position embedding: which output neuron
    wins on the probes, read with that neuron's identity, which is what a collapsed classifier's accuracy
    is (README "Probe summary").

    Args:
        make_layer: builds one layer, a module ``(h, e, edge_index) → (h, e)`` keeping widths.
        layers: :math:`L`.
        hidden: width :math:`d` of node and edge states.
        out_dim: width of :math:`\mathbf{g}` (default ``hidden``).
        pool_norm: ``"none"`` (default) or ``"batch"``.
        pool_fixed: add the fixed neurons' mean state to :math:`\mathbf{p}`.
        summary_dim: number of trailing summary columns of :math:`\mathbf{x}` (0: no summary term).
        **features: :class:`InputEmbedding`'s options (``node_dim``, ``edge_dim``, ``max_positions``, ...);
            other encoder options are ignored.

    Shapes:
        input: a PyG batch of featurized graphs (``nngraph.learn.featurize``): ``x`` :math:`(N, F_x)`,
        ``edge_attr`` :math:`(E, F_e)`, ``edge_index`` :math:`(2, E)` (row 0 the source neuron),
        ``node_pos`` :math:`(N,)`, ``batch`` :math:`(N,)`.
        output: node embeddings :math:`\mathbf{h}^{(L)}` :math:`(N, d)`, graph embeddings :math:`\mathbf{g}`
        :math:`(B, \text{out\_dim})`.
    """

    def __init__(self, make_layer, layers: int, hidden: int, out_dim: int | None = None, pool_norm: str = "none",
                 pool_fixed: bool = False, summary_dim: int = 0, **features):
        super().__init__()
        self.embed = InputEmbedding(hidden, **features)
        self.layers = nn.ModuleList(make_layer() for _ in range(layers))
        self.pool_fixed = bool(pool_fixed)
        self.summary_dim = int(summary_dim)
        if self.summary_dim:
            self.summary = nn.Linear(self.summary_dim, hidden)
        hidden_pool = (3 if self.pool_fixed else 2) * hidden + (hidden if self.summary_dim else 0)
        self.pool_norm = pool_norm_layer(pool_norm, hidden_pool)
        self.readout = mlp(hidden_pool, hidden, out_dim or hidden)
        self.out_dim = out_dim or hidden

    def forward(self, batch):
        h, e = self.embed(batch)
        for layer in self.layers:
            h, e = layer(h, e, batch.edge_index)
        index, size = graph_index(batch)
        return h, self.readout(self.pool_norm(self.pooled(h, index, size, batch.node_pos, batch.x)))

    def pooled(self, h: torch.Tensor, index: torch.Tensor, size: int, node_pos: torch.Tensor,
               x: torch.Tensor | None = None) -> torch.Tensor:
        """Mean and max over each graph's nodes; with ``pool_fixed``, also the mean over its fixed neurons
        (``node_pos >= 0``: inputs and outputs, which no symmetry moves, so the readout stays invariant);
        with ``summary_dim``, the output neurons' summary read from the input features ``x``."""
        parts = [pool(h, index, size)]
        fixed = node_pos >= 0
        if self.pool_fixed:
            parts.append(scatter(h[fixed], index[fixed], dim=0, dim_size=size, reduce="mean"))
        if self.summary_dim:
            out = fixed & (x[:, role_column("output")] > 0)
            z = self.summary(x[out, summary_columns(self.summary_dim)]) * self.embed.position(node_pos[out])
            parts.append(scatter(z, index[out], dim=0, dim_size=size, reduce="sum"))
        return torch.cat(parts, -1) if len(parts) > 1 else parts[0]

    def read_out(self, h: torch.Tensor, node_pos: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The graph embedding ``[1, out]`` of one graph's node states (streamed forwards; ``x``: its input
        node features, needed with ``summary_dim``)."""
        index = h.new_zeros(h.shape[0], dtype=torch.long)
        return self.readout(self.pool_norm(self.pooled(h, index, 1, node_pos, x)))
