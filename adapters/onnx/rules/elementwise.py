"""Elementwise ops: activations, pass-through ops, per-channel affine maps, residual sums and gates."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from ..context import LoweringContext
from ..registry import rule
from ..values import AUX, Act, Const, Scores, Stat
from .common import combine, map_segments, per_channel, positional, single_consumer, tied_copy, vector_slices

#: ONNX op → activation name recorded on the neuron set.
ACTIVATIONS = {
    "Relu": "relu", "LeakyRelu": "leaky_relu", "Elu": "elu", "Selu": "selu", "Celu": "celu",
    "Gelu": "gelu", "Sigmoid": "sigmoid", "HardSigmoid": "hard_sigmoid", "Tanh": "tanh",
    "Softplus": "softplus", "Softsign": "softsign", "HardSwish": "hard_swish", "Mish": "mish",
    "Sin": "sin", "Cos": "cos", "Exp": "exp", "Abs": "abs", "ThresholdedRelu": "thresholded_relu",
    "Clip": "clip", "Softmax": "softmax", "LogSoftmax": "log_softmax", "Swish": "swish",
}
MS_ACTIVATIONS = {"FastGelu": "gelu", "Gelu": "gelu", "QuickGelu": "gelu", "BiasGelu": "gelu"}
#: Ops that keep every value's place (and meaning up to a fixed map) on the neuron axis.
PASSTHROUGH = ("Identity", "Dropout", "Cast", "CastLike", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil",
               "Round", "Sign", "Erf", "Log", "Not", "IsNaN", "IsInf")


def _activate(ctx: LoweringContext, node: onnx.NodeProto, name: str) -> None:
    v = ctx.values.get(node.input[0])
    if isinstance(v, (Stat, Scores)) or v is AUX:
        ctx.set_output(node, v)          # softmax over attention scores, activations of statistics
        return
    if isinstance(v, Const) and v.runtime:    # cos/sin of a parameter times run-time positions: its place
        ctx.set_output(node, replace(v, varies=None if v.varies is None else v.varies))
        return
    x = ctx.act(node.input[0])
    if x is None:
        raise ctx.fail(node, "input is not a tracked activation")
    if name in ("softmax", "log_softmax") and x.rank is not None:
        axis = ctx.attr(node, "axis", -1 if ctx.model.opsets.get("", 13) >= 13 else 1) % x.rank
        if axis != x.axis or x.inner != 1 or x.heads:
            ctx.set_output(node, x)   # over tokens or space: channel-wise a pass-through
            return
    attrs = {f"activation_{a.name}": onnx.helper.get_attribute_value(a) for a in node.attribute
             if a.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.INT)}
    extra = [ctx.const(i) for i in node.input[1:] if i]       # Clip min/max, BiasGelu bias
    bias = next((c for c in extra if c is not None and c.data.size > 1), None)
    for c in extra:
        if c is not None and c.data.size == 1:
            attrs[f"activation_{'min' if c is extra[0] else 'max'}"] = float(c.data.reshape(-1)[0])
    in_place = single_consumer(ctx, node.input[0]) and bias is None

    def make(src: str, offset: int, size: int) -> str:
        s = ctx.graph.sets[src]
        if in_place and s.activation is None and s.role not in ("input", "output"):
            s.activation = name
            s.attrs.update(attrs)
            return src
        t = tied_copy(ctx, node, src, s.role if s.role not in ("input", "output") else "hidden", activation=None)
        ctx.graph.sets[t].activation = name
        ctx.graph.sets[t].attrs.update(attrs)
        if bias is not None:
            vec = per_channel(bias, x, ctx.size(x))
            if vec is None:
                raise ctx.fail(node, f"bias of shape {bias.data.shape} is not per neuron")
            ctx.graph.sets[t].arrays["bias"] = ctx.param(vec.slice(0, offset, offset + size))
        return t

    ctx.set_output(node, map_segments(ctx, x, make))


@rule(*ACTIVATIONS)
@rule(*MS_ACTIVATIONS, domain="com.microsoft")
def lower_activation(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """An activation function: recorded on the set (in place when nothing else reads it), or on
    a tied copy."""
    table = MS_ACTIVATIONS if node.domain == "com.microsoft" else ACTIVATIONS
    _activate(ctx, node, table[node.op_type])


@rule(*PASSTHROUGH)
def lower_passthrough(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    ctx.set_output(node, ctx.values[node.input[0]])
    for i in range(1, len(node.output)):
        ctx.set_output(node, AUX, i)


@rule("PRelu")
def lower_prelu(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x, slope = ctx.act(node.input[0]), ctx.const(node.input[1])
    if x is None or slope is None:
        raise ctx.fail(node, "needs an activation and a constant slope")
    if slope.data.size == 1:
        ctx.buffer(slope, "scalar PReLU slope")
        return _activate(ctx, node, "prelu")
    vec = per_channel(slope, x, ctx.size(x))
    if vec is None and slope.data.ndim == 1 and x.axis == 1 and (ctx.model.opsets.get("") or 7) < 7 \
            and slope.data.size == ctx.size(x) and not x.heads and x.inner == 1:
        vec = slope                   # opset ≤ 6 broadcast a 1-d slope along the channel axis
    if vec is None:
        raise ctx.fail(node, f"slope of shape {slope.data.shape} is not per channel")
    slices = iter(vector_slices(ctx, vec, x))

    def make(src: str, offset: int, size: int) -> str:
        t = tied_copy(ctx, node, src, "hidden")
        ctx.graph.sets[t].activation = "prelu"
        ctx.graph.sets[t].arrays["prelu_slope"] = ctx.param(next(slices))
        return t

    ctx.set_output(node, map_segments(ctx, x, make))


def _scalar_like(v) -> bool:
    return v is None or v is AUX or (isinstance(v, Const) and v.data.size == 1)


def _runtime_mix(ctx: LoweringContext, node: onnx.NodeProto, names: list[str]):
    """A parameter combined with run-time data that carries no neurons (dynamic quantization's
    activation scale × per-channel weight scales; an attention mask applied to a relative
    position bias by Add or Where): the parameter, marked ``runtime`` with the axes along which
    the rest varies, so that a later per-neuron use keeps its place — and is refused where the
    rest varies along the neurons. Anything else without neurons is AUX."""
    vals = [ctx.values.get(n) if n else None for n in names]
    params = [v for v in vals if isinstance(v, Const) and v.is_float and v.data.size > 1 and not _synthetic(ctx, v)]
    if len(params) != 1 or not any(v is AUX or isinstance(v, Stat) or (isinstance(v, Const) and v.runtime)
                                    for v in vals):
        return AUX
    c = params[0]
    varies: set[int] | None = set(c.varies or ()) if c.varies is not None else None
    for v, name in zip(vals, names):
        if v is c or v is None:
            continue
        if isinstance(v, Const) and not v.runtime:
            shape = v.data.shape if v.data.size > 1 and v.value.min() != v.value.max() else ()
        else:
            shape = ctx.varying_shape(name)
        if shape is None or varies is None:
            varies = None
        else:
            varies |= {k - len(shape) for k, d in enumerate(shape) if d != 1}
    return replace(c, runtime=True, varies=None if varies is None else tuple(sorted(varies)))


def _synthetic(ctx: LoweringContext, c: Const) -> bool:
    """Made from no parameter (masks from ConstantOfShape, Range, Trilu …)."""
    return c.synthetic or c.origin is None or c.origin.tensor in ctx.synthetic


def _varies_along_neurons(ctx: LoweringContext, name: str, x: Act) -> bool:
    """Whether a run-time value broadcast against ``x`` may have more than one entry on its
    neuron axis (then it is tied to neuron positions no rule can follow). Unknown: it may."""
    shape = ctx.varying_shape(name)
    if shape is None or x.rank is None:
        return True
    if len(shape) > x.rank:
        return False
    full = (1,) * (x.rank - len(shape)) + tuple(shape)
    axes = [x.axis] + ([x.heads[0]] if x.heads else [])
    return any(full[k] != 1 and full[k] is not None for k in axes)


@rule("Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "And", "Or", "Mod", "LessOrEqual",
      "GreaterOrEqual")
def lower_binary(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    op = node.op_type
    a, b = (ctx.values.get(i) for i in node.input[:2])
    if any(isinstance(v, Act) and v.repeated for v in (a, b)):    # repeated key/value heads: scaled only
        x, c = (a, b) if isinstance(a, Act) and a.repeated else (b, a)
        if op not in ("Mul", "Div") or not isinstance(c, Const) or c.data.size != 1 or (op == "Div" and x is b):
            raise ctx.fail(node, "combines repeated key/value heads (grouped-query attention) with more than "
                                 "a scalar")
        ctx.buffer(c, "scalar operand")
        ctx.set_output(node, x)
        return
    if isinstance(a, Act) and isinstance(b, Act):
        if _gathered_rotary(ctx, node, a, b) or _gathered_rotary(ctx, node, b, a):
            return
        return combine(ctx, node, [a, b])
    if isinstance(a, Scores) or isinstance(b, Scores):
        return _with_scores(ctx, node, a if isinstance(a, Scores) else b, b if isinstance(a, Scores) else a)
    if isinstance(a, Stat) or isinstance(b, Stat):
        other = b if isinstance(a, Stat) else a
        per_head = [v for v in (a, b) if isinstance(v, Stat) and v.heads_of]
        groups = lambda sets: {ctx.graph.sets[s].group for s in sets}    # noqa: E731
        if per_head and not (isinstance(other, Act) and all(groups(v.heads_of) == groups(other.sets) for v in per_head)
                             or isinstance(other, Stat) and len({v.heads_of for v in per_head}) == 1
                             or isinstance(other, Const) and other.data.size <= 1):
            # a statistic per head (q's norm per head) meets what its heads do not move with: they stay put
            ctx.pin(node, [s for v in per_head for s in v.heads_of] + list(other.sets if isinstance(other, Act) else ()),
                    "a statistic per attention head is combined with values its heads do not move with")
            per_head = []
        if isinstance(other, Const) and other.is_float and other.data.size > 1 and op in ("Add", "Sub", "Mul", "Div"):
            # a statistic times a per-neuron parameter (rsqrt(var) · γ): varies per neuron now
            ctx.set_output(node, _runtime_mix(ctx, node, list(node.input[:2])))
            return
        if isinstance(other, Act):
            if op in ("Div", "Mul"):           # x / sqrt(var), x * rsqrt(mean(x²)): normalization
                ctx.set_output(node, map_segments(ctx, other, lambda s, o, n: tied_copy(ctx, node, s, "norm", "norm")))
            else:
                ctx.set_output(node, other)
            return
        ctx.set_output(node, per_head[0] if per_head else a if isinstance(a, Stat) else b)
        return
    act_first = isinstance(a, Act)
    x, c = (a, b) if act_first else (b, a)
    if not isinstance(x, Act):
        ctx.set_output(node, _runtime_mix(ctx, node, list(node.input[:2])) if op in ("Add", "Sub", "Mul", "Div")
                       else AUX)
        return
    if c is AUX and _varies_along_neurons(ctx, node.input[1 if act_first else 0], x):
        if _runtime_rotary(ctx, node, x, node.input[1 if act_first else 0]):
            return
        raise ctx.fail(node, "a run-time operand varies along the neuron axis")
    if _scalar_like(c):      # a scalar or data-dependent operand: a fixed hyperparameter, no neurons
        if isinstance(c, Const):
            ctx.buffer(c, "scalar operand")
        ctx.set_output(node, x)
        return
    assert isinstance(c, Const)
    if c.runtime:            # a parameter combined with run-time data: only its place is known
        if any(c.varies_along(k, x.rank or 0) for k in [x.axis] + ([x.heads[0]] if x.heads else [])):
            raise ctx.fail(node, "a parameter combined with run-time data that varies along the neuron axis")
        c = replace(c, runtime=False, varies=())
    size = ctx.size(x)
    vec = per_channel(c, x, size) if c.is_float else None
    if vec is None and _rotary(ctx, node, x, c):
        return
    if vec is None:
        if op == "Add" and positional(ctx, node, x, c):
            return
        if not c.is_float or (c.data.size > 1 and c.data.reshape(-1).min() == c.data.reshape(-1).max()):
            ctx.buffer(c, "constant operand")        # a mask or a constant broadcast: no parameters
            ctx.set_output(node, x)
            return
        raise ctx.fail(node, f"constant of shape {c.data.shape} does not broadcast along the "
                             f"{size}-neuron axis {x.axis} of an input of rank {x.rank}")
    if op == "Add" and x.stage == "linear" and len(x.sets) == 1 and "bias" not in ctx.graph.sets[x.set].arrays \
            and single_consumer(ctx, node.input[0 if act_first else 1]):
        ctx.graph.sets[x.set].arrays["bias"] = ctx.param(vec)
        ctx.set_output(node, x.but(stage="out"))
        return
    if op == "Div" and not act_first:
        raise ctx.fail(node, "constant divided by an activation")
    if op not in ("Add", "Sub", "Mul", "Div"):
        raise ctx.fail(node, f"{op} with a per-channel constant")
    kind = "scale" if op in ("Mul", "Div") else "identity"
    tag = op if act_first else f"r{op.lower()}"
    slices = iter(vector_slices(ctx, vec, x))

    def make(src: str, offset: int, n: int) -> str:
        part = next(slices)
        if kind == "scale":
            return tied_copy(ctx, node, src, "scale", "scale", ctx.param(part), op=tag)
        t = tied_copy(ctx, node, src, "scale", op=tag)
        ctx.graph.sets[t].arrays["shift"] = ctx.param(part)
        return t

    ctx.set_output(node, map_segments(ctx, x, make))


def _with_scores(ctx: LoweringContext, node: onnx.NodeProto, scores: Scores, other) -> None:
    """Scores combined with something: a mask or scale (no neurons), a per-head bias (a
    parameter of the head nodes), or an activation over heads (a relative position bias
    looked up per head: its neurons are the heads)."""
    g = ctx.graph
    if scores.slots > 1 and (isinstance(other, Act) or isinstance(other, Const) and other.is_float
                             and other.data.size > 1 and scores.head_axis is not None
                             and ((1,) * (scores.rank - other.data.ndim) + other.data.shape)[scores.head_axis] != 1):
        raise ctx.fail(node, "a per-head term is added to the scores of grouped-query attention (its heads "
                             "nodes are the key/value heads)")
    if isinstance(other, Scores):      # two layers' scores summed (q1·k1ᵀ + q2·k2ᵀ): one permutation of heads
        _tie_heads(ctx, node, scores, other)
    elif isinstance(other, Act):
        shift = scores.rank - (other.rank or 0)
        if scores.heads_set is None or other.axis + shift != scores.head_axis or ctx.size(other) != scores.heads \
                or len(other.sets) != 1 or other.heads or other.inner != 1:
            fixed = g.fixed_groups()
            if scores.heads_set is None or node.op_type not in ("Add", "Sub") or any(
                    g.sets[s].group not in fixed for s in other.sets):
                raise ctx.fail(node, "combines attention scores with an activation that is not one value per head")
            # the output of a pinned node (Bloom's ALiBi, built where the engine could not follow): fixed
            # data that may differ per head, so the heads keep their places, their dimensions still permute
            ctx.pin(node, [scores.heads_set], "a pinned value that may vary across heads is added to the attention "
                                              "scores (ALiBi): heads stay in place")
        else:
            g.tie(other.set, scores.heads_set)
    elif isinstance(other, Const) and other.is_float and other.data.size > 1:
        if other.runtime:    # a bias combined with a mask: the mask must not vary across heads
            if scores.head_axis is not None and other.varies_along(scores.head_axis, scores.rank):
                raise ctx.fail(node, "run-time data that varies across heads is added to the attention scores")
            other = replace(other, runtime=False, varies=())
        shape = (1,) * (scores.rank - other.data.ndim) + other.data.shape
        if scores.head_axis is not None and scores.heads > 1 and shape[scores.head_axis] == scores.heads:
            full = other.reshape(shape)
            moved = full.transpose([scores.head_axis] + [d for d in range(scores.rank) if d != scores.head_axis])
            g.sets[scores.heads_set].arrays[f"score_{node.op_type.lower()}"] = ctx.param(
                moved.reshape((scores.heads, moved.data.size // scores.heads)))
        elif len(np.unique(other.value)) <= 2:
            ctx.buffer(other, "attention mask or scale")     # 0/-inf masks
    elif isinstance(other, Const):
        ctx.buffer(other, "attention scale")
    elif other is AUX and scores.head_axis is not None and scores.heads > 1:
        name = next(i for i in node.input if ctx.values.get(i) is other)
        shape = ctx.varying_shape(name)
        if shape is None or (len(shape) >= scores.rank - scores.head_axis
                             and shape[scores.head_axis - scores.rank] not in (1,)):
            if scores.heads_set is None or node.op_type not in ("Add", "Sub"):
                raise ctx.fail(node, "run-time data that may vary across heads is added to the attention scores")
            # a bias per head computed at run time (Bloom's ALiBi): the heads keep their places, the
            # dimensions inside each head still permute (q and k alike)
            ctx.pin(node, [scores.heads_set], "run-time data that may vary across heads is added to the attention "
                                              "scores (ALiBi): heads stay in place")
    ctx.set_output(node, scores)


def _tie_heads(ctx: LoweringContext, node: onnx.NodeProto, scores: Scores, other: Scores) -> None:
    """Two attentions' scores combined elementwise: one permutation of heads must serve both (their heads
    sets are tied); refused when their heads cannot be matched axis for axis."""
    if other.heads_set == scores.heads_set:
        return
    if scores.heads_set is None or other.heads_set is None or scores.heads != other.heads \
            or scores.head_axis is None or other.head_axis is None \
            or scores.head_axis - scores.rank != other.head_axis - other.rank or scores.slots != 1 or other.slots != 1:
        raise ctx.fail(node, "combines the scores of two attentions whose heads cannot be matched")
    ctx.graph.tie(other.heads_set, scores.heads_set)


def scores_with(ctx: LoweringContext, node: onnx.NodeProto, scores: Scores, vals: list, names: list,
                axis: int | None = None) -> Scores:
    """``scores`` combined, by an n-ary op (Sum, Max, Where, Concat along ``axis`` …), with the other
    operands ``vals`` (named ``names``): other attentions' scores share one permutation of heads (their
    heads sets are tied); constants and run-time data must not vary across heads. Anything else is refused."""
    ha = scores.head_axis - scores.rank if scores.head_axis is not None else None
    if axis is not None and ha is not None and axis - scores.rank == ha:
        raise ctx.fail(node, "concatenates attention scores along their heads")
    for v, name in zip(vals, names):
        if v is scores or not name:
            continue
        if isinstance(v, Scores):
            _tie_heads(ctx, node, scores, v)
        elif isinstance(v, Const):
            if ha is not None and scores.heads > 1 and v.varies_along(scores.head_axis, scores.rank):
                raise ctx.fail(node, "combines attention scores with a parameter mixed with run-time data that "
                                     "varies across heads")
            if ha is not None and scores.heads > 1 and v.data.size > 1 and v.value.min() != v.value.max():
                shape = (1,) * (scores.rank - v.data.ndim) + tuple(v.data.shape)
                if len(shape) != scores.rank or shape[ha] != 1:
                    raise ctx.fail(node, "combines attention scores with a constant that varies across heads")
            ctx.buffer(v, "attention mask or scale")
        elif v is AUX:
            if ha is not None and scores.heads > 1:
                shape = ctx.varying_shape(name)
                if shape is None or (len(shape) >= -ha and shape[ha] not in (1,)):
                    raise ctx.fail(node, "run-time data that may vary across heads is combined with the "
                                         "attention scores")
        else:
            raise ctx.fail(node, "combines attention scores with an activation or statistic")
    return scores


def _runtime_rotary(ctx: LoweringContext, node: onnx.NodeProto, x: Act, name: str) -> bool:
    """cos/sin computed at run time from positions (dynamic-axes exports): they vary along the
    head dimensions but not across heads — the head dimensions keep their places (the group
    becomes rigid), heads still permute."""
    shape = ctx.varying_shape(name)
    x = x.one_head()
    if not x.heads or x.rank is None or shape is None or len(shape) > x.rank or node.op_type not in ("Mul", "Add"):
        return False
    full = (1,) * (x.rank - len(shape)) + tuple(shape)
    if full[x.heads[0]] != 1:
        return False
    ctx.keep_head_dims(x)
    ctx.set_output(node, x)
    return True


def _gathered_rotary(ctx: LoweringContext, node: onnx.NodeProto, x: Act, t: Act) -> bool:
    """q·cos where cos is a row of a position table gathered at run time (GPT-J's ``embed_positions`` indexed by
    position ids in a dynamic export): an activation without heads, one value per head dimension, shared by
    all heads. The table's columns must then stay put (pinned) and so must the head dimensions (the group
    becomes rigid); heads still permute."""
    if node.op_type != "Mul" or not x.heads or t.heads or x.rank is None or t.rank != x.rank or t.axis != x.axis \
            or t.seg_axis is not None:
        return False
    shape = ctx.shape(node.input[1] if ctx.values.get(node.input[1]) is t else node.input[0])
    width = (x.part[1] - x.part[0]) if x.part else ctx.size(x) // x.heads[1]
    if shape is None or len(shape) != x.rank or shape[x.heads[0]] != 1 or ctx.size(t) * t.inner != width:
        return False
    ctx.pin(node, t.sets, "a position table gathered at run time scales the head dimensions (its columns stay put)")
    ctx.keep_head_dims(x)
    ctx.set_output(node, x)
    return True


def _rotary(ctx: LoweringContext, node: onnx.NodeProto, x: Act, c: Const) -> bool:
    """q·cos, rotate_half(q)·sin: a table over positions and head dimensions, shared by all
    heads. Head dimensions keep their places (the group becomes rigid); heads still permute."""
    x = x.one_head()
    if not x.heads or x.rank is None or node.op_type not in ("Mul", "Add") or not c.is_float:
        return False
    shape = (1,) * (x.rank - c.data.ndim) + c.data.shape
    if len(shape) != x.rank or shape[x.heads[0]] != 1:
        return False
    width = (x.part[1] - x.part[0]) if x.part else ctx.size(x) // x.heads[1]
    if shape[x.axis] not in (1, width):
        return False
    ctx.keep_head_dims(x)
    ctx.buffer(c, "rotary position table")
    ctx.set_output(node, x)
    return True


@rule("Sum", "Max", "Min", "Mean")
def lower_nary(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Sum / Max / Min / Mean of activations."""
    vals = [ctx.values.get(i) for i in node.input]
    acts = [v for v in vals if isinstance(v, Act)]
    scores = next((v for v in vals if isinstance(v, Scores)), None)
    if scores is not None and not acts:     # scores summed (or maxed) with other scores, masks
        ctx.set_output(node, scores_with(ctx, node, scores, vals, list(node.input)))
        return
    if not acts:                    # shape arithmetic, statistics
        ctx.set_output(node, next((v for v in vals if isinstance(v, Stat) and v.heads_of), None)
                       or next((v for v in vals if isinstance(v, (Stat, Scores))), AUX))
        return
    if len(acts) == 1 and all(_scalar_like(v) for v in vals if v is not acts[0]):
        if any(v is AUX and _varies_along_neurons(ctx, name, acts[0]) for v, name in zip(vals, node.input)):
            raise ctx.fail(node, "a run-time operand varies along the neuron axis")
        ctx.set_output(node, acts[0])
        return
    if len(acts) != len(vals):
        raise ctx.fail(node, "mixes activations and per-neuron constants")
    combine(ctx, node, acts)


@rule("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
def lower_qdq(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """QuantizeLinear / DequantizeLinear on an activation with one scale for the tensor: the
    values change representation, not place. Per-channel activation scales are not supported."""
    x = ctx.values.get(node.input[0])
    scale = ctx.const(node.input[1]) if len(node.input) > 1 else None
    if isinstance(x, Act) and node.op_type != "DynamicQuantizeLinear" and (scale is None or scale.data.size != 1):
        raise ctx.fail(node, "per-channel quantization of an activation")
    for i in node.input[1:]:
        ctx.buffer(ctx.const(i) if i else None, "quantization scale / zero point")
    ctx.set_output(node, x)
    for k in range(1, len(node.output)):
        ctx.set_output(node, AUX, k)


@rule("Where")
def lower_where(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    vals = [ctx.values.get(i) for i in node.input[1:3]]
    acts = [v for v in vals if isinstance(v, (Act, Scores))]
    if not acts:
        ctx.set_output(node, _runtime_mix(ctx, node, list(node.input)))
        return
    x = acts[0]
    if isinstance(x, Scores) or any(isinstance(v, Scores) for v in acts):
        if not isinstance(x, Scores):
            raise ctx.fail(node, "selects between attention scores and an activation")
        ctx.set_output(node, scores_with(ctx, node, x, [ctx.values.get(i) for i in node.input], list(node.input)))
        return
    if isinstance(x, Act):   # the condition and the other branch must not vary along the neurons
        for name, v in zip(node.input, [ctx.values.get(i) for i in node.input]):
            if v is AUX and _varies_along_neurons(ctx, name, x):
                raise ctx.fail(node, "selects by a run-time condition that varies along the neuron axis")
            if isinstance(v, Const) and v.data.size > 1 and v.value.min() != v.value.max() and len(acts) == 1 \
                    and _const_varies_along_neurons(v, x):
                raise ctx.fail(node, "selects with a constant that varies along the neuron axis")
    for v in vals:
        if isinstance(v, Const):
            ctx.buffer(v, "Where operand")
    if len(acts) == 2 and all(isinstance(a, Act) for a in acts):
        return combine(ctx, node, acts)
    ctx.set_output(node, x)


def _const_varies_along_neurons(c: Const, x: Act) -> bool:
    shape = c.data.shape
    if x.rank is None or len(shape) > x.rank:
        return True
    full = (1,) * (x.rank - len(shape)) + tuple(shape)
    return any(full[k] != 1 for k in [x.axis] + ([x.heads[0]] if x.heads else []))

