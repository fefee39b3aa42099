"""Neuron alignment: the symmetry of network B that brings it closest to network A.

Because a neural graph knows every permutation symmetry of its network (one permutation per
tie group, attention heads as parent groups), alignment needs no per-architecture
permutation spec. Every method reduces to one similarity matrix per tie group
(``C[i, j]``: how alike A's neuron ``i`` and B's neuron ``j`` are) and a linear assignment;
groups with a parent (heads) are solved as blocks: the best within-block assignment for every
pair of blocks, then the best assignment of blocks.

- ``weight`` (Ainsworth et al. 2023, weight matching): the similarity of two neurons is the
  inner product of all parameters on their axis, with every *other* axis already permuted;
  coordinate descent over the tie groups until nothing changes. It starts from a
  permutation-invariant signature (each neuron's parameters sorted), which alone recovers a
  permuted copy exactly.
- ``activation``: correlation of the neurons' outputs on sample inputs (the adapter's
  ``activations`` hook; onnxruntime for ONNX models). Groups without readable activations
  fall back to weight matching.
- ``embedding``: inner products of node embeddings from a trained encoder checkpoint.

For the last two, neurons the data cannot tell apart (dead ReLUs, constant outputs) are
matched by a small tie-breaking term, the cosine of their weight signatures.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .errors import InputError
from .ir import NeuralGraph
from .materialize import block_edges, is_float
from .symmetry import Symmetry, _effectively_fixed

METHODS = ("weight", "activation", "embedding")


@dataclass
class Alignment:
    """The symmetry of B (gather convention, see :class:`Symmetry`) and how far it moved B."""

    symmetry: Symmetry
    method: str
    distance_before: float
    distance_after: float
    iterations: int = 0
    groups: int = 0
    fallback_groups: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"method": self.method, "distance_before": self.distance_before,
                "distance_after": self.distance_after, "iterations": self.iterations,
                "groups_aligned": self.groups, "fallback_to_weight": self.fallback_groups}


# ------------------------------------------------------------------------------ compatibility
def check_compatible(a: NeuralGraph, b: NeuralGraph, names: tuple[str, str] = ("A", "B")) -> None:
    """Raise :class:`InputError` naming the first structural difference: alignment is only
    defined between networks of one architecture and width."""
    na, nb = names

    def fail(what: str) -> None:
        raise InputError(f"{na} and {nb} have different architectures: {what} "
                         "(alignment needs the same architecture and widths)")

    if set(a.sets) != set(b.sets):
        only = sorted(set(a.sets) ^ set(b.sets))[:3]
        fail(f"neuron sets {only} are in one network only")
    for name, s in a.sets.items():
        t = b.sets[name]
        if s.size != t.size:
            fail(f"set {name!r} has {s.size} neurons in {na} and {t.size} in {nb}")
        if {k: p.shape for k, p in s.arrays.items()} != {k: p.shape for k, p in t.arrays.items()}:
            fail(f"set {name!r} holds different per-neuron arrays")
    def layout(x) -> tuple:
        return x.name, x.source, x.target, x.weight.shape if x.weight is not None else None

    if len(a.blocks) != len(b.blocks):
        fail(f"{len(a.blocks)} edge blocks in {na}, {len(b.blocks)} in {nb}")
    for x, y in zip(a.blocks, b.blocks):
        if layout(x) != layout(y):
            fail(f"edge block {x.name!r} differs")
    ga = {n: (g.size, g.parent, g.rigid) for n, g in a.groups.items()}
    gb = {n: (g.size, g.parent, g.rigid) for n, g in b.groups.items()}
    if ga != gb or any(a.sets[s].group != b.sets[s].group for s in a.sets):
        fail("their tie groups differ")


def weight_distance(a: NeuralGraph, b: NeuralGraph, symmetry: Symmetry | None = None) -> float:
    """L2 distance between A's parameters and B's (permuted by ``symmetry``), over every
    floating-point source tensor both hold."""
    pa = a.to_params()
    pb = (b.permute(symmetry) if symmetry is not None else b).to_params()
    total = 0.0
    for name, x in pa.items():
        y = pb.get(name)
        if y is None or x.shape != y.shape or not is_float(x.dtype):
            continue
        total += float(np.sum(np.square(x.astype(np.float64) - y.astype(np.float64))))
    return float(np.sqrt(total))


# ------------------------------------------------------------------------------ factors
@dataclass
class _Factor:
    """One parameter array of A and B with the tie group of each leading axis (``None``:
    a fixed or absent axis). Grouped-conv and diagonal weights are made dense first."""

    a: np.ndarray
    b: np.ndarray
    axes: tuple[str | None, ...]


def _dense(graph: NeuralGraph, block) -> np.ndarray:
    """A block's weight as ``[T, S, taps]`` (``[n, taps]`` for a diagonal block)."""
    w = np.asarray(block.weight.data, np.float32)
    if block.pattern == "diagonal":
        return w.reshape(w.shape[0], -1)
    T, S = graph.sets[block.target].size, graph.sets[block.source].size
    if block.groups == 1:
        return w.reshape(T, S, -1)
    src, tgt = block_edges(graph, block)
    out = np.zeros((T, S, block.taps), np.float32)
    out[tgt, src] = w.reshape(len(src), -1)
    return out


def _factors(a: NeuralGraph, b: NeuralGraph, moving: set[str]) -> list[_Factor]:
    def grp(set_name: str) -> str | None:
        g = a.sets[set_name].group
        return g if g in moving else None

    out = []
    for name, s in a.sets.items():
        g = grp(name)
        if g is None:
            continue
        for key, p in s.arrays.items():
            q = b.sets[name].arrays[key]
            if is_float(p.data.dtype):
                out.append(_Factor(np.asarray(p.data, np.float32).reshape(s.size, -1),
                                   np.asarray(q.data, np.float32).reshape(s.size, -1), (g,)))
    for x, y in zip(a.blocks, b.blocks):
        if x.weight is None or x.pattern not in ("full", "diagonal"):
            continue
        if not is_float(x.weight.data.dtype):
            continue
        axes = (grp(x.target),) if x.pattern == "diagonal" else (grp(x.target), grp(x.source))
        if all(ax is None for ax in axes):
            continue
        out.append(_Factor(_dense(a, x), _dense(b, y), axes))
    return out


def _permuted_b(f: _Factor, perms: Mapping[str, np.ndarray], skip: int) -> np.ndarray:
    """B's array with every group axis except ``skip`` put in its current order."""
    arr = f.b
    for k, g in enumerate(f.axes):
        if k != skip and g is not None and g in perms:
            arr = np.take(arr, perms[g], axis=k)
    return arr


def _linear_costs(factors: list[_Factor], perms: Mapping[str, np.ndarray], groups: set[str],
                  sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """``C[g][i, j]`` = −½‖A's slice i − B's slice j‖² summed over the arrays on g's axis, the
    other axes of B already permuted. Over perfect matchings this differs from the inner product
    ⟨A_i, B_j⟩ by a constant (same optimum), but each row's maximum is its nearest neighbour,
    so a clear match needs no assignment solver (see :func:`_lap`)."""
    costs = {g: np.zeros((sizes[g], sizes[g])) for g in groups}
    for f in factors:
        for k, g in enumerate(f.axes):
            if g not in groups:
                continue
            xa = np.moveaxis(f.a, k, 0).reshape(sizes[g], -1)
            xb = np.moveaxis(_permuted_b(f, perms, k), k, 0).reshape(sizes[g], -1)
            costs[g] += _neg_half_sq_dist(xa, xb)
    return costs


def _neg_half_sq_dist(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    na = np.einsum("ij,ij->i", xa, xa, dtype=np.float64)
    nb = np.einsum("ij,ij->i", xb, xb, dtype=np.float64)
    return (xa @ xb.T).astype(np.float64) - 0.5 * (na[:, None] + nb[None, :])


def _signature_costs(factors: list[_Factor], groups: set[str], sizes: Mapping[str, int],
                     cosine: bool = False) -> dict[str, np.ndarray]:
    """Similarity of neurons' sorted parameters: invariant to every other group's order, so a
    permuted copy is matched exactly without knowing any other permutation. ``cosine``:
    normalized to [-1, 1] (a tie-breaker for other similarities)."""
    costs = {g: np.zeros((sizes[g], sizes[g])) for g in groups}
    norms = {g: (np.zeros(sizes[g]), np.zeros(sizes[g])) for g in groups}
    for f in factors:
        for k, g in enumerate(f.axes):
            if g not in groups:
                continue
            xa = np.sort(np.moveaxis(f.a, k, 0).reshape(sizes[g], -1), axis=1)
            xb = np.sort(np.moveaxis(f.b, k, 0).reshape(sizes[g], -1), axis=1)
            costs[g] += xa @ xb.T
            norms[g][0][:] += np.einsum("ij,ij->i", xa, xa, dtype=np.float64)
            norms[g][1][:] += np.einsum("ij,ij->i", xb, xb, dtype=np.float64)
    for g, (na, nb) in norms.items():
        if cosine:
            costs[g] /= np.maximum(np.sqrt(np.outer(na, nb)), 1e-30)
        else:       # −½ squared distance: same optimum, nearest neighbours as row maxima
            costs[g] -= 0.5 * (na[:, None] + nb[None, :])
    return costs


#: Weight of the signature tie-breaker next to correlations / embedding similarities (≤ 1 each).
TIE_BREAK = 1e-3


# ------------------------------------------------------------------------------ assignment
def _lap(cost: np.ndarray) -> np.ndarray:
    """perm with perm[i] = j maximizing Σ cost[i, perm[i]]."""
    best = np.argmax(cost, axis=1)
    if len(np.unique(best)) == len(best):    # every row's maximum in its own column: optimal as is
        return best.astype(np.int64)
    from scipy.optimize import linear_sum_assignment
    rows, cols = linear_sum_assignment(cost, maximize=True)
    perm = np.empty(len(rows), np.int64)
    perm[rows] = cols
    return perm


class _Hierarchy:
    """The tie groups that move, as trees: a root group and its descendants (attention heads
    parent the Q/K/V groups; grouped convs parent their channel groups). A fixed group stays
    in place, but its free descendants still permute inside each of its blocks."""

    def __init__(self, graph: NeuralGraph):
        self.fixed = _effectively_fixed(graph)
        self.groups = graph.groups
        self.children: dict[str, list[str]] = {g: [] for g in graph.groups}
        for g in graph.groups.values():
            if g.parent is not None:
                self.children[g.parent].append(g.name)
        self.moving = {g for g in graph.groups if g not in self.fixed and not self._frozen(g)}
        self.roots = [g.name for g in graph.groups.values()
                      if g.parent is None and any(d in self.moving for d in self.family(g.name))]

    def _frozen(self, g: str) -> bool:
        """Rigid without a parent: nothing may move."""
        t = self.groups[g]
        return t.rigid and t.parent is None

    def family(self, root: str) -> list[str]:
        out = [root]
        for c in self.children[root]:
            out += self.family(c)
        return out

    def solve(self, root: str, costs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Permutations of ``root`` and its descendants maximizing the summed similarity,
        blocks of children moving with their parent."""
        effective, choose = self._effective(root, costs)
        perm = _lap(effective) if root in self.moving else np.arange(self.groups[root].size)
        out = {root: perm}
        choose(perm, out)
        return {g: p for g, p in out.items() if g in self.moving}

    def _effective(self, g: str, costs: Mapping[str, np.ndarray]):
        n = self.groups[g].size
        total = np.array(costs.get(g, np.zeros((n, n))), dtype=np.float64, copy=True)
        pinned = g not in self.moving         # only the diagonal pairs of blocks can occur
        pickers = []
        for c in self.children[g]:
            ceff, cchoose = self._effective(c, costs)
            bs = self.groups[c].size // n
            blocks = ceff.reshape(n, bs, n, bs).transpose(0, 2, 1, 3)       # [a, b, i, j]
            if self.groups[c].rigid or c not in self.moving or bs == 1:
                within = np.broadcast_to(np.arange(bs), (n, n, bs))
                value = np.trace(blocks, axis1=2, axis2=3)
            else:
                within = np.broadcast_to(np.arange(bs), (n, n, bs)).copy()
                value = np.zeros((n, n))
                for a in range(n):
                    for b_ in ([a] if pinned else range(n)):
                        p = _lap(blocks[a, b_])
                        within[a, b_] = p
                        value[a, b_] = blocks[a, b_][np.arange(bs), p].sum()
            total += value
            pickers.append((c, bs, within, cchoose))

        def choose(perm: np.ndarray, out: dict[str, np.ndarray]) -> None:
            for c, bs, within, cchoose in pickers:
                cp = (perm[:, None] * bs + within[np.arange(n), perm]).reshape(-1)
                out[c] = cp
                cchoose(cp, out)

        return total, choose


def _value(costs: Mapping[str, np.ndarray], perms: Mapping[str, np.ndarray]) -> float:
    """Σ over groups of Σᵢ C[i, perm[i]]: the objective's part that depends on these groups."""
    return float(sum(c[np.arange(len(c)), perms[g]].sum() for g, c in costs.items() if g in perms))


def _weight_matching(factors: list[_Factor], hier: _Hierarchy, perms: dict[str, np.ndarray], roots: list[str],
                     sizes: Mapping[str, int], max_iter: int, seed: int, init: bool = True) -> int:
    """Coordinate descent over ``roots`` (updates ``perms`` in place); returns the rounds run."""
    if not roots:
        return 0
    if init:
        sig = _signature_costs(factors, {d for r in roots for d in hier.family(r)} & hier.moving, sizes)
        for r in roots:
            perms.update(hier.solve(r, sig))
    rng = np.random.default_rng(seed)
    rounds = 0
    for rounds in range(1, max_iter + 1):
        changed = False
        for r in rng.permutation(roots):
            family = set(hier.family(r)) & hier.moving
            costs = _linear_costs(factors, perms, family, sizes)
            new = hier.solve(r, costs)
            old = {g: perms.get(g, np.arange(sizes[g])) for g in new}
            # linear in this family's permutations (others held): the assignment cannot lose,
            # so accept it only when it strictly gains (no cycling between equal optima)
            before = _value(costs, old)
            if _value(costs, new) > before + 1e-9 * max(1.0, abs(before)):
                perms.update(new)
                changed = True
        if not changed:
            break
    return rounds


# ------------------------------------------------------------------------------ public API
def align(a: NeuralGraph, b: NeuralGraph, method: str = "weight", *,
          activations: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]] | None = None,
          embeddings: tuple[np.ndarray, np.ndarray] | None = None,
          max_iter: int = 100, seed: int = 0) -> Alignment:
    """The symmetry of ``b`` that makes it closest to ``a``.

    ``activations``: for ``method="activation"``, each network's outputs per neuron set
    (set name → ``[samples, size]``), e.g. from the adapter's ``activations`` hook.
    ``embeddings``: for ``method="embedding"``, node embeddings ``[num_nodes, d]`` of each
    graph in node order (see :func:`node_embeddings`)."""
    if method not in METHODS:
        raise InputError(f"unknown alignment method {method!r}; choose from {', '.join(METHODS)}")
    check_compatible(a, b)
    hier = _Hierarchy(a)
    sizes = {g: t.size for g, t in a.groups.items()}
    factors = _factors(a, b, hier.moving)
    perms: dict[str, np.ndarray] = {}
    fallback: list[str] = []
    iterations = 0
    if method == "weight":
        iterations = _weight_matching(factors, hier, perms, hier.roots, sizes, max_iter, seed)
    else:
        if method == "activation":
            if activations is None:
                raise InputError("activation matching needs activations of both networks (--data FILE.npz)")
            costs = _activation_costs(a, activations[0], activations[1], hier.moving, sizes)
        else:
            if embeddings is None:
                raise InputError("embedding matching needs node embeddings of both networks (--checkpoint)")
            costs = _embedding_costs(a, embeddings[0], embeddings[1], hier.moving, sizes)
        # neurons the data cannot tell apart (dead or constant ones, equal embeddings) are
        # matched by their weights' signature instead of arbitrarily
        sig = _signature_costs(factors, set(costs), sizes, cosine=True)
        costs = {g: c + TIE_BREAK * sig[g] for g, c in costs.items()}
        covered = [r for r in hier.roots if all(g in costs for g in hier.family(r) if _has_sets(a, g))]
        for r in covered:
            perms.update(hier.solve(r, costs))
        fallback = [r for r in hier.roots if r not in covered]
        iterations = _weight_matching(factors, hier, perms, fallback, sizes, max_iter, seed)
    sym = Symmetry({g: p for g, p in perms.items() if not np.array_equal(p, np.arange(len(p)))})
    sym.check(b)
    return Alignment(sym, method, weight_distance(a, b), weight_distance(a, b, sym), iterations,
                     len(hier.roots), fallback)


def _has_sets(graph: NeuralGraph, group: str) -> bool:
    return any(s.group == group for s in graph.sets.values())


def _standardize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0)
    return x / np.maximum(x.std(axis=0), 1e-8)


def _activation_costs(graph: NeuralGraph, acts_a: Mapping[str, np.ndarray], acts_b: Mapping[str, np.ndarray],
                      moving: set[str], sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Σ over the group's sets of the correlation of A's neuron i and B's neuron j."""
    costs: dict[str, np.ndarray] = {}
    for name, s in graph.sets.items():
        if s.group not in moving or name not in acts_a or name not in acts_b:
            continue
        xa, xb = _standardize(acts_a[name]), _standardize(acts_b[name])
        c = xa.T @ xb / len(xa)
        costs[s.group] = costs.get(s.group, np.zeros((sizes[s.group],) * 2)) + c
    return costs


def _embedding_costs(graph: NeuralGraph, emb_a: np.ndarray, emb_b: np.ndarray, moving: set[str],
                     sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    costs: dict[str, np.ndarray] = {}
    offsets = graph.set_offsets()
    for name, s in graph.sets.items():
        if s.group not in moving:
            continue
        rows = slice(offsets[name], offsets[name] + s.size)
        ea, eb = np.asarray(emb_a[rows], np.float64), np.asarray(emb_b[rows], np.float64)
        costs[s.group] = costs.get(s.group, np.zeros((sizes[s.group],) * 2)) + ea @ eb.T
    return costs


def node_embeddings(checkpoint, graphs: list[NeuralGraph], device: str = "auto") -> list[np.ndarray]:
    """Node embeddings ``[num_nodes, d]`` of each graph from a trained encoder checkpoint
    (equivariant: permuting a network permutes its rows)."""
    import torch

    from .featurize import FeatureConfig, featurize
    from .train import load_checkpoint
    model, meta, dev = load_checkpoint(checkpoint, device)
    features = FeatureConfig(**meta["features"])
    out = []
    with torch.no_grad():
        for g in graphs:
            h = model.encoder(featurize(g, features).to(dev))[0]
            out.append(h.cpu().numpy())
    return out


def interpolate(graphs: list[NeuralGraph], weights: list[float]) -> dict[str, np.ndarray]:
    """Σ wₖ θₖ over the source tensors of already aligned graphs (non-float tensors: the first's)."""
    if len(graphs) != len(weights):
        raise InputError(f"{len(weights)} weights for {len(graphs)} models")
    params = [g.to_params() for g in graphs]
    out = {}
    for name, first in params[0].items():
        if not is_float(first.dtype):
            out[name] = first
            continue
        acc = np.zeros(first.shape, np.float64)
        for w, p in zip(weights, params):
            acc += w * np.asarray(p[name], np.float64)
        out[name] = acc.astype(first.dtype)
    return out



__all__ = ["Alignment", "METHODS", "align", "check_compatible", "interpolate", "node_embeddings", "weight_distance"]
