"""Helpers shared by rule modules."""
from __future__ import annotations

import onnx

from nngraph.errors import UnsupportedModelError

from ..engine import Act, Const, LoweringContext


def fail(ctx: LoweringContext, node: onnx.NodeProto, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{ctx.model.path}: node {node.name or node.output[0]!r} ({node.op_type}): {why}")


def per_channel(c: Const, x: Act, size: int) -> Const | None:
    """``c`` as a vector of ``size`` if it broadcasts against ``x`` along the channel axis only."""
    shape = c.data.shape
    if c.data.size != size or x.rank is None or len(shape) > x.rank:
        return None
    full = (1,) * (x.rank - len(shape)) + tuple(shape)
    if any(d != 1 for i, d in enumerate(full) if i != x.axis) or full[x.axis] != size:
        return None
    return c.reshape((size,))


def single_consumer(ctx: LoweringContext, value: str) -> bool:
    """True when ``value`` feeds exactly one node and is not a graph output: editing its set
    in place (attaching a bias or an activation) then cannot change what anyone else reads."""
    outputs = {o.name for o in ctx.model.graph.output}
    return len(ctx.consumers.get(value, [])) == 1 and value not in outputs
