"""The ONNX lowering engine: walk the graph, track which axis carries which neuron set.

Every value in the ONNX graph becomes one of

* :class:`Const` — a constant tensor (initializer, ``Constant`` node, or a folded constant
  subgraph) together with the :class:`~nngraph.graph.origin.Origin` that maps it back to its leaf;
* :class:`Act` — an activation whose ``axis`` carries the neurons of one set;
* :data:`AUX` — anything else that carries no neurons and no parameters (shapes, masks).

Nodes are visited in topological order. A node whose inputs are all constants is folded
(index-only ops keep the exact origin; anything else becomes a *derived* leaf named after its
output). Every other node goes to the rule registered for its (domain, op type, opset).

**Sound degradation.** A node the engine cannot follow — no rule, or a rule that finds a
structure it cannot prove — is *pinned*: the neuron sets it reads are fixed (with whatever is
tied to them), its parameters are kept as ``opaque`` blocks (exact origins, so the round trip
stays exact and coverage stays 1), and its outputs become fresh fixed sets sized from shape
inference, from which lowering continues. A failing rule may have half-built structure, so the
engine lowers again from the start with that node pinned (the failure is remembered by node);
nothing a failed rule did survives. ``strict=True`` refuses instead, naming the first pin.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx

from nngraph.errors import GraphError, NNGraphError, UnsupportedModelError
from nngraph.hookspecs import OpRule
from nngraph.graph.ir import EdgeBlock, NeuralGraph, Param, Unmapped
from nngraph.graph.origin import Origin

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
    runtime: bool = False          # combined with run-time data (a dynamic-quantization scale, a mask added
                                   # to a position bias): a parameter's place, not its value; never folded
    varies: tuple[int, ...] | None = ()   # with ``runtime``: axes (counted from the right, negative) along
                                          # which the run-time part varies; None: unknown (any axis)

    def varies_along(self, axis: int, rank: int) -> bool:
        """Whether the run-time part of this value differs along ``axis`` of a rank-``rank`` frame."""
        return self.runtime and (self.varies is None or axis - rank in self.varies)

    @property
    def value(self) -> np.ndarray:
        return self.data if self.broadcast is None else np.broadcast_to(self.data, self.broadcast)

    def _transpose(self, perm) -> "Const":
        parts = None
        if self.parts is not None:
            axis, bounds = self.parts
            parts = (list(perm).index(axis), [(lo, hi, p.transpose(perm)) for lo, hi, p in bounds])
        return Const(self.data.transpose(perm), self.origin.transpose(perm) if self.origin else None, parts=parts)

    def _reshape(self, shape) -> "Const":
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

    def _take(self, axis: int, indices) -> "Const":
        return Const(np.take(self.data, indices, axis=axis), self.origin.take(axis, indices) if self.origin else None)

    def _slice(self, axis: int, start: int, stop: int) -> "Const":
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

    def transpose(self, perm) -> "Const":
        return self._moved(self._transpose(perm))

    def reshape(self, shape) -> "Const":
        return self._moved(self._reshape(shape))

    def take(self, axis: int, indices) -> "Const":
        return self._moved(self._take(axis, indices))

    def slice(self, axis: int, start: int, stop: int) -> "Const":
        return self._moved(self._slice(axis, start, stop))

    def _moved(self, out: "Const") -> "Const":
        """A transformed ``runtime`` constant stays one; where its run-time part varies is
        no longer known after a change of axes (unless it varies nowhere)."""
        if self.runtime:
            out.runtime, out.varies = True, (() if self.varies == () else None)
        return out

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


#: Ops that combine their inputs element by element (with broadcasting).
ELEMENTWISE = frozenset(("Add", "Sub", "Mul", "Div", "Where", "And", "Or", "Xor", "Not", "Cast", "Identity", "Equal",
                         "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Neg", "Abs", "Sqrt", "Exp", "Log"))


class Unfollowed(Exception):
    """Raised out of :meth:`LoweringContext.walk` when a rule fails on ``node``: the engine
    lowers again from the start with the node pinned (a failed rule may have half-built
    structure, so nothing of that attempt is kept)."""

    def __init__(self, node: onnx.NodeProto, reason: str):
        super().__init__(reason)
        self.node, self.reason = node, reason


def node_label(node: onnx.NodeProto) -> str:
    """How messages name a node: its name, else its first output."""
    return node.name or (node.output[0] if node.output else node.op_type)


def _subgraphs(node: onnx.NodeProto):
    """Every graph nested in ``node``'s attributes (and in theirs)."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield from all_graphs(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            for sub in a.graphs:
                yield from all_graphs(sub)


def _outer_names(node: onnx.NodeProto) -> list[str]:
    """Values a node's subgraphs read from the enclosing scope (their own values excluded)."""
    names: list[str] = []
    for sub in _subgraphs(node):
        own = {i.name for i in sub.input} | {t.name for t in sub.initializer} | {o for n in sub.node for o in n.output}
        names += [i for n in sub.node for i in n.input if i and i not in own]
    return names


def _is_weight(c: "Const") -> bool:
    """A constant an unfollowed op is taken to read as a parameter: a float tensor, or an 8-bit
    (or narrower) integer one — a quantized weight — of more than one element."""
    return c.data.size > 1 and (c.is_float or (c.data.dtype.kind in "iu" and c.data.dtype.itemsize == 1))


def _leaf_consts(c: "Const") -> list["Const"]:
    """The pieces of a constant that map to source tensors (one, or the parts of a Concat)."""
    if c.origin is not None:
        return [c]
    if c.parts is not None:
        return [q for _, _, p in c.parts[1] for q in _leaf_consts(p)]
    return []


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
    "RMSNormalization": {1}, "PRelu": {1}, "LSTM": {1, 2, 3, 7}, "GRU": {1, 2, 3}, "RNN": {1, 2, 3},
}   # recurrent initial states (slots 5, 6) are run-time data when fed as inputs: streaming models pass them


@dataclass
class LoweringContext:
    """What a rule sees: the model, the graph being built, and every value so far."""

    model: OnnxModel
    graph: NeuralGraph
    values: dict[str, Const | Act | Stat | Scores | _Aux] = field(default_factory=dict)
    leaves: dict[str, np.ndarray] = field(default_factory=dict)       # source tensors by name
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    shapes: dict[str, tuple] = field(default_factory=dict)            # inferred: int, symbol (str) or None
    types: dict[str, str] = field(default_factory=dict)               # inferred numpy dtype kind ("f", "i" …)
    absorbed: set[str] = field(default_factory=set)                   # leaves folded into derived leaves
    buffers: dict[str, str] = field(default_factory=dict)             # leaves read as non-parameters
    synthetic: set[str] = field(default_factory=set)                  # derived leaves made from no parameter
    rules: "RuleTable | None" = None
    fold: "Callable | None" = None
    pinned: dict[int, str] = field(default_factory=dict)              # id(node) → why it cannot be followed
    pins: list[dict] = field(default_factory=list)                     # what was pinned, for the report
    strict: bool = False                                               # refuse instead of pinning
    _names: set[str] = field(default_factory=set)
    _producers: dict | None = None
    signals: set[str] = field(default_factory=set)                    # inputs with no feature axis (raw audio)

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
            if not neural and not has_graph and not domain and all(
                    v is None or (isinstance(v, Const) and not v.runtime) for v in ins):
                try:
                    folded = self.fold(self, node, ins)
                except NNGraphError as e:
                    # constants that cannot be computed here (they depend on sizes only known at run
                    # time): run-time data; a parameter read by them is kept as an opaque one
                    if self.strict:
                        raise
                    self.pins.append({"node": node_label(node), "op": node.op_type, "parameters": 0, "sets": [],
                                      "reason": f"constant subgraph not computed: {self._reason(e)}"})
                    folded = [AUX] * len(node.output)
                for name, value in zip(node.output, folded):
                    if name:
                        self.values[name] = value
                continue
            if id(node) in self.pinned:
                self.lower_opaque(node, self.pinned[id(node)])
                continue
            rule = self.rules.lookup(domain, node.op_type, opsets.get(domain))
            if rule is None:
                if neural or has_graph or any(isinstance(v, Const) and v.is_float and v.data.size > 1 for v in ins):
                    self.lower_opaque(node, f"no lowering rule for {domain + '::' if domain else ''}{node.op_type}")
                for o in node.output:
                    self.values.setdefault(o, AUX)
                continue
            try:
                rule.lower(self, node)
            except Unfollowed:
                raise
            except Exception as e:  # noqa: BLE001 - any rule failure means: this node cannot be followed
                raise Unfollowed(node, self._reason(e)) from e
            for o in node.output:
                self.values.setdefault(o, AUX)

    def _reason(self, e: Exception) -> str:
        """The one-line *why* of a rule failure, without the file and node its message repeats."""
        why = getattr(e, "why", None) or str(e)
        prefix = f"{self.model.path}: "
        if why.startswith(prefix):
            why = why[len(prefix):]
        why = re.sub(r"^node '[^']*' \([^)]*\): ", "", why)
        if not isinstance(e, UnsupportedModelError):
            why = f"{type(e).__name__}: {why}"
        return why.split("\n")[0]

    # ------------------------------------------------------------------ pinning
    def pin(self, node: onnx.NodeProto, sets: Iterable[str], reason: str) -> None:
        """Fix ``sets`` (and all tied to them) because part of ``node`` cannot be followed,
        while the rule lowers the rest of it; recorded as a pin, refused under ``strict``."""
        label = node_label(node)
        if self.strict:
            raise UnsupportedModelError(f"{self.model.path}: node {label!r} ({node.op_type}): {reason} "
                                        f"(pinned; --strict refuses)")
        sets = list(dict.fromkeys(sets))
        for name in sets:
            self.graph.fix(name)
        self.pins.append({"node": label, "op": node.op_type, "reason": reason, "sets": sets, "parameters": 0})

    def lower_opaque(self, node: onnx.NodeProto, reason: str) -> None:
        """Lower a node that cannot be followed: pin what it reads, keep its parameters as
        ``opaque`` blocks, and give each float output of known size a fresh fixed set."""
        label = node_label(node)
        op = f"{node.domain + '::' if node.domain not in ('', 'ai.onnx') else ''}{node.op_type}"
        if self.strict:
            raise UnsupportedModelError(f"{self.model.path}: node {label!r} ({op}): {reason} "
                                        f"(pinned; --strict refuses)")
        names = list(node.input) + _outer_names(node)
        reads = [self.values.get(n) for n in dict.fromkeys(n for n in names if n)]
        touched: list[str] = []
        for v in reads:
            if isinstance(v, Act):
                touched += v.sets
            elif isinstance(v, Scores):
                touched += [s for s in (v.q, v.k, v.heads_set) if s]
        for name in dict.fromkeys(touched):
            self.graph.fix(name)
        params = [c for v in reads if isinstance(v, Const) for c in _leaf_consts(v) if _is_weight(c)]
        for sub in _subgraphs(node):     # initializers of bodies the engine does not enter
            for t in sub.initializer:
                arr = self.model.tensor(t)
                if t.name not in self.leaves:
                    self.leaves[t.name] = arr
                    if _is_weight(Const(arr)):
                        params.append(Const(arr, Origin(t.name)))
        acts = [v for v in reads if isinstance(v, Act)]
        made: list[str] = []
        for k, out in enumerate(node.output):
            if not out:
                continue
            act = self._pinned_output(node, out, acts, suffix="" if k == 0 else f":{k}")
            if act is not None:
                self.values[out] = act
                made.append(act.sets[0])
            else:
                self.values[out] = AUX
        if params:
            target = made[0] if made else self.new_set(node, 1, "hidden", inputs=acts, fixed=True, suffix="/opaque",
                                                       op=node.op_type).name
            source = acts[0].sets[0] if acts and acts[0].sets else target
            for i, c in enumerate(params):
                self.graph.add_block(self.unique(f"{label}/opaque{i}"), source, target, "opaque", self.param(c, True),
                                     op=node.op_type)
        self.pins.append({"node": label, "op": op, "reason": reason,
                          "sets": list(dict.fromkeys(touched + made)),
                          "parameters": int(sum(c.data.size for c in params))})

    def _pinned_output(self, node: onnx.NodeProto, name: str, acts: list["Act"], suffix: str) -> "Act | None":
        shape = self.shape(name)
        if self.types.get(name, "f") != "f" or not shape:
            return None
        rank = len(shape)
        same = [a for a in acts if a.rank == rank and a.axis is not None and a.axis < rank and a.seg_axis is None]
        if node.op_type in CHANNEL_FIRST and rank >= 3:
            axis = 1                                  # what the op itself says
        else:                                         # what reads it says, else where its input had neurons
            axis = _input_axis(self, name, rank, decisive=True)
            if axis is None:
                axis = same[0].axis if same else _input_axis(self, name, rank)
        size = shape[axis] if axis is not None and -rank <= axis < rank else None
        if not isinstance(size, int) or size <= 0:
            return None
        s = self.new_set(node, size, "hidden", inputs=acts, fixed=True, suffix=suffix, op=node.op_type)
        return Act((s.name,), axis % rank, rank)

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

    def producer(self, name: str) -> onnx.NodeProto | None:
        """The node that computes ``name`` (None for inputs and initializers)."""
        if self._producers is None:
            self._producers = {o: n for g in all_graphs(self.model.graph) for n in g.node for o in n.output}
        return self._producers.get(name)

    def varying_shape(self, name: str, depth: int = 0) -> tuple | None:
        """The shape of a run-time value with the axes along which it cannot vary set to 1:
        those an ``Expand`` only broadcast (copies of one value), through elementwise ops (a
        mask made with And/Where/Cast varies where one of its operands does)."""
        shape = self.shape(name)
        node = self.producer(name)
        c = self.const(name)
        if c is not None:
            return tuple(c.data.shape) if c.data.size > 1 and c.value.min() != c.value.max() else ()
        if shape is None or node is None or depth > 16:
            return shape
        if node.op_type == "Expand" or node.op_type in ELEMENTWISE:
            ins = node.input[:1] if node.op_type == "Expand" else [i for i in node.input if i]
            parts = [self.varying_shape(i, depth + 1) for i in ins]
            if any(p is None or len(p) > len(shape) for p in parts):
                return shape
            out = [1] * len(shape)
            for p in parts:
                for k, d in enumerate(p, start=len(shape) - len(p)):
                    if d != 1:
                        out[k] = shape[k] if shape[k] != 1 else d
            return tuple(out)
        return shape

    @property
    def batch_is_placeholder(self) -> bool:
        """Shape inference ran with ``BATCH`` for the model's symbolic batch dims."""
        inits = {t.name for t in self.model.graph.initializer}
        return any(len(i.type.tensor_type.shape.dim) >= 2 and not i.type.tensor_type.shape.dim[0].HasField("dim_value")
                   for i in self.model.graph.input if i.name not in inits)

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
        """The error a rule raises when it cannot follow ``node``: the engine pins the node
        (``why`` becomes the pin's reason), or refuses the model under ``strict``."""
        e = UnsupportedModelError(f"{self.model.path}: node {node_label(node)!r} ({node.op_type}): {why}")
        e.why = why
        return e

    # ------------------------------------------------------------------ building
    def unique(self, base: str) -> str:
        name, i = base or "v", 1
        while name in self._names:
            i += 1
            name = f"{base}#{i}"
        self._names.add(name)
        return name

    def param(self, c: Const, checked: bool = False) -> Param:
        """Use a constant as a parameter: registers its leaf as a source tensor of the model.
        ``checked``: the caller made sure that the run-time data a ``runtime`` constant was
        combined with does not vary along the axes its neurons are on."""
        if c.origin is None:
            raise UnsupportedModelError(f"{self.model.path}: a parameter is computed from non-constant data")
        if c.runtime and c.varies != () and not checked:
            raise UnsupportedModelError(f"{self.model.path}: a parameter is combined with run-time data "
                                        f"({c.origin.tensor!r})")
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
        """Split ``set_name`` into consecutive parts of ``sizes`` (a fused QKV projection, a
        channel split, a residual added to part of the channels) and return the parts' names.

        Every set tied to it is split alike and each part becomes its own tie group: the parts
        still move together with their counterparts, but independently of each other. Incoming
        and outgoing dense/conv blocks are sliced (rows or columns), diagonal blocks inside the
        group split part by part, per-neuron arrays sliced — all exact origins. Head or
        channel-group structure, and blocks that both start and end in the group, are refused."""
        g = self.graph
        if len(sizes) == 1:
            return [set_name]
        gname = g.sets[set_name].group
        group = g.groups[gname]
        members = [t for t in g.sets.values() if t.group == gname]
        inside = {t.name for t in members}
        why = None
        if group.parent or any(x.parent == gname for x in g.groups.values()):
            why = "it is split into heads or channel groups"
        for b in g.blocks:
            if why or (b.source not in inside and b.target not in inside):
                continue
            if b.pattern == "diagonal" and b.source in inside and b.target in inside:
                continue
            if b.pattern == "full" and b.groups == 1 and (b.source in inside) != (b.target in inside):
                continue
            why = f"block {b.name!r} ({b.kind}) cannot be cut along it"
        if why:
            raise UnsupportedModelError(f"{self.model.path}: cannot split neuron set {set_name!r} ({why})")
        bounds = np.cumsum([0, *sizes])
        parts: dict[str, list[str]] = {}
        for m in members:
            names = []
            for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
                first = parts[members[0].name][i] if m is not members[0] else None
                t = g.add_set(self.unique(f"{m.name}[{i}]"), int(hi - lo), m.role, depth=m.depth,
                              activation=m.activation, fixed=group.fixed, tie=first, **m.attrs)
                g.groups[t.group].rigid = group.rigid
                for key, p in m.arrays.items():
                    t.arrays[key] = _slice_param(p, 0, lo, hi)
                names.append(t.name)
            parts[m.name] = names
        kept = []
        for b in g.blocks:
            if b.source not in inside and b.target not in inside:
                kept.append(b)
                continue
            for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
                src = parts[b.source][i] if b.source in inside else b.source
                tgt = parts[b.target][i] if b.target in inside else b.target
                axis = 1 if (b.pattern == "full" and b.target not in inside) else 0
                w = _slice_param(b.weight, axis, lo, hi) if b.weight is not None else None
                kept.append(EdgeBlock(f"{b.name}[{i}]", src, tgt, b.kind, w, dict(b.attrs)))
        g.blocks = kept
        for m in members:
            del g.sets[m.name]
        del g.groups[gname]
        for key, v in list(self.values.items()):   # values that carried the sets now carry their parts
            if isinstance(v, Act) and inside & set(v.sets):
                sets = tuple(p for x in v.sets for p in parts.get(x, [x]))
                inners = None if v.inners is None else tuple(
                    t for x, t in zip(v.sets, v.inners) for _ in parts.get(x, [x]))
                self.values[key] = v.but(sets=sets, inners=inners)
        return parts[set_name]


def _slice_param(p: Param, axis: int, start: int, stop: int) -> Param:
    index = [slice(None)] * p.data.ndim
    index[axis] = slice(start, stop)
    return Param(p.data[tuple(index)], p.origin.slice(axis, start, stop) if p.origin else None)


Fold = Callable[[LoweringContext, onnx.NodeProto, list], list]


def lower_model(model: OnnxModel, rules: RuleTable, fold: Fold, bind: dict[str, np.ndarray] | None = None,
                strict: bool = False) -> NeuralGraph:
    """Lower ``model`` into a neural graph, pinning what cannot be followed (see the module
    docstring); ``strict`` refuses at the first pin instead."""
    shapes, types = infer_shapes(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for sub in all_graphs(model.graph):
        for node in sub.node:
            for i in node.input:
                consumers.setdefault(i, []).append(node)
    pinned: dict[int, str] = {}
    while True:
        ctx = LoweringContext(model, NeuralGraph(), shapes=shapes, types=types, consumers=consumers, rules=rules,
                              fold=fold, pinned=pinned, strict=strict)
        try:
            return _lower_once(ctx, bind)
        except Unfollowed as e:
            if strict:
                raise UnsupportedModelError(f"{model.path}: node {node_label(e.node)!r} ({e.node.op_type}): "
                                            f"{e.reason} (--strict refuses what would be pinned)") from None
            pinned[id(e.node)] = e.reason


def _lower_once(ctx: LoweringContext, bind: dict[str, np.ndarray] | None) -> NeuralGraph:
    model, graph = ctx.model, ctx.graph
    g = model.graph
    graph.meta.update({
        "producer": f"{model.proto.producer_name} {model.proto.producer_version}".strip(),
        "opsets": model.opsets, "ir_version": model.proto.ir_version,
    })
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
    for out in g.output:
        v = ctx.values.get(out.name)
        if isinstance(v, Act):
            for name in v.sets:
                s = graph.sets[name]
                if s.role == "hidden":
                    s.role = "output"
                elif s.role != "output":
                    s.attrs["network_output"] = True     # an output that kept its role (a scale, a norm)
                graph.fix(name)
    _share(ctx)
    _account(ctx)
    graph.meta["probes"] = _probes(ctx)
    graph.meta["pins"] = ctx.pins
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
    opaque: set[int] = set()      # params of opaque blocks: read unpermuted, so every use is pinned
    for s in g.sets.values():
        for p in s.arrays.values():
            if p.origin is not None:
                uses.setdefault(p.origin.tensor, []).append((p, [s.name]))
    for b in g.blocks:
        if b.weight is None or b.weight.origin is None:
            continue
        if b.pattern == "full":
            sets = [b.target, b.source if b.groups == 1 else None]
        elif b.pattern == "opaque":
            sets = [b.source, b.target]
            opaque.add(id(b.weight))
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
            if any(id(p) in opaque for _, p, _ in cluster) and not constant:
                for _, _, sets in cluster:
                    for name in sets:
                        if name is not None:
                            g.fix(name)
                for _, p, _ in cluster[1:]:
                    p.shared = True
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
    one, a declared buffer or unused. One read only where no neurons are tracked becomes an
    opaque parameter (pinned, recorded); under ``strict``, or read by nothing, it is listed as
    unmapped with the reason."""
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
        readers = ctx.consumers.get(name, [])
        if not readers and name not in {o.name for o in ctx.model.graph.output}:
            unused.append(name)
            continue
        if not readers or ctx.strict:
            labels = [node_label(n) for n in readers]
            graph.add_source(name, arr.shape, arr.dtype)
            graph.unmapped[name] = Unmapped(f"read by {', '.join(labels[:3]) or 'no node'}, which carry no neurons",
                                            np.asarray(arr))
            continue
        # read where no neurons were tracked (downstream of a pin that lost the layout): kept as an
        # opaque parameter of a fixed one-node set standing for the reading node
        reader = readers[0]
        holder = ctx.new_set(reader, 1, "hidden", layer=False, fixed=True, suffix="/opaque", op=reader.op_type)
        graph.add_block(ctx.unique(f"{node_label(reader)}/opaque:{name}"), holder.name, holder.name, "opaque",
                        ctx.param(Const(arr, Origin(name))), op=reader.op_type)
        ctx.pins.append({"node": node_label(reader), "op": reader.op_type, "parameters": int(arr.size), "sets": [holder.name],
                         "reason": "reads a parameter in a computation that carries no tracked neurons"})
    if unused:
        graph.meta["unused_constants"] = unused
    if buffers:
        graph.meta["buffers"] = buffers


CHANNEL_FIRST = ("Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "GlobalMaxPool", "LRN")


def _input_axis(ctx: LoweringContext, name: str, rank: int, decisive: bool = False) -> int | None:
    """Which axis of a data input carries its features: axis 1 when a channel-first op reads it
    (through a layout Transpose, as Keras/TensorFlow exports do: NHWC → the last axis), the
    last axis when a MatMul/Gemm/Einsum reads it, else 1 for images and the last for sequences
    (``decisive``: None instead of that guess). None also when the input only becomes the
    channel axis of a channel-first op by an ``Unsqueeze`` (raw audio [B, T] → [B, 1, T]): then
    it has one feature, which the Unsqueeze rule creates."""
    frontier, perm = [name], list(range(rank))
    for _ in range(8):
        uses = [n for v in frontier for n in ctx.consumers.get(v, [])]
        if not uses:
            break
        n = uses[0]
        if n.op_type == "Transpose":
            p = next((list(a.ints) for a in n.attribute if a.name == "perm"), list(range(rank))[::-1])
            if sorted(p) != list(range(len(perm))):
                break                          # not this value's rank: shapes disagree, stop guessing
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
        if n.op_type == "Unsqueeze" and _unsqueezed_channel(ctx, n):
            return None
        break
    if decisive:
        return None
    return perm[1] if rank >= 4 or rank == 2 else perm[-1] if rank == 3 else 0


def _unsqueezed_channel(ctx: LoweringContext, node: onnx.NodeProto) -> bool:
    """An Unsqueeze that adds axis 1 for a channel-first op to read as its (single) channel."""
    axes = ctx.attr(node, "axes")
    if axes is None and len(node.input) > 1:
        c = ctx.const(node.input[1])
        src = ctx.producer(node.input[1])
        if c is None and src is not None and src.op_type == "Constant" and src.attribute[0].name == "value":
            c = Const(onnx.numpy_helper.to_array(src.attribute[0].t))
        axes = None if c is None else [int(a) for a in np.asarray(c.data).reshape(-1)]
    return list(axes or []) == [1] and any(n.op_type in CHANNEL_FIRST for n in ctx.consumers.get(node.output[0], []))


def _add_input(ctx: LoweringContext, inp: onnx.ValueInfoProto) -> None:
    t = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else np.dtype(np.float32)
    if np.dtype(np_dtype).kind != "f" or not dims:
        ctx.values[inp.name] = AUX
        return
    axis = _input_axis(ctx, inp.name, len(dims))
    if axis is None:             # becomes a one-channel signal by an Unsqueeze (see _unsqueezed_channel)
        ctx.values[inp.name] = AUX
        ctx.signals.add(inp.name)
        return
    size = dims[axis] or _size_from_consumers(ctx, inp.name)
    if not size:
        if ctx.strict:
            raise UnsupportedModelError(f"{ctx.model.path}: input {inp.name!r} has a dynamic feature axis {axis}")
        ctx.pins.append({"node": inp.name, "op": "input", "reason": f"dynamic feature axis {axis} (size unknown)",
                         "sets": [], "parameters": 0})
        ctx.values[inp.name] = AUX
        return
    s = ctx.graph.add_set(ctx.unique(inp.name), size, "input", depth=0, fixed=True)
    ctx.values[inp.name] = Act((s.name,), axis, len(dims))


def _size_from_consumers(ctx: LoweringContext, name: str) -> int | None:
    """The feature size of a data input whose axis is symbolic, read off the weight of the
    layer that consumes it (through layout-only ops): Conv in-channels, MatMul/Gemm rows."""
    frontier = [name]
    for _ in range(8):
        uses = [n for v in frontier for n in ctx.consumers.get(v, [])]
        if not uses:
            return None
        n = uses[0]
        w = ctx.const(n.input[1]) if len(n.input) > 1 else None
        if n.op_type == "Conv" and w is not None and w.data.ndim >= 3:
            return int(w.data.shape[1]) * int(ctx.attr(n, "group", 1))
        if n.op_type == "MatMul" and w is not None and w.data.ndim >= 2 and n.input[0] == frontier[0]:
            return int(w.data.shape[-2])
        if n.op_type == "Gemm" and w is not None and w.data.ndim == 2:
            return int(w.data.shape[1 if ctx.attr(n, "transB", 0) else 0])
        if n.op_type in ("Identity", "Cast", "Dropout", "Transpose"):
            frontier = [n.output[0]]
            continue
        return None
    return None


def all_graphs(g: onnx.GraphProto):
    """A graph and every subgraph nested in its nodes (If / Loop / Scan bodies)."""
    yield g
    for node in g.node:
        yield from _subgraphs(node)


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


def infer_shapes(model: OnnxModel) -> tuple[dict[str, tuple], dict[str, str]]:
    """Static shapes (and element kinds: "f", "i" …) of every value inference can tell."""
    shapes, types = _infer_shapes_once(model.proto)
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
        again, again_types = _infer_shapes_once(proto)
        types = {**again_types, **types}
        for k, v in again.items():
            if k not in shapes or (not all(isinstance(d, int) for d in shapes[k]) and all(isinstance(d, int) for d in v)):
                shapes[k] = v
    return shapes, types


def _infer_shapes_once(proto: onnx.ModelProto) -> tuple[dict[str, tuple], dict[str, str]]:
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
    types: dict[str, str] = {}
    for g in all_graphs(inferred.graph):
        for vi in [*g.input, *g.value_info, *g.output]:
            t = vi.type.tensor_type
            if t.elem_type:
                types[vi.name] = _elem_kind(t.elem_type)
            if t.HasField("shape"):   # ints, symbolic names (str: equal names are equal sizes), None
                shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value")
                                        else (d.dim_param or None) for d in t.shape.dim)
        for t in g.initializer:
            shapes[t.name] = tuple(t.dims)
    return shapes, types


def _elem_kind(elem_type: int) -> str:
    """numpy's kind letter of an ONNX element type ("f" for every float format, bf16 and fp8 too)."""
    name = onnx.TensorProto.DataType.Name(elem_type)
    if name.startswith(("FLOAT", "BFLOAT", "DOUBLE")):
        return "f"
    return {"BOOL": "b", "STRING": "U"}.get(name, "u" if name.startswith("UINT") else "i")
