"""Ops that reshape activations: the tracked axis survives when its extent is kept whole."""
from __future__ import annotations

import numpy as np
import onnx

from nngraph.hookspecs import OpRule

from ..engine import Act, LoweringContext
from .common import fail


def _shape(ctx: LoweringContext, name: str) -> tuple | None:
    return ctx.shapes.get(name)


def lower_reshape(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Flatten / Reshape / Squeeze / Unsqueeze: find where the channel axis lands."""
    x = ctx.act(node.input[0])
    if x is None:
        raise fail(ctx, node, "input is not a tracked activation")
    src, dst = _shape(ctx, node.input[0]), _shape(ctx, node.output[0])
    if src is None or dst is None or None in src[x.axis + 1:]:
        raise fail(ctx, node, "needs static shapes around the tracked axis (shape inference found none)")
    inner = int(np.prod(src[x.axis + 1:], dtype=np.int64))
    n = src[x.axis]
    acc = 1
    for j in range(len(dst) - 1, -1, -1):   # walk from the innermost axis outwards
        if acc == inner and dst[j] == n:
            ctx.set_output(node, Act(x.set, j, len(dst), x.stage))
            return
        if dst[j] is None:
            break
        acc *= dst[j]
        if acc > inner:
            break
    raise fail(ctx, node, f"reshapes {src} to {dst}, splitting or merging the {n}-neuron axis {x.axis}")


RULES = [OpRule(op, lower_reshape) for op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze")]
