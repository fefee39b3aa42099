"""Featurize a neural graph chunk by chunk, straight from its edge blocks, for streamed encoders.

An in-memory encoder needs every edge's features at once (``featurize``: ≈ 100 bytes per edge, plus
``edges × hidden`` floats per layer inside the encoder). A streamed encoder keeps only per-node
state and walks the edges once per layer: :class:`GraphStream` yields :class:`EdgeChunk` objects,
each a piece of one block, built from a view of the block's weight rows (a memory-mapped ``.ngraph``
is read in place; only the chunk is converted to float32). Nothing of size ``edges`` is ever
allocated.

A chunk of a ``full`` block (dense, conv, embedding, recurrent: nearly all edges of large models) is
*dense*: a rectangle of targets × sources, every pair connected, taps ``[targets, sources, k]``;
gathering node state along its edges is a broadcast and aggregating is a sum over one axis, with no
index arrays at all. Chunks of the other patterns are *sparse*: global ``src``/``dst`` indices.
Taps are resampled and scaled exactly as ``featurize`` does, but not padded and without the kind
one-hot (``kind`` is the chunk's): an encoder's first linear layer on ``[taps, one-hot]`` is
``taps @ W[:, :k]ᵀ + W[:, taps + kind]``, the same number without the zero columns.

**Weight codes** (``chunks(codes=True)``): a one-tap block stored in 1 or 2 bytes per weight (bf16,
fp16, fp8: LLM checkpoints) has at most 65 536 distinct feature values, so an encoder can compute
whatever depends on an edge's feature alone once per distinct value (:meth:`GraphStream.code_values`)
and gather it by the weight's raw bits (``EdgeChunk.codes``) instead of once per edge. Weightless
blocks (features all ones) are code 0 of a one-value table. The values are ``_taps`` of the codes
themselves, so a table row is bit for bit the feature the chunk would carry.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .featurize import FeatureConfig, fan_in_scales, graph_weight_rms, node_features, resample_taps
from ..graph.fileformat import release_pages
from ..graph.ir import EdgeBlock, NeuralGraph
from ..graph.vocab import EDGE_KIND_IDS

DEFAULT_CHUNK = 1 << 18        # edges per chunk unless the encoder has a ``stream_chunk`` (ng-gnn: 2**14, measured)


@dataclass
class EdgeChunk:
    """Some edges of one block, featurized. Dense: ``rows`` (global target range) × ``cols``
    (global source range), ``taps [rows, cols, k]``. Sparse: ``src``/``dst`` (int64, global) and
    ``taps [n, k]``. ``kind`` indexes ``EDGE_KINDS``; ``depth`` is the target set's depth; ``block``
    the block's index. Chunks from ``chunks(codes=True)`` of code blocks carry ``codes`` (int32
    ``[rows, cols]`` or ``[n]``: rows of :meth:`GraphStream.code_values`) and no ``taps``."""

    kind: int
    depth: int
    taps: "torch.Tensor | None"  # noqa: F821
    rows: tuple[int, int] | None = None
    cols: tuple[int, int] | None = None
    src: "torch.Tensor | None" = None  # noqa: F821
    dst: "torch.Tensor | None" = None  # noqa: F821
    block: int = -1
    codes: "torch.Tensor | None" = None  # noqa: F821

    @property
    def dense(self) -> bool:
        return self.rows is not None

    @property
    def shape(self) -> tuple[int, ...]:
        """The edge grid: ``(rows, cols)`` dense, ``(n,)`` sparse."""
        return tuple(self.codes.shape) if self.taps is None else tuple(self.taps.shape[:-1])

    @property
    def num_edges(self) -> int:
        return int(np.prod(self.shape))

    # -- gathering node state along the edges: broadcastable against [rows, cols, d] or [n, d]
    def at_src(self, p):
        return p[self.cols[0]:self.cols[1]].unsqueeze(0) if self.dense else p[self.src]

    def at_dst(self, p):
        return p[self.rows[0]:self.rows[1]].unsqueeze(1) if self.dense else p[self.dst]

    # -- aggregating edge values into per-node accumulators (in place)
    def sum_to_dst(self, acc, x) -> None:
        if self.dense:
            acc[self.rows[0]:self.rows[1]] += x.sum(1)
        else:
            acc.index_add_(0, self.dst, x)

    def sum_to_src(self, acc, x) -> None:
        if self.dense:
            acc[self.cols[0]:self.cols[1]] += x.sum(0)
        else:
            acc.index_add_(0, self.src, x)

    def max_to_dst(self, acc, x) -> None:
        if self.dense:
            r = slice(*self.rows)
            acc[r] = acc[r].maximum(x.amax(1))
        else:
            acc.scatter_reduce_(0, self.dst.unsqueeze(-1).expand_as(x), x, "amax")

    def max_to_src(self, acc, x) -> None:
        if self.dense:
            c = slice(*self.cols)
            acc[c] = acc[c].maximum(x.amax(0))
        else:
            acc.scatter_reduce_(0, self.src.unsqueeze(-1).expand_as(x), x, "amax")

    def count_to_dst(self, acc) -> None:
        if self.dense:
            acc[self.rows[0]:self.rows[1]] += self.cols[1] - self.cols[0]
        else:
            acc.index_add_(0, self.dst, acc.new_ones(len(self.dst)))

    def count_to_src(self, acc) -> None:
        if self.dense:
            acc[self.cols[0]:self.cols[1]] += self.rows[1] - self.rows[0]
        else:
            acc.index_add_(0, self.src, acc.new_ones(len(self.src)))

    def flat(self):
        """``(src, dst, taps [n, k])`` in the edge order of ``featurize`` (for checks and generic code)."""
        import torch
        if not self.dense:
            return self.src, self.dst, self.taps
        nr, nc = self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]
        dev = self.taps.device
        dst = torch.arange(*self.rows, device=dev).repeat_interleave(nc)
        src = torch.arange(*self.cols, device=dev).repeat(nr)
        return src, dst, self.taps.reshape(nr * nc, -1)


def block_edge_range(graph: NeuralGraph, block: EdgeBlock, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Local (source, target) indices of edges ``start:stop`` of a block, in weight order, without
    building the rest of the block (``materialize.block_edges`` restricted to a range)."""
    S, T = graph.sets[block.source].size, graph.sets[block.target].size
    e = np.arange(start, stop, dtype=np.int64)
    if block.pattern == "full":
        spg, tpg = S // block.groups, T // block.groups
        t = e // spg
        return (t // tpg) * spg + e % spg, t
    if block.pattern == "diagonal":
        return e, e.copy()
    if block.pattern == "index":
        return e, np.asarray(block.attrs["index"], np.int64)[start:stop]
    return e, e // (S // T)        # membership


class GraphStream:
    """One graph for a streamed encoder: node tensors (``x``, ``node_pos``, ``node_depth``, on
    ``device``) and :meth:`chunks`, a fresh pass over every edge each time it is called.
    ``node_scale``/``edge_scale`` are a checkpoint's input scales (``featurize.apply_scales``).
    ``workers``: how many threads an encoder may split a pass among (``chunks(share=...)``).
    ``progress(done_edges, total_edges, pass_number)`` is called after each chunk."""

    def __init__(self, graph: NeuralGraph, config: FeatureConfig = FeatureConfig(), device="cpu",
                 chunk_edges: int = DEFAULT_CHUNK, node_scale=None, edge_scale=None,
                 progress: Callable[[int, int, int], None] | None = None, workers: int = 1):
        import threading

        import torch
        self.graph, self.config, self.device = graph, config, torch.device(device)
        self.workers = max(int(workers), 1)
        self._lock = threading.Lock()
        self.chunk_edges = max(int(chunk_edges), 1)
        x, pos, depth = node_features(graph, config)
        t = lambda a: torch.from_numpy(a).to(self.device)  # noqa: E731
        self.x, self.node_pos, self.node_depth = t(x), t(pos), t(depth)
        if node_scale is not None:
            self.x = self.x * node_scale.to(self.device)
        self.edge_scale = None if edge_scale is None else edge_scale.detach().cpu().numpy().astype(np.float32)
        self.num_nodes = graph.num_nodes
        self.num_edges = graph.num_edges
        self.progress = progress
        self.passes = 0
        self._offsets = graph.set_offsets()
        self._block_scale = self._weight_scales()
        self._code_values: dict[int, tuple] = {}

    def _weight_scales(self) -> dict[int, float]:
        """Per-block divisor of ``config.scale`` (none: 1), as ``featurize`` computes it, in float64 slices."""
        cfg, blocks = self.config, self.graph.blocks
        if cfg.scale == "graph":
            rms = max(graph_weight_rms(self.graph), 1e-12)
            for b in blocks:
                if b.weight is not None:
                    release_pages(b.weight.data)
            return {i: rms for i, b in enumerate(blocks) if b.weight is not None}
        if cfg.scale == "fan_in":     # divisors: 1 / √fan-in
            return {i: 1.0 / f for i, f in fan_in_scales(self.graph)[0].items()}
        if cfg.scale != "block":
            return {}
        out = {}
        for i, b in enumerate(blocks):
            if b.weight is not None:
                flat, step = b.weight.data.reshape(-1), 1 << 22
                ms = sum(float(np.square(np.asarray(flat[j:j + step], np.float64)).sum())
                         for j in range(0, flat.size, step)) / max(flat.size, 1)
                out[i] = max(float(np.sqrt(ms)), 1e-12)
                release_pages(b.weight.data)
        return out

    def _taps(self, i: int, b: EdgeBlock, rows: np.ndarray | tuple) -> np.ndarray:
        """``rows`` of a block's weight (a view, taps last: [n, t] or [rows, cols, t]) → float32
        [..., k], resampled and scaled; a block without weight passes the shape of its edges
        (``rows`` is then a shape) and gets ones, as ``featurize`` gives it."""
        if b.weight is None:
            taps = np.ones(tuple(rows) + (1,), np.float32)
        else:
            taps = np.asarray(rows, np.float32)
            shape = taps.shape
            taps = resample_taps(taps.reshape(-1, shape[-1]), self.config.taps, pad=False)
            taps = taps.reshape(shape[:-1] + (taps.shape[-1],))
        scale = 1.0 / self._block_scale.get(i, 1.0)
        if self.edge_scale is not None:
            scale *= float(self.edge_scale[EDGE_KIND_IDS[b.kind]])
        if scale != 1.0:
            taps = taps * np.float32(scale)
        return taps

    def code_dtype(self, b: EdgeBlock):
        """The unsigned integer view of a block's weights when its features can be tabulated by
        weight code (one tap per edge, 1 or 2 bytes per weight); ``np.uint8`` for a weightless
        block (one feature value); None otherwise."""
        if b.weight is None:
            return np.uint8
        data = b.weight.data
        E = self.graph.edge_count(b)
        if data.dtype.itemsize > 2 or data.size != E or E == 0:
            return None
        return np.uint16 if data.dtype.itemsize == 2 else np.uint8

    def code_values(self, i: int) -> tuple["torch.Tensor", "torch.Tensor", int]:  # noqa: F821
        """``(codes [m] int64, taps [m, k] float32, table size)`` of block ``i``: the weight codes
        that occur in it and their features (``_taps`` of those weights: what a chunk carries for
        them); a table of ``table size`` rows indexed by code covers every chunk. Cached."""
        with self._lock:
            return self._code_values_locked(i)

    def _code_values_locked(self, i: int):
        import torch
        if i not in self._code_values:
            b = self.graph.blocks[i]
            if b.weight is None:
                codes, taps, size = np.zeros(1, np.int64), self._taps(i, b, (1,)), 1
            else:
                view = self.code_dtype(b)
                flat = b.weight.data.reshape(-1).view(view)
                size = 1 << (8 * np.dtype(view).itemsize)
                seen = np.zeros(size, np.int64)
                for j in range(0, flat.size, 1 << 22):            # bounded memory: counts, not a copy
                    seen += np.bincount(flat[j:j + (1 << 22)], minlength=size)
                codes = np.flatnonzero(seen)
                values = codes.astype(view).view(b.weight.data.dtype).reshape(-1, 1)
                taps = self._taps(i, b, values)
            self._code_values[i] = (torch.from_numpy(codes).to(self.device),
                                    torch.from_numpy(np.ascontiguousarray(taps)).to(self.device), size)
        return self._code_values[i]

    def block_chunks(self, i: int, b: EdgeBlock, codes: bool = False,
                     keep: Callable[[], bool] | None = None) -> Iterator[EdgeChunk]:
        """The chunks of block ``i``; ``keep()`` is asked once per chunk, in order, before the chunk
        is built (False: skip it unbuilt — how ``chunks(share=...)`` splits a pass)."""
        import torch
        g, off = self.graph, self._offsets
        E = g.edge_count(b)
        if E == 0:
            return
        kind, depth = EDGE_KIND_IDS[b.kind], g.sets[b.target].depth
        so, to = off[b.source], off[b.target]
        dev = self.device
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)  # noqa: E731
        view = self.code_dtype(b) if codes else None
        keep = keep or (lambda: True)

        def features(rows, shape) -> dict:
            """Taps of these weight rows, or their codes (as int32: an index dtype)."""
            if view is None:
                return {"taps": t(self._taps(i, b, rows if b.weight is not None else shape))}
            if b.weight is None:
                return {"taps": None, "codes": torch.zeros(shape, dtype=torch.int32, device=dev)}
            return {"taps": None, "codes": t(rows.reshape(shape).view(view).astype(np.int32))}

        if b.pattern == "full":
            S, T = g.sets[b.source].size, g.sets[b.target].size
            spg, tpg = S // b.groups, T // b.groups
            w = None if b.weight is None else b.weight.data.reshape((T, spg, -1))
            step = max(1, self.chunk_edges // max(spg, 1))
            for g0 in range(0, T, tpg):                       # a dense rectangle never crosses a group
                for r0 in range(g0, g0 + tpg, step):
                    if not keep():
                        continue
                    r1 = min(r0 + step, g0 + tpg)
                    c0 = (g0 // tpg) * spg
                    yield EdgeChunk(kind, depth, rows=(to + r0, to + r1), cols=(so + c0, so + c0 + spg), block=i,
                                    **features(w[r0:r1] if w is not None else None, (r1 - r0, spg)))
            return
        w = None if b.weight is None else b.weight.data.reshape((E, -1))
        for e0 in range(0, E, self.chunk_edges):
            if not keep():
                continue
            e1 = min(e0 + self.chunk_edges, E)
            src, dst = block_edge_range(g, b, e0, e1)
            yield EdgeChunk(kind, depth, src=t(src + so), dst=t(dst + to), block=i,
                            **features(w[e0:e1] if w is not None else None, (e1 - e0,)))

    def chunks(self, codes: bool = False, share: tuple[int, int] | None = None) -> Iterator[EdgeChunk]:
        """One pass over every edge, block by block; ``codes``: chunks of code blocks (see
        :meth:`code_dtype`) carry weight codes instead of taps. ``share=(k, n)``: only chunks
        ``k, k + n, k + 2n, …`` of the pass (``n`` workers splitting it deterministically; share 0
        counts the pass and reports progress, scaled by ``n``)."""
        k, n = share or (0, 1)
        if k == 0:
            self.passes += 1
        seen = [-1]

        def keep() -> bool:
            seen[0] += 1
            return seen[0] % n == k

        done = 0
        for i, b in enumerate(self.graph.blocks):
            for c in self.block_chunks(i, b, codes, keep):
                yield c
                done += c.num_edges
                if self.progress is not None and k == 0:
                    self.progress(min(done * n, self.num_edges), self.num_edges, self.passes)
            if b.weight is not None:            # a memory-mapped block's pages leave the resident set
                release_pages(b.weight.data)


def stderr_progress(label: str = "encoding", every_s: float = 5.0, passes: int | None = None, stream=None):
    """A ``GraphStream`` progress callback printing one line to stderr every ``every_s`` seconds
    (none for runs shorter than that): pass, share of edges, elapsed time."""
    import sys
    out = stream or sys.stderr
    start = time.monotonic()
    last = [start]

    def report(done: int, total: int, pass_no: int) -> None:
        now = time.monotonic()
        if now - last[0] < every_s:           # short runs print nothing
            return
        last[0] = now
        of = f"/{passes}" if passes else ""
        print(f"{label}: pass {pass_no}{of}, {done / max(total, 1):6.1%} of {total:,} edges, "
              f"{now - start:.0f} s", file=out, flush=True)
    return report


def encode_streamed(encoder, graph: NeuralGraph, config: FeatureConfig = FeatureConfig(), device="cpu",
                    chunk_edges: int | None = None, progress: bool = False, label: str = "encoding",
                    workers: int = 1):
    """``encoder.forward_stream`` on one graph, with the encoder's input scales (the buffers a
    trained checkpoint carries) applied to the streamed features as its pre-hook does in memory;
    ``progress`` prints a line to stderr every few seconds. ``chunk_edges``: None takes the
    encoder's ``stream_chunk`` (its measured best) or ``DEFAULT_CHUNK``. ``workers``: threads
    splitting each pass by chunks, for encoders that support it (``stream.workers``; ng-gnn) —
    each runs torch ops with its own buffers, so set torch's intra-op threads to 1 with it."""
    import torch
    node_scale = getattr(encoder, "input_node_scale", None)
    edge_scale = getattr(encoder, "input_edge_scale", None)
    report = stderr_progress(label, passes=getattr(encoder, "stream_passes", None)) if progress else None
    chunk_edges = chunk_edges or getattr(encoder, "stream_chunk", DEFAULT_CHUNK)
    stream = GraphStream(graph, config, device, chunk_edges, node_scale, edge_scale, report, workers)
    with torch.no_grad():
        return encoder.forward_stream(stream)
