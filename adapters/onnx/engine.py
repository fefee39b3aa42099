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

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import onnx

from nngraph.errors import UnsupportedModelError
from nngraph.hookspecs import OpRule
from nngraph.ir import NeuralGraph, Param
from nngraph.origin import Origin

from .reader import OnnxModel


@dataclass
class Const:
    data: np.ndarray
    origin: Origin | None = None

    def transpose(self, perm) -> "Const":
        return Const(self.data.transpose(perm), self.origin.transpose(perm) if self.origin else None)

    def reshape(self, shape) -> "Const":
        shape = tuple(int(s) for s in shape)
        return Const(self.data.reshape(shape), self.origin.reshape(shape) if self.origin else None)

    def slice(self, axis: int, start: int, stop: int) -> "Const":
        index = [slice(None)] * self.data.ndim
        index[axis] = slice(start, stop)
        return Const(self.data[tuple(index)], self.origin.slice(axis, start, stop) if self.origin else None)

    @property
    def is_float(self) -> bool:
        return self.data.dtype.kind == "f" or self.data.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")


@dataclass
class Act:
    set: str
    axis: int
    rank: int | None = None
    stage: str = "out"   # "linear": raw layer output, a bias may still attach; "out": anything later


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


@dataclass
class LoweringContext:
    """What a rule sees: the model, the graph being built, and every value so far."""

    model: OnnxModel
    graph: NeuralGraph
    values: dict[str, Const | Act | _Aux] = field(default_factory=dict)
    leaves: dict[str, np.ndarray] = field(default_factory=dict)       # source tensors by name
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    shapes: dict[str, tuple] = field(default_factory=dict)            # inferred; None = dynamic dim
    _names: set[str] = field(default_factory=set)

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
            raise ValueError("constant without origin used as a parameter")
        leaf = self.leaves[c.origin.tensor]
        if c.origin.tensor not in self.graph.sources:
            self.graph.add_source(c.origin.tensor, leaf.shape, leaf.dtype)
        return Param(c.data, c.origin)

    def new_set(self, node: onnx.NodeProto, size: int, role: str = "hidden", *, inputs: Iterable[Act] = (),
                layer: bool = True, tie: str | None = None, suffix: str = "", **attrs):
        depth = max((self.graph.sets[a.set].depth for a in inputs), default=0) + (1 if layer else 0)
        name = self.unique((node.name or node.output[0]) + suffix)
        return self.graph.add_set(name, size, role, depth=depth, tie=tie, **attrs)

    def set_output(self, node: onnx.NodeProto, value, index: int = 0) -> None:
        if index < len(node.output) and node.output[index]:
            self.values[node.output[index]] = value


Fold = Callable[[LoweringContext, onnx.NodeProto, list], list]


def lower_model(model: OnnxModel, rules: RuleTable, fold: Fold) -> NeuralGraph:
    g = model.graph
    graph = NeuralGraph(meta={
        "producer": f"{model.proto.producer_name} {model.proto.producer_version}".strip(),
        "opsets": model.opsets, "ir_version": model.proto.ir_version,
    })
    ctx = LoweringContext(model, graph, shapes=infer_shapes(model))
    for node in g.node:
        for i in node.input:
            ctx.consumers.setdefault(i, []).append(node)

    for t in g.initializer:
        arr = model.tensor(t)
        ctx.leaves[t.name] = arr
        ctx.values[t.name] = Const(arr, Origin(t.name))
    init_names = {t.name for t in g.initializer}
    for inp in g.input:
        if inp.name not in init_names:
            _add_input(ctx, inp)

    unsupported: dict[str, list[str]] = {}
    opsets = model.opsets
    for node in g.node:
        ins = [ctx.values.get(i) if i else None for i in node.input]
        if any(i and i not in ctx.values for i in node.input):
            missing = [i for i in node.input if i and i not in ctx.values]
            raise UnsupportedModelError(f"{model.path}: node {node.name or node.op_type!r} reads undefined "
                                        f"value(s) {missing} (graph not topologically sorted?)")
        domain = "" if node.domain == "ai.onnx" else node.domain
        has_act = any(isinstance(v, Act) for v in ins)
        if not has_act and not domain and all(v is None or isinstance(v, Const) for v in ins):
            for name, value in zip(node.output, fold(ctx, node, ins)):
                if name:
                    ctx.values[name] = value
            continue
        rule = rules.lookup(domain, node.op_type, opsets.get(domain))
        if rule is None:
            if has_act or any(isinstance(v, Const) and v.is_float and v.data.size > 1 for v in ins):
                unsupported.setdefault(f"{domain + '::' if domain else ''}{node.op_type}", []).append(
                    node.name or node.output[0])
            for o in node.output:
                ctx.values.setdefault(o, AUX)
            continue
        rule.lower(ctx, node)
        for o in node.output:
            ctx.values.setdefault(o, AUX)
    if unsupported:
        raise UnsupportedModelError(f"{model.path}: no lowering rule for", unsupported)

    for out in g.output:
        v = ctx.values.get(out.name)
        if isinstance(v, Act):
            s = graph.sets[v.set]
            if s.role == "hidden":
                s.role = "output"
            graph.fix(s.name)
    return graph


def _add_input(ctx: LoweringContext, inp: onnx.ValueInfoProto) -> None:
    t = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else np.dtype(np.float32)
    if np.dtype(np_dtype).kind != "f" or not dims:
        ctx.values[inp.name] = AUX
        return
    axis = 1 if len(dims) >= 2 else 0
    if len(dims) == 3 and not any(n.op_type in ("Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization",
                                                 "MaxPool", "AveragePool") for n in ctx.consumers.get(inp.name, [])):
        axis = 2  # [batch, sequence, features]
    size = dims[axis]
    if size is None:
        raise UnsupportedModelError(f"{ctx.model.path}: input {inp.name!r} has a dynamic feature axis {axis}")
    s = ctx.graph.add_set(ctx.unique(inp.name), size, "input", depth=0, fixed=True)
    ctx.values[inp.name] = Act(s.name, axis, len(dims))


def infer_shapes(model: OnnxModel) -> dict[str, tuple]:
    """Static shapes of every value ONNX shape inference can tell (weights are not needed)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model.proto, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; rules that need shapes say so
        inferred = model.proto
    shapes: dict[str, tuple] = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    for t in g.initializer:
        shapes[t.name] = tuple(t.dims)
    return shapes
