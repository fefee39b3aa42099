"""The neural-graph IR: neuron sets, edge blocks, tie groups and parameter accounting.

A graph never holds one Python object per neuron or edge. A :class:`NeuronSet` is a run of
neurons that play one role at one depth (a layer's outputs, one head's queries, a network's
inputs); an :class:`EdgeBlock` is the connection between two sets, carrying one parameter
tensor in the canonical layout ``[target, source / groups, *kernel]`` (``[n, *kernel]`` for
diagonal kinds). Permutation symmetry is expressed by :class:`TieGroup`: every set in a group
is permuted by the same permutation, fixed groups (network inputs and outputs) not at all, and
a group with a ``parent`` is permuted block-wise — its blocks move with the parent's
permutation (attention heads, conv groups) and are permuted freely inside.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..errors import GraphError
from .dtypes import numpy_dtype
from .origin import Origin
from .symmetry import Symmetry, SymmetryGroup, permute, random_symmetry, symmetry_groups
from .vocab import ACTIVATIONS, KINDS, ROLES, kind_pattern


@dataclass
class Param:
    """An array stored in the graph and the source tensor it came from (if any).

    ``shared``: the same source elements are also mapped by another array (a weight reused
    across time steps or layers); the graph's ties keep the two equal under every symmetry,
    and the first array is the one that writes the source back."""

    data: np.ndarray
    origin: Origin | None = None
    shared: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def size(self) -> int:
        return int(self.data.size)


@dataclass
class TieGroup:
    """Sets that must share one permutation. ``size`` neurons each.

    With a ``parent`` group of size P, the ``size`` neurons form P contiguous blocks of
    ``size // P``; a symmetry moves block b to the position the parent's permutation moves
    b to, and permutes within each block freely — unless ``rigid``, when positions inside a
    block carry meaning (rotary position embeddings pair and rotate fixed head dimensions).
    """

    name: str
    size: int
    fixed: bool = False
    parent: str | None = None
    rigid: bool = False      # with a parent: blocks move with the parent, nothing moves inside a block


@dataclass
class NeuronSet:
    name: str
    size: int
    role: str = "hidden"
    depth: int = 0
    group: str = ""
    activation: str | None = None
    arrays: dict[str, Param] = field(default_factory=dict)   # per-neuron: bias, norm scale …
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class EdgeBlock:
    name: str
    source: str
    target: str
    kind: str
    weight: Param | None = None
    attrs: dict[str, Any] = field(default_factory=dict)       # stride, dilation, pads, groups …

    @property
    def pattern(self) -> str:
        return kind_pattern(self.kind)

    @property
    def groups(self) -> int:
        return int(self.attrs.get("groups", 1))

    @property
    def taps(self) -> int:
        """Length of each edge's feature vector (kernel taps, spatial positions, or 1)."""
        if self.weight is None:
            return 1
        if self.pattern == "opaque":
            return 1
        skip = 2 if self.pattern == "full" else 1
        return int(np.prod(self.weight.shape[skip:], dtype=np.int64))


@dataclass
class SourceTensor:
    """Shape and dtype of one tensor of the source model, for accounting and rebuilding."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class Unmapped:
    """A source tensor that has no place in the graph, kept so that nothing is silently lost."""

    reason: str
    data: np.ndarray | None = None


class NeuralGraph:
    """A network as neuron sets and edge blocks. See the module docstring."""

    def __init__(self, meta: dict[str, Any] | None = None):
        self.sets: dict[str, NeuronSet] = {}
        self.blocks: list[EdgeBlock] = []
        self.groups: dict[str, TieGroup] = {}
        self.sources: dict[str, SourceTensor] = {}
        self.unmapped: dict[str, Unmapped] = {}
        self.meta: dict[str, Any] = dict(meta or {})
        #: The source tensors, when every array with an origin is still a view of them (set by
        #: adapters and by ``load``; cleared by anything that replaces arrays). Lets ``save``
        #: write each weight once, in its source layout, without rebuilding it.
        self.leaves: dict[str, np.ndarray] | None = None

    # ---------------------------------------------------------------- building
    def add_source(self, name: str, shape, dtype) -> None:
        self.sources[name] = SourceTensor(tuple(int(s) for s in shape), str(np.dtype(dtype)))

    def add_set(self, name: str, size: int, role: str = "hidden", *, depth: int = 0,
                activation: str | None = None, fixed: bool = False, tie: str | None = None,
                parent: str | None = None, **attrs: Any) -> NeuronSet:
        """Add a neuron set in its own tie group, or in ``tie``'s group (a set or group name)."""
        if name in self.sets:
            raise GraphError(f"duplicate neuron set {name!r}")
        if tie is not None:
            group = self.sets[tie].group if tie in self.sets else tie
            if group not in self.groups:
                raise GraphError(f"cannot tie {name!r} to unknown set or group {tie!r}")
        else:
            group = name
            while group in self.groups:
                group += "'"
            self.groups[group] = TieGroup(group, int(size), fixed, parent)
        s = NeuronSet(name, int(size), role, depth, group, activation, {}, dict(attrs))
        self.sets[name] = s
        if tie is not None and fixed:
            self.groups[group].fixed = True
        return s

    def add_group(self, name: str, size: int, *, fixed: bool = False, parent: str | None = None) -> TieGroup:
        """A tie group with no set yet (e.g. the heads of an attention layer as a parent)."""
        if name in self.groups:
            raise GraphError(f"duplicate tie group {name!r}")
        g = self.groups[name] = TieGroup(name, int(size), fixed, parent)
        return g

    def add_block(self, name: str, source: str, target: str, kind: str,
                  weight: Param | np.ndarray | None = None, **attrs: Any) -> EdgeBlock:
        if isinstance(weight, np.ndarray):
            weight = Param(weight)
        b = EdgeBlock(name, source, target, kind, weight, dict(attrs))
        self.blocks.append(b)
        return b

    def tie(self, a: str, b: str) -> str:
        """Merge the tie groups of sets (or groups) ``a`` and ``b``; returns the surviving group."""
        ga = self.sets[a].group if a in self.sets else a
        gb = self.sets[b].group if b in self.sets else b
        if ga == gb:
            return ga
        A, B = self.groups[ga], self.groups[gb]
        if A.size != B.size:
            raise GraphError(f"cannot tie {a!r} ({A.size} neurons) to {b!r} ({B.size} neurons)")
        if A.parent and B.parent and A.parent != B.parent:
            if self.groups[A.parent].size != self.groups[B.parent].size:
                raise GraphError(f"cannot tie {a!r} and {b!r}: they are split into {self.groups[A.parent].size} "
                                 f"and {self.groups[B.parent].size} blocks")
            self.tie(A.parent, B.parent)   # one permutation for both means one for their blocks too
            ga, gb = (self.sets[a].group if a in self.sets else a), (self.sets[b].group if b in self.sets else b)
            A, B = self.groups[ga], self.groups[gb]
        A.fixed = A.fixed or B.fixed
        A.rigid = A.rigid or B.rigid
        A.parent = A.parent or B.parent
        for s in self.sets.values():
            if s.group == gb:
                s.group = ga
        for g in self.groups.values():
            if g.parent == gb:
                g.parent = ga
        del self.groups[gb]
        return ga

    def ancestor(self, group: str, size: int) -> str | None:
        """The nearest ancestor group of ``group`` (itself excluded) with ``size`` members."""
        parent = self.groups[group].parent
        while parent is not None:
            if self.groups[parent].size == size:
                return parent
            parent = self.groups[parent].parent
        return None

    def partition(self, set_name: str, k: int, new_name=None) -> str:
        """The tie group of ``k`` blocks that ``set_name``'s group is partitioned into, created or
        spliced into its chain of parents as needed: grouped convolutions and attention heads move
        their channels block-wise. ``new_name(base)`` names a group that has to be created (default:
        ``base``, made unique). Raises :class:`GraphError` when the sizes do not divide or the
        blocks would not nest with an existing partition."""
        group = self.groups[self.sets[set_name].group]
        if k < 1 or group.size % k:
            raise GraphError(f"{group.size} neurons of {set_name!r} cannot form {k} blocks")
        child = group
        while True:
            parent = self.groups.get(child.parent) if child.parent else None
            if parent is not None and parent.size == k:
                return parent.name
            if parent is not None and parent.size % k == 0 and parent.size > k:
                child = parent                     # coarser blocks further up the chain
                continue
            if parent is None or k % parent.size == 0:      # new root, or finer than the parent: splice in
                base = f"{set_name}/{k}blocks"
                if new_name is not None:
                    name = new_name(base)
                else:
                    name, i = base, 1
                    while name in self.groups:
                        i += 1
                        name = f"{base}#{i}"
                new = self.add_group(name, k, parent=parent.name if parent is not None else None)
                # spliced between a rigid group and the parent it was rigid in: the new blocks lie inside
                # that parent's blocks, where nothing may move (a rotated 2-head view, then 6 heads). A new
                # root above a rigid root is not rigid: such roots are the query slots split_slots makes,
                # partitioned next; a genuinely immovable set is fixed instead (keep_head_dims, one head)
                new.rigid = child.rigid and parent is not None
                child.parent = name
                return name
            raise GraphError(f"{set_name!r} would need both {parent.size} and {k} channel blocks; "
                             "their symmetries do not nest")

    def fix(self, name: str) -> None:
        self.groups[self.sets[name].group if name in self.sets else name].fixed = True

    def fixed_groups(self) -> set[str]:
        """Groups no symmetry moves: fixed ones, rigid roots, and every ancestor of a fixed
        group (moving a parent would move its child's blocks)."""
        fixed = {g.name for g in self.groups.values() if g.fixed or (g.rigid and g.parent is None)}
        for name in list(fixed):
            parent = self.groups[name].parent
            while parent is not None and parent not in fixed:
                fixed.add(parent)
                parent = self.groups[parent].parent
        return fixed

    @property
    def free_fraction(self) -> float:
        """Share of the hidden neurons that some symmetry can move: what pinning costs, 1.0 when
        nothing is pinned beyond the network's ends. Hidden: every set not tied to an input or
        output set (a tied copy, such as an output before its bias, is the same neurons)."""
        fixed = self.fixed_groups()
        ends = {s.group for s in self.sets.values() if s.role in ("input", "output") or s.attrs.get("network_output")}
        total = free = 0
        for s in self.sets.values():
            if s.group in ends:
                continue
            total += s.size
            g = self.groups[s.group]
            if g.name not in fixed and not (g.rigid and g.parent in fixed):
                free += s.size
        return 1.0 if total == 0 else free / total

    # ---------------------------------------------------------------- views
    def params(self) -> Iterator[tuple[str, Param]]:
        """Every array the graph stores, with a stable location key."""
        for s in self.sets.values():
            for key, p in s.arrays.items():
                yield f"set:{s.name}:{key}", p
        for i, b in enumerate(self.blocks):
            if b.weight is not None:
                yield f"block:{i}:{b.name}", b.weight

    def set_offsets(self) -> dict[str, int]:
        offsets, n = {}, 0
        for s in self.sets.values():
            offsets[s.name] = n
            n += s.size
        return offsets

    @property
    def num_nodes(self) -> int:
        return sum(s.size for s in self.sets.values())

    def edge_count(self, block: EdgeBlock) -> int:
        """How many edges a block has: T·S/groups (full), none (opaque: connectivity unknown), else S."""
        if block.pattern == "opaque":
            return 0
        S, T = self.sets[block.source].size, self.sets[block.target].size
        return T * (S // block.groups) if block.pattern == "full" else S

    @property
    def num_edges(self) -> int:
        return sum(self.edge_count(b) for b in self.blocks)

    @property
    def num_parameters(self) -> int:
        return sum(t.size for t in self.sources.values())

    @property
    def mapped_parameters(self) -> int:
        return sum(p.size for _, p in self.params() if p.origin is not None and not p.shared)

    @property
    def coverage(self) -> float:
        total = self.num_parameters
        return 1.0 if total == 0 else self.mapped_parameters / total

    def summary(self) -> dict[str, Any]:
        return {
            "nodes": self.num_nodes, "edges": self.num_edges, "sets": len(self.sets),
            "blocks": len(self.blocks), "parameters": self.num_parameters,
            "mapped_parameters": self.mapped_parameters, "coverage": self.coverage,
            "free_fraction": self.free_fraction, "pins": list(self.meta.get("pins", [])),
            "unmapped": {k: v.reason for k, v in self.unmapped.items()},
        }

    # ---------------------------------------------------------------- round trip
    def to_params(self) -> dict[str, np.ndarray]:
        """Rebuild every source tensor from the graph's arrays (exact: index-only transforms)."""
        if self.leaves is not None and set(self.leaves) >= set(self.sources) - set(self.unmapped):
            out = {n: self.leaves[n] for n in self.sources if n not in self.unmapped}
            out.update({n: u.data for n, u in self.unmapped.items() if u.data is not None})
            return out
        out = {name: np.empty(t.shape, dtype=numpy_dtype(t.dtype)) for name, t in self.sources.items()}
        for _, p in self.params():
            if p.origin is not None and not p.shared:
                p.origin.scatter(p.data, out[p.origin.tensor])
        for name, u in self.unmapped.items():
            if u.data is not None:
                out[name] = u.data
        missing = [n for n in out if n in self.unmapped and self.unmapped[n].data is None]
        for n in missing:
            del out[n]
        return out

    def detach(self) -> "NeuralGraph":
        """Copy the source tensors into memory and re-derive every array from them, so the graph
        outlives the (temporary) file its arrays were mapped from."""
        if self.leaves is not None:
            self.leaves = {k: np.array(v) for k, v in self.leaves.items()}
            for _, p in self.params():
                if p.origin is not None and p.origin.tensor in self.leaves:
                    p.data = p.origin.apply(self.leaves[p.origin.tensor])
        return self

    # ---------------------------------------------------------------- checking
    def validate(self) -> "NeuralGraph":
        """Raise :class:`GraphError` naming the first inconsistency; returns self when sound."""
        problems = list(self._problems())
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise GraphError(problems[0] + more)
        return self

    def _problems(self) -> Iterator[str]:
        for g in self.groups.values():
            if g.parent is not None:
                if g.parent not in self.groups:
                    yield f"tie group {g.name!r} has unknown parent {g.parent!r}"
                elif g.size % self.groups[g.parent].size:
                    yield f"tie group {g.name!r} ({g.size}) is not divisible into {g.parent!r} blocks"
        for s in self.sets.values():
            if s.role not in ROLES:
                yield f"set {s.name!r} has unknown role {s.role!r}"
            if s.activation is not None and s.activation not in ACTIVATIONS:
                yield f"set {s.name!r} has unknown activation {s.activation!r}"
            g = self.groups.get(s.group)
            if g is None:
                yield f"set {s.name!r} is in unknown tie group {s.group!r}"
            elif g.size != s.size:
                yield f"set {s.name!r} has {s.size} neurons but its tie group {g.name!r} has {g.size}"
            for key, p in s.arrays.items():
                if p.data.ndim == 0 or p.data.shape[0] != s.size:
                    yield f"array {key!r} of set {s.name!r} has shape {p.shape}, expected ({s.size}, …)"
        for b in self.blocks:
            yield from self._block_problems(b)
        yield from self._accounting_problems()

    def _block_problems(self, b: EdgeBlock) -> Iterator[str]:
        if b.kind not in KINDS:
            yield f"block {b.name!r} has unknown kind {b.kind!r}"
            return
        if b.source not in self.sets or b.target not in self.sets:
            yield f"block {b.name!r} references a missing set ({b.source!r} → {b.target!r})"
            return
        src, tgt = self.sets[b.source], self.sets[b.target]
        gs, gt = self.groups[src.group], self.groups[tgt.group]
        w = b.weight.data if b.weight is not None else None
        if b.pattern == "full":
            k = b.groups
            if src.size % k or tgt.size % k:
                yield f"block {b.name!r}: {k} groups do not divide {src.size} → {tgt.size}"
                return
            if w is not None and (w.ndim < 2 or w.shape[:2] != (tgt.size, src.size // k)):
                yield f"block {b.name!r}: weight {tuple(w.shape)} is not [{tgt.size}, {src.size // k}, …]"
            if k > 1 and not (gs.name == gt.name and k == src.size == tgt.size) and (
                    self.ancestor(gs.name, k) is None or self.ancestor(gs.name, k) != self.ancestor(gt.name, k)):
                yield (f"block {b.name!r} has {k} groups but its sets are neither tied (depthwise) nor "
                       f"partitioned by one {k}-block ancestor group")
        elif b.pattern == "diagonal":
            if gs.name != gt.name:
                yield f"block {b.name!r} ({b.kind}) connects sets that are not tied: {src.name!r}, {tgt.name!r}"
            if w is not None and (w.ndim < 1 or w.shape[0] != src.size):
                yield f"block {b.name!r}: weight {tuple(w.shape)} is not [{src.size}, …]"
        elif b.pattern == "index":
            fixed = self.fixed_groups()
            idx = b.attrs.get("index")
            if idx is None or len(idx) != src.size or len(set(idx)) != src.size or not all(
                    0 <= i < tgt.size for i in idx):
                yield f"block {b.name!r}: attrs['index'] must place {src.size} neurons into {tgt.size}"
            if gs.name not in fixed or gt.name not in fixed:
                yield f"block {b.name!r} reorders neurons between sets that are not fixed"
        elif b.pattern == "opaque":
            fixed = self.fixed_groups()
            if gs.name not in fixed or gt.name not in fixed:
                yield f"block {b.name!r} carries opaque parameters between sets that are not fixed"
        elif b.pattern == "membership":
            if gs.parent != gt.name:
                yield f"block {b.name!r}: {src.name!r} is not a child of {tgt.name!r}'s tie group"
            if w is not None:
                yield f"block {b.name!r}: membership blocks carry no weight"

    def _accounting_problems(self) -> Iterator[str]:
        """Every element of every source tensor mapped exactly once. Uses the boxes the
        origins cover (cheap); falls back to counting elements when a box is unknown."""
        uses: dict[str, list[tuple[str, Param]]] = {name: [] for name in self.sources}
        for where, p in self.params():
            if p.origin is None or p.shared:
                continue
            if p.origin.tensor not in uses:
                yield f"{where} comes from unknown source tensor {p.origin.tensor!r}"
                continue
            uses[p.origin.tensor].append((where, p))
        for name, lst in uses.items():
            t = self.sources[name]
            if name in self.unmapped:
                if lst:
                    yield f"source tensor {name!r} is both mapped and listed as unmapped"
                continue
            boxes = []
            for where, p in lst:
                shape = p.origin.shape(t.shape)
                if shape is None or tuple(shape) != p.shape:
                    yield f"{where}: origin gives shape {shape}, the array is {p.shape}"
                    boxes = None
                    break
                boxes.append(p.origin.trace(t.shape)[1])
            if boxes is None:
                continue
            if all(b is not None for b in boxes):
                volume = sum(int(np.prod([hi - lo for lo, hi in b.values()], dtype=np.int64)) for b in boxes)
                disjoint = all(any(max(a[k][0], b[k][0]) >= min(a[k][1], b[k][1]) for k in a)
                               for i, a in enumerate(boxes) for b in boxes[i + 1:])
                if disjoint and volume == t.size:
                    continue
                if not disjoint:
                    yield f"source tensor {name!r}: some elements are mapped more than once"
                else:
                    yield f"source tensor {name!r}: {t.size - volume} elements are mapped nowhere"
                continue
            counts = np.zeros(t.shape, dtype=np.int32)      # fallback: count element by element
            for _, p in lst:
                p.origin.scatter(np.ones(p.shape, np.int32), counts, accumulate=True)
            if counts.size and counts.max() > 1:
                yield f"source tensor {name!r}: {(counts > 1).sum()} elements are mapped more than once"
            if counts.size and counts.min() < 1:
                yield f"source tensor {name!r}: {(counts < 1).sum()} elements are mapped nowhere"

    # ---------------------------------------------------------------- symmetry (graph.symmetry)
    def symmetry_groups(self) -> list[SymmetryGroup]:
        """Every tie group with its size, parent and whether a symmetry can move it."""
        return symmetry_groups(self)

    def random_symmetry(self, seed: int | None = None) -> Symmetry:
        """A uniformly random element of this graph's permutation group."""
        return random_symmetry(self, seed)

    def permute(self, symmetry: Symmetry) -> "NeuralGraph":
        """A copy with every array permuted: the same function, another neuron order."""
        return permute(self, symmetry)

    def __repr__(self) -> str:
        return (f"NeuralGraph(sets={len(self.sets)}, blocks={len(self.blocks)}, nodes={self.num_nodes}, "
                f"edges={self.num_edges}, coverage={self.coverage:.3f})")

