"""Which rule lowers which op: the ``@rule`` decorator and the table the engine looks rules up in.

A rule is a function ``lower(ctx, node)`` (see :class:`~nngraph.adapters.onnx.context.LoweringContext`)
marked with the ONNX ops it lowers, as onnx2torch registers its converters::

    @rule("Gemm")
    def lower_gemm(ctx, node): ...

    @rule("LayerNormalization")
    @rule("LayerNormalization", domain="com.microsoft")
    def lower_layernorm(ctx, node): ...

``rules_in(module)`` collects a module's marked functions as :class:`~nngraph.hookspecs.OpRule`
descriptors, which is what the ``nngraph_onnx_rules`` plugin hook returns. For each node the engine
takes the rule of the highest ``since`` version not above the model's opset for the op's domain;
among rules with equal versions the one added last wins (a plugin's over a built-in).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType

from nngraph.hookspecs import OpRule

Lower = Callable[..., None]


def rule(*op_types: str, domain: str = "", since: int = 1) -> Callable[[Lower], Lower]:
    """Mark the decorated function as the rule for ``op_types`` of ``domain`` (``""`` is the
    default ONNX domain) from opset ``since`` on. Stack it to register one function under
    several domains or versions; the function itself is returned unchanged."""
    if not op_types:
        raise TypeError("rule() needs at least one op type")

    def mark(fn: Lower) -> Lower:
        # decorators apply bottom-up: put this one's rules first, so they list top-down
        fn.op_rules = (*(OpRule(op, fn, domain=domain, since_version=since) for op in op_types),
                       *getattr(fn, "op_rules", ()))
        return fn
    return mark


def rules_in(module: ModuleType) -> list[OpRule]:
    """The rules marked with :func:`rule` among the functions ``module`` defines (not those it
    imports), in the order they are defined."""
    return [r for fn in vars(module).values()
            if callable(fn) and getattr(fn, "__module__", None) == module.__name__
            for r in getattr(fn, "op_rules", ())]


class RuleTable:
    """(domain, op type) → rules by ``since_version``; lookup honours the model's opset."""

    def __init__(self, rules: Iterable[OpRule] = ()):
        self._rules: dict[tuple[str, str], list[OpRule]] = {}
        for r in rules:
            self.add(r)

    def add(self, rule: OpRule) -> None:
        domain = "" if rule.domain == "ai.onnx" else rule.domain
        lst = self._rules.setdefault((domain, rule.op_type), [])
        lst.append(rule)
        lst.sort(key=lambda r: r.since_version)

    def lookup(self, domain: str, op_type: str, opset: int | None) -> OpRule | None:
        """The rule for an op of ``domain`` in a model of ``opset`` for it (None: no rule)."""
        rules = self._rules.get(("" if domain == "ai.onnx" else domain, op_type))
        if not rules:
            return None
        eligible = [r for r in rules if opset is None or r.since_version <= opset]
        return eligible[-1] if eligible else None
