"""Ops that move, split or join axes: the engine follows the neuron axis through them."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from nngraph.errors import UnsupportedModelError

from ..context import LoweringContext
from ..folding import constant_value
from ..graphs import all_graphs
from ..registry import rule
from ..shapes import BATCH
from ..values import AUX, Act, Const, Scores, Stat
from .common import as_one_set, combine, tied_copy
from .elementwise import scores_with
from .embedding import lower_embedding


def _prod(dims) -> int | None:
    """Product of static dims; None if any is symbolic or unknown."""
    if any(not isinstance(d, (int, np.integer)) for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64))


def _ints(ctx: LoweringContext, node: onnx.NodeProto, slot: int, attr: str) -> list[int] | None:
    if len(node.input) > slot and node.input[slot]:
        c = ctx.const(node.input[slot])
        return None if c is None else [int(v) for v in np.asarray(c.data).reshape(-1)]
    v = ctx.attr(node, attr)
    return None if v is None else [int(a) for a in v]


def _value_ahead(ctx: LoweringContext, name: str) -> np.ndarray | None:
    """The constant value ``name`` holds, also when its Constant node comes later in the graph than the node
    asking (a rule looking at the other Slices of a chunk, the Gathers of a view): None when not constant."""
    c = ctx.const(name)
    if c is not None:
        return np.asarray(c.data)
    node = ctx.producer(name)
    if node is None or node.op_type != "Constant":
        return None
    try:
        return np.asarray(constant_value(ctx, node))
    except (UnsupportedModelError, ValueError, TypeError):
        return None


def _int_operand(ctx: LoweringContext, node: onnx.NodeProto, slot: int, attr: str) -> list[int] | None:
    """An integer operand (slice bounds, axes), computed from shapes where the exporter did so: constant,
    attribute, or followed through the arithmetic (:func:`_partial_vector`); None where not known here."""
    v = _ints(ctx, node, slot, attr)
    if v is None and len(node.input) > slot and node.input[slot]:
        v = _partial_vector(ctx, node.input[slot])
        v = v if v is not None and all(isinstance(a, int) for a in v) else None
    return v


def _passthrough_other(ctx: LoweringContext, node: onnx.NodeProto) -> bool:
    """Stats, scores and aux values ride through shape ops unchanged."""
    v = ctx.values.get(node.input[0])
    if isinstance(v, (Stat, Scores)) or v is AUX:
        ctx.set_output(node, v)
        return True
    return False


def _groups(src: tuple, dst: tuple) -> list[tuple[range, range]] | None:
    """Pair up runs of source and target axes that a reshape maps onto each other.

    Equal leading and trailing dims (equal sizes, or the same symbolic name) are the same axes;
    the middle is grouped by equal products when static, else taken whole when one side is a
    single axis (a merge or a split). None when it cannot be told."""
    same = lambda a, b: a is not None and a == b  # noqa: E731
    i = 0
    while i < min(len(src), len(dst)) and (same(src[i], dst[i]) or (
            not isinstance(src[i], int) and not isinstance(dst[i], int)
            and _prod(src[i + 1:]) is not None and _prod(src[i + 1:]) == _prod(dst[i + 1:]))):
        i += 1      # equal, or two unknown dims whose remainders hold the same static number of elements
    j = 0
    while j < min(len(src), len(dst)) - i and same(src[len(src) - 1 - j], dst[len(dst) - 1 - j]):
        j += 1
    head = [(range(k, k + 1), range(k, k + 1)) for k in range(i)]
    tail = [(range(len(src) - 1 - k, len(src) - k), range(len(dst) - 1 - k, len(dst) - k)) for k in range(j)][::-1]
    sm, dm = src[i:len(src) - j], dst[i:len(dst) - j]
    if not sm and not dm:
        return head + tail
    if not sm or not dm:
        if all(d == 1 for d in (*sm, *dm)):          # unit axes added or removed
            return head + tail
        return None
    mid = None
    if _prod(sm) is not None and _prod(dm) is not None:
        mid = _product_groups(sm, dm)
    if mid is None and (1 in sm or 1 in dm):
        mid = _groups_without_units(sm, dm)
    if mid is None:
        mid = _leading_unknown_groups(sm, dm)
    if mid is None:
        mid = _leading_unknown_groups(dm, sm)
        mid = [(b, a) for a, b in mid] if mid is not None else None
    if mid is None and (len(dm) == 1 or len(sm) == 1 or (head or tail)):
        # one side a single axis (a merge or split), or axes that cannot be told apart between
        # equal leading / trailing axes (row-major order keeps those): the middle as one group
        mid = [(range(len(sm)), range(len(dm)))]
    if mid is None:
        return None
    shifted = [(range(a.start + i, a.stop + i), range(b.start + i, b.stop + i)) for a, b in mid]
    return head + shifted + tail


def _leading_unknown_groups(src: tuple, dst: tuple) -> list[tuple[range, range]] | None:
    """``[B, T, 4, 8] → [?, 32]`` (a dynamic export flattening the rows: the leading target dim is
    computed at run time): the trailing source axes whose static product the rest of the target
    holds map onto it (row-major order keeps such a run together), the axes before them onto the
    unknown dim."""
    if len(dst) < 2 or isinstance(dst[0], int):
        return None
    rest = _prod(dst[1:])
    if rest is None:
        return None
    k = next((k for k in range(1, len(src)) if _prod(src[k:]) == rest), None)
    inner = _product_groups(src[k:], dst[1:]) if k is not None else None
    if inner is None:
        return None
    return [(range(0, k), range(0, 1))] + [(range(a.start + k, a.stop + k), range(b.start + 1, b.stop + 1))
                                           for a, b in inner]


def _groups_without_units(src: tuple, dst: tuple) -> list[tuple[range, range]] | None:
    """:func:`_groups` of the axes other than 1 (a unit axis in the way of symbolic dims:
    ``[B, 1, T, 32] → [B, T, 4, 8]``), each unit axis then joined to the group after it (at
    the end, the last one)."""
    ks, kd = [k for k, d in enumerate(src) if d != 1], [k for k, d in enumerate(dst) if d != 1]
    if not ks or not kd or (len(ks) == len(src) and len(kd) == len(dst)):
        return None
    inner = _groups(tuple(src[k] for k in ks), tuple(dst[k] for k in kd))
    if inner is None:
        return None

    def widen(axes: list[int], groups: list[range], n: int) -> list[range]:
        ends = [axes[g.stop - 1] + 1 for g in groups[:-1]] + [n]       # each group runs to the next one
        return [range(0 if i == 0 else ends[i - 1], ends[i]) for i in range(len(groups))]

    return list(zip(widen(ks, [a for a, _ in inner], len(src)), widen(kd, [b for _, b in inner], len(dst))))


def _product_groups(src: tuple, dst: tuple) -> list[tuple[range, range]] | None:
    """Runs of static axes with equal products (unit axes join their neighbours)."""
    if _prod(src) != _prod(dst):
        return None
    out, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        i0, j0 = i, j
        a = b = 1
        while True:
            if i < len(src) and (a < b or (a == b and i == i0) or (j >= len(dst))):
                a *= src[i]
                i += 1
            elif j < len(dst):
                b *= dst[j]
                j += 1
            else:
                break
            if a == b and i > i0 and j > j0:
                while i < len(src) and src[i] == 1 and (j >= len(dst) or dst[j] != 1):
                    i += 1
                while j < len(dst) and dst[j] == 1 and (i >= len(src) or src[i] != 1):
                    j += 1
                break
        if i == i0 and j == j0:
            return None
        out.append((range(i0, i), range(j0, j)))
    return out


def _target_shape(ctx: LoweringContext, node: onnx.NodeProto, src: tuple | None, inferred: bool = True
                  ) -> tuple | None:
    dst = _target_shape_inner(ctx, node, src, inferred)
    if dst is not None and _prod(dst) is not None:
        ctx.shapes[node.output[0]] = dst       # what this engine computed beats a symbolic inference
    return dst


def _target_shape_inner(ctx: LoweringContext, node: onnx.NodeProto, src: tuple | None, use_inferred: bool
                        ) -> tuple | None:
    dst = ctx.shape(node.output[0])
    if use_inferred and dst is not None and _prod(dst) is not None:
        return dst
    inferred = dst
    if node.op_type == "Flatten" and src is not None:
        f = ctx.attr(node, "axis", 1) % max(len(src), 1)
        return (_prod(src[:f]), _prod(src[f:]))
    c = ctx.const(node.input[1]) if node.op_type == "Reshape" and len(node.input) > 1 else None
    if c is None:
        partial = _partial_vector(ctx, node.input[1]) if node.op_type == "Reshape" and len(node.input) > 1 else None
        if partial is None or (inferred is not None and len(inferred) != len(partial)):
            return inferred
        # what the exporter's own shape arithmetic says, entry by entry, over what inference left unknown
        dims = []
        for k, v in enumerate(partial):
            known = inferred[k] if inferred is not None else None
            if isinstance(v, int) and v > 0:
                dims.append(v)
            elif isinstance(v, int) and v == 0 and src is not None and k < len(src):
                dims.append(src[k])
            elif isinstance(known, int):
                dims.append(known)
            else:
                dims.append(v if isinstance(v, str) else known)
        if partial.count(-1) == 1 and src is not None and not isinstance(dims[partial.index(-1)], int):
            dims[partial.index(-1)] = None
            dims[partial.index(-1)] = infer_minus_one(src, dims)
        return tuple(dims)
    raw = [int(v) for v in np.asarray(c.data).reshape(-1)]
    dims = [src[k] if v == 0 and src is not None and k < len(src) else (None if v in (0, -1) else v)
            for k, v in enumerate(raw)]
    if -1 in raw and src is not None:
        dims[raw.index(-1)] = infer_minus_one(src, dims)
    return tuple(dims)


def _known_axes(x, shape: tuple | None) -> tuple | None:
    """``shape`` (inferred, maybe symbolic) with the sizes tracking knows of ``x``'s heads axis
    (``heads_outer · H`` entries: heads folded into a symbolic batch are B·H, not H; left symbolic when
    unknown) and its ``unit`` axis (multi-query keys reshaped with a -1 heads dim: inference has a symbol)."""
    if not isinstance(x, Act) or shape is None or x.rank != len(shape):
        return shape
    known = {x.unit: 1} if x.unit is not None else {}
    if x.heads and x.heads_outer is not None:
        known[x.heads[0]] = x.heads[1] * x.heads_outer
    return tuple(known.get(k, d) if not isinstance(d, int) else d for k, d in enumerate(shape))


def _partial_vector(ctx: LoweringContext, name: str, depth: int = 0) -> list | None:
    """A small integer vector computed at run time (a reshape target), entry by entry as far as
    the exporter's arithmetic tells: constants, and dims read off a value's shape (an int, or
    its symbolic name) through Shape → Gather/Slice → Unsqueeze → Concat; None where unknown."""
    c = ctx.const(name)
    if c is not None:
        return [int(v) for v in np.asarray(c.data).reshape(-1)] if c.data.dtype.kind in "iu" else None
    node = ctx.producer(name)
    if node is None or depth > 8:
        return None
    op = node.op_type
    if op == "Constant":                # not lowered yet: later in the graph than the node asking
        v = _value_ahead(ctx, name)
        return [int(a) for a in v.reshape(-1)] if v is not None and v.dtype.kind in "iu" and v.size <= 64 else None
    if op == "Concat":
        parts = [_partial_vector(ctx, i, depth + 1) or [None] * _length(ctx, i) for i in node.input]
        return None if any(p is None or None in p and len(p) == 0 for p in parts) else [v for p in parts for v in p]
    if op in ("Unsqueeze", "Cast", "Identity", "Squeeze"):
        inner = _partial_vector(ctx, node.input[0], depth + 1)
        return inner if inner is not None and len(inner) <= 1 or op in ("Cast", "Identity") else None
    if op == "Shape":
        x = ctx.values.get(node.input[0])
        shape = _known_axes(x, ctx.shape(node.input[0]))
        if shape is None:
            return None
        if isinstance(x, Act) and x.rank == len(shape) and not x.heads and x.seg_axis is None and x.inner == 1 \
                and not isinstance(shape[x.axis], int):
            shape = tuple(ctx.size(x) if k == x.axis else d for k, d in enumerate(shape))   # tracking knows it
        elif isinstance(x, Act) and x.rank == len(shape) and x.heads and x.seg_axis is None and x.inner == 1 \
                and x.rep is None:
            ha, H = x.heads
            outer = x.heads_outer
            width = x.part[1] - x.part[0] if x.part else ctx.size(x) // H      # a part: rotary's dimensions
            shape = tuple(H * outer if k == ha and not isinstance(d, int) and outer is not None else width
                          if k == x.axis and not isinstance(d, int) else d for k, d in enumerate(shape))
        start = ctx.attr(node, "start", 0)
        end = ctx.attr(node, "end", None)
        return list(shape[start:end])
    if op == "Gather":
        vec = _partial_vector(ctx, node.input[0], depth + 1)
        idx = ctx.const(node.input[1])
        if vec is None or idx is None or np.asarray(idx.data).size != 1:
            return None
        i = int(np.asarray(idx.data).reshape(-1)[0])
        return [vec[i]] if -len(vec) <= i < len(vec) else None
    if op in ("Add", "Sub", "Mul", "Div") and len(node.input) == 2:     # the exporter's dim arithmetic
        a, b = (_partial_vector(ctx, i, depth + 1) for i in node.input)
        if a is None or b is None or not all(isinstance(v, int) for v in (*a, *b)) or len(a) != len(b) \
                and 1 not in (len(a), len(b)):
            return None
        n = max(len(a), len(b))
        a, b = (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)
        f = {"Add": lambda u, v: u + v, "Sub": lambda u, v: u - v, "Mul": lambda u, v: u * v,
             "Div": lambda u, v: u // v if v else None}[op]
        out = [f(u, v) for u, v in zip(a, b)]
        return None if None in out else out
    if op == "Reshape":                 # a vector kept a vector
        vec = _partial_vector(ctx, node.input[0], depth + 1)
        target = ctx.const(node.input[1])
        if vec is None or target is None or [int(v) for v in np.asarray(target.data).reshape(-1)] not in ([-1],
                                                                                                         [len(vec)]):
            return None
        return vec
    if op == "ConstantOfShape":
        n = _partial_vector(ctx, node.input[0], depth + 1)
        t = ctx.attr(node, "value")
        value = onnx.numpy_helper.to_array(t).reshape(-1) if t is not None else np.zeros(1, dtype=np.int64)
        if n is None or len(n) != 1 or not isinstance(n[0], int) or value.size != 1 or value.dtype.kind not in "iu":
            return None
        return [int(value[0])] * n[0]
    if op == "Where":                   # TorchScript's expand target: where(target == -1, 1, target)
        cond = ctx.producer(node.input[0])
        if cond is None or cond.op_type != "Equal":
            return None
        a, b = (_partial_vector(ctx, i, depth + 1) for i in node.input[1:3])
        x, m = (_partial_vector(ctx, i, depth + 1) for i in cond.input)
        if None in (a, b, x, m) or len({len(a), len(b), len(x), len(m)} - {1}) > 1:
            return None
        n = max(len(a), len(b), len(x), len(m))
        a, b, x, m = ((v * n if len(v) == 1 else v) for v in (a, b, x, m))
        out = []
        for ai, bi, xi, mi in zip(a, b, x, m):
            if isinstance(xi, int) and isinstance(mi, int):
                out.append(ai if xi == mi else bi)
            elif isinstance(xi, str) and isinstance(mi, int) and mi < 0:   # a dim is never negative
                out.append(bi)
            else:
                out.append(None)
        return out
    if op == "Slice":
        vec = _partial_vector(ctx, node.input[0], depth + 1)
        bounds = [_ints(ctx, node, k, "") for k in (1, 2)]
        if vec is None or None in bounds or len(bounds[0]) != 1:
            return None
        return vec[bounds[0][0]:bounds[1][0]]
    return None


def _length(ctx: LoweringContext, name: str) -> int:
    shape = ctx.shape(name)
    return int(shape[0]) if shape and len(shape) == 1 and isinstance(shape[0], int) else 1


def infer_minus_one(src: tuple, dims: list) -> int | str | None:
    """The size of a reshape's -1 dim: static arithmetic, or with symbolic dims (batch,
    sequence) that appear on both sides cancelled, as exporters' own arithmetic implies."""
    rest = [d for d in dims if d is not None]
    if _prod(src) is not None and _prod(rest) is not None:
        return _prod(src) // _prod(rest) if _prod(rest) else None
    left = [d for d in src if not isinstance(d, int)]
    right = [d for d in rest if not isinstance(d, int)]
    for d in list(right):
        if d in left:
            left.remove(d)
            right.remove(d)
    num, den = _prod([d for d in src if isinstance(d, int)]), _prod([d for d in rest if isinstance(d, int)])
    if len(left) == len(right) == 1:
        # one unnamed-alike symbol each side (shape inference names the same sequence length afresh
        # after each op): a reshape keeps the element count, so they are the same length
        left, right = [], []
    if right or not den or num % den:
        return None
    if not left:
        return num // den
    return left[0] if len(left) == 1 and num == den else None


def bind_symbols(src: tuple | None, dst: tuple | None) -> tuple | None:
    """A symbolic leading dim of ``src`` (a batch size) that the reshape target spells out as
    a constant at the same place: the exported model only runs with that size, so use it."""
    if src is None or dst is None:
        return src
    out = list(src)
    for k in range(min(len(src), len(dst))):
        if isinstance(src[k], int):
            if isinstance(dst[k], int) and src[k] != dst[k]:
                break
            continue
        if isinstance(dst[k], int) and dst[k] > 0:
            out[k] = dst[k]
        elif dst[k] != src[k]:
            break
    return tuple(out)


def _move_heads(groups, ha: int, H: int, dst: tuple, src: tuple | None = None) -> int | None:
    """Where a heads axis lands: merged as the innermost factor of an outer axis, or split out
    of one again as its innermost part (unit axes do not count)."""
    found = next(((sg, dg) for sg, dg in groups if ha in sg), None)
    if found is None:
        return None
    sg, dg = found
    inner = [k for k in sg if src is None or src[k] != 1 or k == ha]
    if inner[-1] != ha:
        return None
    real = [k for k in dg if dst[k] != 1]
    if len(real) <= 1:
        return real[0] if real else dg[0]
    return real[-1] if dst[real[-1]] == H else None


def _reshape_scores(ctx: LoweringContext, node: onnx.NodeProto, v: Scores) -> None:
    src = ctx.shape(node.input[0])
    if (src is None or _prod(src) is None) and v.shape is not None and _prod(v.shape) is not None:
        src = v.shape
    dst = _target_shape(ctx, node, src)
    if v.head_axis is None:
        ctx.set_output(node, v if dst is None else replace(v, rank=len(dst)))
        return
    groups = _groups(src, dst) if src is not None and dst is not None else None
    ha = _move_heads(groups, v.head_axis, v.heads, dst, src) if groups else None
    if ha is None:
        raise ctx.fail(node, "reshapes attention scores across heads")
    ctx.set_output(node, replace(v, head_axis=ha, rank=len(dst), shape=dst if _prod(dst) is not None else None))


@rule("Reshape", "Flatten")
def lower_reshape(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Reshape / Flatten: follow the neuron axis (and the heads axis) through the regrouping:
    kept whole, flattened with trailing axes into taps, split into [heads, head_dim], heads
    merged back or into an outer batch axis, or a channel shuffle."""
    v = ctx.values.get(node.input[0])
    if isinstance(v, Scores):
        return _reshape_scores(ctx, node, v)
    if _passthrough_other(ctx, node):
        return
    x = ctx.act(node.input[0])
    if x is None:
        raise ctx.fail(node, "input is not a tracked activation")
    if x.inner != 1:
        raise ctx.fail(node, "reshapes an already flattened activation")
    src = _known_axes(x, ctx.shape(node.input[0]))
    n = ctx.size(x)
    if src is not None and x.rank == len(src) and x.seg_axis is None:   # what tracking knows beats a symbol
        src = tuple(n if k == x.axis and not isinstance(d, int) and not x.heads else
                    n // x.heads[1] if x.heads and k == x.axis and not isinstance(d, int) else d
                    for k, d in enumerate(src))         # (the heads axis: _known_axes)
    dst = _target_shape(ctx, node, src)
    if x.seg_axis is not None:
        groups = _groups(src, dst) if src is not None and dst is not None else None
        g = next(((sg, dg) for sg, dg in groups if x.axis in sg), None) if groups else None
        if g and [k for k in g[0] if src[k] != 1 or k in (x.seg_axis, x.axis)] == [x.seg_axis, x.axis] \
                and len(g[1]) == 1:
            ctx.set_output(node, x.but(axis=g[1][0], rank=len(dst), seg_axis=None))   # directions concatenated
            return
        raise ctx.fail(node, f"reshapes stacked recurrent directions {src} to {dst}")
    if dst is None:
        raise ctx.fail(node, "needs the target shape (shape inference found none)")
    if src is None:
        # no shape information: the neuron axis must stay last and whole
        if x.rank is not None and x.axis == x.rank - 1 and not x.heads and dst[-1] == n:
            ctx.set_output(node, x.but(axis=len(dst) - 1, rank=len(dst)))
            return
        raise ctx.fail(node, "needs the input shape (shape inference found none)")
    src = tuple(n if k == x.axis and not isinstance(d, int) else d for k, d in enumerate(src))
    if x.rep is not None:
        src = tuple(x.rep[1] if k == x.rep[0] and not isinstance(d, int) else d for k, d in enumerate(src))
    try:
        return _follow_reshape(ctx, node, x, src, dst, n)
    except UnsupportedModelError:
        raw = _ints(ctx, node, 1, "shape") if node.op_type == "Reshape" else None
        bound = bind_symbols(src, tuple(raw) if raw else None)
        if raw and ctx.batch_is_placeholder and src and src[0] == BATCH and 0 < raw[0] != BATCH:
            bound = (raw[0], *bound[1:])   # BATCH stood in for a symbolic batch the target spells out
        if bound == src:
            raise
    # a batch the target spells out (the export only runs with it): follow with that batch
    _follow_reshape(ctx, node, x, bound, _target_shape(ctx, node, bound, inferred=False), n)


def _follow_reshape(ctx: LoweringContext, node: onnx.NodeProto, x: Act, src: tuple, dst: tuple, n: int) -> None:
    if x.heads:                       # the tracked layout knows these sizes even when inference does not
        outer = x.heads_outer
        src = tuple(d if isinstance(d, int) else (d if outer is None else x.heads[1] * outer) if k == x.heads[0]
                    else n // x.heads[1] if k == x.axis else d for k, d in enumerate(src))
    groups = _groups(src, dst)
    if groups is None:
        raise ctx.fail(node, f"reshapes {src} to {dst} in a way that cannot be followed")
    g_axis = next(((sg, dg) for sg, dg in groups if x.axis in sg), None)
    if g_axis is None:
        raise ctx.fail(node, f"reshapes {src} to {dst}: the neuron axis {x.axis} is not among the axes it maps")
    heads = None
    if x.heads:
        ha, H = x.heads
        g_head = next(((sg, dg) for sg, dg in groups if ha in sg), None)
        if g_head is None:
            raise ctx.fail(node, f"reshapes {src} to {dst}: the heads axis {ha} is not among the axes it maps")
        if x.rep is not None:                      # repeat_kv: [.., G, r, ..] merged into G·r heads
            x, H = _merge_repeats(ctx, node, x, g_head, g_axis, src, dst), x.heads[1] * x.rep[1]
            ha = x.rep[0]
            x = x.but(rep=None)
        elif g_head == g_axis:                     # heads and their dims regrouped together
            sg, dg = g_axis
            if len(dg) == 1 and list(sg) == [ha, x.axis] and x.heads_outer == 1:
                ctx.set_output(node, x.but(axis=dg[0], rank=len(dst), heads=None))     # merged back
                return
            if len(dg) == 1 and list(sg) == [x.axis, ha] and len(x.sets) == 1 and x.slots is None:
                return _shuffle(ctx, node, x, dst, n, _prod(src[x.axis + 1:]))
            raise ctx.fail(node, f"reshapes {src} to {dst} across attention heads")
        new = _move_heads(groups, ha, H, dst, src)  # heads merged into / split from an outer axis
        if new is None:
            raise ctx.fail(node, f"reshapes {src} to {dst}, splitting the heads axis")
        heads = (new, H)
        alone = [k for k in g_head[0] if src[k] != 1] == [ha]      # the heads axis mapped on its own: same entries
        outer = dst[new] // H if isinstance(dst[new], int) and dst[new] % H == 0 else x.heads_outer if alone else None
        x = x.but(heads_outer=outer)
    sg, dg = g_axis
    if len(dg) > 1 and sum(1 for k in dg if dst[k] != 1) == 1:
        dg = [k for k in dg if dst[k] != 1]          # unit axes split off around it do not matter …
    if len(dg) == 1 and all(src[k] == 1 for k in sg if k != x.axis):   # the neuron axis survives whole
        # … but [.., n] → [.., 1, n] may be the one head of multi-query keys and values
        unit = dg[0] - 1 if not heads and not x.repeated and dg[0] > 0 and dst[dg[0] - 1] == 1 else None
        ctx.set_output(node, x.but(axis=dg[0], rank=len(dst), heads=heads, unit=unit))
        return
    if x.slots is not None:                        # interleaved key/value slots: only a split into their heads
        r, G = x.slots
        if list(sg) == [x.axis] and len(dg) == 2 and not x.heads and dst[dg[0]] == r * G \
                and dst[dg[1]] in (n // (r * G), None):
            ctx.set_output(node, x.but(axis=dg[1], rank=len(dst), heads=(dg[0], r * G)))
            return
        raise ctx.fail(node, f"reshapes {src} to {dst}, regrouping interleaved grouped-query heads")
    if sg[0] == x.axis and len(dg) == 1:           # flattened with trailing axes: spatial taps
        inner = _prod(src[x.axis + 1: sg[-1] + 1])
        ctx.set_output(node, x.but(axis=dg[0], rank=len(dst), inner=inner, heads=heads))
        return
    if sg[-1] == x.axis and len(dg) == 1 and len(x.sets) == 1 and not x.heads \
            and _prod(src[sg[0]:x.axis]) is not None:  # channels-last flatten: positions outside, channels inside
        ctx.set_output(node, x.but(axis=dg[0], rank=len(dst), inner=_prod(src[sg[0]:x.axis]), inner_minor=True))
        return
    if list(sg) == [x.axis] and len(dg) == 2 and not x.heads:   # split into [heads, head_dim]
        H = dst[dg[0]] if isinstance(dst[dg[0]], int) else (
            n // dst[dg[1]] if isinstance(dst[dg[1]], int) and n % dst[dg[1]] == 0 else None)
        if H is None or n % H:
            raise ctx.fail(node, f"splits the {n}-neuron axis into {dst[dg[0]]} × {dst[dg[1]]}")
        x = as_one_set(ctx, node, x)
        ctx.blocks_of(x.set, H)
        ctx.set_output(node, x.but(axis=dg[1], rank=len(dst), heads=(dg[0], H)))
        return
    if list(sg) == [x.axis] and len(dg) == 3 and not x.heads:   # [.., H·S·d] → [.., H, S, d], read slot by slot
        return _split_slots_of_heads(ctx, node, x, dst, dg, n)
    if len(sg) == 2 and sg[-1] == x.axis and len(dg) == 2 and not x.heads and isinstance(dst[dg[1]], int) \
            and n % dst[dg[1]] == 0:               # [.., B, H·d] → [.., B·H, d]: heads folded into the batch
        H = n // dst[dg[1]]
        outer, merged = src[sg[0]], dst[dg[0]]
        if not (isinstance(outer, int) and isinstance(merged, int)) or merged == outer * H:
            x = as_one_set(ctx, node, x)
            ctx.blocks_of(x.set, H)
            ctx.set_output(node, x.but(axis=dg[1], rank=len(dst), heads=(dg[0], H),
                                       heads_outer=merged // H if isinstance(merged, int) else None))
            return
    raise ctx.fail(node, f"reshapes {src} to {dst}, mixing the {n}-neuron axis {x.axis} with others")


def _split_slots_of_heads(ctx: LoweringContext, node: onnx.NodeProto, x: Act, dst: tuple, dg, n: int) -> None:
    """Bloom's fused QKV: ``[B, T, H·3·d]`` viewed as ``[B, T, H, 3, d]`` and q, k, v taken by a Gather of one
    index each along the 3-axis. The projection is split into one set per slot (rows taken per head, as
    :meth:`~LoweringContext.split_heads` does for ``[B, T, H, 3·d]``), each Gather lowered with the Reshape:
    ``[B, T, H, d]`` of its slot, split into the same H heads. Refused unless those Gathers (and Shape) are
    all that reads the view and take every slot once."""
    H, S, d = (dst[k] for k in dg)
    why = None
    if not all(isinstance(v, int) and v > 0 for v in (H, S, d)) or H * S * d != n:
        why = f"splits the {n}-neuron axis into {H} × {S} × {d}"
    readers = [m for m in ctx.consumers.get(node.output[0], []) if m.op_type not in SHAPE_READERS]
    picks: dict[int, onnx.NodeProto] = {}
    for m in readers if not why else []:
        index = _value_ahead(ctx, m.input[1]) if m.op_type == "Gather" and len(m.input) > 1 else None
        if m.op_type != "Gather" or ctx.attr(m, "axis", 0) % len(dst) != dg[1] or index is None \
                or index.ndim != 0 or int(index) % S in picks:
            why = "the view is read otherwise than by one Gather per slot"
            break
        picks[int(index) % S] = m
    if not why and sorted(picks) != list(range(S)):
        why = "not every slot is taken"
    if why:
        raise ctx.fail(node, f"reshapes the {n}-neuron axis into heads and slots: {why}")
    x = as_one_set(ctx, node, x)
    parts = ctx.split_heads(x.set, H, [d] * S, node.input[0])
    for c, part in enumerate(parts):
        ctx.blocks_of(part, H)
        ctx.lower_ahead(picks[c], [x.but(sets=(part,), axis=dg[2] - 1, rank=len(dst) - 1, heads=(dg[0], H))])
    ctx.set_output(node, AUX)


def _merge_repeats(ctx: LoweringContext, node: onnx.NodeProto, x: Act, g_head, g_axis, src, dst) -> Act:
    """A reshape of repeated key/value heads ``[.., G, r, ..]`` (see :func:`lower_expand`): the
    copies must merge with their heads, copies innermost, into one axis of G·r heads (alone or
    folded into the batch), so head g·r + j is copy j of head g. The result is the one set r
    times as interleaved slots, with the copy axis standing in as the heads axis."""
    (ha, G), (ra, r) = x.heads, x.rep
    sg, _ = g_head
    real = [k for k in sg if src[k] != 1 or k in (ha, ra)]
    if g_head == g_axis or real[-2:] != [ha, ra]:
        raise ctx.fail(node, f"reshapes repeated key/value heads {src} to {dst} other than into G·r heads "
                             f"(head g·r + j = copy j of head g)")
    return x.but(heads=(ra, G * r), rep=(ra, r), sets=x.sets * r, slots=(r, G))


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


@rule("Squeeze", "Unsqueeze")
def lower_squeeze(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Squeeze / Unsqueeze: the neuron (and heads) axis renumbered; a raw signal gains its one channel."""
    unsqueeze = node.op_type == "Unsqueeze"
    v = ctx.values.get(node.input[0])
    if isinstance(v, Scores):
        axes = _ints(ctx, node, 1, "axes")
        if axes is None:
            raise ctx.fail(node, "squeezes attention scores along unknown axes")
        if unsqueeze:
            r = v.rank + len(axes)
            axes = sorted(a % r for a in axes)
            keep = [i for i in range(r) if i not in axes]
            ha = keep[v.head_axis] if v.head_axis is not None else None
            shape = None
            if v.shape is not None:
                it = iter(v.shape)
                shape = tuple(1 if i in axes else next(it) for i in range(r))
        else:
            r = v.rank - len(axes)
            axes = sorted(a % v.rank for a in axes)
            if v.head_axis in axes:
                raise ctx.fail(node, "squeezes the heads axis of attention scores")
            ha = v.head_axis - sum(1 for a in axes if a < v.head_axis) if v.head_axis is not None else None
            shape = tuple(d for i, d in enumerate(v.shape) if i not in axes) if v.shape is not None else None
        ctx.set_output(node, replace(v, head_axis=ha, rank=r, shape=shape))
        return
    if unsqueeze and node.input[0] in ctx.signals:      # raw signal [B, T] → [B, 1, T]: one input channel
        s = ctx.graph.add_set(ctx.unique(node.input[0]), 1, "input", depth=0, fixed=True)
        shape = ctx.shape(node.output[0])
        ctx.set_output(node, Act((s.name,), 1, len(shape) if shape else None))
        return
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
    if x.rep is not None and not unsqueeze and x.rep[0] in axes:
        raise ctx.fail(node, "squeezes the axis of repeated key/value heads")
    rep = (move(x.rep[0]), x.rep[1]) if x.rep else None
    if x.seg_axis is not None and not unsqueeze and x.seg_axis in axes:
        raise ctx.fail(node, "squeezes the direction axis of a bidirectional layer")
    seg = move(x.seg_axis) if x.seg_axis is not None else None
    unit = move(x.unit) if x.unit is not None and (unsqueeze or x.unit not in axes) else None
    ctx.set_output(node, x.but(axis=move(x.axis), rank=out_rank, heads=heads, seg_axis=seg, rep=rep, unit=unit))


@rule("Transpose")
def lower_transpose(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    v = ctx.values.get(node.input[0])
    perm = ctx.attr(node, "perm")
    src = ctx.shape(node.input[0])
    if src is not None and _prod(src) is not None:
        p = list(perm) if perm else list(range(len(src)))[::-1]
        ctx.shapes[node.output[0]] = tuple(src[i] for i in p)
    if isinstance(v, Scores):
        r = v.rank
        perm = list(perm) if perm else list(range(r))[::-1]
        shape = tuple(v.shape[p] for p in perm) if v.shape is not None else None
        ctx.set_output(node, replace(v, head_axis=perm.index(v.head_axis) if v.head_axis is not None else None,
                                     shape=shape))
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
    seg = perm.index(x.seg_axis) if x.seg_axis is not None else None
    rep = (perm.index(x.rep[0]), x.rep[1]) if x.rep else None
    unit = perm.index(x.unit) if x.unit is not None else None
    ctx.set_output(node, x.but(axis=perm.index(x.axis), heads=heads, seg_axis=seg, rep=rep, unit=unit))


@rule("Concat")
def lower_concat(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    vals = [ctx.values.get(i) for i in node.input]
    acts = [v for v in vals if isinstance(v, Act)]
    scores = next((v for v in vals if isinstance(v, Scores)), None)
    if scores is not None and not acts:     # scores of several attentions side by side
        ctx.set_output(node, scores_with(ctx, node, scores, vals, list(node.input), axis=ctx.attr(node, "axis")))
        return
    if not acts:
        ctx.set_output(node, next((v for v in vals if isinstance(v, Stat) and v.heads_of), None)
                       or next((v for v in vals if isinstance(v, (Stat, Scores))), AUX))
        return
    first = acts[0]
    rank = first.rank
    axis = ctx.attr(node, "axis") % rank
    if axis == first.axis and first.heads:      # rotary halves put back together (in some order)
        part = _joined_part(ctx, acts, len(vals))
        if part is False:
            raise ctx.fail(node, "concatenates inside attention heads")
        if all(a.sets == first.sets for a in acts):
            ctx.set_output(node, first.but(part=part, stage="out"))
        else:       # partial rotary: the rotated part (a new tied set) and the rest of the heads
            ctx.set_output(node, combine(ctx, node, [a.but(part=None) for a in acts]).but(part=part))
        return
    if any(a.heads or a.rank != rank or a.seg_axis is not None for a in acts):
        raise ctx.fail(node, "concatenates head-split, stacked or differently ranked activations")
    if axis == first.axis:
        if len(acts) != len(vals) or any(a.axis != axis for a in acts):
            raise ctx.fail(node, "concatenates constants or misaligned values along the neuron axis")
        taps = [t for a in acts for t in ctx.taps(a)]
        mixed = len(set(taps)) > 1
        ctx.set_output(node, first.but(sets=tuple(s for a in acts for s in a.sets), stage="out",
                                       inner=-1 if mixed else taps[0], inners=tuple(taps) if mixed else None))
        return
    if any(a.inner != 1 for a in acts):
        raise ctx.fail(node, "concatenates flattened activations along another axis")
    # along tokens / space: neurons line up; constants (a class token) become per-neuron arrays
    if any(a.axis != first.axis or ctx.size(a) != ctx.size(first) for a in acts):
        raise ctx.fail(node, "concatenates activations whose neuron axes do not line up")
    consts = [(i, v) for i, v in enumerate(vals) if isinstance(v, Const)]
    if len(acts) == 1 and not consts:
        ctx.set_output(node, first)
        return
    if len(first.sets) != 1 and consts:
        raise ctx.fail(node, "concatenates constants with multi-set activations along a non-neuron axis")
    if len(acts) > 1:
        out = combine(ctx, node, acts)
        if not consts:
            return
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


@rule("Split")
def lower_split(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if _passthrough_other(ctx, node):
        for i in range(1, len(node.output)):
            ctx.set_output(node, ctx.values[node.input[0]], i)
        return
    x = ctx.act(node.input[0])
    if x is None or x.rank is None:
        raise ctx.fail(node, "input is not a tracked activation")
    axis = ctx.attr(node, "axis", 0) % x.rank
    if x.seg_axis is not None and axis == x.seg_axis and len(node.output) == len(x.sets):   # one per direction
        for i in range(len(node.output)):
            ctx.set_output(node, _select_directions(ctx, node, x, [i]), i)
        return
    if axis != x.axis:
        if x.heads and axis == x.heads[0]:
            raise ctx.fail(node, "splits attention heads apart")
        for i in range(len(node.output)):
            ctx.set_output(node, x, i)
        return
    if x.heads and x.inner == 1 and len(x.sets) == 1 and x.part is None and not x.repeated and x.unit is None:
        return _split_inside_heads(ctx, node, x)
    if x.heads or x.inner != 1:
        raise ctx.fail(node, "splits a head-split or flattened neuron axis")
    n = ctx.size(x)
    sizes = _split_sizes(ctx, node, n)
    offset = 0
    for i, size in enumerate(sizes):
        ctx.set_output(node, _select(ctx, node, ctx.values[node.input[0]], offset, offset + size), i)
        offset += size


def _slice_bounds(ctx: LoweringContext, node: onnx.NodeProto) -> tuple:
    """A Slice's ``(starts, ends, axes, steps)``, bounds ``None`` where they are not known here; bounds
    an exporter computes from shapes (rotate_half's ``x.shape[-1] // 2``, TorchScript's ``chunk``) are
    followed through the arithmetic."""
    starts, ends = _int_operand(ctx, node, 1, "starts"), _int_operand(ctx, node, 2, "ends")
    axes, steps = _int_operand(ctx, node, 3, "axes"), _int_operand(ctx, node, 4, "steps")
    given = [len(node.input) > k and bool(node.input[k]) or ctx.attr(node, a) is not None
             for k, a in ((3, "axes"), (4, "steps"))]
    if given[0] and axes is None or given[1] and steps is None:     # which axes, or how far apart: unknown
        return None, None, [], []
    axes = axes if given[0] else list(range(len(starts or [])))
    steps = steps if given[1] else [1] * len(axes)
    return starts, ends, axes, steps


def _chunk_of_heads(ctx: LoweringContext, node: onnx.NodeProto, x: Act) -> list | None:
    """The Slices that together cut every head of ``x`` into consecutive pieces, as TorchScript exports
    ``q, k, v = qkv.view(B, T, H, 3·d).chunk(3, -1)`` (GPT-NeoX; dynamo writes one Split,
    :func:`_split_inside_heads`): ``[(start, end, slice node)]`` in order, or None. Not when the pieces
    meet again in a Concat (partial rotary cuts a head into the rotated and the passed dimensions and
    puts them back: those stay parts of one set)."""
    if not (x.heads and x.inner == 1 and len(x.sets) == 1 and x.part is None and not x.repeated and x.unit is None):
        return None
    width = ctx.size(x) // x.heads[1]
    pieces = []
    for n in ctx.consumers.get(node.input[0], []):
        if n.op_type in SHAPE_READERS:
            continue
        if n.op_type != "Slice" or n.input[0] != node.input[0]:
            return None
        starts, ends, axes, steps = _slice_bounds(ctx, n)
        if starts is None or ends is None or len(axes) != 1 or axes[0] % x.rank != x.axis or steps != [1]:
            return None
        st, en = (max(0, v + width if v < 0 else min(v, width)) for v in (starts[0], ends[0]))
        pieces.append((st, en, n))
    pieces.sort(key=lambda p: p[0])
    if len(pieces) < 2 or pieces[0][0] != 0 or pieces[-1][1] != width or any(
            a[1] != b[0] or a[0] >= a[1] for a, b in zip(pieces, pieces[1:] + [(width, width, None)])):
        return None
    return None if _rejoined(ctx, [p[2].output[0] for p in pieces]) else pieces


#: Where :func:`_rejoined` stops: ops where a chunk's pieces meet as different operands (scores, weighted
#: values), not as one activation, and ops that read only a shape (reshape targets computed from q and k).
PRODUCTS = frozenset({"MatMul", "Gemm", "Einsum", "Conv", "Attention", "MultiHeadAttention", "Softmax",
                      "Shape", "Size"})


def _rejoined(ctx: LoweringContext, names: list[str], depth: int = 24) -> bool:
    """Whether a Concat reads values derived from two or more of ``names`` within ``depth`` steps short
    of a product (the pieces of a partial-rotary head meeting again; q, k and v meet only in products)."""
    reached: dict[int, set] = {}
    frontier = [(name, i) for i, name in enumerate(names)]
    for _ in range(depth):
        nxt = []
        for name, i in frontier:
            for n in ctx.consumers.get(name, []):
                seen = reached.setdefault(id(n), set())
                if i in seen:
                    continue
                seen.add(i)
                if n.op_type == "Concat" and len(seen) > 1:
                    return True
                if n.op_type not in PRODUCTS:
                    nxt += [(o, i) for o in n.output if o]
        if not nxt:
            return False
        frontier = nxt
    return False


#: Ops of a head-local region (:func:`_head_local_region`): they select, negate, stack or regroup values
#: along the trailing (within-head) axes only; ``Shape``/``Size`` may read a region's values (reshape targets).
HEAD_LOCAL = frozenset({"Slice", "Neg", "Unsqueeze", "Squeeze", "Concat", "Reshape", "Identity"})
SHAPE_READERS = frozenset({"Shape", "Size"})


def _head_local_region(ctx: LoweringContext, name: str, x: Act, limit: int = 24) -> tuple | None:
    """GPT-J's rotate_every_two: ``x[..., ::2]`` and ``x[..., 1::2]``, one negated, stacked on a new last axis
    and flattened back to the shape of ``x``. Found as the nodes that read ``x`` with strided Slices and what
    they feed through :data:`HEAD_LOCAL` ops that touch only the axes from ``x``'s dimension axis on (the last),
    up to one value shaped like ``x``: ``(nodes, exit)``, or None when anything else reads inside, an op
    touches a leading axis, or the shapes are not known. Such a region computes, for every batch entry,
    position and head alike, a function of that head's dimensions only: heads may still permute, as wholes."""
    lead = x.axis
    if not x.heads or x.heads[0] >= lead or x.rank is None or lead != x.rank - 1:
        return None
    shape = ctx.shape(name)
    if shape is None or len(shape) != x.rank:
        return None
    width = x.part[1] - x.part[0] if x.part else ctx.size(x) // x.heads[1]
    nodes, inside, exits = [], {name}, []
    frontier = [n for n in ctx.consumers.get(name, []) if n.op_type == "Slice" and n.input[0] == name
                and (_slice_bounds(ctx, n)[3] or [1]) != [1]]
    seen: set[int] = set()
    while frontier:
        n = frontier.pop(0)
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.op_type not in HEAD_LOCAL or len(nodes) >= limit or not _touches_trailing(ctx, n, lead):
            return None
        nodes.append(n)
        out = n.output[0]
        inside.add(out)
        o_shape = ctx.shape(out)
        if o_shape is not None and len(o_shape) == x.rank and o_shape[-1] == width and n.op_type in ("Reshape", "Concat") \
                and _same_dims(o_shape[:lead], shape[:lead]):
            exits.append(out)
            continue
        for m in ctx.consumers.get(out, []):
            if m.op_type not in SHAPE_READERS:
                frontier.append(m)
    if len(exits) != 1 or any(m is not None and id(m) not in seen and m.op_type not in SHAPE_READERS
                              for n in nodes for o in n.output if o != exits[0] for m in ctx.consumers.get(o, [None])):
        return None
    if not all(n.input[0] in inside and (n.op_type != "Concat" or all(i in inside for i in n.input)) for n in nodes):
        return None             # data from outside the region enters it
    ids, graphs = {id(n) for n in nodes}, list(all_graphs(ctx.model.graph))
    if any(o.name in inside and o.name != exits[0] for g in graphs for o in g.output):
        return None             # a value inside is a graph's (or a branch's) output: read outside the region
    if sum(any(id(m) in ids for m in g.node) for g in graphs) != 1:
        return None             # the region spans a graph and a subgraph (a branch reads a value inside)
    return nodes, exits[0]


def _same_dims(a: tuple, b: tuple) -> bool:
    """Equal sizes axis by axis: equal numbers, or equal symbolic names."""
    return len(a) == len(b) and all(u is not None and u == v for u, v in zip(a, b))


def _touches_trailing(ctx: LoweringContext, n: onnx.NodeProto, lead: int) -> bool:
    """Whether ``n`` (a :data:`HEAD_LOCAL` op) leaves the ``lead`` leading axes of its input as they are."""
    op = n.op_type
    rank = len(ctx.shape(n.input[0]) or ())
    if op in ("Neg", "Identity"):
        return True
    if op == "Slice":
        starts, ends, axes, _ = _slice_bounds(ctx, n)
        return starts is not None and ends is not None and bool(axes) and all(a % rank >= lead for a in axes)
    if op == "Concat":
        return rank > 0 and ctx.attr(n, "axis") % rank >= lead
    if op in ("Unsqueeze", "Squeeze"):
        axes = _int_operand(ctx, n, 1, "axes")
        out_rank = len(ctx.shape(n.output[0]) or ())
        return bool(axes) and all(isinstance(a, int) and a % (out_rank if op == "Unsqueeze" else rank) >= lead
                                  for a in axes)
    if op == "Reshape":
        src, dst = ctx.shape(n.input[0]), ctx.shape(n.output[0])
        return src is not None and dst is not None and _same_dims(src[:lead], dst[:lead])
    return False


def _lower_head_local(ctx: LoweringContext, x: Act, nodes: list, exit_name: str) -> None:
    """A head-local region (:func:`_head_local_region`) lowered as a whole: its result is ``x`` again (the same
    dimensions of the same heads, moved and negated inside each head), whose dimensions keep their places
    (the group becomes rigid); the values inside are read only by the region and by Shape."""
    ctx.keep_head_dims(x)
    for n in nodes:
        ctx.lower_ahead(n, [x if o == exit_name else AUX for o in n.output])


def _split_chunk(ctx: LoweringContext, x: Act, pieces: list, reading: str) -> None:
    """Every head of ``x`` cut into ``pieces`` by as many Slices: each piece a set of its own, as a
    Split of the heads makes them (:func:`_split_inside_heads`); all the Slices' outputs set at once."""
    readers = tuple(p[2] for p in pieces)
    parts = ctx.split_heads(x.set, x.heads[1], [en - st for st, en, _ in pieces], reading, readers)
    for part, (_, _, n) in zip(parts, pieces):
        ctx.blocks_of(part, x.heads[1])
        ctx.lower_ahead(n, [x.but(sets=(part,), part=None)])


@rule("Slice")
def lower_slice(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    c = ctx.const(node.input[0])
    if c is not None:     # bounds known only at run time: a table cut to the sequence length
        ctx.set_output(node, c if c.is_float and c.origin is not None else AUX)
        return
    if _passthrough_other(ctx, node):
        return
    x = ctx.act(node.input[0])
    if x is None or x.rank is None:
        raise ctx.fail(node, "input is not a tracked activation")
    starts, ends, axes, steps = _slice_bounds(ctx, node)
    if starts is None or ends is None:
        if x.axis in [a % x.rank for a in (axes or [])] or not axes:
            raise ctx.fail(node, "slices the neuron axis with non-constant bounds")
        ctx.set_output(node, x)
        return
    if x.unit is not None and x.axis in [a % x.rank for a in axes] and _rotated_half(ctx, node.output[0]):
        x = x.one_head()                         # the one head of multi-query keys: rotary halves
    out = x
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax %= x.rank
        if ax == x.axis and x.heads:             # within heads: rotary halves, of all or (partial rotary) part of a head
            lo, hi = out.part or (0, ctx.size(x) // x.heads[1])
            width = hi - lo
            st, en = max(0, st + width if st < 0 else min(st, width)), max(0, en + width if en < 0 else min(en, width))
            if sp != 1:
                region = _head_local_region(ctx, node.input[0], x)
                if region is None:
                    raise ctx.fail(node, "slices inside attention heads with a stride")
                return _lower_head_local(ctx, x, *region)
            pieces = _chunk_of_heads(ctx, node, x) if len(starts) == 1 else None
            if pieces:
                return _split_chunk(ctx, x, pieces, node.input[0])
            if len(x.sets) != 1:
                raise ctx.fail(node, "slices inside the heads of several concatenated sets")
            if (st, en) != (0, width):
                ctx.keep_head_dims(x)
                out = out.but(part=(lo + st, lo + min(en, width)) if en > st else (lo + st, lo + st))
            continue
        if ax == x.axis:
            n = ctx.size(x)
            st, en = max(0, st + n if st < 0 else min(st, n)), max(0, en + n if en < 0 else min(en, n))
            if sp != 1:
                raise ctx.fail(node, "strided slice of the neuron axis")
            if (st, en) != (0, n):
                out = _select(ctx, node, x, st, en)
        elif x.heads and ax == x.heads[0]:
            raise ctx.fail(node, "slices attention heads")
        elif x.seg_axis is not None and ax == x.seg_axis:     # some directions of a bidirectional layer
            out = _select_directions(ctx, node, out, range(len(x.sets))[st:en:sp])
    ctx.set_output(node, out)


def _split_sizes(ctx: LoweringContext, node: onnx.NodeProto, n: int) -> list[int]:
    """A Split's piece sizes over ``n``: its ``split`` input or attribute, else equal pieces (the last
    smaller) for its outputs or ``num_outputs``."""
    sizes = _ints(ctx, node, 1, "split")
    if sizes is None:
        k = int(ctx.attr(node, "num_outputs", len(node.output)))
        step = -(-n // k)
        sizes = [min(step, n - i * step) for i in range(k)]
    return sizes


def _split_inside_heads(ctx: LoweringContext, node: onnx.NodeProto, x: Act) -> None:
    """``q, k, v = qkv.view(B, T, H, 3·d).chunk(3, -1)``: each head's dimensions cut into pieces, piece c
    of every head becoming a set of its own (:meth:`~LoweringContext.split_heads`), split into the same
    heads."""
    H = x.heads[1]
    width = ctx.size(x) // H
    sizes = _split_sizes(ctx, node, width)
    if sum(sizes) != width or len(sizes) != len(node.output) or min(sizes) < 1:
        raise ctx.fail(node, f"splits heads of {width} into {sizes}")
    parts = ctx.split_heads(x.set, H, sizes, node.input[0])
    for i, part in enumerate(parts):
        ctx.blocks_of(part, H)
        ctx.set_output(node, x.but(sets=(part,), part=None), i)


def _joined_part(ctx: LoweringContext, acts: list[Act], n_inputs: int):
    """The part of every head that a Concat of head parts covers: ``None`` for whole heads, ``(lo, hi)``
    for a contiguous range (partial rotary: the rotated dimensions, put back from their halves), or
    ``False`` when the pieces are not disjoint parts of one contiguous range, or come from sets that do
    not move together. The group is rigid (the Slice that cut the parts made it so): dimensions keep
    their places inside a head, so the order of the pieces does not matter; heads permute as wholes."""
    first = acts[0]
    groups = {ctx.graph.sets[s].group for a in acts for s in a.sets}
    if len(acts) != n_inputs or len(groups) != 1 or any(
            a.heads != first.heads or not a.part or len(a.sets) != len(first.sets) for a in acts):
        return False
    dims = sorted(d for a in acts for d in range(*a.part))
    if not dims or dims != list(range(dims[0], dims[-1] + 1)):
        return False
    width = ctx.size(first) // first.heads[1]
    return None if (dims[0], dims[-1] + 1) == (0, width) else (dims[0], dims[-1] + 1)


def _rotated_half(ctx: LoweringContext, name: str) -> bool:
    """Whether ``name`` (a slice of the neuron axis) is put back by a Concat, negated or not:
    rotate_half's ``cat(-x2, x1)`` — what makes a slice of a unit-axis activation rotary halves
    of one head rather than a channel split."""
    for n in ctx.consumers.get(name, []):
        if n.op_type == "Concat" or n.op_type == "Neg" and any(
                m.op_type == "Concat" for m in ctx.consumers.get(n.output[0], [])):
            return True
    return False


def _select_directions(ctx: LoweringContext, node: onnx.NodeProto, x: Act, picked) -> Act:
    picked = list(picked)
    if not picked:
        raise ctx.fail(node, "selects no direction of a bidirectional layer")
    sets = tuple(x.sets[i] for i in picked)
    return x.but(sets=sets, seg_axis=x.seg_axis if len(sets) > 1 else None)


@rule("Gather")
def lower_gather(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    table = ctx.const(node.input[0])
    if table is not None:
        return lower_embedding(ctx, node)
    if _passthrough_other(ctx, node):
        return
    x = ctx.act(node.input[0])
    if x is None or x.rank is None:
        raise ctx.fail(node, "input is not a tracked activation")
    axis = ctx.attr(node, "axis", 0) % x.rank
    c = ctx.const(node.input[1])
    if x.heads and axis == x.heads[0] and c is not None and np.asarray(c.data).ndim == 0:
        return _select_block(ctx, node, x, int(np.asarray(c.data)))
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


def _select_block(ctx: LoweringContext, node: onnx.NodeProto, x: Act, index: int) -> None:
    """x[i] along a split axis: one block of the set (q, k or v of a packed in-projection)."""
    g = ctx.graph
    H = x.heads[1]
    ha = x.heads[0]
    axis = x.axis - (1 if ha < x.axis else 0)
    if len(x.sets) == H:                        # already split by an earlier selection
        ctx.set_output(node, Act((x.sets[index % H],), axis, x.rank - 1, stage="out"))
        return
    s = g.sets[x.set]
    group = g.groups[s.group]
    parent = group.parent
    if parent is not None and not any(t.group == s.group for t in g.sets.values() if t.name != s.name) \
            and not any(t.group == parent for t in g.sets.values()) \
            and not any(gr.parent == parent for gr in g.groups.values() if gr.name != group.name):
        group.parent = None                      # the split was only a reshape, not heads: undo it
        del g.groups[parent]
    parts = ctx.split_set(s.name, [s.size // H] * H)
    ctx.set_output(node, Act((parts[index % H],), axis, x.rank - 1, stage="out"))


@rule("Expand")
def lower_expand(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    v = ctx.values.get(node.input[0])
    if isinstance(v, Const):          # a parameter broadcast to a data-dependent shape (class tokens)
        out = ctx.shape(node.output[0])
        ctx.set_output(node, Const(v.data, v.origin, out if out and _prod(out) is not None else None)
                       if v.is_float else AUX)
        return
    if _passthrough_other(ctx, node):
        return
    x = ctx.act(node.input[0])
    out = _expanded_shape(ctx, node)
    if x is None or x.rank is None:
        raise ctx.fail(node, "input is not a tracked activation")
    if x.repeated:
        raise ctx.fail(node, "expands key/value heads that are already repeated")
    if x.heads and x.heads[1] == 1:   # the one key/value head of multi-query attention: copies in any
        x = x.but(heads=None)         # order are the same broadcast, read as one head (rules/attention.py)
    shift = (len(out) - x.rank) if out is not None else 0
    heads = (x.heads[0] + shift, x.heads[1]) if x.heads else None
    width = ctx.size(x) // x.heads[1] if x.heads else ctx.size(x)
    if out is not None and isinstance(out[x.axis + shift], int) and out[x.axis + shift] != width:
        raise ctx.fail(node, "broadcasts along the neuron axis")
    src = ctx.shape(node.input[0])
    rep = None
    if x.heads and out is not None and src is not None:
        grown = [k + shift for k, (a, b) in enumerate(zip(out[shift:], src)) if b == 1 and a != 1 and a is not None]
        if grown:            # repeat_kv: [B, G, 1, T, d] → [B, G, r, T, d], copies right after the heads
            a = grown[0]
            if grown != [heads[0] + 1] or a == x.axis + shift or not isinstance(out[a], int):
                raise ctx.fail(node, f"repeats attention heads other than each key/value head r times right "
                                     f"after itself ({tuple(src)} to {tuple(out)})")
            rep = (a, int(out[a]))
    ctx.set_output(node, x.but(axis=x.axis + shift, rank=x.rank + shift, heads=heads, rep=rep))


def _expanded_shape(ctx: LoweringContext, node: onnx.NodeProto) -> tuple | None:
    """The output shape of an Expand: inference's, with dims it left unknown read off the target
    (TorchScript's dynamic axes compute ``[B, G, r, T, d]`` at run time, ``r`` a constant)."""
    out = ctx.shape(node.output[0])
    if out is not None and _prod(out) is not None:
        return out
    target = _partial_vector(ctx, node.input[1]) if len(node.input) > 1 else None
    if target is None or (out is not None and len(out) != len(target)):
        return out
    if out is None:
        out = tuple(v if isinstance(v, int) and v > 0 else None for v in target)
    else:
        out = tuple(d if isinstance(d, int) else v if isinstance(v, int) and v > 1 else d
                    for d, v in zip(out, target))
    src = _known_axes(ctx.values.get(node.input[0]), ctx.shape(node.input[0]))
    if src is not None and len(src) <= len(out):    # a dim other than 1 is kept (broadcasting): same size,
        shift = len(out) - len(src)                 # and so is a 1 the target leaves at 1
        out = out[:shift] + tuple(d if isinstance(d, int) or b is None else 1 if b == 1 and v == 1 else
                                  d if b == 1 else b for d, b, v in zip(out[shift:], src, target[shift:]))
    ctx.shapes[node.output[0]] = out
    return out


@rule("OneHot")
def lower_one_hot(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """OneHot of run-time indices: data with no neurons (its [off, on] values are settings);
    a weight multiplying it is a lookup table (see dense.lower_matmul)."""
    if isinstance(ctx.values.get(node.input[0]), Act):
        raise ctx.fail(node, "one-hot of an activation")
    if len(node.input) > 2:
        ctx.buffer(ctx.const(node.input[2]), "OneHot values")
    ctx.set_output(node, AUX)


@rule("Tile")
def lower_tile(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if _passthrough_other(ctx, node):
        return
    x = ctx.act(node.input[0])
    reps = _ints(ctx, node, 1, "repeats")
    if x is None or reps is None or reps[x.axis] != 1:
        raise ctx.fail(node, "tiles the neuron axis (or with unknown repeats)")
    if x.heads and reps[x.heads[0]] != 1:
        raise ctx.fail(node, "tiles attention heads (key/value heads repeated in tile order, head h reading "
                             "head h mod G, are not followed)")
    ctx.set_output(node, x)


@rule("Shape")
def lower_shape(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Shape of an activation: a constant when shape inference knows every dimension."""
    shape = ctx.shape(node.input[0])
    v = ctx.values.get(node.input[0])
    if (shape is None or _prod(shape) is None) and isinstance(v, Scores) and v.shape is not None:
        shape = v.shape
    if shape is None or _prod(shape) is None:
        ctx.set_output(node, AUX)
        return
    start, end = ctx.attr(node, "start", 0), ctx.attr(node, "end", None)
    ctx.set_output(node, Const(np.asarray(shape[start:end], dtype=np.int64)))


@rule("Size", "ConstantOfShape", "NonZero", "EyeLike", "Range", "RandomNormalLike", "RandomUniformLike")
def lower_aux(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Shape, Size and friends: read only the layout of an activation. NonZero reads its values too:
    the indices it gives depend on the order of the neurons, which then stay in place."""
    x = ctx.values.get(node.input[0]) if node.op_type == "NonZero" and node.input else None
    if isinstance(x, Act):
        ctx.pin(node, x.sets, "NonZero of an activation: its indices depend on the order of the neurons")
    elif isinstance(x, Scores) and x.heads_set is not None:
        ctx.pin(node, [x.heads_set], "NonZero of attention scores: indices per head")
    for i in range(len(node.output)):
        ctx.set_output(node, AUX, i)

