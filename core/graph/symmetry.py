"""Permutation symmetries of a neural graph: enumerate, draw at random, apply.

A :class:`Symmetry` holds one index array per tie group, in *gather* convention: after
permuting, neuron ``i`` of every set in group ``g`` is the old neuron ``perms[g][i]``. Applying
it to the graph and rebuilding the source parameters gives exactly the parameters of the
permuted network, which computes the same function — ``ngraph verify`` checks this end to end.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..errors import GraphError

if TYPE_CHECKING:      # the IR calls into this module (NeuralGraph.permute); nothing here needs its classes at run time
    from .ir import EdgeBlock, NeuralGraph


@dataclass(frozen=True)
class SymmetryGroup:
    name: str
    size: int
    fixed: bool
    parent: str | None
    sets: tuple[str, ...]


@dataclass
class Symmetry:
    """One permutation per tie group (groups left out are not moved)."""

    perms: dict[str, np.ndarray] = field(default_factory=dict)

    def perm(self, group: str, size: int) -> np.ndarray:
        p = self.perms.get(group)
        return np.arange(size) if p is None else p

    def is_identity(self) -> bool:
        return all(np.array_equal(p, np.arange(len(p))) for p in self.perms.values())

    def inverse(self) -> "Symmetry":
        return Symmetry({g: np.argsort(p) for g, p in self.perms.items()})

    def check(self, graph: NeuralGraph) -> None:
        """Raise :class:`GraphError` unless this is a symmetry the graph admits."""
        fixed = graph.fixed_groups()
        for name, p in self.perms.items():
            g = graph.groups.get(name)
            if g is None:
                raise GraphError(f"symmetry permutes unknown tie group {name!r}")
            p = np.asarray(p)
            if p.shape != (g.size,) or not np.array_equal(np.sort(p), np.arange(g.size)):
                raise GraphError(f"symmetry of group {name!r} is not a permutation of {g.size}")
            if name in fixed and not np.array_equal(p, np.arange(g.size)):
                raise GraphError(f"symmetry moves fixed group {name!r}")
            if g.parent is not None:
                pp = self.perm(g.parent, graph.groups[g.parent].size)
                bs = g.size // len(pp)
                if not np.array_equal(p.reshape(len(pp), bs) // bs, np.repeat(pp[:, None], bs, 1)):
                    raise GraphError(f"symmetry of group {name!r} does not move its blocks with parent {g.parent!r}")
                if g.rigid and not np.array_equal(p.reshape(len(pp), bs) % bs, np.tile(np.arange(bs), (len(pp), 1))):
                    raise GraphError(f"symmetry permutes inside the rigid blocks of group {name!r}")
            elif g.rigid and not np.array_equal(p, np.arange(g.size)):
                raise GraphError(f"symmetry moves rigid group {name!r}")

    def to_json(self) -> dict[str, list[int]]:
        return {g: [int(i) for i in p] for g, p in self.perms.items()}

    @classmethod
    def from_json(cls, doc: dict[str, list[int]]) -> "Symmetry":
        return cls({g: np.asarray(p, dtype=np.int64) for g, p in doc.items()})


def _parents_first(graph: NeuralGraph) -> list[str]:
    order, seen = [], set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        parent = graph.groups[name].parent
        if parent is not None:
            visit(parent)
        order.append(name)

    for name in graph.groups:
        visit(name)
    return order


def symmetry_groups(graph: NeuralGraph) -> list[SymmetryGroup]:
    fixed = graph.fixed_groups()
    members: dict[str, list[str]] = {g: [] for g in graph.groups}
    for s in graph.sets.values():
        members[s.group].append(s.name)
    return [SymmetryGroup(g.name, g.size, g.name in fixed, g.parent, tuple(members[g.name]))
            for g in graph.groups.values()]


def random_symmetry(graph: NeuralGraph, seed: int | None = None) -> Symmetry:
    """A uniformly random element of the graph's permutation group."""
    rng = np.random.default_rng(seed)
    fixed = graph.fixed_groups()
    perms: dict[str, np.ndarray] = {}
    for name in _parents_first(graph):
        g = graph.groups[name]
        if name in fixed:  # its ancestors are fixed too, so identity is the only choice
            continue
        if g.parent is None:
            perms[name] = rng.permutation(g.size)
        else:
            pp = perms.get(g.parent, np.arange(graph.groups[g.parent].size))
            bs = g.size // len(pp)
            within = np.tile(np.arange(bs), (len(pp), 1))
            if not g.rigid:
                within = rng.permuted(within, axis=1)
            perms[name] = (pp[:, None] * bs + within).reshape(-1)
    return Symmetry(perms)


def permute(graph: NeuralGraph, symmetry: Symmetry) -> NeuralGraph:
    """A new graph with every array permuted by ``symmetry``; structure and origins unchanged."""
    symmetry.check(graph)
    out = type(graph)(copy.deepcopy(graph.meta))
    out.groups = copy.deepcopy(graph.groups)
    out.sources = dict(graph.sources)
    out.unmapped = dict(graph.unmapped)

    def perm_of(set_name: str) -> np.ndarray:
        s = graph.sets[set_name]
        return symmetry.perm(s.group, s.size)

    for s in graph.sets.values():
        p = perm_of(s.name)
        t = copy.copy(s)
        t.attrs = dict(s.attrs)
        t.arrays = {k: replace(a, data=np.take(a.data, p, axis=0)) for k, a in s.arrays.items()}
        out.sets[s.name] = t
    for b in graph.blocks:
        w = None
        if b.weight is not None:
            w = replace(b.weight, data=_permute_weight(b, b.weight.data, perm_of(b.source), perm_of(b.target)))
        out.blocks.append(replace(b, weight=w, attrs=dict(b.attrs)))
    return out


def permuted_params(graph: NeuralGraph, symmetry: Symmetry):
    """``(key, Param)`` of every array of ``permute(graph, symmetry)``, in :meth:`NeuralGraph.params`
    order, permuted one at a time as they are consumed: comparing a permuted model array by array
    then holds one permuted array, not a copy of the whole model."""
    symmetry.check(graph)
    keys = (key for key, _ in graph.params())

    def perm_of(set_name: str) -> np.ndarray:
        s = graph.sets[set_name]
        return symmetry.perm(s.group, s.size)

    for s in graph.sets.values():
        p = perm_of(s.name)
        for a in s.arrays.values():
            yield next(keys), replace(a, data=np.take(a.data, p, axis=0))
    for b in graph.blocks:
        if b.weight is not None:
            yield next(keys), replace(b.weight, data=_permute_weight(b, b.weight.data, perm_of(b.source),
                                                                     perm_of(b.target)))


def _permute_weight(block: EdgeBlock, w: np.ndarray, ps: np.ndarray, pt: np.ndarray) -> np.ndarray:
    if block.pattern == "diagonal":
        return np.take(w, pt, axis=0)
    if block.pattern == "opaque":      # between fixed sets: nothing moves
        return w
    k = block.groups
    if k == 1:
        return np.take(np.take(w, pt, axis=0), ps, axis=1)
    tpg, spg = len(pt) // k, len(ps) // k
    rows = np.take(w, pt, axis=0)                                  # [T, S/k, *kernel]
    new_src = (np.arange(len(pt))[:, None] // tpg) * spg + np.arange(spg)[None, :]
    old_local = ps[new_src] - (pt[:, None] // tpg) * spg          # [T, S/k]
    idx = old_local.reshape(old_local.shape + (1,) * (w.ndim - 2))
    return np.take_along_axis(rows, np.broadcast_to(idx, rows.shape), axis=1)
