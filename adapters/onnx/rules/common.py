"""The rule toolkit: building blocks every rule module uses, public for third-party rules.

A rule (see :mod:`nngraph.adapters.onnx.context` for the contract) usually reads an activation
``x`` and some constants, then builds one of a few shapes of structure. These helpers build them
the way the built-in rules do, with exact origins and the right ties:

* a layer with a weight: :func:`dense` (``[out, in]``), :func:`conv_layer` (``[out, in / groups, *k]``);
* a per-neuron map of ``x`` (a norm, an activation, a per-channel affine): :func:`map_segments`
  with :func:`tied_copy`, or :func:`normalize` with the parameters :func:`vectors` reads;
* activations combined elementwise (a residual sum, a gate): :func:`combine`;
* a constant that broadcasts along the neuron axis only: :func:`per_channel`, cut set by set with
  :func:`vector_slices`; one that varies over positions too: :func:`positional`;
* concatenated sets a structure straddles, made one fixed set: :func:`as_one_set`.

An activation may carry several sets end to end (after a Concat), so the helpers work set by set
(:meth:`~nngraph.adapters.onnx.context.LoweringContext.segments`). Each raises
``ctx.fail(node, why)`` on what it cannot follow, so a rule may call them without checks of its own.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import onnx

from ..context import LoweringContext
from ..values import Act, Const, slot_index


def per_channel(c: Const, x: Act, size: int) -> Const | None:
    """``c`` as a vector of ``size`` if it broadcasts against ``x`` along the neuron axis only
    (a bias, a per-channel scale); None when it varies along any other axis too."""
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
    """A new set tied to ``src`` and fed from it one-to-one (a norm, an elementwise map) by a
    diagonal block of ``kind`` (``weight``: its per-neuron values, from ``ctx.param``)."""
    s = ctx.graph.sets[src]
    t = ctx.new_set(node, s.size, role, inputs=[Act((src,), 0)], layer=False, tie=src, suffix=suffix, **attrs)
    ctx.graph.add_block(t.name, src, t.name, kind, weight)
    return t.name


def vector_slices(ctx: LoweringContext, c: Const | None, x: Act) -> Iterator[Const | None]:
    """Yield per-segment slices of a per-neuron constant vector (or None)."""
    for _, o, n in ctx.segments(x):
        yield None if c is None else c.slice(0, o, o + n)


def as_one_set(ctx: LoweringContext, node: onnx.NodeProto, x: Act, base: str | None = None) -> Act:
    """Concatenated sets made into one fixed set (for ops whose structure straddles them).
    ``base``: what to name the new set after instead of the node."""
    if len(x.sets) == 1:
        return x
    n = ctx.size(x)
    t = ctx.new_set(node, n, "hidden", inputs=[x], layer=False, fixed=True, suffix="/concat", op="Concat", base=base)
    for src, o, size in ctx.segments(x):
        ctx.graph.fix(src)
        ctx.graph.add_block(f"{t.name}<{src}", src, t.name, "shuffle", None, index=list(range(o, o + size)))
    return x.but(sets=(t.name,))


def combine(ctx: LoweringContext, node: onnx.NodeProto, acts: list[Act], output: str | None = None) -> Act:
    """Activations combined elementwise (residual sum, gate, max): a new ``residual`` set per
    set, tied to the corresponding set of every operand and fed by identity blocks. The result
    is stored as ``output`` (default: the node's first output) and returned; a fused op whose
    first output is something else (a norm after the sum) names the sum's own value here."""
    if output is None:
        output = node.output[0] if node.output else ""
    base = node.name or output
    if any(a.heads and a.heads[1] == 1 for a in acts):   # one multi-query head taken as such on one side only
        acts = [a.one_head() for a in acts]
    if any(a.part != acts[0].part for a in acts):
        raise ctx.fail(node, "combines different parts of attention heads")
    segs = [[n for _, _, n in ctx.segments(a)] for a in acts]
    if any(sg != segs[0] for sg in segs) and all(ctx.size(a) == ctx.size(acts[0]) for a in acts):
        acts = [as_one_set(ctx, node, a, base=base) for a in acts]   # misaligned concatenations: one fixed set each
        segs = [[ctx.size(a)] for a in acts]
    first = acts[0]
    for a, sg in zip(acts[1:], segs[1:]):
        if sg != segs[0] or (a.rank or 0) - a.axis != (first.rank or 0) - first.axis or a.inner != first.inner \
                or (a.heads is None) != (first.heads is None):
            if ctx.size(a) == 1 or ctx.size(first) == 1:
                raise ctx.fail(node, "broadcasts a single neuron over a neuron axis")
            raise ctx.fail(node, f"combines neuron axes that do not line up ({segs[0]} on axis {first.axis} "
                                 f"vs {sg} on axis {a.axis})")
    out_sets = []
    for i, _ in enumerate(first.sets):
        members = [a.sets[i] for a in acts]
        t = ctx.new_set(node, ctx.graph.sets[members[0]].size, "residual", inputs=acts, layer=False,
                        tie=members[0], suffix=f"[{i}]" if len(first.sets) > 1 else "", op=node.op_type, base=base)
        for j, m in enumerate(members):
            ctx.graph.tie(t.name, m)
            ctx.graph.add_block(f"{t.name}/{j}", m, t.name, "identity")
        out_sets.append(t.name)
    rank = max(a.rank or 0 for a in acts) or None
    axis = first.axis + ((rank or 0) - (first.rank or 0))
    heads = first.heads
    if heads:
        heads = (heads[0] + ((rank or 0) - (first.rank or 0)), heads[1])
        for a in acts[1:]:
            ctx.graph.tie(ctx.graph.groups[ctx.graph.sets[first.sets[0]].group].parent or first.sets[0],
                          ctx.graph.groups[ctx.graph.sets[a.sets[0]].group].parent or a.sets[0])
    unit = first.unit if rank == first.rank and all(a.unit == first.unit and a.rank == rank for a in acts) else None
    out = first.but(sets=tuple(out_sets), axis=axis, rank=rank, stage="out", heads=heads, unit=unit)
    if output:
        ctx.values[output] = out
    return out


def vectors(ctx: LoweringContext, node: onnx.NodeProto, x: Act, slots: dict[int, str]) -> dict[str, Const]:
    """The per-neuron parameters in input ``slots`` of ``node`` (slot → array key, e.g.
    ``{1: "ln_scale", 2: "ln_shift"}``), each as a vector of ``x``'s size; omitted inputs are
    skipped. Fails when one is not a constant of one value per neuron."""
    out = {}
    n = ctx.size(x)
    for i, key in slots.items():
        if i >= len(node.input) or not node.input[i]:
            continue
        c = ctx.const(node.input[i])
        if c is None:
            raise ctx.fail(node, f"{key} is not a constant")
        # parameter slots hold one value per neuron: [n] (or [n] with unit axes around it)
        v = c.reshape((n,)) if c.data.size == n and max(c.data.shape, default=1) == n else None
        if v is None:
            raise ctx.fail(node, f"{key} of shape {c.data.shape} is not one value per neuron ({n})")
        out[key] = v
    return out


def normalize(ctx: LoweringContext, node: onnx.NodeProto, x: Act, arrays: dict[str, Const], *,
              in_place: bool = False, **attrs) -> Act:
    """A normalization of ``x``: per set, a tied ``norm`` set fed by a ``norm`` block, holding
    ``arrays`` (from :func:`vectors`) sliced to it; ``attrs`` (epsilon …) are recorded as
    ``{op}_{key}``. ``in_place``: fold into ``x``'s own set instead when nothing else reads it
    and it has no activation or such arrays yet (BatchNormalization after a conv)."""
    def make(src: str, offset: int, size: int) -> str:
        s = ctx.graph.sets[src]
        fold = in_place and len(x.sets) == 1 and s.role not in ("input", "output") and s.activation is None \
            and not any(k in s.arrays for k in arrays)
        target = src if fold else tied_copy(ctx, node, src, "norm", "norm")
        t = ctx.graph.sets[target]
        for key, c in arrays.items():
            t.arrays[key] = ctx.param(c.slice(0, offset, offset + size))
        t.attrs.update({f"{node.op_type}_{k}": v for k, v in attrs.items()})
        return target

    return map_segments(ctx, x, make)


def dense(ctx: LoweringContext, node: onnx.NodeProto, x: Act, w: Const, *, bias: Const | None = None,
          axis: int | None = None, suffix: str = "", **attrs) -> Act:
    """A dense layer on ``x``: ``w`` in canonical layout [out, in·inner] (transpose a stored
    [in, out] first), one block per input set, the output a new set on ``axis`` (default:
    ``x``'s); flattened inputs keep their taps. ``bias``: one value per output neuron.
    ``suffix``: appended to the new set's name (one node with several projections)."""
    out_size, in_size = w.data.shape
    if x.slots is not None:
        return _dense_slots(ctx, node, x, w, bias, axis, suffix, attrs)
    taps = ctx.taps(x)
    if in_size != sum(n * t for (_, _, n), t in zip(ctx.segments(x), taps)):
        raise ctx.fail(node, f"weight has {in_size} inputs but the tracked axis carries "
                             f"{ctx.size(x)} neurons × {taps}")
    s = ctx.new_set(node, out_size, inputs=[x], suffix=suffix)
    start = 0
    for (src, o, n), t in zip(ctx.segments(x), taps):
        part = w.slice(1, start, start + n * t)
        start += n * t
        if t > 1 and x.inner_minor:        # [out, positions·channels] → [out, channels, positions]
            part = part.reshape((out_size, t, n)).transpose((0, 2, 1))
        elif t > 1:
            part = part.reshape((out_size, n, t))
        name = s.name if len(x.sets) == 1 else f"{s.name}<{src}"
        ctx.graph.add_block(name, src, s.name, "dense", ctx.param(part), op=node.op_type, **attrs)
    return _dense_out(ctx, node, x, s, bias, axis)


def _dense_out(ctx: LoweringContext, node: onnx.NodeProto, x: Act, s, bias: Const | None, axis: int | None) -> Act:
    out = Act((s.name,), x.axis if axis is None else axis, x.rank, stage="linear")
    if bias is not None:
        b = bias.reshape((s.size,)) if bias.data.size == s.size else None
        if b is None:
            raise ctx.fail(node, f"bias of shape {bias.data.shape} is not one value per output neuron")
        s.arrays["bias"] = ctx.param(b)
        out = out.but(stage="out")
    return out


def _dense_slots(ctx: LoweringContext, node: onnx.NodeProto, x: Act, w: Const, bias: Const | None,
                 axis: int | None, suffix: str, attrs: dict) -> Act:
    """A dense layer on the output of grouped-query attention (``x.slots``: query slot j's heads
    are copies of the values, interleaved): one block per slot, from the columns of its heads."""
    r, G = x.slots
    out_size, in_size = w.data.shape
    if x.heads or x.inner != 1 or x.inners is not None or x.part or len(set(x.sets)) != r \
            or in_size != ctx.size(x):
        raise ctx.fail(node, "a dense layer reads grouped-query heads that are not merged back")
    width = ctx.graph.sets[x.sets[0]].size // G
    s = ctx.new_set(node, out_size, inputs=[x], suffix=suffix)
    for j, src in enumerate(x.sets):
        part = w.take(1, slot_index(G, r, width, j).tolist())
        ctx.graph.add_block(f"{s.name}<{src}", src, s.name, "dense", ctx.param(part), op=node.op_type, **attrs)
    return _dense_out(ctx, node, x, s, bias, axis)


#: Conv attributes recorded on conv blocks.
CONV_ATTRS = ("strides", "dilations", "pads", "auto_pad", "output_padding", "output_shape")


def conv_attrs(ctx: LoweringContext, node: onnx.NodeProto) -> dict:
    """The :data:`CONV_ATTRS` ``node`` sets, as plain Python values."""
    out = {}
    for k in CONV_ATTRS:
        v = ctx.attr(node, k)
        if v is not None:
            out[k] = v.decode() if isinstance(v, bytes) else list(v) if isinstance(v, (list, tuple)) else v
    return out


def conv_layer(ctx: LoweringContext, node: onnx.NodeProto, x: Act, w: Const, groups: int,
               bias: Const | None) -> None:
    """A convolution on ``x`` (channels on axis 1), stored as ``node``'s output. ``w``
    canonical: [out, in / groups, *kernel]. Grouped: channels permute within ``groups``
    blocks, groups as blocks (depthwise: input and output tied). With several input sets
    (after a Concat), each set must hold whole groups; it then gets its own output set and block."""
    if x.axis != 1 or x.inner != 1 or x.heads:
        raise ctx.fail(node, f"input neurons are on axis {x.axis}, not the channel axis 1")
    out_ch, ipg = w.data.shape[:2]
    in_ch = ctx.size(x)
    if ipg * groups != in_ch or out_ch % groups:
        raise ctx.fail(node, f"weight expects {ipg * groups} input channels in {groups} groups, the input has {in_ch}")
    opg = out_ch // groups
    attrs = conv_attrs(ctx, node)
    if bias is not None and bias.data.size != out_ch:
        raise ctx.fail(node, f"bias of shape {bias.data.shape} is not one value per output channel")
    multi = len(x.sets) > 1
    if groups == 1:                       # every input channel feeds one output set
        s = ctx.new_set(node, out_ch, inputs=[x])
        for src, o, n in ctx.segments(x):
            part = w.slice(1, o, o + n) if multi else w
            ctx.graph.add_block(f"{s.name}<{src}" if multi else s.name, src, s.name, "conv", ctx.param(part),
                                op=node.op_type, groups=1, **attrs)
        if bias is not None:
            s.arrays["bias"] = ctx.param(bias.reshape((out_ch,)))
        ctx.set_output(node, Act((s.name,), 1, x.rank, stage="out" if bias is not None else "linear"))
        return
    if any(o % ipg or n % ipg for _, o, n in ctx.segments(x)):
        x = as_one_set(ctx, node, x)      # a group straddles two concatenated inputs
        multi = False
    outs = []
    for src, o, n in ctx.segments(x):
        k, lo, hi = n // ipg, o // ipg * opg, (o + n) // ipg * opg
        suffix = f"<{src}" if multi else ""
        if k == n == hi - lo:                    # depthwise: channel c → channel c
            t = ctx.new_set(node, hi - lo, inputs=[x], tie=src, suffix=suffix)
        else:
            t = ctx.new_set(node, hi - lo, inputs=[x], parent=ctx.blocks_of(src, k) if k > 1 else None, suffix=suffix)
        ctx.graph.add_block(t.name, src, t.name, "conv", ctx.param(w.slice(0, lo, hi) if multi else w),
                            op=node.op_type, groups=k, **attrs)
        if bias is not None:
            t.arrays["bias"] = ctx.param(bias.reshape((out_ch,)).slice(0, lo, hi))
        outs.append(t.name)
    stage = "linear" if bias is None and len(outs) == 1 else "out"
    ctx.set_output(node, Act(tuple(outs), 1, x.rank, stage=stage))


def positional(ctx: LoweringContext, node: onnx.NodeProto, x: Act, c: Const) -> bool:
    """Add(x, table) where the table varies over tokens or space too: a learned position
    embedding. Stored as a per-neuron array [neurons, positions] on a tied copy of x (and set
    as ``node``'s output). False, with nothing built, when ``c`` is not such a table."""
    n = ctx.size(x)
    if x.rank is None or len(x.sets) != 1 or x.heads or x.inner != 1 or not c.is_float:
        return False
    rank = max(x.rank, c.data.ndim)
    shape = (1,) * (rank - c.data.ndim) + c.data.shape
    axis = x.axis + rank - x.rank                 # broadcasting aligns from the right
    if shape[axis] != n:
        return False
    full = c.reshape(shape)
    moved = full.transpose([axis] + [d for d in range(rank) if d != axis])
    t = tied_copy(ctx, node, x.set, "scale", op="Add")
    ctx.graph.sets[t].arrays["pos"] = ctx.param(moved.reshape((n, moved.data.size // n)))
    ctx.set_output(node, x.but(sets=(t,), stage="out", axis=axis, rank=rank))
    return True
