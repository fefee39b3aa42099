"""Convolutions: Conv and ConvTranspose, 1-3-d, grouped and depthwise.

One edge per (input channel, output channel) pair inside a group, the kernel taps as its
feature vector. Groups constrain the symmetry: input and output channels must be permuted
within groups, and groups as blocks — both sets get a shared ``k``-block parent group (a
depthwise conv, one channel per group, simply ties its input and output).
"""
from __future__ import annotations

import onnx

from ..context import LoweringContext
from ..registry import rule
from .common import conv_layer


def _operands(ctx: LoweringContext, node: onnx.NodeProto):
    x, w = ctx.act(node.input[0]), ctx.const(node.input[1])
    if x is None or w is None:
        raise ctx.fail(node, "needs an activation input and a constant weight")
    bias = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and bias is None:
        raise ctx.fail(node, "bias is not a constant")
    return x, w, bias


@rule("Conv")
def lower_conv(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x, w, bias = _operands(ctx, node)
    conv_layer(ctx, node, x, w, int(ctx.attr(node, "group", 1)), bias)


@rule("ConvTranspose")
def lower_conv_transpose(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """ConvTranspose stores [in, out / groups, *k]; canonical is [out, in / groups, *k]."""
    x, w, bias = _operands(ctx, node)
    g = int(ctx.attr(node, "group", 1))
    cin, opg = w.data.shape[:2]
    k = w.data.shape[2:]
    ipg = cin // g
    nk = len(k)
    canonical = (w.reshape((g, ipg, opg, *k))
                 .transpose((0, 2, 1, *range(3, 3 + nk)))
                 .reshape((g * opg, ipg, *k)))
    conv_layer(ctx, node, x, canonical, g, bias)

