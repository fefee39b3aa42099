"""Small networks written twice: as a numpy forward function and as a hand-built NeuralGraph.

They exercise every IR mechanism the ONNX engine relies on (grouped and depthwise convs under
a fixed parent group, a residual tie, a diagonal scale, flatten→dense taps with a transposed
and reshaped origin, a fused QKV matrix sliced into per-head-structured sets) independently of
any adapter, so a bug in the IR cannot hide behind a matching bug in a converter.
"""
from __future__ import annotations

import numpy as np

from nngraph import NeuralGraph, Origin, Param

L = 5  # sequence length of the conv net


def conv_same(x: np.ndarray, w: np.ndarray, groups: int) -> np.ndarray:
    """1-D convolution, stride 1, 'same' padding. x [C, L], w [O, C/groups, k]."""
    O, cpg, k = w.shape
    C, n = x.shape
    pad = np.pad(x, ((0, 0), (k // 2, k // 2)))
    windows = np.stack([pad[:, i:i + n] for i in range(k)], axis=-1)     # [C, L, k]
    opg = O // groups
    out = np.empty((O, n))
    for g in range(groups):
        xs = windows[g * cpg:(g + 1) * cpg]                                # [cpg, L, k]
        out[g * opg:(g + 1) * opg] = np.einsum("ock,clk->ol", w[g * opg:(g + 1) * opg], xs)
    return out


def conv_params(rng) -> dict[str, np.ndarray]:
    return {
        "c1.w": rng.standard_normal((8, 2, 3)), "c1.b": rng.standard_normal(8),
        "dw.w": rng.standard_normal((8, 1, 3)), "gamma": rng.standard_normal(8),
        "fc.w": rng.standard_normal((8 * L, 3)), "fc.b": rng.standard_normal(3),
    }


def conv_forward(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    c1 = np.maximum(conv_same(x, p["c1.w"], 2) + p["c1.b"][:, None], 0)
    r = c1 + conv_same(c1, p["dw.w"], 8)
    s = r * p["gamma"][:, None]
    return p["fc.w"].T @ s.reshape(-1) + p["fc.b"]


def conv_graph(p: dict[str, np.ndarray]) -> NeuralGraph:
    g = NeuralGraph({"producer": "netlib"})
    for k, v in p.items():
        g.add_source(k, v.shape, v.dtype)
    g.add_group("c1.groups", 2)
    g.add_set("x", 4, "input", fixed=True, parent="c1.groups")
    c1 = g.add_set("c1", 8, depth=1, activation="relu", parent="c1.groups")
    c1.arrays["bias"] = Param(p["c1.b"], Origin("c1.b"))
    g.add_block("c1", "x", "c1", "conv", Param(p["c1.w"], Origin("c1.w")), groups=2)
    g.add_set("dw", 8, depth=2, tie="c1")
    g.add_block("dw", "c1", "dw", "conv", Param(p["dw.w"], Origin("dw.w")), groups=8)
    g.add_set("r", 8, "residual", depth=2, tie="c1")
    g.add_block("r/a", "c1", "r", "identity")
    g.add_block("r/b", "dw", "r", "identity")
    g.add_set("s", 8, "scale", depth=2, tie="c1")
    g.add_block("s", "r", "s", "scale", Param(p["gamma"], Origin("gamma")))
    out = g.add_set("out", 3, "output", depth=3, fixed=True)
    fc = Origin("fc.w").transpose((1, 0)).reshape((3, 8, L))
    g.add_block("fc", "s", "out", "dense", Param(fc.apply(p["fc.w"]), fc))
    out.arrays["bias"] = Param(p["fc.b"], Origin("fc.b"))
    return g


H, DH, D, DOUT, T = 2, 3, 6, 5, 4


def attention_params(rng) -> dict[str, np.ndarray]:
    return {"qkv.w": rng.standard_normal((3 * H * DH, D)), "qkv.b": rng.standard_normal(3 * H * DH),
            "o.w": rng.standard_normal((DOUT, H * DH)), "o.b": rng.standard_normal(DOUT)}


def attention_forward(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    qkv = x @ p["qkv.w"].T + p["qkv.b"]
    q, k, v = np.split(qkv, 3, axis=-1)
    heads = []
    for h in range(H):
        sl = slice(h * DH, (h + 1) * DH)
        s = q[:, sl] @ k[:, sl].T / np.sqrt(DH)
        a = np.exp(s - s.max(-1, keepdims=True))
        heads.append((a / a.sum(-1, keepdims=True)) @ v[:, sl])
    return np.concatenate(heads, -1) @ p["o.w"].T + p["o.b"]


def attention_graph(p: dict[str, np.ndarray]) -> NeuralGraph:
    g = NeuralGraph({"producer": "netlib"})
    for k, v in p.items():
        g.add_source(k, v.shape, v.dtype)
    g.add_set("x", D, "input", fixed=True)
    g.add_set("heads", H, "head", depth=1)
    n = H * DH
    for i, (name, role) in enumerate((("q", "query"), ("k", "key"), ("v", "value"))):
        tie = "q" if name == "k" else None
        s = g.add_set(name, n, role, depth=1, tie=tie, parent=None if tie else "heads")
        w = Origin("qkv.w").slice(0, i * n, (i + 1) * n)
        g.add_block(name, "x", name, "dense", Param(w.apply(p["qkv.w"]), w))
        b = Origin("qkv.b").slice(0, i * n, (i + 1) * n)
        s.arrays["bias"] = Param(b.apply(p["qkv.b"]), b)
    g.add_block("qk", "q", "k", "attention")
    g.add_block("q/head", "q", "heads", "head")
    g.add_block("v/head", "v", "heads", "head")
    o = g.add_set("o", DOUT, "output", depth=2, fixed=True)
    g.add_block("o", "v", "o", "dense", Param(p["o.w"], Origin("o.w")))
    o.arrays["bias"] = Param(p["o.b"], Origin("o.b"))
    return g
