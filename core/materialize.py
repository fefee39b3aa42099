"""Materialize a neural graph as COO arrays, a PyG ``Data`` or a networkx ``DiGraph``.

Edges are generated per block with vectorized index arithmetic; the weight array of a block
becomes its edges' feature vectors by a reshape (a view for contiguous weights).
Node order is the order of the sets; inside a set, neuron order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ir import EdgeBlock, NeuralGraph
from .vocab import ACTIVATIONS, KINDS, ROLES

KIND_IDS = {k: i for i, k in enumerate(KINDS)}
ROLE_IDS = {r: i for i, r in enumerate(ROLES)}
ACTIVATION_IDS = {a: i + 1 for i, a in enumerate(ACTIVATIONS)}  # 0 = none


def is_float(dtype) -> bool:
    """Floating point, including ml_dtypes' bfloat16 / float8 (numpy calls those void)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating):
        return True
    return dtype.name.startswith(("bfloat16", "float8", "float4", "float6"))


@dataclass
class COO:
    """Edges (source row 0 → target row 1) and per-node / per-edge attributes."""

    edge_index: np.ndarray   # int64 [2, E]
    edge_attr: np.ndarray    # float32 [E, K]: weight or kernel taps, zero-padded to K
    edge_kind: np.ndarray    # int64 [E]: index into vocab.KINDS
    edge_block: np.ndarray   # int64 [E]: which block of graph.blocks
    node_set: np.ndarray     # int64 [N]: which set of graph.sets
    node_role: np.ndarray    # int64 [N]: index into vocab.ROLES
    node_depth: np.ndarray   # int64 [N]
    node_activation: np.ndarray  # int64 [N]: 0 = none, else 1 + index into vocab.ACTIVATIONS
    node_fixed: np.ndarray   # bool [N]: inputs/outputs that no symmetry moves
    node_bias: np.ndarray    # float32 [N]: the set's "bias" array, 0 where there is none

    @property
    def num_nodes(self) -> int:
        return len(self.node_set)


def block_edges(graph: NeuralGraph, block: EdgeBlock) -> tuple[np.ndarray, np.ndarray]:
    """Local (source, target) neuron indices of one block's edges, in weight order."""
    S, T = graph.sets[block.source].size, graph.sets[block.target].size
    if block.pattern == "full":
        k = block.groups
        spg, tpg = S // k, T // k
        tgt = np.repeat(np.arange(T, dtype=np.int64), spg)
        src = (tgt // tpg) * spg + np.tile(np.arange(spg, dtype=np.int64), T)
        return src, tgt
    if block.pattern == "diagonal":
        idx = np.arange(S, dtype=np.int64)
        return idx, idx
    if block.pattern == "index":
        return np.arange(S, dtype=np.int64), np.asarray(block.attrs["index"], dtype=np.int64)
    bs = S // T  # membership: child neuron i → parent node i // bs
    return np.arange(S, dtype=np.int64), np.arange(S, dtype=np.int64) // bs


def to_coo(graph: NeuralGraph, max_taps: int | None = None) -> COO:
    offsets = graph.set_offsets()
    K = max_taps or max([b.taps for b in graph.blocks] + [1])
    ei, ea, ek, eb = [], [], [], []
    for i, b in enumerate(graph.blocks):
        src, tgt = block_edges(graph, b)
        E = len(src)
        ei.append(np.stack([src + offsets[b.source], tgt + offsets[b.target]]))
        attr = np.zeros((E, K), dtype=np.float32)
        if b.weight is None:
            attr[:, 0] = 1.0
        else:
            taps = np.asarray(b.weight.data, dtype=np.float32).reshape(E, -1)
            attr[:, : min(K, taps.shape[1])] = taps[:, :K]
        ea.append(attr)
        ek.append(np.full(E, KIND_IDS[b.kind], dtype=np.int64))
        eb.append(np.full(E, i, dtype=np.int64))

    sets = list(graph.sets.values())
    sizes = np.array([s.size for s in sets], dtype=np.int64)
    per_set = lambda values, dtype: np.repeat(np.asarray(values, dtype=dtype), sizes)  # noqa: E731
    fixed = {g.name for g in graph.symmetry_groups() if g.fixed}
    bias = [np.asarray(s.arrays["bias"].data, np.float32).reshape(s.size) if "bias" in s.arrays
            else np.zeros(s.size, np.float32) for s in sets]
    return COO(
        edge_index=np.concatenate(ei, axis=1) if ei else np.zeros((2, 0), np.int64),
        edge_attr=np.concatenate(ea) if ea else np.zeros((0, K), np.float32),
        edge_kind=np.concatenate(ek) if ek else np.zeros(0, np.int64),
        edge_block=np.concatenate(eb) if eb else np.zeros(0, np.int64),
        node_set=per_set(range(len(sets)), np.int64),
        node_role=per_set([ROLE_IDS[s.role] for s in sets], np.int64),
        node_depth=per_set([s.depth for s in sets], np.int64),
        node_activation=per_set([ACTIVATION_IDS.get(s.activation, 0) for s in sets], np.int64),
        node_fixed=per_set([s.group in fixed for s in sets], bool),
        node_bias=np.concatenate(bias) if bias else np.zeros(0, np.float32),
    )


def to_pyg(graph: NeuralGraph, max_taps: int | None = None):
    """A ``torch_geometric.data.Data``. Attribute names avoid "index"/"face" except
    ``edge_index`` so that batching offsets only the edges."""
    import torch
    from torch_geometric.data import Data

    c = to_coo(graph, max_taps)
    t = torch.from_numpy
    return Data(
        edge_index=t(c.edge_index), edge_attr=t(c.edge_attr), edge_kind=t(c.edge_kind),
        edge_block=t(c.edge_block), node_set=t(c.node_set), node_role=t(c.node_role),
        node_depth=t(c.node_depth), node_activation=t(c.node_activation),
        node_fixed=t(c.node_fixed), node_bias=t(c.node_bias), num_nodes=c.num_nodes,
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
