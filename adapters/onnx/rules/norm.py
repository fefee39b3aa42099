"""Normalization layers: their per-channel parameters become per-neuron arrays.

BatchNormalization right after a layer whose output nobody else reads is folded into that
layer's set (its arrays ``bn_*`` follow the ``bias``), as in the neural-graph papers; anywhere
else a norm gets its own set, tied to its input and fed by a one-to-one ``norm`` block.
"""
from __future__ import annotations

import onnx

from nngraph.hookspecs import OpRule

from ..engine import Act, Const, LoweringContext
from .common import map_segments, single_consumer, tied_copy


def _vectors(ctx: LoweringContext, node: onnx.NodeProto, x: Act, slots: dict[int, str]) -> dict[str, Const]:
    out = {}
    n = ctx.size(x)
    for i, key in slots.items():
        if i >= len(node.input) or not node.input[i]:
            continue
        c = ctx.const(node.input[i])
        if c is None:
            raise ctx.fail(node, f"{key} is not a constant")
        # parameter slots hold one value per neuron: [n] (or [n] with unit axes around it)
        v = c.reshape((n,)) if c.data.size == n and max(c.data.shape, default=1) == n else None
        if v is None:
            raise ctx.fail(node, f"{key} of shape {c.data.shape} is not one value per neuron ({n})")
        out[key] = v
    return out


def _normalize(ctx: LoweringContext, node: onnx.NodeProto, x: Act, arrays: dict[str, Const], *,
               in_place: bool = False, **attrs) -> Act:
    def make(src: str, offset: int, size: int) -> str:
        s = ctx.graph.sets[src]
        fold = in_place and len(x.sets) == 1 and s.role not in ("input", "output") and s.activation is None \
            and not any(k in s.arrays for k in arrays)
        target = src if fold else tied_copy(ctx, node, src, "norm", "norm")
        t = ctx.graph.sets[target]
        for key, c in arrays.items():
            t.arrays[key] = ctx.param(c.slice(0, offset, offset + size))
        t.attrs.update({f"{node.op_type}_{k}": v for k, v in attrs.items()})
        return target

    return map_segments(ctx, x, make)


def _eps(ctx, node, default=1e-5):
    return float(ctx.attr(node, "epsilon", default))


def lower_batchnorm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x = ctx.act(node.input[0])
    if x is None or x.axis != 1:
        raise ctx.fail(node, "input neurons are not on the channel axis")
    arrays = _vectors(ctx, node, x, {1: "bn_scale", 2: "bn_shift", 3: "bn_mean", 4: "bn_var"})
    out = _normalize(ctx, node, x, arrays, in_place=single_consumer(ctx, node.input[0]), epsilon=_eps(ctx, node))
    ctx.set_output(node, out)


def lower_instancenorm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x = ctx.act(node.input[0])
    if x is None or x.axis != 1:
        raise ctx.fail(node, "input neurons are not on the channel axis")
    arrays = _vectors(ctx, node, x, {1: "in_scale", 2: "in_shift"})
    ctx.set_output(node, _normalize(ctx, node, x, arrays, epsilon=_eps(ctx, node)))


def _over_neuron_axis(ctx: LoweringContext, node: onnx.NodeProto, x: Act, axis: int) -> None:
    if x.rank is None or axis % x.rank != x.axis or x.axis != x.rank - 1 or x.inner != 1 or x.heads:
        raise ctx.fail(node, f"normalizes from axis {axis}, neurons are on axis {x.axis} of rank {x.rank}")


def lower_layernorm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x = ctx.act(node.input[0])
    if x is None:
        raise ctx.fail(node, "input is not a tracked activation")
    _over_neuron_axis(ctx, node, x, ctx.attr(node, "axis", -1))
    arrays = _vectors(ctx, node, x, {1: "ln_scale", 2: "ln_shift"})
    ctx.set_output(node, _normalize(ctx, node, x, arrays, epsilon=_eps(ctx, node)))


def lower_rmsnorm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x = ctx.act(node.input[0])
    if x is None:
        raise ctx.fail(node, "input is not a tracked activation")
    _over_neuron_axis(ctx, node, x, ctx.attr(node, "axis", -1))
    arrays = _vectors(ctx, node, x, {1: "rms_scale"})
    ctx.set_output(node, _normalize(ctx, node, x, arrays, epsilon=_eps(ctx, node)))


def lower_groupnorm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x = ctx.act(node.input[0])
    if x is None or x.axis != 1 or len(x.sets) != 1:
        raise ctx.fail(node, "input neurons are not one set on the channel axis")
    groups = int(ctx.attr(node, "num_groups"))
    n = ctx.size(x)
    for i in (1, 2):
        c = ctx.const(node.input[i])
        if c is not None and c.data.size != n:
            raise ctx.fail(node, f"per-group parameters (shape {c.data.shape}, opset-18 semantics) are not supported")
    ctx.blocks_of(x.set, groups)     # statistics per group: channels permute within groups
    arrays = _vectors(ctx, node, x, {1: "gn_scale", 2: "gn_shift"})
    ctx.set_output(node, _normalize(ctx, node, x, arrays, epsilon=_eps(ctx, node), num_groups=groups))


def _skip_norm(ctx: LoweringContext, node: onnx.NodeProto, scale_key: str, shift: bool) -> None:
    """com.microsoft Skip(Simplified)LayerNormalization: norm(input + skip + bias)."""
    from .elementwise import combine

    a, b = ctx.act(node.input[0]), ctx.act(node.input[1])
    if a is None or b is None:
        raise ctx.fail(node, "input and skip must be activations")
    _over_neuron_axis(ctx, node, a, -1)
    tmp = onnx.NodeProto()
    tmp.CopyFrom(node)
    del tmp.output[:]
    tmp.output.append(node.output[3] if len(node.output) > 3 and node.output[3] else node.output[0] + "/sum")
    combine(ctx, tmp, [a, b])
    summed = ctx.values[tmp.output[0]]
    slots = {2: scale_key}
    if shift:
        slots[3] = scale_key.replace("scale", "shift")
    bias_slot = 4 if shift else 3
    if len(node.input) > bias_slot and node.input[bias_slot]:
        bias = _vectors(ctx, node, summed, {bias_slot: "bias"})["bias"]
        ctx.graph.sets[summed.set].arrays["bias"] = ctx.param(bias)
    arrays = _vectors(ctx, node, summed, slots)
    ctx.set_output(node, _normalize(ctx, node, summed, arrays, epsilon=_eps(ctx, node, 1e-12)))
    if len(node.output) > 3 and node.output[3]:
        ctx.values[node.output[3]] = summed


def lower_skip_layernorm(ctx, node):
    _skip_norm(ctx, node, "ln_scale", True)


def lower_skip_simplified(ctx, node):
    _skip_norm(ctx, node, "rms_scale", False)


RULES = [
    OpRule("BatchNormalization", lower_batchnorm), OpRule("InstanceNormalization", lower_instancenorm),
    OpRule("LayerNormalization", lower_layernorm), OpRule("RMSNormalization", lower_rmsnorm),
    OpRule("GroupNormalization", lower_groupnorm),
    OpRule("LayerNormalization", lower_layernorm, domain="com.microsoft"),
    OpRule("SimplifiedLayerNormalization", lower_rmsnorm),
    OpRule("SimplifiedLayerNormalization", lower_rmsnorm, domain="com.microsoft"),
    OpRule("SkipLayerNormalization", lower_skip_layernorm, domain="com.microsoft"),
    OpRule("SkipSimplifiedLayerNormalization", lower_skip_simplified, domain="com.microsoft"),
]
