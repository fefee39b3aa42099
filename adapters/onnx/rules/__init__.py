"""Built-in lowering rules, one module per op family, each rule marked with ``@rule``
(:mod:`nngraph.adapters.onnx.registry`). ``BUILTIN_RULES`` lists them all; :mod:`.common` holds
the building blocks they share, public for third-party rules."""
from __future__ import annotations

from nngraph.hookspecs import OpRule

from ..registry import rules_in
from . import attention, control, conv, dense, elementwise, embedding, norm, pool, quant, recurrent, shape

BUILTIN_RULES: list[OpRule] = [
    r for module in (dense, conv, norm, elementwise, shape, pool, attention, embedding, recurrent, control, quant)
    for r in rules_in(module)
]
