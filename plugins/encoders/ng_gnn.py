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
edge updates of layers 1..ℓ again. With ``norm="none"`` (the default) the pass is *folded*
(:class:`FoldedPass`): the edge residuals are linear, so every linear map is composed with the next
before the pass, what depends on an edge's own feature alone is tabulated once per distinct bf16 /
fp16 / fp8 weight (LLM checkpoints: ≤ 65 536 values per block, gathered by the weight's bits), and no
edge state is formed — on such blocks 11 instead of 16 small matmuls per edge for two layers, the
input embedding not at all (blocks of float32 or multi-tap weights compute the tabulated part per
edge: 20 matmuls instead of 16, fewer elementwise ops; not measured at scale). Measured on the ``tiny`` scale checkpoint (18 M edges, hidden 32 × 2, one thread, CPU
seconds): 41.5 s before (2¹⁸-edge chunks), 19.0 s with 2¹⁴-edge chunks, 13.7 s folded. The result is
the in-memory forward's up to float rounding (summation order, products of weight matrices) — no
approximation; ``norm="layer"`` runs the layers unfolded.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .common import SUM_SCALERS, LayeredEncoder, StreamedPNA, mlp, pna_combine, split_first


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


def _aggregate(msg: torch.Tensor, index: torch.Tensor, size: int, sum_scaler: str = "linear") -> torch.Tensor:
    """PNA aggregates [mean, max, sum, std] per target node. Sum and sum of squares by
    ``index_add_`` (its backward is a gather), mean and std derived from them and the in-degree, the
    max by ``_ScatterMax``: three passes over the messages instead of four scatters."""
    d = msg.shape[-1]
    total = msg.new_zeros(size, d).index_add_(0, index, msg)
    squares = msg.new_zeros(size, d).index_add_(0, index, msg * msg)
    return pna_combine(total, squares, _ScatterMax.apply(msg, index, size), torch.bincount(index, minlength=size),
                       sum_scaler)


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
        sum_scaler: ``"linear"`` (default: the plain sum) or ``"log"`` (mean · log(1 + degree), which
            grows slowly with width; ``common.pna_combine``).

    Shapes:
        input: node states :math:`(N, d)`, edge states :math:`(E, d)`, ``edge_index`` :math:`(2, E)`
        (row 0 the source neuron, row 1 the target).
        output: :math:`(N, d)`, :math:`(E, d)`.
    """

    def __init__(self, hidden: int, norm: str = "none", sum_scaler: str = "linear"):
        super().__init__()
        if norm not in ("none", "layer"):
            raise ValueError(f"ng-gnn norm must be 'none' or 'layer', got {norm!r}")
        if sum_scaler not in SUM_SCALERS:
            raise ValueError(f"ng-gnn sum_scaler must be one of {SUM_SCALERS}, got {sum_scaler!r}")
        self.hidden, self.sum_scaler = hidden, sum_scaler
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
        return self.node_update(h, _aggregate(fwd, dst, N, self.sum_scaler), _aggregate(bwd, src, N, self.sum_scaler)), e


class NGGNN(LayeredEncoder):
    r"""The NG-GNN encoder (Kofinas et al., ICLR 2024): :class:`~.common.LayeredEncoder` with ``layers``
    :class:`NGGNNLayer` layers — embed, pass messages along and against the network's direction with
    edge updates, pool, read out.

    Args:
        hidden: width :math:`d` of node and edge states.
        layers: number of layers.
        out_dim: width of the graph embedding (default ``hidden``).
        norm: ``"none"`` (default) or ``"layer"`` (:class:`NGGNNLayer`; the module docstring says why none).
        sum_scaler: ``"linear"`` (default) or ``"log"`` (:class:`NGGNNLayer`).
        pool_norm, pool_fixed, summary_dim: :class:`~.common.LayeredEncoder`'s readout options.
        **features: :class:`~.common.InputEmbedding`'s input sizes; other encoder options are ignored.

    Shapes: as :class:`~.common.LayeredEncoder`: node embeddings :math:`(N, d)`, graph embeddings
    :math:`(B, \text{out\_dim})`. :meth:`forward_stream` computes the same from a ``stream.GraphStream``
    of one graph, in memory independent of its edges.
    """

    def __init__(self, hidden: int = 64, layers: int = 3, out_dim: int | None = None, norm: str = "none",
                 sum_scaler: str = "linear", pool_norm: str = "none", pool_fixed: bool = False, summary_dim: int = 0,
                 **features):
        super().__init__(lambda: NGGNNLayer(hidden, norm, sum_scaler), layers, hidden, out_dim, pool_norm, pool_fixed,
                         summary_dim, **features)

    #: Edges per streamed chunk (``stream.encode_streamed``'s default for this encoder). Measured on
    #: the ``tiny`` scale checkpoint (18 M edges, hidden 32 × 2 layers, one thread), M edges per CPU
    #: second: unfolded pass 2¹⁸ 0.43 (each [chunk, 32] float tensor is 32 MiB: out of cache, fresh
    #: pages every op), 2¹⁴ 0.95; folded pass 2¹⁶ 1.23, 2¹⁴ 1.31, 2¹² 1.20 (per-op overhead); 2¹³ to
    #: 2¹⁵ within 2 % of each other in a second series.
    stream_chunk = 1 << 14

    @property
    def stream_passes(self) -> int:
        return len(self.layers)

    @torch.no_grad()
    def forward_stream(self, stream):
        """``(node_embeddings, graph_embedding [1, out])`` of one graph from a ``stream.GraphStream``
        (see the module docstring: same result as ``forward``, memory independent of edges)."""
        if not all(isinstance(layer.norm_e, nn.Identity) for layer in self.layers):
            return self._forward_stream_recomputed(stream)
        h = self.embed.nodes(stream.x, stream.node_pos)
        terms = []
        workers = getattr(stream, "workers", 1)
        for L, layer in enumerate(self.layers, 1):
            terms.append(layer.node_terms(h))
            if workers == 1:
                fwd, bwd = self._stream_pass(stream, L, terms, h, None)
            else:                       # threads on fixed shares of the chunks: same sums on every run
                from concurrent.futures import ThreadPoolExecutor
                with ThreadPoolExecutor(workers) as pool:
                    parts = list(pool.map(lambda k: self._stream_pass(stream, L, terms, h, (k, workers)),
                                          range(workers)))
                fwd, bwd = parts[0]
                for f, b in parts[1:]:
                    fwd.merge(f)
                    bwd.merge(b)
            h = _node_update_in_slices(layer, h, fwd, bwd)
        return h, self.read_out(h, stream.node_pos, stream.x)

    def _stream_pass(self, stream, L: int, terms: list[dict], h: torch.Tensor, share):
        """Layer L's message aggregates over the chunks of ``share`` (``stream.chunks``)."""
        with torch.no_grad():
            fold = FoldedPass(self, L)
            bf, bb = fold.message_biases
            sc = self.layers[L - 1].sum_scaler
            fwd = StreamedPNA(h.shape[0], h.shape[1], "dst", h, bias=bf, sum_scaler=sc)
            bwd = StreamedPNA(h.shape[0], h.shape[1], "src", h, bias=bb, sum_scaler=sc)
            table = (-1, None)                                  # (block, its table) of the current code block
            for chunk in stream.chunks(codes=True, share=share):
                n = chunk.num_edges
                if chunk.codes is not None:
                    if table[0] != chunk.block:
                        table = (chunk.block, fold.table(self.embed, chunk.kind, *stream.code_values(chunk.block)))
                    rows = fold.gather(table[1], chunk.codes.reshape(-1))
                else:
                    rows = fold.rows(self.embed.edges_from_taps(chunk.taps, chunk.kind).reshape(n, -1))
                mf, mb = fold.messages(rows, chunk, terms)
                fwd.add(chunk, mf)
                bwd.add(chunk, mb)
            return fwd, bwd

    @torch.no_grad()
    def _forward_stream_recomputed(self, stream):
        """The streamed forward as the layers compute it, one edge update after another (any
        ``norm``; ``FoldedPass`` needs linear edge residuals, i.e. ``norm="none"``)."""
        h = self.embed.nodes(stream.x, stream.node_pos)
        terms = []
        for layer in self.layers:
            terms.append(layer.node_terms(h))
            fwd = StreamedPNA(h.shape[0], h.shape[1], "dst", h, sum_scaler=layer.sum_scaler)
            bwd = StreamedPNA(h.shape[0], h.shape[1], "src", h, sum_scaler=layer.sum_scaler)
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
        return h, self.read_out(h, stream.node_pos, stream.x)


def _node_update_in_slices(layer: NGGNNLayer, h: torch.Tensor, fwd: StreamedPNA, bwd: StreamedPNA,
                           step: int = 1 << 16) -> torch.Tensor:
    """``layer.node_update`` of every node, ``step`` nodes at a time: its inputs (``[h, 4 aggregates
    × 2]``, 9 · hidden per node) and intermediates exist for one slice only. At once they are ≈ 2–3
    GiB on the 0.8 M nodes of TinyLlama-1.1B at hidden 32 (estimated: 9 + 2 + 2 · 4 · 3 floats of
    hidden per node), where the whole streamed encode peaked at 7.8 GiB."""
    out = torch.empty_like(h)
    for i in range(0, h.shape[0], step):
        s = slice(i, i + step)
        out[s] = layer.node_update(h[s], fwd.result(s), bwd.result(s))
    return out


class FoldedPass:
    r"""Layer ``L``'s streamed pass (messages of layer ``L`` from edge states recomputed through
    layers ``1..L``) with every linear map folded into the next (``norm="none"``).

    With edge states :math:`e_j = e_{j-1} + B_j u_j + b_j` and :math:`u_j = \mathrm{silu}(z_j)`,
    :math:`z_j = A_j e_{j-1} + a_j + s_j[\mathrm{src}] + t_j[\mathrm{dst}]` (the edge MLP's first
    layer on the edge part, the node parts gathered), every pre-activation is a linear function of
    :math:`e_0` and of the earlier :math:`u_i`:
    :math:`z_j = A_j e_0 + \sum_{i<j} A_j B_i u_i + (a_j + A_j \sum_{i<j} b_i) + \dots`, and the
    messages' pre-activations likewise with :math:`F, G` in place of :math:`A_j`. So a chunk needs

    * ``rows``: :math:`[A_1; \dots; A_L; F; G]\, e_0` plus constants, ``(L + 2) · d`` values per edge
      that depend on the edge's feature alone — for a weight-code block (bf16 LLM weights) computed
      once per distinct weight (:meth:`table`) and gathered by code, with no per-edge embedding;
    * then, for each :math:`j`, one in-place matmul adding :math:`u_j`'s part to all later
      pre-activations at once — no edge state, no residual adds.

    Per edge this is (L + 2)(L + 1)/2 − 1 + 2 small matmuls instead of 2L + 5 (4 + 7 instead of 7 + 9
    for two layers), and the first layer's embedding not at all on code blocks. Results equal the
    unfolded layers up to float rounding (products of weight matrices are formed before, not after,
    applying them)."""

    def __init__(self, model: "NGGNN", L: int):
        layers, d = list(model.layers)[:L], model.layers[0].hidden
        A = [split_first(l.edge, d, d, d)[2] for l in layers]
        a = [l.edge[0].bias for l in layers]
        B = [l.edge[2].weight for l in layers]
        b = [l.edge[2].bias for l in layers]
        last = layers[-1]
        consumers = A + [split_first(last.msg_fwd, d, d)[1], split_first(last.msg_bwd, d, d)[1]]
        biases = a + [last.msg_fwd[0].bias, last.msg_bwd[0].bias]
        # consumer j sees e_{j-1} (j ≤ L) or e_L (messages): its constant absorbs b_1..b_{j-1}
        seen = [min(j, L) for j in range(L + 2)]
        self.K = [C.T.contiguous() for C in consumers]                         # applied to e0
        self.k = [bias + (C @ torch.stack(b[:n]).sum(0) if n else 0) for C, bias, n in zip(consumers, biases, seen)]
        # u_j (1-based j = 1..L) feeds consumers j+1..L+2: M[j-1][i] = (C B_j)ᵀ for each later C
        self.M = [[(C @ B[j]).T.contiguous() for C in consumers[j + 1:]] for j in range(L)]
        self.tails = [(t.weight.T.contiguous(), t.bias) for t in (last.msg_fwd[2], last.msg_bwd[2])]
        self.L, self.d = L, d
        self._buf = None

    def _rows_buffer(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """``[L + 2, n, d]``: each consumer's pre-activations contiguous (in-place ops and
        matmuls on contiguous blocks run 2–3× faster here than on column slices of one wide row);
        one buffer reused for every chunk of the pass (no per-chunk allocation and page faults)."""
        size = (self.L + 2) * n * self.d
        if self._buf is None or self._buf.numel() < size:
            self._buf = like.new_empty(size)
        return self._buf[:size].view(self.L + 2, n, self.d)

    def rows(self, e0: torch.Tensor) -> torch.Tensor:
        """``[L + 2, n, d]``: the pre-activation parts that depend on the edge states ``e0 [n, d]`` alone."""
        out = self._rows_buffer(e0.shape[0], e0)
        for k, (K, c) in enumerate(zip(self.K, self.k)):
            torch.addmm(c, e0, K, out=out[k])
        return out

    def table(self, embed, kind: int, codes: torch.Tensor, taps: torch.Tensor, size: int) -> torch.Tensor:
        """:meth:`rows` of every weight code that occurs in a block (``GraphStream.code_values``) in
        a table ``[L + 2, size, d]`` indexed by code (rows of absent codes are left unset: never
        gathered; a zero fill of 65 536 rows cost more than the rows computed)."""
        out = taps.new_empty(self.L + 2, size, self.d)
        e0 = embed.edges_from_taps(taps, kind)
        for k, (K, c) in enumerate(zip(self.K, self.k)):
            out[k, codes] = torch.addmm(c, e0, K)
        return out

    def gather(self, table: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        out = self._rows_buffer(codes.shape[0], table)
        for k in range(self.L + 2):
            torch.index_select(table[k], 0, codes, out=out[k])
        return out

    def messages(self, rows: torch.Tensor, chunk, terms: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer L's forward and backward messages of a chunk (shaped like the chunk's edges, ``[...,
        d]``) from its ``rows [L + 2, n, d]`` (consumed: updated in place)."""
        d, L, shape = self.d, self.L, chunk.shape
        for j in range(L):                                    # z_{j+1}: add its node parts, activate, feed later ones
            z = rows[j].view(*shape, d)
            z += chunk.at_src(terms[j]["edge_src"])
            z += chunk.at_dst(terms[j]["edge_dst"])
            F.silu(rows[j], inplace=True)
            for later, M in zip(rows[j + 1:], self.M[j]):
                later.addmm_(rows[j], M)
        rows[L].view(*shape, d).add_(chunk.at_src(terms[L - 1]["fwd_src"]))
        rows[L + 1].view(*shape, d).add_(chunk.at_dst(terms[L - 1]["bwd_dst"]))
        F.silu(rows[L:], inplace=True)
        mf, mb = (torch.mm(rows[L + i], W).view(*shape, d) for i, (W, _) in enumerate(self.tails))
        return mf, mb

    @property
    def message_biases(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The messages' last biases, left out of :meth:`messages` (a copy per edge) and added to
        their per-node aggregates instead (``StreamedPNA(bias=...)``)."""
        return self.tails[0][1], self.tails[1][1]
