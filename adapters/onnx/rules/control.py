"""Control flow: ``If`` lowers both branches into the one graph.

Either branch may run, so both are part of the network: every parameter of both is in the
graph, and each output of the If ties the two branches' outputs (whichever runs, the next
layer must see its neurons in the same order).
"""
from __future__ import annotations

import onnx

from ..context import LoweringContext
from ..registry import rule
from ..values import AUX, Act, Const
from .common import combine


@rule("If")
def lower_if(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    results = []
    for attr in ("then_branch", "else_branch"):
        branch = ctx.attr(node, attr)
        ctx.add_initializers(branch)
        ctx.walk(branch.node)
        results.append([ctx.values.get(o.name) for o in branch.output])
    for k, (a, b) in enumerate(zip(*results)):
        if isinstance(a, Act) and isinstance(b, Act):
            combine(ctx, node, [a, b], output=node.output[k])
        elif isinstance(a, Act) or isinstance(b, Act):
            raise ctx.fail(node, f"output {k} is an activation in one branch only")
        else:
            for v in (a, b):
                if isinstance(v, Const) and v.is_float and v.data.size > 1:
                    raise ctx.fail(node, f"output {k} selects between constants (a weight chosen at run time)")
            ctx.set_output(node, AUX, k)

