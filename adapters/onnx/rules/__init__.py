"""Built-in lowering rules, one module per op family. ``BUILTIN_RULES`` lists them all."""
from __future__ import annotations

from nngraph.hookspecs import OpRule

from . import attention, control, conv, dense, elementwise, embedding, norm, pool, quant, recurrent, shape

BUILTIN_RULES: list[OpRule] = [
    *dense.RULES, *conv.RULES, *norm.RULES, *elementwise.RULES, *shape.RULES, *pool.RULES,
    *attention.RULES, *embedding.RULES, *recurrent.RULES, *control.RULES, *quant.RULES,
    OpRule("EmbedLayerNormalization", embedding.lower_embed_layernorm, domain="com.microsoft"),
]
