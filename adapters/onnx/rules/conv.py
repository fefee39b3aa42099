"""Convolutions: Conv and ConvTranspose, 1-3-d, grouped and depthwise.

One edge per (input channel, output channel) pair inside a group, the kernel taps as its
feature vector. Groups constrain the symmetry: input and output channels must be permuted
within groups, and groups as blocks — both sets get a shared ``k``-block parent group (a
depthwise conv, one channel per group, simply ties its input and output).
"""
from __future__ import annotations

import onnx

from nngraph.hookspecs import OpRule

from ..engine import Act, Const, LoweringContext
from .common import as_one_set

CONV_ATTRS = ("strides", "dilations", "pads", "auto_pad", "output_padding", "output_shape")


def _attrs(ctx: LoweringContext, node: onnx.NodeProto) -> dict:
    out = {}
    for k in CONV_ATTRS:
        v = ctx.attr(node, k)
        if v is not None:
            out[k] = v.decode() if isinstance(v, bytes) else list(v) if isinstance(v, (list, tuple)) else v
    return out


def conv_layer(ctx: LoweringContext, node: onnx.NodeProto, x: Act, w: Const, groups: int,
               bias: Const | None) -> None:
    """``w`` canonical: [out, in / groups, *kernel]. With several input sets (after a Concat),
    each set must hold whole groups; it then gets its own output set and block."""
    if x.axis != 1 or x.inner != 1 or x.heads:
        raise ctx.fail(node, f"input neurons are on axis {x.axis}, not the channel axis 1")
    out_ch, ipg = w.data.shape[:2]
    in_ch = ctx.size(x)
    if ipg * groups != in_ch or out_ch % groups:
        raise ctx.fail(node, f"weight expects {ipg * groups} input channels in {groups} groups, the input has {in_ch}")
    opg = out_ch // groups
    attrs = _attrs(ctx, node)
    if bias is not None and bias.data.size != out_ch:
        raise ctx.fail(node, f"bias of shape {bias.data.shape} is not one value per output channel")
    multi = len(x.sets) > 1
    if groups == 1:                       # every input channel feeds one output set
        s = ctx.new_set(node, out_ch, inputs=[x])
        for src, o, n in ctx.segments(x):
            part = w.slice(1, o, o + n) if multi else w
            ctx.graph.add_block(f"{s.name}<{src}" if multi else s.name, src, s.name, "conv", ctx.param(part),
                                op=node.op_type, groups=1, **attrs)
        if bias is not None:
            s.arrays["bias"] = ctx.param(bias.reshape((out_ch,)))
        ctx.set_output(node, Act((s.name,), 1, x.rank, stage="out" if bias is not None else "linear"))
        return
    if any(o % ipg or n % ipg for _, o, n in ctx.segments(x)):
        x = as_one_set(ctx, node, x)      # a group straddles two concatenated inputs
        multi = False
    outs = []
    for src, o, n in ctx.segments(x):
        k, lo, hi = n // ipg, o // ipg * opg, (o + n) // ipg * opg
        suffix = f"<{src}" if multi else ""
        if k == n == hi - lo:                    # depthwise: channel c → channel c
            t = ctx.new_set(node, hi - lo, inputs=[x], tie=src, suffix=suffix)
        else:
            t = ctx.new_set(node, hi - lo, inputs=[x], parent=ctx.blocks_of(src, k) if k > 1 else None, suffix=suffix)
        ctx.graph.add_block(t.name, src, t.name, "conv", ctx.param(w.slice(0, lo, hi) if multi else w),
                            op=node.op_type, groups=k, **attrs)
        if bias is not None:
            t.arrays["bias"] = ctx.param(bias.reshape((out_ch,)).slice(0, lo, hi))
        outs.append(t.name)
    stage = "linear" if bias is None and len(outs) == 1 else "out"
    ctx.set_output(node, Act(tuple(outs), 1, x.rank, stage=stage))


def _operands(ctx: LoweringContext, node: onnx.NodeProto):
    x, w = ctx.act(node.input[0]), ctx.const(node.input[1])
    if x is None or w is None:
        raise ctx.fail(node, "needs an activation input and a constant weight")
    bias = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and bias is None:
        raise ctx.fail(node, "bias is not a constant")
    return x, w, bias


def lower_conv(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x, w, bias = _operands(ctx, node)
    conv_layer(ctx, node, x, w, int(ctx.attr(node, "group", 1)), bias)


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


RULES = [OpRule("Conv", lower_conv), OpRule("ConvTranspose", lower_conv_transpose)]
