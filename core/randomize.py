"""Redraw every parameter of a graph at random, respecting what each array means.

Verification is only as strong as the weights it runs on: models whose weights are all one
constant (the ONNX test zoo fills them with ``ConstantOfShape``) or whose biases are zero are
unchanged by many wrong permutations. Redrawing with fan-in scaled weights, positive
variances and non-zero biases makes every symmetry visible while keeping activations finite.
"""
from __future__ import annotations

import numpy as np

from .ir import NeuralGraph, Param

POSITIVE = ("var",)            # running variances
NEAR_ONE = ("scale",)          # norm scales


def randomize(graph: NeuralGraph, seed: int = 0) -> NeuralGraph:
    """In-place: replace each stored array with random values of the same shape and dtype."""
    rng = np.random.default_rng(seed)

    def draw(shape, dtype, key: str, fan_in: int = 1) -> np.ndarray:
        if any(k in key for k in POSITIVE):
            x = rng.uniform(0.5, 1.5, shape)
        elif any(k in key for k in NEAR_ONE):
            x = rng.uniform(0.5, 1.5, shape) * rng.choice([-1, 1], shape)
        elif key == "weight":
            x = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        else:
            x = rng.standard_normal(shape) * 0.2
        return x.astype(dtype)

    for s in graph.sets.values():
        for key, p in s.arrays.items():
            s.arrays[key] = Param(draw(p.shape, p.data.dtype, key), p.origin)
    fan: dict[str, int] = {}
    for b in graph.blocks:
        if b.weight is not None and b.pattern == "full":
            fan[b.target] = fan.get(b.target, 0) + int(np.prod(b.weight.shape[1:]))
    for b in graph.blocks:
        if b.weight is None:
            continue
        if b.kind == "embedding":
            data = draw(b.weight.shape, b.weight.data.dtype, "embedding")
        elif b.pattern == "full":
            data = draw(b.weight.shape, b.weight.data.dtype, "weight", fan[b.target])
        else:
            data = draw(b.weight.shape, b.weight.data.dtype, "scale")
        b.weight = Param(data, b.weight.origin)
    for name, u in graph.unmapped.items():
        if u.data is not None:
            u.data = draw(u.data.shape, u.data.dtype, "other") if u.data.dtype.kind == "f" else u.data
    return graph
