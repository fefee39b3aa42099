"""Passes over the lowered graph, once every node has been lowered: mark the network's outputs,
tie the uses of a parameter used in several places, account for every constant, and record
where each neuron set's activations can be read (probes)."""
from __future__ import annotations

import numpy as np

from nngraph.errors import GraphError, UnsupportedModelError
from nngraph.graph.ir import Unmapped
from nngraph.graph.origin import Origin

from .context import LoweringContext
from .graphs import node_label
from .values import Act, Const


def mark_outputs(ctx: LoweringContext) -> None:
    """The sets a graph output carries become fixed ``output`` sets (a set that kept another
    role, a scale or a norm, is marked ``network_output`` instead)."""
    graph = ctx.graph
    for out in ctx.model.graph.output:
        v = ctx.values.get(out.name)
        if isinstance(v, Act):
            for name in v.sets:
                s = graph.sets[name]
                if s.role == "hidden":
                    s.role = "output"
                elif s.role != "output":
                    s.attrs["network_output"] = True     # an output that kept its role (a scale, a norm)
                graph.fix(name)


def share_parameters(ctx: LoweringContext) -> None:
    """A constant used as a parameter in several places (a recurrent weight unrolled over time
    steps, an initial state shared by layers, tied embeddings): the sets its uses index on
    the same leaf axis are tied, so every symmetry permutes all uses alike; the first use
    writes the tensor back, the others are marked ``shared``."""
    g = ctx.graph
    uses: dict[str, list] = {}
    opaque: set[int] = set()      # params of opaque blocks: read unpermuted, so every use is pinned
    for s in g.sets.values():
        for p in s.arrays.values():
            if p.origin is not None:
                uses.setdefault(p.origin.tensor, []).append((p, [s.name]))
    for b in g.blocks:
        if b.weight is None or b.weight.origin is None:
            continue
        if b.pattern == "full":
            sets = [b.target, b.source if b.groups == 1 else None]
        elif b.pattern == "opaque":
            sets = [b.source, b.target]
            opaque.add(id(b.weight))
        else:
            sets = [b.source]
        uses.setdefault(b.weight.origin.tensor, []).append((b.weight, sets))
    for tensor, lst in uses.items():
        if len(lst) < 2:
            continue
        leaf = ctx.leaves[tensor].shape
        traced = [(p.origin.trace(leaf), p, sets) for p, sets in lst]
        masks: dict[int, np.ndarray] = {}

        def footprint(p) -> np.ndarray:
            if id(p) not in masks:
                masks[id(p)] = _footprint(p.origin, leaf)
            return masks[id(p)]

        def overlap(i1, i2) -> bool:
            b1, b2 = i1[0][1], i2[0][1]
            if b1 is None or b2 is None:     # no box (rows taken apart, as grouped-query slots are): exactly
                return bool(np.any(footprint(i1[1]) & footprint(i2[1])))
            return all(max(b1[a][0], b2[a][0]) < min(b1[a][1], b2[a][1]) for a in b1)

        clusters: list[list] = []
        for item in traced:
            hit = next((c for c in clusters if any(overlap(item, other) for other in c)), None)
            (hit.append(item) if hit is not None else clusters.append([item]))
        leaf_data = ctx.leaves[tensor]
        constant = leaf_data.size > 0 and bool(np.all(leaf_data == leaf_data.reshape(-1)[0]))
        for cluster in clusters:
            if len(cluster) < 2:
                continue
            if any(id(p) in opaque for _, p, _ in cluster) and not constant:
                for _, _, sets in cluster:
                    for name in sets:
                        if name is not None:
                            g.fix(name)
                for _, p, _ in cluster[1:]:
                    p.shared = True
                continue
            if constant:     # every permutation leaves it unchanged: no tie needed (deduplicated zeros, ones)
                for _, p, _ in cluster[1:]:
                    p.shared = True
                g.meta.setdefault("shared_constants", []).append(tensor)
                continue
            if any(item[0][1] != cluster[0][0][1] or item[0][1] is None for item in cluster):
                raise UnsupportedModelError(f"{ctx.model.path}: constant {tensor!r} is used as a parameter by "
                                            f"overlapping but different slices")
            by_axis: dict[int, set] = {}
            ok = all(a is not None for (axes, _), _, _ in cluster for a in axes[:1])
            for (axes, _), p, sets in cluster:
                for k, leaf_axis in enumerate(axes):
                    owner = sets[k] if k < len(sets) else None
                    if leaf_axis is None:
                        continue
                    if owner is None and k < len(sets):
                        ok = False
                    if owner is not None:
                        by_axis.setdefault(leaf_axis, set()).add(owner)
            try:
                if not ok:
                    raise GraphError("grouped weight")
                for owners in by_axis.values():
                    first, *rest = sorted(owners)
                    for other in rest:
                        g.tie(first, other)
            except GraphError:
                for _, _, sets in cluster:     # no tie can express it: keep every use still
                    for name in sets:
                        if name is not None:
                            g.fix(name)
            for _, p, _ in cluster[1:]:
                p.shared = True


def _footprint(origin: Origin, leaf_shape) -> np.ndarray:
    """The elements of a source tensor an origin reads, as a boolean mask of its shape."""
    out = np.zeros(leaf_shape, dtype=bool)
    shape = origin.shape(leaf_shape)
    if shape is None:
        return ~out
    origin.scatter(np.ones(shape, dtype=bool), out)
    return out


def account_constants(ctx: LoweringContext) -> None:
    """Every float constant of more than one element is a parameter in the graph, folded into
    one, a declared buffer or unused. One read only where no neurons are tracked becomes an
    opaque parameter (pinned, recorded); under ``strict``, or read by nothing, it is listed as
    unmapped with the reason."""
    graph = ctx.graph
    unused, buffers = [], {}
    for name, arr in ctx.leaves.items():
        if name in graph.sources or arr.dtype.kind != "f" or arr.size <= 1:
            continue
        if name in ctx.absorbed:
            continue
        if name in ctx.buffers:
            buffers[name] = ctx.buffers[name]
            continue
        readers = ctx.consumers.get(name, [])
        if not readers and name not in {o.name for o in ctx.model.graph.output}:
            unused.append(name)
            continue
        if not readers or ctx.strict:
            labels = [node_label(n) for n in readers]
            graph.add_source(name, arr.shape, arr.dtype)
            graph.unmapped[name] = Unmapped(f"read by {', '.join(labels[:3]) or 'no node'}, which carry no neurons",
                                            np.asarray(arr))
            continue
        # read where no neurons were tracked (downstream of a pin that lost the layout): kept as an
        # opaque parameter of a fixed one-node set standing for the reading node
        reader = readers[0]
        holder = ctx.new_set(reader, 1, "hidden", layer=False, fixed=True, suffix="/opaque", op=reader.op_type)
        graph.add_block(ctx.unique(f"{node_label(reader)}/opaque:{name}"), holder.name, holder.name, "opaque",
                        ctx.param(Const(arr, Origin(name))), op=reader.op_type)
        ctx.pins.append({"node": node_label(reader), "op": reader.op_type, "parameters": int(arr.size), "sets": [holder.name],
                         "reason": "reads a parameter in a computation that carries no tracked neurons"})
    if unused:
        graph.meta["unused_constants"] = unused
    if buffers:
        graph.meta["buffers"] = buffers


def probes(ctx: LoweringContext) -> dict[str, list]:
    """For each neuron set, a value of the main graph that carries exactly that set on one axis
    (``[value, axis]``): where activation matching reads the neurons' outputs. Of the values
    carrying a set, the one with the most elements wins (a conv's output before pooling), the
    later one on a tie (after the nonlinearity)."""
    produced = {o for n in ctx.model.graph.node for o in n.output} | {i.name for i in ctx.model.graph.input}
    best: dict[str, tuple[int, str, int]] = {}
    for name, v in ctx.values.items():
        if not (isinstance(v, Act) and name in produced and len(v.sets) == 1 and v.inner == 1 and v.heads is None
                and v.seg_axis is None and v.part is None and v.rank is not None):
            continue
        shape = ctx.shape(name)
        if shape is None or len(shape) != v.rank or shape[v.axis] != ctx.graph.sets[v.sets[0]].size:
            continue
        numel = int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in shape]))
        if numel >= best.get(v.sets[0], (-1,))[0]:
            best[v.sets[0]] = (numel, name, v.axis)
    return {s: [name, axis] for s, (_, name, axis) in best.items()}

