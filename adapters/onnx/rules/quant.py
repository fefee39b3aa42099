"""Quantized layers: dynamic quantization (``MatMulInteger``, ``ConvInteger``,
``DynamicQuantizeLSTM``) and the QOperator format (``QLinearConv``, ``QLinearMatMul``, ``QGemm``,
``QLinearAdd`` …).

Integer weights are kept exactly (they are the parameters; their blocks carry integers), and
the quantization parameters that vary per output channel — weight scales and zero points —
become per-neuron arrays of the output set, so they permute with it. Per-tensor scales and zero
points of activations are single numbers that no permutation changes (buffers). A per-channel
*activation* scale would tie values to channel positions: such a node is refused by its rule
(and so pinned).
"""
from __future__ import annotations

import onnx

from ..context import LoweringContext
from ..registry import rule
from ..values import AUX, Act, Const
from .common import combine, conv_layer, dense, per_channel
from .recurrent import lower_recurrent


def _const(ctx: LoweringContext, node: onnx.NodeProto, i: int) -> Const | None:
    return ctx.const(node.input[i]) if len(node.input) > i and node.input[i] else None


def _per_tensor(ctx: LoweringContext, node: onnx.NodeProto, *slots: int) -> None:
    """Activation scales / zero points: one number for the tensor, read as data."""
    for i in slots:
        c = _const(ctx, node, i)
        if c is not None and c.data.size > 1:
            raise ctx.fail(node, f"input {i} ({node.input[i]!r}) quantizes an activation per channel")
        ctx.buffer(c, "activation quantization scale / zero point")


def attach_per_channel(ctx: LoweringContext, node: onnx.NodeProto, out: Act, key: str, c: Const | None) -> None:
    """A quantization parameter of the weight: one value (a buffer), or one per output
    channel (an array of each output set, sliced set by set)."""
    if c is None:
        return
    if c.data.size == 1:
        ctx.buffer(c, "weight quantization scale / zero point (per tensor)")
        return
    n = ctx.size(out)
    if c.data.size != n:
        raise ctx.fail(node, f"{key} of shape {c.data.shape} is neither per tensor nor per output channel ({n})")
    vec = c.reshape((n,))
    for s, o, size in ctx.segments(out):
        ctx.graph.sets[s].arrays[key] = ctx.param(vec.slice(0, o, o + size))


def _matmul_like(ctx: LoweringContext, node: onnx.NodeProto, x: Act, w: Const, scale: Const | None,
                 zero: Const | None, bias: Const | None = None, trans: bool = False) -> Act:
    if x.rank is not None and x.axis != x.rank - 1 or x.heads or w.data.ndim != 2:
        raise ctx.fail(node, f"needs a 2-D integer weight and neurons on the last axis (axis {x.axis})")
    out = dense(ctx, node, x, w if trans else w.transpose((1, 0)))
    attach_per_channel(ctx, node, out, "weight_scale", scale)
    attach_per_channel(ctx, node, out, "weight_zero_point", zero)
    if bias is not None:
        attach_per_channel(ctx, node, out, "bias", bias)
        out = out.but(stage="out")
    return out


@rule("MatMulInteger")
def lower_matmul_integer(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """MatMulInteger(A, B, a_zero_point, b_zero_point): A quantized at run time."""
    x, w = ctx.act(node.input[0]), _const(ctx, node, 1)
    if x is None or w is None:
        raise ctx.fail(node, "needs a quantized activation and a constant integer weight")
    _per_tensor(ctx, node, 2)
    ctx.set_output(node, _matmul_like(ctx, node, x, w, None, _const(ctx, node, 3)))


@rule("ConvInteger")
def lower_conv_integer(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """ConvInteger(x, w, x_zero_point, w_zero_point)."""
    x, w = ctx.act(node.input[0]), _const(ctx, node, 1)
    if x is None or w is None:
        raise ctx.fail(node, "needs a quantized activation and a constant integer weight")
    _per_tensor(ctx, node, 2)
    conv_layer(ctx, node, x, w, int(ctx.attr(node, "group", 1)), None)
    attach_per_channel(ctx, node, ctx.values[node.output[0]], "weight_zero_point", _const(ctx, node, 3))


@rule("QLinearConv")
def lower_qlinear_conv(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """QLinearConv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B)."""
    x, w = ctx.act(node.input[0]), _const(ctx, node, 3)
    if x is None or w is None:
        raise ctx.fail(node, "needs a quantized activation and a constant integer weight")
    _per_tensor(ctx, node, 1, 2, 6, 7)
    bias = _const(ctx, node, 8)
    conv_layer(ctx, node, x, w, int(ctx.attr(node, "group", 1)), bias)
    out = ctx.values[node.output[0]]
    attach_per_channel(ctx, node, out, "weight_scale", _const(ctx, node, 4))
    attach_per_channel(ctx, node, out, "weight_zero_point", _const(ctx, node, 5))


@rule("QLinearMatMul")
def lower_qlinear_matmul(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """QLinearMatMul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp)."""
    x, w = ctx.act(node.input[0]), _const(ctx, node, 3)
    if x is None or w is None:
        raise ctx.fail(node, "needs a quantized activation and a constant integer weight")
    _per_tensor(ctx, node, 1, 2, 6, 7)
    ctx.set_output(node, _matmul_like(ctx, node, x, w, _const(ctx, node, 4), _const(ctx, node, 5)))


@rule("QGemm", domain="com.microsoft")
def lower_qgemm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """com.microsoft QGemm(A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp)."""
    x, w = ctx.act(node.input[0]), _const(ctx, node, 3)
    if x is None or w is None or ctx.attr(node, "transA", 0):
        raise ctx.fail(node, "needs a quantized activation (not transposed) and a constant integer weight")
    _per_tensor(ctx, node, 1, 2, 7, 8)
    out = _matmul_like(ctx, node, x, w, _const(ctx, node, 4), _const(ctx, node, 5), _const(ctx, node, 6),
                       trans=bool(ctx.attr(node, "transB", 0)))
    ctx.set_output(node, out)


@rule("QLinearAdd", "QLinearMul", domain="com.microsoft")
def lower_qlinear_binary(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """com.microsoft QLinearAdd / QLinearMul(A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp):
    the elementwise op on quantized values (per-tensor scales)."""
    a, b = ctx.values.get(node.input[0]), ctx.values.get(node.input[3])
    _per_tensor(ctx, node, 1, 2, 4, 5, 6, 7)
    if isinstance(a, Act) and isinstance(b, Act):
        return combine(ctx, node, [a, b])
    x, c = (a, b) if isinstance(a, Act) else (b, a)
    if not isinstance(x, Act):
        ctx.set_output(node, AUX)
        return
    if isinstance(c, Const) and c.data.size > 1:
        vec = per_channel(c, x, ctx.size(x))
        if vec is None:
            raise ctx.fail(node, f"constant of shape {c.data.shape} is not per channel")
        raise ctx.fail(node, "a quantized per-channel constant operand")
    ctx.set_output(node, x)


@rule("QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearLeakyRelu", "QLinearSigmoid",
      "QLinearSoftmax", domain="com.microsoft")
def lower_qlinear_unary(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Quantized ops that keep every neuron in place (pooling, activations): scales are data."""
    _per_tensor(ctx, node, *range(1, len(node.input)))
    ctx.set_output(node, ctx.values.get(node.input[0], AUX))


@rule("DynamicQuantizeLSTM", domain="com.microsoft")
def lower_dynamic_quantize_lstm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """com.microsoft DynamicQuantizeLSTM: an LSTM whose W [D, I, 4H] and R [D, H, 4H] are
    integer and stored transposed; scales / zero points per direction or per gate unit."""
    W, R = _const(ctx, node, 1), _const(ctx, node, 2)
    if W is None or R is None or W.data.ndim != 3 or R.data.ndim != 3:
        raise ctx.fail(node, "needs constant integer W and R")
    weights = {"W": W.transpose((0, 2, 1)), "R": R.transpose((0, 2, 1))}
    quant = {key: _const(ctx, node, i) for i, key in ((8, "W_scale"), (9, "W_zero_point"), (10, "R_scale"),
                                                      (11, "R_zero_point"))}
    lower_recurrent(ctx, node, op="LSTM", weights=weights, quant=quant)

