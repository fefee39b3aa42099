"""Materialize a neural graph as COO arrays, a PyG ``Data`` or a networkx ``DiGraph``.

Edges are generated per block with vectorized index arithmetic; the weight array of a block
becomes its edges' feature vectors by a reshape (a view for contiguous weights).
Node order is the order of the sets; inside a set, neuron order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ir import EdgeBlock, NeuralGraph
from .vocab import ACTIVATION_IDS, KIND_IDS, KINDS, ROLE_IDS



@dataclass
class COO:
    """Edges (source row 0 → target row 1) and per-node / per-edge attributes, in the smallest
    dtypes that hold them: int32 node indices below 2³¹ nodes (int64 above), int8 kinds, int32
    block numbers — 17 bytes per scalar edge instead of 36 (and the arrays are written in
    place, never concatenated). ``edge_attr`` pads every edge to K taps; with
    ``taps="split"`` it holds the weight of one-tap edges only (0 for the others), and the
    kernel taps of the edges that have them are stored unpadded, flat, in edge order:
    ``edge_num_taps[e]`` values for edge e (0 for one-tap edges) — an order batching by
    concatenation keeps, so ``np.split(edge_taps, np.cumsum(edge_num_taps)[:-1])`` gives each
    edge's taps."""

    edge_index: np.ndarray   # int32/int64 [2, E]
    edge_attr: np.ndarray    # float32 [E, K]: weight or kernel taps, zero-padded to K ([E, 1] when split)
    edge_kind: np.ndarray    # int8 [E]: index into vocab.KINDS
    edge_block: np.ndarray   # int32 [E]: which block of graph.blocks
    node_set: np.ndarray     # int32 [N]: which set of graph.sets
    node_role: np.ndarray    # int8 [N]: index into vocab.ROLES
    node_depth: np.ndarray   # int32 [N]
    node_activation: np.ndarray  # int8 [N]: 0 = none, else 1 + index into vocab.ACTIVATIONS
    node_fixed: np.ndarray   # bool [N]: inputs/outputs that no symmetry moves
    node_bias: np.ndarray    # float32 [N]: the set's "bias" array, 0 where there is none
    edge_taps: np.ndarray | None = None      # float32 [Σ taps of tapped edges] (taps="split" only)
    edge_num_taps: np.ndarray | None = None  # int16/int32 [E]: taps per edge in edge_taps, 0 for none

    @property
    def num_nodes(self) -> int:
        return len(self.node_set)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in vars(self).values() if isinstance(a, np.ndarray))


def block_edges(graph: NeuralGraph, block: EdgeBlock) -> tuple[np.ndarray, np.ndarray]:
    """Local (source, target) neuron indices of one block's edges, in weight order."""
    E = graph.edge_count(block)
    src, tgt = np.empty(E, np.int64), np.empty(E, np.int64)
    write_block_edges(graph, block, src, tgt)
    return src, tgt


def write_block_edges(graph: NeuralGraph, block: EdgeBlock, src: np.ndarray, tgt: np.ndarray,
                      src_offset: int = 0, tgt_offset: int = 0) -> None:
    """Write one block's edge endpoints (plus offsets) into ``src``/``tgt`` in place, in weight
    order, in their dtype: no per-block int64 temporaries (an embedding block of 65 M edges
    would need 1 GiB of them)."""
    S, T = graph.sets[block.source].size, graph.sets[block.target].size
    dt = src.dtype
    if block.pattern == "opaque":      # parameters kept, connectivity unknown: no edges
        return
    if block.pattern == "full":
        k = block.groups
        spg, tpg = S // k, T // k
        tgt.reshape(T, spg)[:] = np.arange(tgt_offset, tgt_offset + T, dtype=dt)[:, None]
        s2 = src.reshape(k, tpg, spg)
        s2[:] = np.arange(spg, dtype=dt)[None, None, :]
        s2 += (np.arange(k, dtype=dt) * spg + src_offset)[:, None, None]
        return
    if block.pattern == "diagonal":
        src[:] = np.arange(src_offset, src_offset + S, dtype=dt)
        tgt[:] = np.arange(tgt_offset, tgt_offset + S, dtype=dt)
        return
    src[:] = np.arange(src_offset, src_offset + S, dtype=dt)
    if block.pattern == "index":
        tgt[:] = np.asarray(block.attrs["index"], dtype=dt) + tgt_offset
        return
    bs = S // T  # membership: child neuron i → parent node i // bs
    tgt[:] = np.arange(S, dtype=dt) // bs + tgt_offset


def index_dtype(n: int) -> np.dtype:
    """int32 while ``n`` indices fit, else int64."""
    return np.dtype(np.int32 if n < 2 ** 31 else np.int64)


def _block_taps(b: EdgeBlock, E: int) -> np.ndarray | None:
    """A block's weight as [E, taps] in its stored dtype (a view where the layout allows)."""
    if b.weight is None:
        return None
    return b.weight.data.reshape(E, -1)        # assigning into float32 casts in buffered chunks


def to_coo(graph: NeuralGraph, max_taps: int | None = None, *, taps: str = "pad") -> COO:
    """COO arrays (see :class:`COO`). ``taps="pad"``: every edge has K = ``max_taps`` (default:
    the most any block has) tap columns; ``"split"``: one column, and kernel taps only for the
    edges of blocks that have them."""
    if taps not in ("pad", "split"):
        raise ValueError(f"taps must be 'pad' or 'split', not {taps!r}")
    offsets = graph.set_offsets()
    N, E = graph.num_nodes, graph.num_edges
    K = max_taps or max([b.taps for b in graph.blocks] + [1])
    it = index_dtype(max(N, len(graph.blocks)))
    edge_index = np.empty((2, E), it)
    edge_kind = np.empty(E, np.int8)
    edge_block = np.empty(E, np.int32 if len(graph.blocks) < 2 ** 31 else np.int64)
    split = taps == "split"
    tapped = [b for b in graph.blocks if split and b.taps > 1]
    n_taps = sum(graph.edge_count(b) * b.taps for b in tapped)
    edge_attr = np.zeros((E, 1 if split else K), np.float32)
    edge_taps = np.empty(n_taps, np.float32) if split else None
    num_taps = np.zeros(E, np.int16 if max([b.taps for b in tapped], default=0) < 2 ** 15 else np.int32) \
        if split else None
    e = t = 0
    for i, b in enumerate(graph.blocks):
        n = graph.edge_count(b)
        if n == 0:          # opaque blocks: parameters without known connectivity
            continue
        sl = slice(e, e + n)
        write_block_edges(graph, b, edge_index[0, sl], edge_index[1, sl], offsets[b.source], offsets[b.target])
        edge_kind[sl] = KIND_IDS[b.kind]
        edge_block[sl] = i
        w = _block_taps(b, n)
        if w is None:
            edge_attr[sl, 0] = 1.0
        elif split and b.taps > 1:
            edge_taps[t:t + w.size] = w.reshape(-1)
            num_taps[sl] = b.taps
            t += w.size
        else:
            edge_attr[sl, : min(edge_attr.shape[1], w.shape[1])] = w[:, : edge_attr.shape[1]]
        e += n

    sets = list(graph.sets.values())
    sizes = np.array([s.size for s in sets], dtype=np.int64)
    per_set = lambda values, dtype: np.repeat(np.asarray(values, dtype=dtype), sizes)  # noqa: E731
    fixed = {g.name for g in graph.symmetry_groups() if g.fixed}
    bias = np.zeros(N, np.float32)
    for s in sets:
        if "bias" in s.arrays:
            bias[offsets[s.name]: offsets[s.name] + s.size] = np.asarray(s.arrays["bias"].data, np.float32).reshape(s.size)
    return COO(
        edge_index=edge_index, edge_attr=edge_attr, edge_kind=edge_kind, edge_block=edge_block,
        node_set=per_set(range(len(sets)), np.int32),
        node_role=per_set([ROLE_IDS[s.role] for s in sets], np.int8),
        node_depth=per_set([s.depth for s in sets], np.int32),
        node_activation=per_set([ACTIVATION_IDS.get(s.activation, 0) for s in sets], np.int8),
        node_fixed=per_set([s.group in fixed for s in sets], bool),
        node_bias=bias, edge_taps=edge_taps, edge_num_taps=num_taps,
    )


def to_pyg(graph: NeuralGraph, max_taps: int | None = None, *, taps: str = "pad"):
    """A ``torch_geometric.data.Data`` sharing the COO arrays' memory (``torch.from_numpy``, no
    copy; index dtypes as in :class:`COO`). Attribute names avoid "index"/"face" except
    ``edge_index`` so that batching offsets only the edges."""
    import torch
    from torch_geometric.data import Data

    c = to_coo(graph, max_taps, taps=taps)
    t = torch.from_numpy
    extra = {} if c.edge_taps is None else {"edge_taps": t(c.edge_taps), "edge_num_taps": t(c.edge_num_taps)}
    return Data(
        edge_index=t(c.edge_index), edge_attr=t(c.edge_attr), edge_kind=t(c.edge_kind),
        edge_block=t(c.edge_block), node_set=t(c.node_set), node_role=t(c.node_role),
        node_depth=t(c.node_depth), node_activation=t(c.node_activation),
        node_fixed=t(c.node_fixed), node_bias=t(c.node_bias), num_nodes=c.num_nodes, **extra,
    )


def to_networkx(graph: NeuralGraph):
    """A ``networkx.DiGraph``: node attrs set/neuron/role/depth, edge attrs kind/weight."""
    import networkx as nx

    c = to_coo(graph)
    names = list(graph.sets)
    g = nx.DiGraph()
    offsets = graph.set_offsets()
    for s in graph.sets.values():
        base = offsets[s.name]
        g.add_nodes_from((base + i, {"set": s.name, "neuron": i, "role": s.role, "depth": s.depth,
                                     "activation": s.activation}) for i in range(s.size))
    kinds = list(KINDS)
    g.add_edges_from(
        (int(u), int(v), {"kind": kinds[k], "weight": a.tolist()})
        for u, v, k, a in zip(c.edge_index[0], c.edge_index[1], c.edge_kind, c.edge_attr))
    g.graph["sets"] = names
    return g
