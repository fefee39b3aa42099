"""Embeddings: a lookup in a constant table is a block from one fixed node per table row
(token, position, segment) to the embedding dimensions; position tables added as constants
become per-neuron arrays."""
from __future__ import annotations

import onnx

from ..engine import Act, Const, LoweringContext
from .common import tied_copy


def _table_block(ctx: LoweringContext, node: onnx.NodeProto, table: Const, label: str, ids_rank: int | None,
                 role_suffix: str = "") -> Act:
    quantized = table.data.dtype.kind in "iu" and table.data.dtype.itemsize == 1    # a dynamic-quantized table
    if table.data.ndim != 2 or not (table.is_float or quantized):
        raise ctx.fail(node, f"lookup table of shape {table.data.shape}")
    rows, dim = table.data.shape
    tokens = ctx.new_set(node, rows, "token", layer=False, suffix=f"/{label}")
    ctx.graph.fix(tokens.name)
    s = ctx.new_set(node, dim, "hidden", inputs=[Act((tokens.name,), 0)], suffix=role_suffix)
    ctx.graph.add_block(s.name, tokens.name, s.name, "embedding", ctx.param(table.transpose((1, 0))))
    rank = (ids_rank or 0) + 1
    return Act((s.name,), rank - 1, rank)


def lower_embedding(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Gather(table, ids) along axis 0."""
    table = ctx.const(node.input[0])
    if ctx.attr(node, "axis", 0) != 0:
        raise ctx.fail(node, "gathers a constant along an axis other than 0")
    ids = ctx.shape(node.input[1])
    ctx.set_output(node, _table_block(ctx, node, table, "rows", len(ids) if ids is not None else None))


def positional(ctx: LoweringContext, node: onnx.NodeProto, x: Act, c: Const) -> bool:
    """Add(x, table) where the table varies over tokens or space too: a learned position
    embedding. Stored as a per-neuron array [neurons, positions] on a tied copy of x."""
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


def lower_embed_layernorm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """com.microsoft EmbedLayerNormalization: word + position (+ segment) embeddings, then LayerNorm."""
    from .elementwise import combine
    from .norm import _normalize, _vectors

    ids_shape = ctx.shape(node.input[0])
    rank = len(ids_shape) if ids_shape is not None else 2
    parts = []
    for slot, label in ((2, "word"), (3, "position"), (4, "segment")):
        if len(node.input) > slot and node.input[slot]:
            table = ctx.const(node.input[slot])
            if table is None:
                raise ctx.fail(node, f"{label} embedding is not a constant")
            parts.append(_table_block(ctx, node, table, label, rank, role_suffix=f"/{label}"))
    tmp = onnx.NodeProto()
    tmp.CopyFrom(node)
    del tmp.output[:]
    tmp.output.append(node.output[2] if len(node.output) > 2 and node.output[2] else node.output[0] + "/sum")
    combine(ctx, tmp, parts)
    summed = ctx.values[tmp.output[0]]
    arrays = _vectors(ctx, node, summed, {5: "ln_scale", 6: "ln_shift"})
    ctx.set_output(node, _normalize(ctx, node, summed, arrays, epsilon=float(ctx.attr(node, "epsilon", 1e-12))))
    from ..engine import AUX
    ctx.set_output(node, AUX, 1)


RULES = []
