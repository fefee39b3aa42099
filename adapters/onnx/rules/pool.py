"""Parameter-free ops over space or tokens (pooling, padding, resizing, reductions): the
neuron axis passes through; a reduction over it yields a statistic."""
from __future__ import annotations

import numpy as np
import onnx

from ..context import LoweringContext
from ..registry import rule
from ..values import AUX, Act, Scores, Stat

SPATIAL = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "LRN",
           "Pad", "Resize", "Upsample", "MaxRoiPool", "RoiAlign", "ReverseSequence", "CumSum", "GridSample",
           "LpNormalization", "MeanVarianceNormalization")


@rule(*SPATIAL)
def lower_spatial(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    v = ctx.values.get(node.input[0])
    for name in node.input[1:]:      # scales, sizes, roi, pads, axes: settings of the op, not parameters
        ctx.buffer(ctx.const(name), f"{node.op_type} setting")
    if isinstance(v, Act) and (v.inner != 1 or v.part):
        raise ctx.fail(node, "spatial op on a flattened activation or part of a head")
    if isinstance(v, Act) and v.rank is not None:
        if node.op_type == "LRN":           # sums over neighbouring channels: channel order matters
            for s in v.sets:
                ctx.graph.fix(s)
        if node.op_type == "CumSum":
            c = ctx.const(node.input[1])
            if c is None or int(np.asarray(c.data).reshape(-1)[0]) % v.rank == v.axis:
                raise ctx.fail(node, "cumulative sum along the neuron axis")
        if node.op_type == "Pad":
            pads = ctx.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            raw = [int(p) for p in np.asarray(pads.data).reshape(-1)] if pads is not None else list(ctx.attr(node, "pads", []))
            axes_c = ctx.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            axes = [int(a) % v.rank for a in np.asarray(axes_c.data).reshape(-1)] if axes_c is not None else list(range(v.rank))
            if not raw and pads is None and len(node.input) > 1:
                raise ctx.fail(node, "pads are not constant")
            k = len(axes)
            if v.axis in axes and raw and (raw[axes.index(v.axis)] or raw[k + axes.index(v.axis)]):
                v = _pad_neurons(ctx, node, v, raw[axes.index(v.axis)], raw[k + axes.index(v.axis)])
    ctx.set_output(node, v if v is not None else AUX)


def _pad_neurons(ctx: LoweringContext, node: onnx.NodeProto, x: Act, before: int, after: int) -> Act:
    """Constant padding of the neuron axis adds fixed neurons around the real ones (a channel
    zero-pad, as shortcut layers of the original ResNet do): only the pad range is pinned."""
    mode = ctx.attr(node, "mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        raise ctx.fail(node, f"pads the neuron axis by {mode.decode() if isinstance(mode, bytes) else mode} "
                             "(copies neurons)")
    if before < 0 or after < 0 or x.heads or x.seg_axis is not None:
        raise ctx.fail(node, "crops the neuron axis or pads head-split / stacked neurons")
    sets = list(x.sets)
    for size, where in ((before, "before"), (after, "after")):
        if size:
            s = ctx.new_set(node, size, "hidden", inputs=[x], layer=False, fixed=True, suffix=f"/pad_{where}",
                            op="Pad")
            sets.insert(0 if where == "before" else len(sets), s.name)
    return x.but(sets=tuple(sets), stage="out")


@rule("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
      "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
def lower_reduce(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    v = ctx.values.get(node.input[0])
    if not isinstance(v, Act):
        ctx.set_output(node, v if isinstance(v, (Stat, Scores)) else AUX)
        return
    x = v
    axes = None
    if len(node.input) > 1 and node.input[1]:
        c = ctx.const(node.input[1])
        if c is None:
            raise ctx.fail(node, "reduction axes are not constant")
        axes = [int(a) for a in np.asarray(c.data).reshape(-1)]
    else:
        axes = ctx.attr(node, "axes")
    keep = ctx.attr(node, "keepdims", 1)
    rank = x.rank
    if rank is None:
        raise ctx.fail(node, "input of unknown rank")
    axes = list(range(rank)) if not axes else sorted(a % rank for a in axes)
    if x.axis in axes or (x.heads and x.heads[0] in axes):
        if x.axis not in axes:          # over the heads only: one value per head dimension, not a statistic
            raise ctx.fail(node, "reduces over attention heads but not their dimensions")
        per_head = x.sets if x.heads and x.heads[1] > 1 and x.heads[0] not in axes else None
        ctx.set_output(node, Stat(rank if keep else rank - len(axes), x.axis if keep else None, heads_of=per_head))
        return
    if keep:
        ctx.set_output(node, x)
        return
    move = lambda a: a - sum(1 for s in axes if s < a)  # noqa: E731
    heads = (move(x.heads[0]), x.heads[1]) if x.heads else None
    ctx.set_output(node, x.but(axis=move(x.axis), rank=rank - len(axes), heads=heads))


@rule("ArgMax", "ArgMin", "TopK")
def lower_argreduce(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Indices (and TopK's values) as run-time data. Of an activation they depend on the order of
    its neurons (an ArgMax over the dimensions of a head, added to the scores as a bias) or move with
    them (along any other axis, they keep its neuron axis), which run-time data does not: its neurons
    stay in place."""
    x = ctx.values.get(node.input[0])
    if isinstance(x, Act):
        ctx.pin(node, x.sets, f"{node.op_type} of an activation: its indices depend on the order of the neurons")
    elif isinstance(x, Scores) and x.heads_set is not None:
        ctx.pin(node, [x.heads_set], f"{node.op_type} of attention scores: indices per head")
    for i in range(len(node.output)):
        ctx.set_output(node, AUX, i)

