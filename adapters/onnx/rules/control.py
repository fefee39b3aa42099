"""Control flow: ``If`` lowers both branches into the one graph.

Either branch may run, so both are part of the network: every parameter of both is in the
graph, and each output of the If ties the two branches' outputs (whichever runs, the next
layer must see its neurons in the same order).
"""
from __future__ import annotations

import onnx

from nngraph.hookspecs import OpRule

from ..engine import AUX, Act, Const, LoweringContext


def lower_if(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    from .elementwise import combine

    results = []
    for attr in ("then_branch", "else_branch"):
        branch = ctx.attr(node, attr)
        ctx.add_initializers(branch)
        ctx.walk(branch.node)
        results.append([ctx.values.get(o.name) for o in branch.output])
    for k, (a, b) in enumerate(zip(*results)):
        if isinstance(a, Act) and isinstance(b, Act):
            tmp = onnx.NodeProto()
            tmp.CopyFrom(node)
            del tmp.attribute[:]
            del tmp.output[:]
            tmp.output.append(node.output[k])
            combine(ctx, tmp, [a, b])
        elif isinstance(a, Act) or isinstance(b, Act):
            raise ctx.fail(node, f"output {k} is an activation in one branch only")
        else:
            for v in (a, b):
                if isinstance(v, Const) and v.is_float and v.data.size > 1:
                    raise ctx.fail(node, f"output {k} selects between constants (a weight chosen at run time)")
            ctx.set_output(node, AUX, k)


RULES = [OpRule("If", lower_if)]
