"""Embeddings: a lookup in a constant table is a block from one fixed node per table row
(token, position, segment) to the embedding dimensions; position tables added as constants
become per-neuron arrays."""
from __future__ import annotations

import onnx

from ..context import LoweringContext
from ..registry import rule
from ..values import AUX, Act, Const
from .common import combine, normalize, vectors


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


@rule("EmbedLayerNormalization", domain="com.microsoft")
def lower_embed_layernorm(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """com.microsoft EmbedLayerNormalization: word + position (+ segment) embeddings, then LayerNorm."""
    ids_shape = ctx.shape(node.input[0])
    rank = len(ids_shape) if ids_shape is not None else 2
    parts = []
    for slot, label in ((2, "word"), (3, "position"), (4, "segment")):
        if len(node.input) > slot and node.input[slot]:
            table = ctx.const(node.input[slot])
            if table is None:
                raise ctx.fail(node, f"{label} embedding is not a constant")
            parts.append(_table_block(ctx, node, table, label, rank, role_suffix=f"/{label}"))
    summed = combine(ctx, node, parts,
                     output=node.output[2] if len(node.output) > 2 and node.output[2] else node.output[0] + "/sum")
    arrays = vectors(ctx, node, summed, {5: "ln_scale", 6: "ln_shift"})
    ctx.set_output(node, normalize(ctx, node, summed, arrays, epsilon=float(ctx.attr(node, "epsilon", 1e-12))))
    ctx.set_output(node, AUX, 1)

