"""Normalization layers: their per-channel parameters become per-neuron arrays.

BatchNormalization right after a layer whose output nobody else reads is folded into that
layer's set (its arrays ``bn_*`` follow the ``bias``), as in the neural-graph papers; anywhere
else a norm gets its own set, tied to its input and fed by a one-to-one ``norm`` block.
"""
from __future__ import annotations

import onnx

from ..context import LoweringContext
from ..registry import rule
from ..values import Act
from .common import combine, normalize, single_consumer, vectors


def _eps(ctx, node, default=1e-5):
    return float(ctx.attr(node, "epsilon", default))


@rule("BatchNormalization")
def lower_batchnorm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x = ctx.act(node.input[0])
    if x is None or x.axis != 1:
        raise ctx.fail(node, "input neurons are not on the channel axis")
    arrays = vectors(ctx, node, x, {1: "bn_scale", 2: "bn_shift", 3: "bn_mean", 4: "bn_var"})
    out = normalize(ctx, node, x, arrays, in_place=single_consumer(ctx, node.input[0]), epsilon=_eps(ctx, node))
    ctx.set_output(node, out)


@rule("InstanceNormalization")
def lower_instancenorm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x = ctx.act(node.input[0])
    if x is None or x.axis != 1:
        raise ctx.fail(node, "input neurons are not on the channel axis")
    arrays = vectors(ctx, node, x, {1: "in_scale", 2: "in_shift"})
    ctx.set_output(node, normalize(ctx, node, x, arrays, epsilon=_eps(ctx, node)))


def _over_neuron_axis(ctx: LoweringContext, node: onnx.NodeProto, x: Act, axis: int) -> None:
    if x.rank is None or axis % x.rank != x.axis or x.axis != x.rank - 1 or x.inner != 1 or x.heads:
        raise ctx.fail(node, f"normalizes from axis {axis}, neurons are on axis {x.axis} of rank {x.rank}")


@rule("LayerNormalization")
@rule("LayerNormalization", domain="com.microsoft")
def lower_layernorm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x = ctx.act(node.input[0])
    if x is None:
        raise ctx.fail(node, "input is not a tracked activation")
    _over_neuron_axis(ctx, node, x, ctx.attr(node, "axis", -1))
    arrays = vectors(ctx, node, x, {1: "ln_scale", 2: "ln_shift"})
    ctx.set_output(node, normalize(ctx, node, x, arrays, epsilon=_eps(ctx, node)))


@rule("RMSNormalization", "SimplifiedLayerNormalization")
@rule("SimplifiedLayerNormalization", domain="com.microsoft")
def lower_rmsnorm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x = ctx.act(node.input[0])
    if x is None:
        raise ctx.fail(node, "input is not a tracked activation")
    _over_neuron_axis(ctx, node, x, ctx.attr(node, "axis", -1))
    arrays = vectors(ctx, node, x, {1: "rms_scale"})
    ctx.set_output(node, normalize(ctx, node, x, arrays, epsilon=_eps(ctx, node)))


@rule("GroupNormalization")
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
    arrays = vectors(ctx, node, x, {1: "gn_scale", 2: "gn_shift"})
    ctx.set_output(node, normalize(ctx, node, x, arrays, epsilon=_eps(ctx, node), num_groups=groups))


def _skip_norm(ctx: LoweringContext, node: onnx.NodeProto, scale_key: str, shift: bool) -> None:
    """com.microsoft Skip(Simplified)LayerNormalization: norm(input + skip + bias)."""
    a, b = ctx.act(node.input[0]), ctx.act(node.input[1])
    if a is None or b is None:
        raise ctx.fail(node, "input and skip must be activations")
    _over_neuron_axis(ctx, node, a, -1)
    summed = combine(ctx, node, [a, b],
                     output=node.output[3] if len(node.output) > 3 and node.output[3] else node.output[0] + "/sum")
    slots = {2: scale_key}
    if shift:
        slots[3] = scale_key.replace("scale", "shift")
    bias_slot = 4 if shift else 3
    if len(node.input) > bias_slot and node.input[bias_slot]:
        bias = vectors(ctx, node, summed, {bias_slot: "bias"})["bias"]
        ctx.graph.sets[summed.set].arrays["bias"] = ctx.param(bias)
    arrays = vectors(ctx, node, summed, slots)
    ctx.set_output(node, normalize(ctx, node, summed, arrays, epsilon=_eps(ctx, node, 1e-12)))
    if len(node.output) > 3 and node.output[3]:
        ctx.values[node.output[3]] = summed


@rule("SkipLayerNormalization", domain="com.microsoft")
def lower_skip_layernorm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _skip_norm(ctx, node, "ln_scale", True)


@rule("SkipSimplifiedLayerNormalization", domain="com.microsoft")
def lower_skip_simplified(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _skip_norm(ctx, node, "rms_scale", False)

