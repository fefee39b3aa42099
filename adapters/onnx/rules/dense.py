"""Dense connections: Gemm and MatMul with a constant weight."""
from __future__ import annotations

import onnx

from nngraph.hookspecs import OpRule

from ..engine import Act, LoweringContext
from .common import fail, per_channel


def _dense(ctx: LoweringContext, node: onnx.NodeProto, x: Act, w, *, bias=None, **attrs) -> None:
    """``w``: a Const in canonical layout [out, in]."""
    out_size, in_size = w.data.shape
    src = ctx.graph.sets[x.set]
    if in_size != src.size:
        raise fail(ctx, node, f"weight has {in_size} inputs but the tracked axis carries {src.size} neurons")
    s = ctx.new_set(node, out_size, inputs=[x])
    ctx.graph.add_block(s.name, x.set, s.name, "dense", ctx.param(w), op=node.op_type, **attrs)
    out = Act(s.name, x.axis, x.rank, stage="linear")
    if bias is not None:
        b = per_channel(bias, out, out_size)
        if b is None:
            raise fail(ctx, node, f"bias of shape {bias.data.shape} is not one value per output neuron")
        s.arrays["bias"] = ctx.param(b)
        out.stage = "out"
    ctx.set_output(node, out)


def lower_gemm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x, w = ctx.act(node.input[0]), ctx.const(node.input[1])
    if x is None or w is None:
        raise fail(ctx, node, "only activation × constant weight is supported")
    if ctx.attr(node, "transA", 0):
        raise fail(ctx, node, "transA=1 on an activation input")
    if w.data.ndim != 2:
        raise fail(ctx, node, f"weight of rank {w.data.ndim}")
    canonical = w if ctx.attr(node, "transB", 0) else w.transpose((1, 0))
    bias = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and bias is None:
        raise fail(ctx, node, "bias is not a constant")
    attrs = {k: float(ctx.attr(node, k, 1.0)) for k in ("alpha", "beta") if ctx.attr(node, k, 1.0) != 1.0}
    _dense(ctx, node, x, canonical, bias=bias, **attrs)


def lower_matmul(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x, w = ctx.act(node.input[0]), ctx.const(node.input[1])
    if x is None or w is None:
        raise fail(ctx, node, "only activation × constant weight is supported")
    if w.data.ndim != 2:
        raise fail(ctx, node, f"constant operand of rank {w.data.ndim}")
    if x.rank is not None and x.axis != x.rank - 1:
        raise fail(ctx, node, f"contracts the last axis, but neurons are tracked on axis {x.axis}")
    _dense(ctx, node, x, w.transpose((1, 0)))


RULES = [OpRule("Gemm", lower_gemm), OpRule("MatMul", lower_matmul)]
