"""Dense connections: Gemm, MatMul and Einsum with a constant weight."""
from __future__ import annotations

import numpy as np
import onnx

from ..context import LoweringContext
from ..registry import rule
from ..values import AUX, Act, Const
from .attention import lower_matmul_acts
from .common import dense


@rule("Gemm")
def lower_gemm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x, w = ctx.act(node.input[0]), ctx.const(node.input[1])
    if x is None or w is None:
        raise ctx.fail(node, "only activation × constant weight is supported")
    if ctx.attr(node, "transA", 0):
        raise ctx.fail(node, "transA=1 on an activation input")
    if w.data.ndim != 2 or x.axis != 1 or x.heads:
        raise ctx.fail(node, f"weight of rank {w.data.ndim} on neuron axis {x.axis}")
    canonical = w if ctx.attr(node, "transB", 0) else w.transpose((1, 0))
    has_bias = len(node.input) > 2 and node.input[2]
    bias = ctx.const(node.input[2]) if has_bias else None
    if has_bias and bias is None:
        raise ctx.fail(node, "bias is not a constant")
    if bias is not None and bias.data.size == 1 and canonical.data.shape[0] != 1:
        ctx.buffer(bias, "scalar Gemm bias")
        bias = None
    attrs = {k: float(ctx.attr(node, k, 1.0)) for k in ("alpha", "beta") if ctx.attr(node, k, 1.0) != 1.0}
    ctx.set_output(node, dense(ctx, node, x, canonical, bias=bias, **attrs))


@rule("MatMul")
def lower_matmul(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    a, b = ctx.values.get(node.input[0]), ctx.values.get(node.input[1])
    if isinstance(a, Act) and isinstance(b, Const):
        if b.data.ndim != 2:
            raise ctx.fail(node, f"constant operand of rank {b.data.ndim}")
        if a.rank is not None and a.axis != a.rank - 1 or a.heads:
            raise ctx.fail(node, f"contracts the last axis, but neurons are tracked on axis {a.axis}")
        ctx.set_output(node, dense(ctx, node, a, b.transpose((1, 0))))
        return
    if isinstance(a, Const) and isinstance(b, Act):
        # W @ x: x is [..., in, N] with neurons on axis -2
        if a.data.ndim != 2 or b.rank is None or b.axis != b.rank - 2 or b.heads:
            raise ctx.fail(node, "constant @ activation needs a 2-D weight and neurons on axis -2")
        ctx.set_output(node, dense(ctx, node, b, a))
        return
    shape = ctx.shape(node.input[0])
    if a is AUX and isinstance(b, Const) and b.is_float and b.data.ndim == 2 and shape and shape[-1] == b.data.shape[0]:
        # run-time data with no neurons times a weight (a one-hot lookup: OneHot → MatMul, as jax2tf
        # exports embeddings): its last axis is a fixed set of K inputs, the weight a dense block
        s = ctx.new_set(node, b.data.shape[0], "input", layer=False, fixed=True, suffix="/rows")
        ctx.set_output(node, dense(ctx, node, Act((s.name,), len(shape) - 1, len(shape)), b.transpose((1, 0))))
        return
    lower_matmul_acts(ctx, node)


@rule("Einsum")
def lower_einsum(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Einsum of one activation and one constant that contracts the neuron axis (Keras Dense
    and MultiHeadAttention kernels): rewritten as a dense layer over the flattened kernel."""
    eq = ctx.attr(node, "equation")
    eq = eq.decode() if isinstance(eq, bytes) else eq
    values = [ctx.values.get(i) for i in node.input]
    if len(values) != 2 or sum(isinstance(v, Act) for v in values) != 1 or sum(isinstance(v, Const) for v in values) != 1:
        raise ctx.fail(node, f"einsum {eq!r} between activations")
    ai = 0 if isinstance(values[0], Act) else 1
    x, w = values[ai], values[1 - ai]
    if "->" not in eq or x.rank is None:
        raise ctx.fail(node, f"einsum {eq!r} without an explicit output or on an activation of unknown rank")
    lhs, out_spec = eq.replace(" ", "").split("->")
    specs = lhs.split(",")
    xs, ws = specs[ai], specs[1 - ai]
    if "..." in ws:
        raise ctx.fail(node, f"einsum {eq!r} broadcasts the constant operand")
    if "..." in xs:        # name the axes the ellipsis stands for
        free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in eq][:x.rank - (len(xs) - 3)]
        xs, out_spec = xs.replace("...", "".join(free)), out_spec.replace("...", "".join(free))
    if x.rank != len(xs) or x.inner != 1 or x.seg_axis is not None or x.part:
        raise ctx.fail(node, f"einsum {eq!r} on a flattened, stacked or partial activation")
    neuron_axes = [x.heads[0], x.axis] if x.heads else [x.axis]       # heads first: the set's order
    contracted = [c for c in ws if c in xs and c not in out_spec]
    if sorted(contracted) != sorted(xs[a] for a in neuron_axes):
        raise ctx.fail(node, f"einsum {eq!r} does not contract exactly the neuron axis")
    contracted = [xs[a] for a in neuron_axes]
    x = x.but(heads=None)
    new = [c for c in ws if c not in xs]                  # the weight's output axes
    if not new or any(c not in out_spec for c in new) or any(c in xs and c not in contracted and c not in out_spec
                                                              for c in ws):
        raise ctx.fail(node, f"einsum {eq!r} is not a dense map of the neuron axis")
    # canonical [out..., in]: transpose the weight so output axes come first in output order
    order = sorted(new, key=out_spec.index)
    perm = [ws.index(c) for c in order] + [ws.index(c) for c in contracted]
    wt = w.transpose(perm)
    out_shape = wt.data.shape[:len(order)]
    canonical = wt.reshape((int(np.prod(out_shape)), int(np.prod(wt.data.shape[len(order):]))))
    positions = [out_spec.index(c) for c in order]
    if positions != list(range(positions[0], positions[0] + len(positions))):
        raise ctx.fail(node, f"einsum {eq!r} scatters its output axes")
    out = dense(ctx, node, x, canonical, axis=positions[0])
    out = out.but(rank=len(out_spec))
    if len(order) == 2:       # [heads, head_dim] kernels: neurons split over two axes
        out = out.but(axis=positions[1], heads=(positions[0], out_shape[0]))
        ctx.blocks_of(out.set, out_shape[0])
    elif len(order) > 2:
        raise ctx.fail(node, f"einsum {eq!r} produces more than two neuron axes")
    ctx.set_output(node, out)

