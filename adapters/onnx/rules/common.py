"""Helpers shared by rule modules."""
from __future__ import annotations

from typing import Callable

import onnx

from ..engine import Act, Const, LoweringContext


def per_channel(c: Const, x: Act, size: int) -> Const | None:
    """``c`` as a vector of ``size`` if it broadcasts against ``x`` along the neuron axis only."""
    shape = c.data.shape
    if c.data.size != size or x.rank is None or len(shape) > x.rank or x.inner != 1 or x.part:
        return None
    full = (1,) * (x.rank - len(shape)) + tuple(shape)
    if x.heads:          # one value per (head, dim): [H, d] over the two axes, in the set's order
        ha, H = x.heads
        if full[ha] != H or full[x.axis] != size // H or any(d != 1 for i, d in enumerate(full) if i not in (ha, x.axis)):
            return None
        c = c.reshape(full)
        order = [ha, x.axis] + [i for i in range(x.rank) if i not in (ha, x.axis)]
        return c.transpose(order).reshape((size,))
    if any(d != 1 for i, d in enumerate(full) if i != x.axis) or full[x.axis] != size:
        return None
    return c.reshape((size,))


def single_consumer(ctx: LoweringContext, value: str) -> bool:
    """True when ``value`` feeds exactly one node and is not a graph output: editing its set
    in place (attaching a bias, a norm or an activation) then cannot change what others read."""
    outputs = {o.name for o in ctx.model.graph.output}
    return len(ctx.consumers.get(value, [])) == 1 and value not in outputs


def map_segments(ctx: LoweringContext, x: Act, make: Callable[[str, int, int], str]) -> Act:
    """Apply a per-neuron op set by set: ``make(set, offset, size)`` returns the output set."""
    return x.but(sets=tuple(make(s, o, n) for s, o, n in ctx.segments(x)), stage="out")


def tied_copy(ctx: LoweringContext, node: onnx.NodeProto, src: str, role: str, kind: str = "identity",
              weight=None, suffix: str = "", **attrs) -> str:
    """A new set tied to ``src`` and fed from it one-to-one (a norm, an elementwise map)."""
    s = ctx.graph.sets[src]
    t = ctx.new_set(node, s.size, role, inputs=[Act((src,), 0)], layer=False, tie=src, suffix=suffix, **attrs)
    ctx.graph.add_block(t.name, src, t.name, kind, weight)
    return t.name


def vector_slices(ctx: LoweringContext, c: Const | None, x: Act):
    """Yield per-segment slices of a per-neuron constant vector (or None)."""
    for _, o, n in ctx.segments(x):
        yield None if c is None else c.slice(0, o, o + n)


def as_one_set(ctx: LoweringContext, node: onnx.NodeProto, x: Act) -> Act:
    """Concatenated sets made into one fixed set (for ops whose structure straddles them)."""
    if len(x.sets) == 1:
        return x
    n = ctx.size(x)
    t = ctx.new_set(node, n, "hidden", inputs=[x], layer=False, fixed=True, suffix="/concat", op="Concat")
    for src, o, size in ctx.segments(x):
        ctx.graph.fix(src)
        ctx.graph.add_block(f"{t.name}<{src}", src, t.name, "shuffle", None, index=list(range(o, o + size)))
    return x.but(sets=(t.name,))
