"""Elementwise ops: activations, pass-through ops, per-channel affine maps, residual sums."""
from __future__ import annotations

import onnx

from nngraph.hookspecs import OpRule

from ..engine import AUX, Act, LoweringContext
from .common import fail, per_channel, single_consumer

#: ONNX op → activation name recorded on the neuron set.
ACTIVATIONS = {
    "Relu": "relu", "LeakyRelu": "leaky_relu", "Elu": "elu", "Selu": "selu", "Celu": "celu",
    "Gelu": "gelu", "Sigmoid": "sigmoid", "HardSigmoid": "hard_sigmoid", "Tanh": "tanh",
    "Softplus": "softplus", "Softsign": "softsign", "HardSwish": "hard_swish", "Mish": "mish",
    "Sin": "sin", "Cos": "cos", "Exp": "exp", "Abs": "abs", "ThresholdedRelu": "thresholded_relu",
    "Clip": "clip", "Softmax": "softmax", "LogSoftmax": "log_softmax",
}
#: Ops that leave the tracked axis and its values' meaning unchanged.
PASSTHROUGH = ("Identity", "Dropout", "Cast", "CastLike", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil",
               "Round", "Sign", "Erf", "Log")


def _activate(ctx: LoweringContext, node: onnx.NodeProto, name: str) -> None:
    x = ctx.act(node.input[0])
    if x is None:
        raise fail(ctx, node, "input is not a tracked activation")
    if name in ("softmax", "log_softmax"):
        axis = ctx.attr(node, "axis", -1)
        if x.rank is not None and axis % x.rank != x.axis:
            ctx.set_output(node, x)   # softmax over tokens or space: channel-wise a pass-through
            return
    attrs = {k: onnx.helper.get_attribute_value(a) for a in node.attribute for k in [a.name]
             if isinstance(onnx.helper.get_attribute_value(a), (int, float))}
    s = ctx.graph.sets[x.set]
    if s.activation is None and s.role not in ("input", "output") and single_consumer(ctx, node.input[0]):
        s.activation = name
        s.attrs.update({f"activation_{k}": v for k, v in attrs.items()})
        ctx.set_output(node, Act(x.set, x.axis, x.rank))
        return
    t = ctx.new_set(node, s.size, s.role if s.role != "input" else "hidden", inputs=[x], layer=False, tie=x.set)
    t.activation = name
    t.attrs.update({f"activation_{k}": v for k, v in attrs.items()})
    ctx.graph.add_block(t.name, x.set, t.name, "identity")
    ctx.set_output(node, Act(t.name, x.axis, x.rank))


def _activation_rule(op: str, name: str) -> OpRule:
    return OpRule(op, lambda ctx, node: _activate(ctx, node, name))


def lower_passthrough(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    ctx.set_output(node, ctx.values[node.input[0]])
    for i in range(1, len(node.output)):
        ctx.set_output(node, AUX, i)


def lower_binary(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    op = node.op_type
    a, b = (ctx.values.get(i) for i in node.input[:2])
    if isinstance(a, Act) and isinstance(b, Act):
        return _combine(ctx, node, a, b)
    x, c, act_first = (a, ctx.const(node.input[1]), True) if isinstance(a, Act) else (b, ctx.const(node.input[0]), False)
    if c is None:
        raise fail(ctx, node, "operand is neither a tracked activation nor a constant")
    if c.data.size == 1:   # a scalar: a fixed hyperparameter of the op, not a per-neuron parameter
        ctx.set_output(node, x)
        return
    size = ctx.graph.sets[x.set].size
    vec = per_channel(c, x, size)
    if vec is None or not c.is_float:
        raise fail(ctx, node, f"constant of shape {c.data.shape} does not broadcast along the "
                              f"{size}-neuron axis {x.axis} of an input of rank {x.rank}")
    s = ctx.graph.sets[x.set]
    if op == "Add" and x.stage == "linear" and "bias" not in s.arrays and single_consumer(ctx, node.input[0 if act_first else 1]):
        s.arrays["bias"] = ctx.param(vec)
        ctx.set_output(node, Act(x.set, x.axis, x.rank, stage="out"))
        return
    if op == "Div" and not act_first:
        raise fail(ctx, node, "constant divided by an activation")
    kind = "scale" if op in ("Mul", "Div") else "identity"
    t = ctx.new_set(node, size, "scale", inputs=[x], layer=False, tie=x.set, op=op if act_first else f"r{op.lower()}")
    ctx.graph.add_block(t.name, x.set, t.name, kind, ctx.param(vec) if kind == "scale" else None)
    if kind == "identity":
        t.arrays["shift"] = ctx.param(vec)
    ctx.set_output(node, Act(t.name, x.axis, x.rank))


def _combine(ctx: LoweringContext, node: onnx.NodeProto, a: Act, b: Act) -> None:
    """Two activations combined elementwise: a residual sum, a gate. Ties their neurons."""
    sa, sb = ctx.graph.sets[a.set], ctx.graph.sets[b.set]
    ra = a.rank or 0
    rb = b.rank or 0
    if sa.size != sb.size or (ra - a.axis) != (rb - b.axis):
        raise fail(ctx, node, f"combines {sa.size} neurons on axis {a.axis} with {sb.size} on axis {b.axis}")
    t = ctx.new_set(node, sa.size, "residual", inputs=[a, b], layer=False, tie=a.set, op=node.op_type)
    ctx.graph.tie(t.name, b.set)
    ctx.graph.add_block(f"{t.name}/a", a.set, t.name, "identity")
    ctx.graph.add_block(f"{t.name}/b", b.set, t.name, "identity")
    ctx.set_output(node, Act(t.name, max(a.axis, b.axis), max(ra, rb) or None))


RULES = [
    *(_activation_rule(op, name) for op, name in ACTIVATIONS.items()),
    *(OpRule(op, lower_passthrough) for op in PASSTHROUGH),
    *(OpRule(op, lower_binary) for op in ("Add", "Sub", "Mul", "Div")),
]
