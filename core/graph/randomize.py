"""Redraw every parameter of a graph at random, respecting what each array means.

Verification is only as strong as the weights it runs on: models whose weights are all one
constant (the ONNX test zoo fills them with ``ConstantOfShape``) or whose biases are zero are
unchanged by many wrong permutations. Redrawing with fan-in scaled weights, positive
variances and non-zero biases makes every symmetry visible while keeping activations finite.
"""
from __future__ import annotations

import numpy as np

from .dtypes import numpy_dtype
from .ir import NeuralGraph, Param

POSITIVE = ("var",)            # running variances
NEAR_ONE = ("scale",)          # norm scales


def randomize(graph: NeuralGraph, seed: int = 0) -> NeuralGraph:
    """In-place: replace each stored array with random values of the same shape and dtype.

    Source tensors are redrawn as a whole and every array re-derived from them through its
    origin, so arrays that share a tensor stay equal; a tensor that is one constant shared by
    several arrays (deduplicated zeros) stays a constant, so it needs no tie."""
    rng = np.random.default_rng(seed)

    def draw(shape, dtype, key: str, fan_in: int = 1, keep: np.ndarray | None = None) -> np.ndarray:
        if keep is not None:        # an opaque op's parameters: their meaning is unknown, keep them
            return np.array(keep, dtype=dtype)
        if any(k in key for k in POSITIVE):
            x = rng.uniform(0.5, 1.5, shape)
        elif any(k in key for k in NEAR_ONE):
            x = rng.uniform(0.5, 1.5, shape) * rng.choice([-1, 1], shape)
        elif key == "weight":
            x = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        else:
            x = rng.standard_normal(shape) * 0.2
        return x.astype(dtype)

    fan: dict[str, int] = {}
    for b in graph.blocks:
        if b.weight is not None and b.pattern == "full":
            fan[b.target] = fan.get(b.target, 0) + int(np.prod(b.weight.shape[1:]))
    wanted: list[tuple[Param, str, int]] = []
    for s in graph.sets.values():
        wanted += [(p, key, 1) for key, p in s.arrays.items()]
    for b in graph.blocks:
        if b.weight is not None:
            key = "embedding" if b.kind == "embedding" else "weight" if b.pattern == "full" else \
                "opaque" if b.pattern == "opaque" else "scale"
            wanted.append((b.weight, key, fan.get(b.target, 1)))

    leaves = {n: np.empty(t.shape, dtype=numpy_dtype(t.dtype)) for n, t in graph.sources.items() if n not in graph.unmapped}
    for p, key, fan_in in wanted:
        value = draw(p.shape, p.data.dtype, key, fan_in, p.data if key == "opaque" else None)
        if p.origin is not None and p.origin.tensor in leaves and not p.shared:
            p.origin.scatter(value, leaves[p.origin.tensor])
        elif p.origin is None:
            p.data = value
    for name in graph.meta.get("shared_constants", []):
        if name in leaves:
            leaves[name][...] = draw((), leaves[name].dtype, "other")
    for p, _, _ in wanted:
        if p.origin is not None and p.origin.tensor in leaves:
            p.data = p.origin.apply(leaves[p.origin.tensor])
    for name, u in graph.unmapped.items():
        if u.data is not None and u.data.dtype.kind == "f":
            u.data = draw(u.data.shape, u.data.dtype, "other")
    graph.leaves = leaves
    return graph

