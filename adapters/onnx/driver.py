"""The driver: lower an ONNX model into a neural graph.

Nodes are visited in topological order (:meth:`LoweringContext.walk <nngraph.adapters.onnx.context.LoweringContext.walk>`).
A node whose inputs are all constants is folded (index-only ops keep the exact origin; anything
else becomes a *derived* leaf named after its output). Every other node goes to the rule
registered for its (domain, op type, opset) (:mod:`.registry`).

**Sound degradation.** A node the engine cannot follow — no rule, or a rule that finds a
structure it cannot prove — is *pinned*: the neuron sets it reads are fixed (with whatever is
tied to them), its parameters are kept as ``opaque`` blocks (exact origins, so the round trip
stays exact and coverage stays 1), and its outputs become fresh fixed sets sized from shape
inference, from which lowering continues. A failing rule may have half-built structure, so
:func:`lower_model` lowers again from the start with that node pinned (the failure is remembered
by node); nothing a failed rule did survives. ``strict=True`` refuses instead, naming the first pin.

After the walk, :mod:`.passes` mark the outputs, tie shared parameters and account for every
constant. Graph inputs are classified here: data (a fixed ``input`` set on the axis
:meth:`~nngraph.adapters.onnx.context.LoweringContext.feature_axis` finds) or parameters fed at
run time (old exporters), whose values ``bind`` gives.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from nngraph.errors import UnsupportedModelError
from nngraph.graph.ir import NeuralGraph
from nngraph.graph.origin import Origin

from .context import LoweringContext, Unfollowed
from .graphs import all_graphs, node_label
from .passes import account_constants, mark_outputs, probes, share_parameters
from .reader import OnnxModel
from .registry import RuleTable
from .shapes import infer_shapes
from .values import AUX, Act, Const

#: Folds a node whose inputs are all constants: ``fold(ctx, node, inputs) → output values``
#: (:func:`nngraph.adapters.onnx.folding.fold`, wrapped by the adapter to turn numpy errors into input errors).
Fold = Callable[[LoweringContext, onnx.NodeProto, list], list]


#: For each op, the input slots that hold parameters. A graph input read only in such slots
#: (old exporters made BatchNormalization scales graph inputs) is a parameter fed at run time.
PARAM_SLOTS: dict[str, set[int]] = {
    "Conv": {1, 2}, "ConvTranspose": {1, 2}, "Gemm": {1, 2}, "BatchNormalization": {1, 2, 3, 4},
    "InstanceNormalization": {1, 2}, "LayerNormalization": {1, 2}, "GroupNormalization": {1, 2},
    "RMSNormalization": {1}, "PRelu": {1}, "LSTM": {1, 2, 3, 7}, "GRU": {1, 2, 3}, "RNN": {1, 2, 3},
}   # recurrent initial states (slots 5, 6) are run-time data when fed as inputs: streaming models pass them


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
    pinned: dict[int, str] = _runtime_weight_pins(model, consumers, bind)
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
    """One attempt: inputs, the walk, the passes. Raises :class:`Unfollowed` when a rule fails."""
    model, graph = ctx.model, ctx.graph
    g = model.graph
    graph.meta.update({
        "producer": f"{model.proto.producer_name} {model.proto.producer_version}".strip(),
        "opsets": model.opsets, "ir_version": model.proto.ir_version,
    })
    ctx.add_initializers(g)
    init_names = {t.name for t in g.initializer}
    for inp in g.input:
        if inp.name in init_names:
            continue
        if _reads_as_parameter(inp, ctx.consumers):
            if bind is not None and inp.name in bind:
                arr = np.asarray(bind[inp.name])
                ctx.leaves[inp.name] = arr
                ctx.values[inp.name] = Const(arr, Origin(inp.name))
                graph.meta.setdefault("bound_inputs", []).append(inp.name)
            else:       # no value: the nodes reading it are pinned (_runtime_weight_pins), it has no neurons
                ctx.values[inp.name] = AUX
            continue
        _add_input(ctx, inp)

    ctx.walk(g.node)
    mark_outputs(ctx)
    share_parameters(ctx)
    account_constants(ctx)
    graph.meta["probes"] = probes(ctx)
    graph.meta["pins"] = ctx.pins
    graph.leaves = {name: ctx.leaves[name] for name in graph.sources if name not in graph.unmapped}
    return graph


def _reads_as_parameter(inp: onnx.ValueInfoProto, consumers: dict[str, list[onnx.NodeProto]]) -> bool:
    """A graph input without an initializer that is only read in parameter slots (a weight
    fed at run time, allowed before IR version 4) is a parameter, not data."""
    t = inp.type.tensor_type
    if t.elem_type and np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).kind != "f":
        return False
    uses = consumers.get(inp.name, [])
    return bool(uses) and all(
        any(i == inp.name and k in PARAM_SLOTS.get(n.op_type, ()) for k, i in enumerate(n.input)) for n in uses)


def _runtime_weight_pins(model: OnnxModel, consumers: dict, bind: dict | None) -> dict[int, str]:
    """Pins for the nodes that read a weight fed at run time and not given with ``bind`` (``--inputs``).
    Its values are not in the file: such an input may be a weight (old exporters) or data (``A @ B`` of two
    inputs), and either way the node cannot be read as a layer. Pinning it keeps the rest of the model
    instead of refusing it, and the reason says how to supply the values."""
    init_names = {t.name for t in model.graph.initializer}
    pins: dict[int, str] = {}
    for inp in model.graph.input:
        if inp.name in init_names or (bind is not None and inp.name in bind) or not _reads_as_parameter(inp, consumers):
            continue
        for node in consumers[inp.name]:
            pins.setdefault(id(node), f"weight slot fed at run time by graph input {inp.name!r} "
                                      f"(its values: --inputs FILE.npz)")
    return pins



def _add_input(ctx: LoweringContext, inp: onnx.ValueInfoProto) -> None:
    """A data input: a fixed ``input`` set on its feature axis (AUX when it has none)."""
    t = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else np.dtype(np.float32)
    if np.dtype(np_dtype).kind != "f" or not dims:
        ctx.values[inp.name] = AUX
        return
    axis = ctx.feature_axis(inp.name, len(dims))
    if axis is None:             # becomes a one-channel signal by an Unsqueeze (see feature_axis)
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
