"""The ONNX lowering engine: walk the graph, track which axis carries which neuron set.

Every value in the ONNX graph becomes one of

* :class:`Const` — a constant tensor (initializer, ``Constant`` node, or a folded constant
  subgraph) together with the :class:`~nngraph.origin.Origin` that maps it back to its leaf;
* :class:`Act` — an activation whose ``axis`` carries the neurons of one set;
* :data:`AUX` — anything else that carries no neurons and no parameters (shapes, masks).

Nodes are visited in topological order. A node whose inputs are all constants is folded
(index-only ops keep the exact origin; anything else becomes a *derived* leaf named after its
output). Every other node goes to the rule registered for its (domain, op type, opset); a node
that touches an activation and has no rule is collected, and the conversion fails naming
every such op and node at once — nothing is guessed.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx

from nngraph.errors import GraphError, UnsupportedModelError
from nngraph.hookspecs import OpRule
from nngraph.ir import NeuralGraph, Param, Unmapped
from nngraph.origin import Origin

from .reader import OnnxModel


@dataclass
class Const:
    """A constant. ``broadcast``: the shape it has at run time when an ``Expand`` only
    broadcast it (``data`` stays the parameter itself, so it keeps its origin)."""

    data: np.ndarray
    origin: Origin | None = None
    broadcast: tuple | None = None
    parts: tuple | None = None     # (axis, [(start, stop, Const)]): constants of different tensors concatenated
    synthetic: bool = False        # computed from scalars and shapes only (ConstantOfShape zeros …)

    @property
    def value(self) -> np.ndarray:
        return self.data if self.broadcast is None else np.broadcast_to(self.data, self.broadcast)

    def transpose(self, perm) -> "Const":
        parts = None
        if self.parts is not None:
            axis, bounds = self.parts
            parts = (list(perm).index(axis), [(lo, hi, p.transpose(perm)) for lo, hi, p in bounds])
        return Const(self.data.transpose(perm), self.origin.transpose(perm) if self.origin else None, parts=parts)

    def reshape(self, shape) -> "Const":
        shape = tuple(int(s) for s in shape)
        parts = None
        if self.parts is not None:    # unit axes added or removed around stacked parts: keep them stacked
            axis, bounds = self.parts
            old = [d for d in self.data.shape]
            if [d for d in old if d != 1] == [d for d in shape if d != 1] and old[axis] != 1:
                k = sum(1 for d in old[:axis] if d != 1)
                new_axis = [i for i, d in enumerate(shape) if d != 1][k]
                parts = (new_axis, [(lo, hi, p.reshape(tuple(hi - lo if i == new_axis else d
                                                             for i, d in enumerate(shape))))
                                    for lo, hi, p in bounds])
        return Const(self.data.reshape(shape), self.origin.reshape(shape) if self.origin else None, parts=parts)

    def take(self, axis: int, indices) -> "Const":
        return Const(np.take(self.data, indices, axis=axis), self.origin.take(axis, indices) if self.origin else None)

    def slice(self, axis: int, start: int, stop: int) -> "Const":
        if self.parts is not None and axis % self.data.ndim == self.parts[0]:
            n = self.data.shape[axis]
            start, stop = (start + n if start < 0 else start), (stop + n if stop < 0 else stop)
            for lo, hi, part in self.parts[1]:
                if lo <= start and stop <= hi:
                    return part.slice(axis, start - lo, stop - lo)
        if self.parts is not None and axis % self.data.ndim != self.parts[0]:
            index = [slice(None)] * self.data.ndim
            index[axis] = slice(start, stop)
            return Const(self.data[tuple(index)], None,
                         parts=(self.parts[0], [(lo, hi, p.slice(axis, start, stop)) for lo, hi, p in self.parts[1]]))
        index = [slice(None)] * self.data.ndim
        index[axis] = slice(start, stop)
        return Const(self.data[tuple(index)], self.origin.slice(axis, start, stop) if self.origin else None)

    @property
    def is_float(self) -> bool:
        return self.data.dtype.kind == "f" or self.data.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")


@dataclass
class Act:
    """An activation tensor whose ``axis`` carries neurons.

    ``sets`` are the neuron sets laid end to end along that axis (one, or several after a
    Concat). ``inner > 1`` means the axis holds ``neurons × inner`` values, neuron-major: a
    flattened ``[C, H, W]`` map, whose spatial positions a following dense layer sees as taps.
    ``heads = (head_axis, H)`` means the neurons were split as ``[H, size / H]`` with the head
    index on ``head_axis`` (multi-head attention); ``axis`` then carries the within-head index.
    ``seg_axis``: the sets are stacked along that axis (the directions of a bidirectional RNN),
    each spanning the whole neuron axis; merging it into the neuron axis concatenates them.
    """

    sets: tuple[str, ...]
    axis: int
    rank: int | None = None
    stage: str = "out"   # "linear": raw layer output, a bias may still attach; "out": anything later
    inner: int = 1
    heads: tuple[int, int] | None = None
    seg_axis: int | None = None   # sets laid along this axis instead of end to end (RNN directions)
    inners: tuple[int, ...] | None = None   # per-set taps when flattened maps of different sizes were concatenated
    part: tuple[int, int] | None = None     # only these within-head positions (rotary halves; the group is rigid)
    inner_minor: bool = False                # flattened channels-last (NHWC → [B, H·W·C]): position-major

    @property
    def set(self) -> str:
        if len(self.sets) != 1:
            raise ValueError("activation spans several neuron sets")
        return self.sets[0]

    def but(self, **changes) -> "Act":
        return replace(self, **changes)


@dataclass
class Stat:
    """A statistic over the neuron axis (mean, variance, norm): broadcasts back over it."""

    rank: int | None = None
    axis: int | None = None


@dataclass
class Scores:
    """Attention scores ``[…, H, Tq, Tk]`` of one attention layer: ``q``/``k`` name the sets
    whose dot products made them; ``head_axis`` carries the heads."""

    q: str
    k: str
    head_axis: int | None
    rank: int
    heads_set: str | None = None
    heads: int = 1
    shape: tuple | None = None     # static shape when known from the operands


class _Aux:
    def __repr__(self) -> str:
        return "AUX"


AUX = _Aux()


class RuleTable:
    """(domain, op type) → rules by ``since_version``; lookup honours the model's opset."""

    def __init__(self, rules: Iterable[OpRule] = ()):
        self._rules: dict[tuple[str, str], list[OpRule]] = {}
        for r in rules:
            self.add(r)

    def add(self, rule: OpRule) -> None:
        domain = "" if rule.domain == "ai.onnx" else rule.domain
        lst = self._rules.setdefault((domain, rule.op_type), [])
        lst.append(rule)
        lst.sort(key=lambda r: r.since_version)

    def lookup(self, domain: str, op_type: str, opset: int | None) -> OpRule | None:
        rules = self._rules.get(("" if domain == "ai.onnx" else domain, op_type))
        if not rules:
            return None
        eligible = [r for r in rules if opset is None or r.since_version <= opset]
        return eligible[-1] if eligible else None


#: For each op, the input slots that hold parameters. A graph input read only in such slots
#: (old exporters made BatchNormalization scales graph inputs) is a parameter fed at run time.
PARAM_SLOTS: dict[str, set[int]] = {
    "Conv": {1, 2}, "ConvTranspose": {1, 2}, "Gemm": {1, 2}, "BatchNormalization": {1, 2, 3, 4},
    "InstanceNormalization": {1, 2}, "LayerNormalization": {1, 2}, "GroupNormalization": {1, 2},
    "RMSNormalization": {1}, "PRelu": {1}, "LSTM": {1, 2, 3, 5, 6, 7}, "GRU": {1, 2, 3, 5}, "RNN": {1, 2, 3, 5},
}


@dataclass
class LoweringContext:
    """What a rule sees: the model, the graph being built, and every value so far."""

    model: OnnxModel
    graph: NeuralGraph
    values: dict[str, Const | Act | Stat | Scores | _Aux] = field(default_factory=dict)
    leaves: dict[str, np.ndarray] = field(default_factory=dict)       # source tensors by name
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    shapes: dict[str, tuple] = field(default_factory=dict)            # inferred: int, symbol (str) or None
    absorbed: set[str] = field(default_factory=set)                   # leaves folded into derived leaves
    buffers: dict[str, str] = field(default_factory=dict)             # leaves read as non-parameters
    synthetic: set[str] = field(default_factory=set)                  # derived leaves made from no parameter
    rules: "RuleTable | None" = None
    fold: "Callable | None" = None
    unsupported: dict[str, list[str]] = field(default_factory=dict)
    _names: set[str] = field(default_factory=set)

    def walk(self, nodes: Iterable[onnx.NodeProto]) -> None:
        """Lower nodes in order (the main graph, or a branch of an ``If``)."""
        opsets = self.model.opsets
        for node in nodes:
            ins = [self.values.get(i) if i else None for i in node.input]
            if any(i and i not in self.values for i in node.input):
                missing = [i for i in node.input if i and i not in self.values]
                raise UnsupportedModelError(f"{self.model.path}: node {node.name or node.op_type!r} reads undefined "
                                            f"value(s) {missing} (graph not topologically sorted?)")
            domain = "" if node.domain == "ai.onnx" else node.domain
            neural = any(isinstance(v, (Act, Stat, Scores)) for v in ins)
            has_graph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
            if not neural and not has_graph and not domain and all(v is None or isinstance(v, Const) for v in ins):
                for name, value in zip(node.output, self.fold(self, node, ins)):
                    if name:
                        self.values[name] = value
                continue
            rule = self.rules.lookup(domain, node.op_type, opsets.get(domain))
            if rule is None:
                if neural or has_graph or any(isinstance(v, Const) and v.is_float and v.data.size > 1 for v in ins):
                    self.unsupported.setdefault(f"{domain + '::' if domain else ''}{node.op_type}", []).append(
                        node.name or node.output[0])
                for o in node.output:
                    self.values.setdefault(o, AUX)
                continue
            rule.lower(self, node)
            for o in node.output:
                self.values.setdefault(o, AUX)

    def add_initializers(self, graph: onnx.GraphProto) -> None:
        for t in graph.initializer:
            arr = self.model.tensor(t)
            self.leaves[t.name] = arr
            self.values[t.name] = Const(arr, Origin(t.name))

    # ------------------------------------------------------------------ reading values
    def const(self, name: str) -> Const | None:
        v = self.values.get(name) if name else None
        return v if isinstance(v, Const) else None

    def act(self, name: str) -> Act | None:
        v = self.values.get(name) if name else None
        return v if isinstance(v, Act) else None

    def attr(self, node: onnx.NodeProto, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def shape(self, name: str) -> tuple | None:
        return self.shapes.get(name)

    def taps(self, x: Act) -> list[int]:
        """Values per neuron on the neuron axis, set by set (1 unless flattened)."""
        return list(x.inners) if x.inners is not None else [x.inner] * len(x.sets)

    def size(self, x: Act) -> int:
        if x.seg_axis is not None:
            return self.graph.sets[x.sets[0]].size
        return sum(self.graph.sets[s].size for s in x.sets)

    def segments(self, x: Act) -> list[tuple[str, int, int]]:
        """(set, offset, size) of each set along the neuron axis."""
        if x.seg_axis is not None:
            raise UnsupportedModelError(f"{self.model.path}: an op reads the stacked directions of a "
                                        f"bidirectional recurrent layer without merging them first")
        out, offset = [], 0
        for s in x.sets:
            n = self.graph.sets[s].size
            out.append((s, offset, n))
            offset += n
        return out

    def fail(self, node: onnx.NodeProto, why: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"{self.model.path}: node {node.name or node.output[0]!r} ({node.op_type}): {why}")

    # ------------------------------------------------------------------ building
    def unique(self, base: str) -> str:
        name, i = base or "v", 1
        while name in self._names:
            i += 1
            name = f"{base}#{i}"
        self._names.add(name)
        return name

    def param(self, c: Const) -> Param:
        """Use a constant as a parameter: registers its leaf as a source tensor of the model."""
        if c.origin is None:
            raise UnsupportedModelError(f"{self.model.path}: a parameter is computed from non-constant data")
        leaf = self.leaves[c.origin.tensor]
        if c.origin.tensor not in self.graph.sources:
            self.graph.add_source(c.origin.tensor, leaf.shape, leaf.dtype)
        return Param(c.data, c.origin)

    def buffer(self, c: Const | None, why: str) -> None:
        """Record that a constant is read as data, not as a parameter (a mask, a fixed table)."""
        if c is not None and c.origin is not None:
            self.buffers.setdefault(c.origin.tensor, why)

    def new_set(self, node: onnx.NodeProto, size: int, role: str = "hidden", *, inputs: Iterable[Act] = (),
                layer: bool = True, tie: str | None = None, suffix: str = "", parent: str | None = None, **attrs):
        depth = max((self.graph.sets[s].depth for a in inputs for s in a.sets), default=0) + (1 if layer else 0)
        name = self.unique((node.name or node.output[0]) + suffix)
        return self.graph.add_set(name, size, role, depth=depth, tie=tie, parent=parent, **attrs)

    def set_output(self, node: onnx.NodeProto, value, index: int = 0) -> None:
        if index < len(node.output) and node.output[index]:
            self.values[node.output[index]] = value

    def blocks_of(self, set_name: str, k: int) -> str:
        """The tie group of ``k`` blocks that ``set_name``'s group is partitioned into (created or
        spliced into its chain of parents as needed). Grouped convs and attention heads use it."""
        g = self.graph
        group = g.groups[g.sets[set_name].group]
        if group.size % k:
            raise UnsupportedModelError(f"{self.model.path}: {group.size} neurons of {set_name!r} "
                                        f"cannot form {k} blocks")
        child = group
        while True:
            parent = g.groups.get(child.parent) if child.parent else None
            if parent is None:
                name = self.unique(f"{set_name}/{k}blocks")
                g.add_group(name, k)
                child.parent = name
                return name
            if parent.size == k:
                return parent.name
            if parent.size % k == 0 and parent.size > k:
                child = parent                     # coarser blocks further up the chain
                continue
            if k % parent.size == 0:               # finer than the parent: splice in between
                name = self.unique(f"{set_name}/{k}blocks")
                g.add_group(name, k, parent=parent.name)
                child.parent = name
                return name
            raise UnsupportedModelError(f"{self.model.path}: {set_name!r} would need both {parent.size} and "
                                        f"{k} channel blocks; their symmetries do not nest")

    def split_set(self, set_name: str, sizes: list[int]) -> list[str]:
        """Split a freshly made layer output into consecutive sets (a fused QKV projection).

        Only a set whose group holds it alone and that feeds no block yet can be split: its
        incoming blocks and per-neuron arrays are sliced along the neuron axis (exact origins)."""
        g = self.graph
        s = g.sets[set_name]
        if len(sizes) == 1:
            return [set_name]
        group = g.groups[s.group]
        if (any(t.group == s.group for t in g.sets.values() if t.name != set_name) or group.parent
                or any(b.source == set_name for b in g.blocks)
                or any(b.target == set_name and b.pattern != "full" for b in g.blocks)
                or any(x.parent == s.group for x in g.groups.values())):
            raise UnsupportedModelError(f"{self.model.path}: cannot split neuron set {set_name!r} "
                                        f"(it is already tied or consumed)")
        incoming = [b for b in g.blocks if b.target == set_name]
        names, offset = [], 0
        for i, n in enumerate(sizes):
            t = g.add_set(self.unique(f"{set_name}[{i}]"), n, s.role, depth=s.depth, activation=s.activation,
                          fixed=group.fixed, **s.attrs)
            for key, p in s.arrays.items():
                t.arrays[key] = _slice_param(p, 0, offset, offset + n)
            for b in incoming:
                g.add_block(f"{b.name}[{i}]", b.source, t.name, b.kind, _slice_param(b.weight, 0, offset, offset + n)
                            if b.weight is not None else None, **b.attrs)
            names.append(t.name)
            offset += n
        g.blocks = [b for b in g.blocks if b.target != set_name]
        del g.sets[set_name]
        del g.groups[s.group]
        for key, v in list(self.values.items()):   # values that carried the set now carry its parts
            if isinstance(v, Act) and set_name in v.sets:
                i = v.sets.index(set_name)
                self.values[key] = v.but(sets=v.sets[:i] + tuple(names) + v.sets[i + 1:])
        return names


def _slice_param(p: Param, axis: int, start: int, stop: int) -> Param:
    index = [slice(None)] * p.data.ndim
    index[axis] = slice(start, stop)
    return Param(p.data[tuple(index)], p.origin.slice(axis, start, stop) if p.origin else None)


Fold = Callable[[LoweringContext, onnx.NodeProto, list], list]


def lower_model(model: OnnxModel, rules: RuleTable, fold: Fold, bind: dict[str, np.ndarray] | None = None) -> NeuralGraph:
    g = model.graph
    graph = NeuralGraph(meta={
        "producer": f"{model.proto.producer_name} {model.proto.producer_version}".strip(),
        "opsets": model.opsets, "ir_version": model.proto.ir_version,
    })
    ctx = LoweringContext(model, graph, shapes=infer_shapes(model), rules=rules, fold=fold)
    for sub in all_graphs(g):
        for node in sub.node:
            for i in node.input:
                ctx.consumers.setdefault(i, []).append(node)
    ctx.add_initializers(g)
    init_names = {t.name for t in g.initializer}
    unbound: list[str] = []
    for inp in g.input:
        if inp.name in init_names:
            continue
        if _is_parameter_input(ctx, inp):
            if bind is not None and inp.name in bind:
                arr = np.asarray(bind[inp.name])
                ctx.leaves[inp.name] = arr
                ctx.values[inp.name] = Const(arr, Origin(inp.name))
                graph.meta.setdefault("bound_inputs", []).append(inp.name)
            else:
                unbound.append(inp.name)
            continue
        _add_input(ctx, inp)
    if unbound:
        raise UnsupportedModelError(
            f"{model.path}: graph input(s) {', '.join(unbound[:5])}{' …' if len(unbound) > 5 else ''} "
            f"hold parameters (they feed weight slots); give their values with --inputs FILE.npz")

    ctx.walk(g.node)
    unsupported = ctx.unsupported
    if unsupported:
        raise UnsupportedModelError(f"{model.path}: no lowering rule for", unsupported)

    for out in g.output:
        v = ctx.values.get(out.name)
        if isinstance(v, Act):
            for name in v.sets:
                s = graph.sets[name]
                if s.role == "hidden":
                    s.role = "output"
                graph.fix(name)
    _share(ctx)
    _account(ctx)
    graph.meta["probes"] = _probes(ctx)
    graph.leaves = {name: ctx.leaves[name] for name in graph.sources if name not in graph.unmapped}
    return graph


def _probes(ctx: LoweringContext) -> dict[str, list]:
    """For each neuron set, a value of the main graph that carries exactly that set on one axis
    (``[value, axis]``): where activation matching reads the neurons' outputs. Of the values
    carrying a set, the one with the most elements wins (a conv's output before pooling), the
    later one on a tie (after the nonlinearity)."""
    produced = {o for n in ctx.model.graph.node for o in n.output} | {i.name for i in ctx.model.graph.input}
    best: dict[str, tuple[int, str, int]] = {}
    for name, v in ctx.values.items():
        if not (isinstance(v, Act) and name in produced and len(v.sets) == 1 and v.inner == 1 and v.heads is None
                and v.seg_axis is None and v.part is None and v.rank is not None):
            continue
        shape = ctx.shape(name)
        if shape is None or len(shape) != v.rank or shape[v.axis] != ctx.graph.sets[v.sets[0]].size:
            continue
        numel = int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in shape]))
        if numel >= best.get(v.sets[0], (-1,))[0]:
            best[v.sets[0]] = (numel, name, v.axis)
    return {s: [name, axis] for s, (_, name, axis) in best.items()}


def _share(ctx: LoweringContext) -> None:
    """A constant used as a parameter in several places (a recurrent weight unrolled over time
    steps, an initial state shared by layers, tied embeddings): the sets its uses index on
    the same leaf axis are tied, so every symmetry permutes all uses alike; the first use
    writes the tensor back, the others are marked ``shared``."""
    g = ctx.graph
    uses: dict[str, list] = {}
    for s in g.sets.values():
        for p in s.arrays.values():
            if p.origin is not None:
                uses.setdefault(p.origin.tensor, []).append((p, [s.name]))
    for b in g.blocks:
        if b.weight is None or b.weight.origin is None:
            continue
        if b.pattern == "full":
            sets = [b.target, b.source if b.groups == 1 else None]
        else:
            sets = [b.source]
        uses.setdefault(b.weight.origin.tensor, []).append((b.weight, sets))
    for tensor, lst in uses.items():
        if len(lst) < 2:
            continue
        leaf = ctx.leaves[tensor].shape
        traced = [(p.origin.trace(leaf), p, sets) for p, sets in lst]

        def overlap(b1, b2) -> bool:
            return b1 is None or b2 is None or all(max(b1[a][0], b2[a][0]) < min(b1[a][1], b2[a][1]) for a in b1)

        clusters: list[list] = []
        for item in traced:
            hit = next((c for c in clusters if any(overlap(item[0][1], other[0][1]) for other in c)), None)
            (hit.append(item) if hit is not None else clusters.append([item]))
        leaf_data = ctx.leaves[tensor]
        constant = leaf_data.size > 0 and bool(np.all(leaf_data == leaf_data.reshape(-1)[0]))
        for cluster in clusters:
            if len(cluster) < 2:
                continue
            if constant:     # every permutation leaves it unchanged: no tie needed (deduplicated zeros, ones)
                for _, p, _ in cluster[1:]:
                    p.shared = True
                g.meta.setdefault("shared_constants", []).append(tensor)
                continue
            if any(item[0][1] != cluster[0][0][1] or item[0][1] is None for item in cluster):
                raise UnsupportedModelError(f"{ctx.model.path}: constant {tensor!r} is used as a parameter by "
                                            f"overlapping but different slices")
            by_axis: dict[int, set] = {}
            ok = all(a is not None for (axes, _), _, _ in cluster for a in axes[:1])
            for (axes, _), p, sets in cluster:
                for k, leaf_axis in enumerate(axes):
                    owner = sets[k] if k < len(sets) else None
                    if leaf_axis is None:
                        continue
                    if owner is None and k < len(sets):
                        ok = False
                    if owner is not None:
                        by_axis.setdefault(leaf_axis, set()).add(owner)
            try:
                if not ok:
                    raise GraphError("grouped weight")
                for owners in by_axis.values():
                    first, *rest = sorted(owners)
                    for other in rest:
                        g.tie(first, other)
            except GraphError:
                for _, _, sets in cluster:     # no tie can express it: keep every use still
                    for name in sets:
                        if name is not None:
                            g.fix(name)
            for _, p, _ in cluster[1:]:
                p.shared = True


def _is_parameter_input(ctx: LoweringContext, inp: onnx.ValueInfoProto) -> bool:
    """A graph input without an initializer that is only read in parameter slots (a weight
    fed at run time, allowed before IR version 4) is a parameter, not data."""
    name = inp.name
    t = inp.type.tensor_type
    if t.elem_type and np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).kind != "f":
        return False
    uses = ctx.consumers.get(name, [])
    return bool(uses) and all(
        any(i == name and k in PARAM_SLOTS.get(n.op_type, ()) for k, i in enumerate(n.input)) for n in uses)


def _account(ctx: LoweringContext) -> None:
    """Every float constant of more than one element is a parameter in the graph, folded into
    one, a declared buffer, unused, or — listed as unmapped with the reason."""
    graph = ctx.graph
    unused, buffers = [], {}
    for name, arr in ctx.leaves.items():
        if name in graph.sources or arr.dtype.kind != "f" or arr.size <= 1:
            continue
        if name in ctx.absorbed:
            continue
        if name in ctx.buffers:
            buffers[name] = ctx.buffers[name]
            continue
        readers = [n.name or n.op_type for n in ctx.consumers.get(name, [])]
        if not readers and name not in {o.name for o in ctx.model.graph.output}:
            unused.append(name)
            continue
        graph.add_source(name, arr.shape, arr.dtype)
        graph.unmapped[name] = Unmapped(f"read by {', '.join(readers[:3])}, which carry no neurons", np.asarray(arr))
    if unused:
        graph.meta["unused_constants"] = unused
    if buffers:
        graph.meta["buffers"] = buffers


CHANNEL_FIRST = ("Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "GlobalMaxPool", "LRN")


def _input_axis(ctx: LoweringContext, name: str, rank: int) -> int:
    """Which axis of a data input carries its features: axis 1 when a channel-first op reads it
    (through a layout Transpose, as Keras/TensorFlow exports do: NHWC → the last axis), the
    last axis when a MatMul/Gemm/Einsum reads it, else 1 for images and the last for sequences."""
    frontier, perm = [name], list(range(rank))
    for _ in range(8):
        uses = [n for v in frontier for n in ctx.consumers.get(v, [])]
        if not uses:
            break
        n = uses[0]
        if n.op_type == "Transpose":
            p = next((list(a.ints) for a in n.attribute if a.name == "perm"), list(range(rank))[::-1])
            perm = [perm[i] for i in p]
            frontier = [n.output[0]]
            continue
        if n.op_type in CHANNEL_FIRST:
            return perm[1]
        if n.op_type in ("MatMul", "Gemm", "Einsum", "LayerNormalization"):
            return perm[-1]
        if n.op_type in ("Identity", "Cast", "Dropout", "Relu", "Mul", "Add", "Sub", "Div"):
            frontier = [n.output[0]]
            continue
        break
    return perm[1] if rank >= 4 or rank == 2 else perm[-1] if rank == 3 else 0


def _add_input(ctx: LoweringContext, inp: onnx.ValueInfoProto) -> None:
    t = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else np.dtype(np.float32)
    if np.dtype(np_dtype).kind != "f" or not dims:
        ctx.values[inp.name] = AUX
        return
    axis = _input_axis(ctx, inp.name, len(dims))
    size = dims[axis]
    if size is None:
        raise UnsupportedModelError(f"{ctx.model.path}: input {inp.name!r} has a dynamic feature axis {axis}")
    s = ctx.graph.add_set(ctx.unique(inp.name), size, "input", depth=0, fixed=True)
    ctx.values[inp.name] = Act((s.name,), axis, len(dims))


def all_graphs(g: onnx.GraphProto):
    """A graph and every subgraph nested in its nodes (If / Loop / Scan bodies)."""
    yield g
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from all_graphs(sub)


BATCH = 3   # a concrete batch size for shape inference: keeps reshapes through the batch axis followable


def _with_static_batch(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose data inputs have a concrete leading (batch) dimension. Symbolic batch dims
    defeat the regrouping of reshapes that fold heads into the batch; the structure does not
    depend on the batch size."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = {t.name for t in out.graph.initializer}
    for inp in out.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if inp.name not in inits and len(dims) >= 2 and not dims[0].HasField("dim_value"):
            dims[0].dim_value = BATCH
    return out


def _shape_constants(proto: onnx.ModelProto, shapes: dict) -> dict[str, np.ndarray]:
    """Small integer values computable from static shapes (Shape → Gather → ReduceProd →
    Concat …, as exporters build reshape targets): ONNX's data propagation stops at ops like
    ReduceProd, this does not."""
    from onnx import numpy_helper

    from .folding import run_node

    known: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer
                                    if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
                                    and t.HasField("raw_data") or t.int64_data}
    out: dict[str, np.ndarray] = {}
    for node in proto.graph.node:
        if node.op_type == "Shape":
            shp = shapes.get(node.input[0])
            if shp is not None and all(isinstance(d, int) for d in shp):
                start, end = 0, None
                for a in node.attribute:
                    start = a.i if a.name == "start" else start
                    end = a.i if a.name == "end" else end
                known[node.output[0]] = out[node.output[0]] = np.asarray(shp[start:end], np.int64)
            continue
        if node.op_type == "Constant":
            try:
                v = numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].name == "value" else None
            except Exception:  # noqa: BLE001
                v = None
            if v is not None and v.dtype.kind in "iu" and v.size <= 64:
                known[node.output[0]] = v
            continue
        if node.domain or not node.input or not all(i in known or not i for i in node.input):
            continue
        if node.op_type not in ("Gather", "Concat", "ReduceProd", "Mul", "Add", "Sub", "Div", "Unsqueeze", "Squeeze",
                                "Slice", "Cast", "Reshape", "Max", "Min", "Equal", "Where", "Range", "Neg", "Abs"):
            continue
        try:
            res = run_node(node, [known[i] if i else None for i in node.input], proto.opset_import)
        except Exception:  # noqa: BLE001 - best effort: a value it cannot compute stays unknown
            continue
        for name, value in zip(node.output, res):
            value = np.asarray(value)
            if value.dtype.kind in "iub" and value.size <= 64:
                known[name] = out[name] = value
    return out


def infer_shapes(model: OnnxModel) -> dict[str, tuple]:
    shapes = _infer_shapes_once(model.proto)
    consts = _shape_constants(model.proto, shapes)
    targets = {n.input[1] for n in model.graph.node if n.op_type in ("Reshape", "Expand", "Tile") and len(n.input) > 1}
    fill = {k: v for k, v in consts.items() if k in targets}
    if fill:      # tell ONNX inference the reshape targets it could not compute, and infer again
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        from onnx import numpy_helper
        for name, value in fill.items():
            proto.graph.initializer.append(numpy_helper.from_array(value.astype(np.int64), name))
        keep = [n for n in proto.graph.node if not (set(n.output) & set(fill))]
        del proto.graph.node[:]
        proto.graph.node.extend(keep)
        again = _infer_shapes_once(proto)
        for k, v in again.items():
            if k not in shapes or (not all(isinstance(d, int) for d in shapes[k]) and all(isinstance(d, int) for d in v)):
                shapes[k] = v
    return shapes


def _infer_shapes_once(proto: onnx.ModelProto) -> dict[str, tuple]:
    """Static shapes of every value ONNX shape inference can tell (weights are not needed)."""
    model = OnnxModel(Path("."), proto)
    inferred = None
    if any(n.domain == "com.microsoft" for n in model.graph.node):
        import os
        import tempfile
        # onnxruntime's symbolic inference knows its contrib ops (fused attention, norms); when it
        # cannot finish it saves sym_shape_infer_temp.onnx into the cwd: run it in a temporary one
        # (the cwd is process-wide; parallel conversions run in processes, not threads)
        with tempfile.TemporaryDirectory(prefix="nngraph-shapes-") as tmp:
            cwd = os.getcwd()
            try:
                os.chdir(tmp)
                from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
                inferred = SymbolicShapeInference.infer_shapes(_with_static_batch(model.proto), auto_merge=True)
            except Exception:  # noqa: BLE001
                inferred = None
            finally:
                os.chdir(cwd)
    if inferred is None:
        try:
            inferred = onnx.shape_inference.infer_shapes(_with_static_batch(model.proto), data_prop=True)
        except Exception:  # noqa: BLE001 - inference is best effort; rules that need shapes say so
            inferred = model.proto
    shapes: dict[str, tuple] = {}
    for g in all_graphs(inferred.graph):
        for vi in [*g.input, *g.value_info, *g.output]:
            t = vi.type.tensor_type
            if t.HasField("shape"):   # ints, symbolic names (str: equal names are equal sizes), None
                shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value")
                                        else (d.dim_param or None) for d in t.shape.dim)
        for t in g.initializer:
            shapes[t.name] = tuple(t.dims)
    return shapes
