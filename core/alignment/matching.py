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

from ..errors import InputError
from ..graph.ir import NeuralGraph
from ..graph.dtypes import is_float
from ..graph.fileformat import release_pages
from ..graph.materialize import block_edges
from ..graph.symmetry import Symmetry, permuted_params

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
    floating-point source element both hold: array by array (each source element is mapped
    once), B's arrays permuted one at a time and compared in float32 chunks, so neither a
    permuted copy of B nor a float32 copy of any whole array is made."""
    pa = dict(a.params())
    total = 0.0
    for key, y in (permuted_params(b, symmetry) if symmetry is not None else b.params()):
        x = pa.get(key)
        if x is None or x.origin is None or x.shared or x.shape != y.shape or not is_float(x.data.dtype):
            continue
        total += _squared_distance(x.data, y.data)
    for name, u in a.unmapped.items():       # kept outside the graph: no symmetry moves them
        v = b.unmapped.get(name)
        if u.data is not None and v is not None and v.data is not None and u.data.shape == v.data.shape \
                and is_float(u.data.dtype):
            total += _squared_distance(u.data, v.data)
    return float(np.sqrt(total))


#: Elements per float32 chunk where a whole array would otherwise be converted (16 MiB).
CHUNK = 1 << 22


def _squared_distance(x: np.ndarray, y: np.ndarray) -> float:
    """‖x − y‖² in float32 differences (0 exactly where equal), float64 sums, CHUNK elements at a
    time; memory-mapped pages are released after reading."""
    xf, yf = x.reshape(-1), y.reshape(-1)
    total = 0.0
    for i in range(0, xf.size, CHUNK):
        d = np.asarray(xf[i:i + CHUNK], np.float32) - np.asarray(yf[i:i + CHUNK], np.float32)
        total += float(np.square(d).sum(dtype=np.float64))
    release_pages(x)
    release_pages(y)
    return total


# ------------------------------------------------------------------------------ factors
@dataclass
class _Factor:
    """One parameter array of A and B with the tie group of each leading axis (``None``:
    a fixed or absent axis). Grouped-conv weights are made dense first; other arrays stay views
    in their stored dtype (bf16 too) and are read as float32 where used, so aligning two large
    models holds no float32 copy of either (a 307 M-parameter pair would need 2.5 GB)."""

    raw_a: np.ndarray
    raw_b: np.ndarray
    axes: tuple[str | None, ...]

    @property
    def a(self) -> np.ndarray:
        return _f32(self.raw_a)

    @property
    def b(self) -> np.ndarray:
        return _f32(self.raw_b)

    def release(self) -> None:
        """Drop memory-mapped pages of A and B from the resident set (read again on next use)."""
        release_pages(self.raw_a)
        release_pages(self.raw_b)


def _f32(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.float32 else np.asarray(x, np.float32)


def _dense(graph: NeuralGraph, block) -> np.ndarray:
    """A block's weight as ``[T, S, taps]`` (``[n, taps]`` for a diagonal block), a view in the
    stored dtype unless grouped (then a dense float32 array with zeros between groups)."""
    w = block.weight.data
    if block.pattern == "diagonal":
        return w.reshape(w.shape[0], -1)
    T, S = graph.sets[block.target].size, graph.sets[block.source].size
    if block.groups == 1:
        return w.reshape(T, S, -1)
    src, tgt = block_edges(graph, block)
    out = np.zeros((T, S, block.taps), np.float32)
    out[tgt, src] = np.asarray(w, np.float32).reshape(len(src), -1)
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
                out.append(_Factor(p.data.reshape(s.size, -1), q.data.reshape(s.size, -1), (g,)))
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


def _permuted_b(f: _Factor, perms: Mapping[str, np.ndarray], skip: int, part: np.ndarray | None = None,
                f32: bool = True) -> np.ndarray:
    """B's array (or ``part`` of it, cut along axis ``skip``) with every group axis except ``skip``
    put in its current order; float32 unless ``f32`` is False."""
    arr = f.raw_b if part is None else part
    for k, g in enumerate(f.axes):
        if k != skip and g is not None and g in perms:
            arr = np.take(arr, perms[g], axis=k)
    return _f32(arr) if f32 else arr


def _axis_gram(f: _Factor, k: int, b: np.ndarray) -> np.ndarray:
    """Σ over every axis but ``k`` of A·B: ``[n, n]`` inner products of A's slices i and B's
    slices j along axis k, without moving axis k to the front (BLAS reads the transpose)."""
    a = f.a
    if k == 0:
        return a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1).T
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 1):          # [T, S(, 1)]: Aᵀ B
        a2, b2 = a.reshape(a.shape[0], a.shape[1]), b.reshape(b.shape[0], b.shape[1])
        return a2.T @ b2
    return np.tensordot(a, b, axes=([i for i in range(a.ndim) if i != k], [i for i in range(b.ndim) if i != k]))


def _axis_norms(x: np.ndarray, k: int) -> np.ndarray:
    """Squared norm of every slice along axis ``k`` (unchanged by permuting the other axes), read
    as float32 a few slices at a time (each slice's sum is the same as over the whole array)."""
    other = tuple(i for i in range(x.ndim) if i != k)
    if not other:
        return np.square(_f32(x), dtype=np.float64)
    return np.concatenate([np.square(_f32(part)).sum(axis=other, dtype=np.float64)
                           for part in _chunks(x, k)])


def _chunks(x: np.ndarray, k: int):
    """Views of ``x`` cut along axis ``k`` into pieces of about CHUNK elements (stored dtype)."""
    n = x.shape[k]
    step = max(1, CHUNK // max(1, x.size // max(n, 1)))
    for r in range(0, n, step):
        yield x[(slice(None),) * k + (slice(r, r + step),)]


class _Norms:
    """Per (factor, axis) squared slice norms of A and B, computed once per alignment."""

    def __init__(self):
        self.cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def get(self, i: int, f: _Factor, k: int) -> tuple[np.ndarray, np.ndarray]:
        if (i, k) not in self.cache:
            self.cache[(i, k)] = (_axis_norms(f.raw_a, k), _axis_norms(f.raw_b, k))
        return self.cache[(i, k)]


def _linear_costs(factors: list[_Factor], perms: Mapping[str, np.ndarray], groups: set[str],
                  sizes: Mapping[str, int], norms: _Norms | None = None) -> dict[str, np.ndarray]:
    """``C[g][i, j]`` = −½‖A's slice i − B's slice j‖² summed over the arrays on g's axis, the
    other axes of B already permuted. Over perfect matchings this differs from the inner product
    ⟨A_i, B_j⟩ by a constant (same optimum), but each row's maximum is its nearest neighbour,
    so a clear match needs no assignment solver (see :func:`_lap`)."""
    norms = norms or _Norms()
    costs = {g: np.zeros((sizes[g], sizes[g])) for g in groups}
    for i, f in enumerate(factors):
        for k, g in enumerate(f.axes):
            if g not in groups:
                continue
            na, nb = norms.get(i, f, k)
            c = _axis_gram(f, k, _permuted_b(f, perms, k))
            costs[g] += c
            costs[g] -= 0.5 * (na[:, None] + nb[None, :])
            f.release()
    return costs


#: Sorted rows longer than SIG_EXACT (or than SIG_BINS in groups of ≥ PRUNE_N neurons) are
#: compared by the means of SIG_BINS equal bins of their sorted values (scaled so squared distances keep the exact rows' scale): the signature
#: matrix product then costs n²·SIG_BINS instead of n²·m, and identical rows stay identical.
SIG_EXACT = 4096
SIG_BINS = 256


def _sketch_width(n: int, m: int) -> int:
    """Columns of the signature of n rows of length m (see :func:`_sorted_sketch`)."""
    return m if m <= SIG_BINS or (m <= SIG_EXACT and n < PRUNE_N) else SIG_BINS


def _sorted_sketch(x: np.ndarray, n: int | None = None) -> np.ndarray:
    """Each row's sorted values, binned to SIG_BINS (a permutation-invariant signature) when
    rows are long or the group (``n`` neurons, default: the rows of ``x``) is large (the
    product costs n²·m)."""
    s = np.sort(x, axis=1)
    m = s.shape[1]
    if _sketch_width(len(s) if n is None else n, m) == m:
        return s
    edges = np.linspace(0, m, SIG_BINS + 1).round().astype(np.int64)
    widths = np.diff(edges).astype(np.float32)
    return np.add.reduceat(s, edges[:-1], axis=1) / widths * np.sqrt(widths)


def _slice_sketch(x: np.ndarray, k: int, out: np.ndarray | None = None, n: int | None = None) -> np.ndarray:
    """``_sorted_sketch`` of the slices of ``x`` along axis ``k``, read as float32 a few slices at
    a time (rows are sorted and binned independently: the result is the same), into ``out``;
    ``n``: the group's size when ``x`` holds only some of its slices."""
    n = x.shape[k] if n is None else n
    if out is None:
        out = np.empty((n, _sketch_width(n, x.size // max(n, 1))), np.float32)
    r = 0
    for part in _chunks(x, k):
        rows = _slices(_f32(part), k)
        out[r:r + len(rows)] = _sorted_sketch(rows, n)
        r += len(rows)
    return out


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
            xa, xb = _slice_sketch(f.raw_a, k), _slice_sketch(f.raw_b, k)
            costs[g] += xa @ xb.T
            norms[g][0][:] += np.einsum("ij,ij->i", xa, xa, dtype=np.float64)
            norms[g][1][:] += np.einsum("ij,ij->i", xb, xb, dtype=np.float64)
        f.release()
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
        self.fixed = graph.fixed_groups()
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
            else:     # n² alike assignment problems, batched: those whose row maxima are
                # distinct columns are solved by the argmax at once, the rest one by one
                within = blocks.argmax(axis=3)                                     # [a, b, i]
                clear = (np.diff(np.sort(within, axis=2), axis=2) != 0).all(axis=2)
                value = np.take_along_axis(blocks, within[..., None], axis=3)[..., 0].sum(axis=2)
                todo = ~clear & (np.eye(n, dtype=bool) if pinned else True)
                for a, b_ in zip(*np.nonzero(todo)):
                    p = _lap(blocks[a, b_])
                    within[a, b_] = p
                    value[a, b_] = blocks[a, b_][np.arange(bs), p].sum()
                if pinned:
                    value = np.where(np.eye(n, dtype=bool), value, 0.0)
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


#: Roots that are one group (no heads inside) of at least PRUNE_N neurons are solved over
#: candidate partners only: each neuron's current partner, its CANDIDATES nearest by signature
#: and its CANDIDATES nearest by a random projection of the linear cost (SKETCH_DIM columns in
#: all, shared out among the arrays on the group's axis by size).
#: Exact costs are then computed for those pairs only (≈ 2·CANDIDATES/n of the full n²·m
#: product) and the assignment is a sparse one. The current partner keeps the step monotone.
PRUNE_N = 1024
CANDIDATES = 16
SKETCH_DIM = 128


def _prunable(hier: "_Hierarchy", root: str, sizes: Mapping[str, int]) -> bool:
    return sizes[root] >= PRUNE_N and hier.family(root) == [root] and root in hier.moving


def _top_k(m: np.ndarray, k: int) -> np.ndarray:
    """Each row's k largest columns (in no order), a few rows at a time: rows are partitioned
    independently, and an [n, n] int64 index array (254 MB for 5632 neurons) is never made."""
    k = min(k, m.shape[1])
    out = np.empty((m.shape[0], k), np.int64)
    step = max(1, CHUNK // max(1, m.shape[1]))
    for r in range(0, m.shape[0], step):
        out[r:r + step] = np.argpartition(-m[r:r + step], k - 1, axis=1)[:, :k]
    return out


def _candidate_pairs(n: int, *cands: np.ndarray, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deduplicated (row, col) pairs, row-major, from [rows, k] candidate column arrays (or one
    column per row) of the rows ``first …`` of an n-column problem."""
    m = len(cands[0])
    mask = np.zeros((m, n), bool)
    rows = np.arange(m)
    for c in cands:
        mask[rows[:, None] if c.ndim == 2 else rows, c] = True
    r, c = np.nonzero(mask)
    return r + first, c


def _pair_lookup(n: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, perm: np.ndarray) -> float:
    keys = rows.astype(np.int64) * n + cols
    pos = np.searchsorted(keys, np.arange(n, dtype=np.int64) * n + perm)
    return float(vals[pos].sum())


def _sparse_lap(n: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Maximum-weight perfect matching over the given pairs (they must contain one)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching
    best = np.full(n, -np.inf)
    np.maximum.at(best, rows, vals)
    arg = np.empty(n, np.int64)
    hit = vals == best[rows]
    arg[rows[hit][::-1]] = cols[hit][::-1]
    if len(np.unique(arg)) == n:                 # every row's best partner distinct: optimal as is
        return arg
    w = csr_matrix((vals - vals.min() + 1.0, (rows, cols)), shape=(n, n))   # no zero weights
    _, col = min_weight_full_bipartite_matching(w, maximize=True)
    return col.astype(np.int64)


#: Signature features of A's neurons held at once by :func:`_signature_candidates` (floats,
#: 128 MiB): B's are all needed, A's are built for a block of rows at a time.
SIG_ROWS_BUDGET = 1 << 25


def _signature_features(on, widths, rows: slice, n: int, side: str) -> np.ndarray:
    """Signature features ``[rows, Σ widths]`` of A's or B's neurons ``rows``, filled in place
    (no list of parts next to their concatenation); mapped pages released after each array."""
    count = len(range(n)[rows])
    out = np.empty((count, sum(widths)), np.float32)
    at = 0
    for (f, k), w in zip(on, widths):
        x = f.raw_a if side == "a" else f.raw_b
        _slice_sketch(x[(slice(None),) * k + (rows,)], k, out[:, at:at + w], n)
        release_pages(x)
        at += w
    return out


def _signature_candidates(factors: list[_Factor], g: str, n: int):
    """For a large group: each neuron's CANDIDATES nearest B neurons by signature (the binned
    sorted slices of every array on the group's axis, concatenated) and the signature value
    −½‖a − b‖² of those pairs and of the identity pairs. Memory: B's features ``[n, features]``
    and A's for a block of rows (SIG_ROWS_BUDGET), never n² or all pairs' features at once."""
    on = [(f, k) for f in factors for k, ax in enumerate(f.axes) if ax == g]
    widths = [_sketch_width(n, f.raw_a.size // n) for f, _ in on]
    fb = _signature_features(on, widths, slice(None), n, "b")
    nb = np.einsum("ij,ij->i", fb, fb, dtype=np.float64)
    top = np.empty((n, min(CANDIDATES, n)), np.int64)
    chunk = max(1, (1 << 24) // n)
    block = max(1, min(chunk, SIG_ROWS_BUDGET // max(1, fb.shape[1])))
    rows, cols, vals = [], [], []
    step = max(1, CHUNK // fb.shape[1])        # pairs per chunk: 16 MiB per gathered [pairs, features]
    for r in range(0, n, block):               # A's neurons r … r + block
        fa = _signature_features(on, widths, slice(r, r + block), n, "a")
        top[r:r + block] = _top_k(fa @ fb.T - 0.5 * nb[None, :].astype(np.float32), CANDIDATES)
        rr, cc = _candidate_pairs(n, np.arange(r, r + len(fa)), top[r:r + block], first=r)
        vv = np.empty(len(rr))
        for a in range(0, len(rr), step):
            d = fa[rr[a:a + step] - r] - fb[cc[a:a + step]]
            vv[a:a + step] = -0.5 * np.einsum("ij,ij->i", d, d, dtype=np.float64)
        rows.append(rr), cols.append(cc), vals.append(vv)
        del fa
    return top, np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def _slices(x: np.ndarray, k: int) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, k, 0)).reshape(x.shape[k], -1)


def _project(parts, k: int, proj: np.ndarray) -> np.ndarray:
    """The slices along axis ``k`` of an array given as ``parts`` (pieces cut along axis k, any
    float dtype, read as float32 one at a time) times ``proj`` (``[m, d]``), without moving axis k
    to the front where the layout allows (``Aᵀ·P`` for the columns of a matrix)."""
    out = []
    for x in parts:
        x = _f32(x)
        if k == 0:
            out.append(x.reshape(x.shape[0], -1) @ proj)
        elif k == 1 and (x.ndim == 2 or (x.ndim == 3 and x.shape[2] == 1)):
            out.append(x.reshape(x.shape[0], x.shape[1]).T @ proj)
        else:
            out.append(_slices(x, k) @ proj)
    return np.concatenate(out)


def _permuted_slices(f: _Factor, perms: Mapping[str, np.ndarray], k: int) -> np.ndarray:
    """B's slices along axis ``k`` (``[n, m]``, stored dtype), the other axes in their current
    order, built piece by piece: one copy of the array in its stored dtype, no float32 one."""
    n = f.raw_b.shape[k]
    out = np.empty((n, f.raw_b.size // max(n, 1)), f.raw_b.dtype)
    r = 0
    for part in _chunks(f.raw_b, k):
        rows = _slices(_permuted_b(f, perms, k, part, f32=False), k)
        out[r:r + len(rows)] = rows
        r += len(rows)
    return out


def _pruned_step(factors: list[_Factor], perms: Mapping[str, np.ndarray], g: str, n: int,
                 hint: np.ndarray | None, norms: _Norms, rng: np.random.Generator):
    """One coordinate step for a large single group over candidate pairs; returns the new
    permutation, its value and the current one's (both exact over the same pairs)."""
    on = [(i, f, k) for i, f in enumerate(factors) for k, ax in enumerate(f.axes) if ax == g]
    current = perms.get(g, np.arange(n))
    # random projections of every array's slices, SKETCH_DIM columns shared out by size
    total = sum(f.raw_a.size for _, f, _ in on)
    pa, pb, norm = [], [], np.zeros(n)
    for i, f, k in on:
        dim = max(2, int(round(SKETCH_DIM * f.raw_a.size / total)))
        m = f.raw_a.size // n
        proj = rng.standard_normal((m, dim)).astype(np.float32) / np.float32(np.sqrt(dim))
        pa.append(_project(_chunks(f.raw_a, k), k, proj))
        pb.append(_project((_permuted_b(f, perms, k, part, f32=False) for part in _chunks(f.raw_b, k)), k, proj))
        norm += norms.get(i, f, k)[1]
        f.release()
    sketch = np.concatenate(pa, axis=1) @ np.concatenate(pb, axis=1).T
    sketch -= (0.5 * norm[None, :]).astype(np.float32)       # row constants do not change a row's order
    cands = [current, _top_k(sketch, CANDIDATES)] + ([hint] if hint is not None else [])
    del sketch, pa, pb
    rows, cols = _candidate_pairs(n, *cands)
    starts = np.searchsorted(rows, np.arange(n))
    slot = np.arange(len(rows)) - starts[rows]
    padded = np.repeat(cols[starts][:, None], int(slot.max()) + 1, axis=1)   # [n, K]: each row's candidates
    padded[rows, slot] = cols
    vals = np.zeros(len(rows))
    K = padded.shape[1]
    chunk = max(1, (1 << 24) // max(1, K * max(f.raw_a.size // n for _, f, _ in on)))
    for i, f, k in on:       # slices in the stored dtype (bf16: half of float32), read as float32 per chunk
        xa, xb = _slices(f.raw_a, k), _permuted_slices(f, perms, k)
        na, nb = norms.get(i, f, k)
        pv = np.empty((n, K))
        for a in range(0, n, chunk):         # A's rows read once, B's candidate rows gathered
            pv[a:a + chunk] = np.matmul(_f32(xb[padded[a:a + chunk]]), _f32(xa[a:a + chunk])[:, :, None])[..., 0]
        vals += pv[rows, slot] - 0.5 * (na[rows] + nb[cols])
        del xa, xb
        f.release()
    new = _sparse_lap(n, rows, cols, vals)
    return new, _pair_lookup(n, rows, cols, vals, new), _pair_lookup(n, rows, cols, vals, current)


def _weight_matching(factors: list[_Factor], hier: _Hierarchy, perms: dict[str, np.ndarray], roots: list[str],
                     sizes: Mapping[str, int], max_iter: int, seed: int, init: bool = True) -> int:
    """Coordinate descent over ``roots`` (updates ``perms`` in place); returns the rounds run.
    A root is solved again only when a root it shares a parameter array with has moved since
    (its costs depend on nothing else), so a converged or exactly matched model costs one round."""
    if not roots:
        return 0
    norms = _Norms()
    family = {r: set(hier.family(r)) & hier.moving for r in roots}
    touching = {r: {i for i, f in enumerate(factors) if family[r] & set(f.axes)} for r in roots}
    neighbours = {r: {q for q in roots if q != r and touching[r] & touching[q]} for r in roots}
    hints: dict[str, np.ndarray] = {}
    if init:
        big = [r for r in roots if _prunable(hier, r, sizes)]
        for r in big:      # signature features, never an n×n matrix per group (22 of them for TinyLlama)
            hints[r], rows, cols, vals = _signature_candidates(factors, r, sizes[r])
            perms[r] = _sparse_lap(sizes[r], rows, cols, vals)
        small = [r for r in roots if r not in big]
        sig = _signature_costs(factors, {d for r in small for d in hier.family(r)} & hier.moving, sizes)
        for r in small:
            perms.update(hier.solve(r, sig))
        del sig
    rng = np.random.default_rng(seed)
    dirty = set(roots)
    rounds = 0
    for rounds in range(1, max_iter + 1):
        for r in rng.permutation(roots):
            if r not in dirty:
                continue
            dirty.discard(r)
            if _prunable(hier, r, sizes):
                p, after, before = _pruned_step(factors, perms, r, sizes[r], hints.get(r), norms, rng)
                new = {r: p}
            else:
                costs = _linear_costs(factors, perms, family[r], sizes, norms)
                new = hier.solve(r, costs)
                old = {g: perms.get(g, np.arange(sizes[g])) for g in new}
                before, after = _value(costs, old), _value(costs, new)
            # linear in this family's permutations (others held): the assignment cannot lose,
            # so accept it only when it strictly gains (no cycling between equal optima)
            if after > before + 1e-9 * max(1.0, abs(before)):
                perms.update(new)
                dirty |= neighbours[r]
        if not dirty:
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


def node_embeddings(checkpoint, graphs: list[NeuralGraph], device: str = "auto", paths: list | None = None
                    ) -> list[np.ndarray]:
    """Node embeddings ``[num_nodes, d]`` of each graph from a trained encoder checkpoint
    (equivariant: permuting a network permutes its rows). A checkpoint trained with probe features
    probes the model files ``paths`` (one per graph) as training did; without them it is refused. The
    probe values are taken off the graphs again (alignment itself reads only parameters)."""
    import torch

    from ..learn.featurize import FeatureConfig, featurize
    from ..learn.checkpoint import load_checkpoint
    from ..learn.probes import PROBE, attach_all
    model, meta, dev = load_checkpoint(checkpoint, device)
    features = FeatureConfig(**meta["features"])
    bare = [g for g in graphs if not any(PROBE in s.arrays for s in g.sets.values())]
    out = []
    try:
        attach_all(graphs, paths, features.probes, inputs=features.probe_inputs)
        with torch.no_grad():
            for g in graphs:
                h = model.encoder(featurize(g, features).to(dev))[0]
                out.append(h.cpu().numpy())
    finally:
        for g in bare:
            for s in g.sets.values():
                s.arrays.pop(PROBE, None)
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
