"""Built-in lowering rules, one module per op family. ``BUILTIN_RULES`` lists them all."""
from __future__ import annotations

from . import dense, elementwise, shape

BUILTIN_RULES = [*dense.RULES, *elementwise.RULES, *shape.RULES]
