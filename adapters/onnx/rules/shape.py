"""Ops that move, split or join axes: the engine follows the neuron axis through them."""
from __future__ import annotations

import numpy as np
import onnx

from nngraph.hookspecs import OpRule

from ..engine import AUX, Act, Const, LoweringContext, Scores, Stat
from .common import as_one_set, tied_copy


def _prod(dims) -> int | None:
    if any(d is None for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64))


def _ints(ctx: LoweringContext, node: onnx.NodeProto, slot: int, attr: str) -> list[int] | None:
    if len(node.input) > slot and node.input[slot]:
        c = ctx.const(node.input[slot])
        return None if c is None else [int(v) for v in np.asarray(c.data).reshape(-1)]
    v = ctx.attr(node, attr)
    return None if v is None else [int(a) for a in v]


def _passthrough_other(ctx: LoweringContext, node: onnx.NodeProto) -> bool:
    """Stats, scores and aux values ride through shape ops unchanged."""
    v = ctx.values.get(node.input[0])
    if isinstance(v, (Stat, Scores)) or v is AUX:
        ctx.set_output(node, v)
        return True
    return False


def lower_reshape(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Reshape / Flatten: keep the neuron axis whole, flatten it with what follows it (taps),
    split it into [heads, head_dim], or merge heads back."""
    if _passthrough_other(ctx, node):
        return
    x = ctx.act(node.input[0])
    src, dst = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if node.op_type == "Flatten" and src is not None:
        f = ctx.attr(node, "axis", 1) % max(len(src), 1)
        dst = (_prod(src[:f]), _prod(src[f:]))
    if x is None or src is None or dst is None:
        raise ctx.fail(node, "needs known shapes around the neuron axis (shape inference found none)")
    n = ctx.size(x)
    if x.heads:
        ha, H = x.heads
        post = _prod(src[x.axis + 1:])
        if ha == x.axis + 1 and post is not None and len(x.sets) == 1:
            return _shuffle(ctx, node, x, dst, n, post)
        if ha != x.axis - 1 or post is None:
            raise ctx.fail(node, f"reshapes a head-split activation whose heads are on axis {ha}, dims on {x.axis}")
        for j, d in enumerate(dst):
            if d == n and _prod(dst[j + 1:]) == post:
                ctx.set_output(node, x.but(axis=j, rank=len(dst), heads=None))
                return
        raise ctx.fail(node, f"reshapes {src} to {dst} across attention heads")
    if x.inner != 1:
        raise ctx.fail(node, "reshapes an already flattened activation")
    post = _prod(src[x.axis + 1:])
    pre = src[:x.axis]
    if post is None:
        raise ctx.fail(node, f"dimensions after the neuron axis of {src} are dynamic")
    for j, d in enumerate(dst):
        rest = _prod(dst[j + 1:])
        if rest is None or d is None:
            continue
        if d == n and rest == post:                         # the axis survives whole
            ctx.set_output(node, x.but(axis=j, rank=len(dst)))
            return
        if d % n == 0 and d // n * rest == post and d > n:  # flattened with trailing axes: taps
            ctx.set_output(node, x.but(axis=j, rank=len(dst), inner=d // n))
            return
        if j + 1 < len(dst) and dst[j + 1] is not None and d * dst[j + 1] == n and _prod(dst[j + 2:]) == post \
                and d > 1 and dst[j + 1] > 1:                 # split into [heads, head_dim]
            x = as_one_set(ctx, node, x)
            ctx.blocks_of(x.set, d)
            ctx.set_output(node, x.but(axis=j + 1, rank=len(dst), heads=(j, d)))
            return
    del pre
    raise ctx.fail(node, f"reshapes {src} to {dst}, mixing the {n}-neuron axis {x.axis} with others")


def _shuffle(ctx: LoweringContext, node: onnx.NodeProto, x: Act, dst, n: int, post: int) -> None:
    """[.., d, H, ..] merged back into one axis: a fixed channel shuffle. The reordered neurons
    get a new set; both it and the source are fixed (see vocab: pattern "index")."""
    H = x.heads[1]
    d = n // H
    p = np.arange(n)
    index = np.argsort((p % H) * d + p // H).tolist()     # target position of each source neuron
    j = next((j for j, dim in enumerate(dst) if dim == n and _prod(dst[j + 1:]) == post // H), None)
    if j is None:
        raise ctx.fail(node, f"reshapes shuffled heads to {dst}")
    ctx.graph.fix(x.set)
    s = ctx.new_set(node, n, "hidden", inputs=[x], layer=False, fixed=True, op="shuffle")
    ctx.graph.add_block(s.name, x.set, s.name, "shuffle", None, index=index)
    ctx.set_output(node, Act((s.name,), j, len(dst), stage="out"))


def _squeeze(ctx: LoweringContext, node: onnx.NodeProto, unsqueeze: bool) -> None:
    if _passthrough_other(ctx, node):
        return
    x = ctx.act(node.input[0])
    axes = _ints(ctx, node, 1, "axes")
    if x is None:
        raise ctx.fail(node, "input is not a tracked activation")
    if x.rank is None or axes is None:
        return lower_reshape(ctx, node)
    if unsqueeze:
        out_rank = x.rank + len(axes)
        axes = sorted(a % out_rank for a in axes)
        keep = [i for i in range(out_rank) if i not in axes]
    else:
        axes = sorted(a % x.rank for a in axes)
        if x.axis in axes or (x.heads and x.heads[0] in axes):
            raise ctx.fail(node, "squeezes the neuron axis")
        out_rank = x.rank - len(axes)
        keep = None
    def move(a: int) -> int:
        return keep[a] if unsqueeze else a - sum(1 for s in axes if s < a)
    heads = (move(x.heads[0]), x.heads[1]) if x.heads else None
    ctx.set_output(node, x.but(axis=move(x.axis), rank=out_rank, heads=heads))


def lower_transpose(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    v = ctx.values.get(node.input[0])
    perm = ctx.attr(node, "perm")
    if isinstance(v, Scores):
        r = v.rank
        perm = list(perm) if perm else list(range(r))[::-1]
        ctx.set_output(node, Scores(v.q, v.k, perm.index(v.head_axis), r))
        return
    if _passthrough_other(ctx, node):
        return
    x = ctx.act(node.input[0])
    if x is None or x.rank is None:
        raise ctx.fail(node, "input is not a tracked activation of known rank")
    perm = list(perm) if perm else list(range(x.rank))[::-1]
    if x.inner != 1:
        raise ctx.fail(node, "transposes a flattened activation")
    heads = (perm.index(x.heads[0]), x.heads[1]) if x.heads else None
    ctx.set_output(node, x.but(axis=perm.index(x.axis), heads=heads))


def lower_concat(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    vals = [ctx.values.get(i) for i in node.input]
    acts = [v for v in vals if isinstance(v, Act)]
    if not acts:
        ctx.set_output(node, next((v for v in vals if isinstance(v, (Stat, Scores))), AUX))
        return
    first = acts[0]
    rank = first.rank
    axis = ctx.attr(node, "axis") % rank
    if any(a.heads or a.inner != 1 or a.rank != rank for a in acts):
        raise ctx.fail(node, "concatenates head-split, flattened or differently ranked activations")
    if axis == first.axis:
        if len(acts) != len(vals) or any(a.axis != axis for a in acts):
            raise ctx.fail(node, "concatenates constants or misaligned values along the neuron axis")
        ctx.set_output(node, first.but(sets=tuple(s for a in acts for s in a.sets), stage="out"))
        return
    # along tokens / space: neurons line up; constants (a class token) become per-neuron arrays
    if any(a.axis != first.axis for a in acts) or any([ctx.graph.sets[s].size for s in a.sets] !=
                                                      [ctx.graph.sets[s].size for s in first.sets] for a in acts):
        raise ctx.fail(node, "concatenates activations whose neuron axes do not line up")
    consts = [(i, v) for i, v in enumerate(vals) if isinstance(v, Const)]
    if len(acts) == 1 and not consts:
        ctx.set_output(node, first)
        return
    if len(first.sets) != 1:
        raise ctx.fail(node, "concatenates multi-set activations along a non-neuron axis")
    from .elementwise import _combine
    if len(acts) > 1:
        _combine(ctx, node, acts)
        out = ctx.values[node.output[0]]
    else:
        out = first.but(sets=(tied_copy(ctx, node, first.set, "residual", op="Concat"),), stage="out")
    n = ctx.size(first)
    s = ctx.graph.sets[out.set]
    for i, c in consts:
        if c.data.ndim != rank or c.data.shape[first.axis] != n or not c.is_float:
            raise ctx.fail(node, f"concatenated constant of shape {c.data.shape} is not per neuron")
        moved = c.transpose([first.axis] + [d for d in range(rank) if d != first.axis])
        s.arrays[f"concat{i}"] = ctx.param(moved.reshape((n, moved.data.size // n)))
    ctx.set_output(node, out)


def _select(ctx: LoweringContext, node: onnx.NodeProto, x: Act, start: int, stop: int) -> Act:
    """The part [start, stop) of the neuron axis, splitting a fresh set if needed."""
    for _ in range(2):
        bounds = [o for _, o, _ in ctx.segments(x)] + [ctx.size(x)]
        if start in bounds and stop in bounds:
            segs = [s for s, o, n in ctx.segments(x) if o >= start and o + n <= stop]
            return x.but(sets=tuple(segs), stage="out")
        inside = [(s, o, n) for s, o, n in ctx.segments(x) if o < start < o + n or o < stop < o + n]
        for s, o, n in inside:
            cuts = sorted({0, n, *[b - o for b in (start, stop) if o < b < o + n]})
            ctx.split_set(s, [b - a for a, b in zip(cuts, cuts[1:])])
        x = ctx.values[node.input[0]]
    raise ctx.fail(node, f"cannot select neurons {start}:{stop}")


def lower_split(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if _passthrough_other(ctx, node):
        for i in range(1, len(node.output)):
            ctx.set_output(node, ctx.values[node.input[0]], i)
        return
    x = ctx.act(node.input[0])
    if x is None or x.rank is None:
        raise ctx.fail(node, "input is not a tracked activation")
    axis = ctx.attr(node, "axis", 0) % x.rank
    if axis != x.axis:
        if x.heads and axis == x.heads[0]:
            raise ctx.fail(node, "splits attention heads apart")
        for i in range(len(node.output)):
            ctx.set_output(node, x, i)
        return
    if x.heads or x.inner != 1:
        raise ctx.fail(node, "splits a head-split or flattened neuron axis")
    n = ctx.size(x)
    sizes = _ints(ctx, node, 1, "split")
    if sizes is None:
        k = int(ctx.attr(node, "num_outputs", len(node.output)))
        step = -(-n // k)
        sizes = [min(step, n - i * step) for i in range(k)]
    offset = 0
    for i, size in enumerate(sizes):
        ctx.set_output(node, _select(ctx, node, ctx.values[node.input[0]], offset, offset + size), i)
        offset += size


def lower_slice(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if _passthrough_other(ctx, node):
        return
    x = ctx.act(node.input[0])
    if x is None or x.rank is None:
        raise ctx.fail(node, "input is not a tracked activation")
    starts, ends = _ints(ctx, node, 1, "starts"), _ints(ctx, node, 2, "ends")
    axes = _ints(ctx, node, 3, "axes") or list(range(len(starts or [])))
    steps = _ints(ctx, node, 4, "steps") or [1] * len(axes)
    if starts is None or ends is None:
        if x.axis in [a % x.rank for a in (axes or [])] or not axes:
            raise ctx.fail(node, "slices the neuron axis with non-constant bounds")
        ctx.set_output(node, x)
        return
    out = x
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax %= x.rank
        if ax == x.axis:
            n = ctx.size(x)
            st, en = max(0, st + n if st < 0 else min(st, n)), max(0, en + n if en < 0 else min(en, n))
            if sp != 1:
                raise ctx.fail(node, "strided slice of the neuron axis")
            if (st, en) != (0, n):
                out = _select(ctx, node, x, st, en)
        elif x.heads and ax == x.heads[0]:
            raise ctx.fail(node, "slices attention heads")
    ctx.set_output(node, out)


def lower_gather(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    table = ctx.const(node.input[0])
    if table is not None:
        from .embedding import lower_embedding
        return lower_embedding(ctx, node)
    if _passthrough_other(ctx, node):
        return
    x = ctx.act(node.input[0])
    if x is None or x.rank is None:
        raise ctx.fail(node, "input is not a tracked activation")
    axis = ctx.attr(node, "axis", 0) % x.rank
    if axis == x.axis or (x.heads and axis == x.heads[0]):
        raise ctx.fail(node, "gathers along the neuron axis")
    idx_shape = ctx.shape(node.input[1])
    c = ctx.const(node.input[1])
    k = np.asarray(c.data).ndim if c is not None else (len(idx_shape) if idx_shape is not None else None)
    if k is None:
        raise ctx.fail(node, "indices of unknown rank")
    move = lambda a: a if a < axis else a + k - 1  # noqa: E731
    heads = (move(x.heads[0]), x.heads[1]) if x.heads else None
    ctx.set_output(node, x.but(axis=move(x.axis), rank=x.rank + k - 1, heads=heads))


def lower_expand(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    v = ctx.values.get(node.input[0])
    if isinstance(v, Const):          # a parameter broadcast to the batch (class tokens)
        ctx.set_output(node, v)
        return
    if _passthrough_other(ctx, node):
        return
    x = ctx.act(node.input[0])
    out = ctx.shape(node.output[0])
    if x is None or x.rank is None:
        raise ctx.fail(node, "input is not a tracked activation")
    shift = (len(out) - x.rank) if out is not None else 0
    heads = (x.heads[0] + shift, x.heads[1]) if x.heads else None
    if out is not None and out[x.axis + shift] not in (None, ctx.size(x)):
        raise ctx.fail(node, "broadcasts along the neuron axis")
    ctx.set_output(node, x.but(axis=x.axis + shift, rank=x.rank + shift, heads=heads))


def lower_tile(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if _passthrough_other(ctx, node):
        return
    x = ctx.act(node.input[0])
    reps = _ints(ctx, node, 1, "repeats")
    if x is None or reps is None or reps[x.axis] != 1:
        raise ctx.fail(node, "tiles the neuron axis (or with unknown repeats)")
    ctx.set_output(node, x)


def lower_aux(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Shape, Size and friends: read only the layout of an activation."""
    for i in range(len(node.output)):
        ctx.set_output(node, AUX, i)


RULES = [
    OpRule("Reshape", lower_reshape), OpRule("Flatten", lower_reshape),
    OpRule("Squeeze", lambda c, n: _squeeze(c, n, False)), OpRule("Unsqueeze", lambda c, n: _squeeze(c, n, True)),
    OpRule("Transpose", lower_transpose), OpRule("Concat", lower_concat), OpRule("Split", lower_split),
    OpRule("Slice", lower_slice), OpRule("Gather", lower_gather), OpRule("Expand", lower_expand),
    OpRule("Tile", lower_tile),
    *(OpRule(op, lower_aux) for op in ("Shape", "Size", "ConstantOfShape", "NonZero", "EyeLike", "Range",
                                       "RandomNormalLike", "RandomUniformLike")),
]
