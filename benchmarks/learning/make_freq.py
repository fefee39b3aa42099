"""Frequency MLPs: the population of Kofinas et al.'s toy task, rebuilt from its description.

    python benchmarks/learning/make_freq.py OUT_DIR [--n 200] [--seed 0] [--test-fraction 0.2]

Each network is an MLP [2, 32, 32, 1] (ReLU) fitted to y = sin(f · (x₀ + x₁)/√2) on x ∈ [-π, π]²
for one of four frequencies f ∈ {1, 2, 3, 4}; the label is the frequency class. Nothing but the
weights tells the classes apart (same architecture, activation and init distribution), so an encoder
that scores above chance reads the function from the weights. All networks are fitted at once as
one batched model (seconds on a CPU), then exported to ONNX one by one. Deterministic in --seed.
"""
from __future__ import annotations

import argparse
import csv
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

FREQS = (1.0, 2.0, 3.0, 4.0)
LAYOUT = (2, 32, 32, 1)


def fit(n: int, seed: int, steps: int = 600, points: int = 512):
    """Fit ``n`` MLPs at once (batched matmuls); returns weights, biases, labels and final MSEs."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(FREQS)
    labels = labels[torch.randperm(n, generator=g)]
    freq = torch.tensor(FREQS)[labels]
    Ws, bs = [], []
    for a, b in zip(LAYOUT[:-1], LAYOUT[1:]):          # PyTorch's default nn.Linear init, per network
        bound = 1 / math.sqrt(a)
        Ws.append(((torch.rand(n, b, a, generator=g) * 2 - 1) * bound).requires_grad_())
        bs.append(((torch.rand(n, b, generator=g) * 2 - 1) * bound).requires_grad_())
    opt = torch.optim.Adam(Ws + bs, lr=3e-3)
    for _ in range(steps):
        x = (torch.rand(n, points, 2, generator=g) * 2 - 1) * math.pi
        y = torch.sin(freq[:, None] * x.sum(-1) / math.sqrt(2))
        h = x
        for i, (W, b) in enumerate(zip(Ws, bs)):
            h = torch.baddbmm(b[:, None, :], h, W.transpose(1, 2))
            if i < len(Ws) - 1:
                h = torch.relu(h)
        loss = ((h.squeeze(-1) - y) ** 2).mean(1)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    return [W.detach() for W in Ws], [b.detach() for b in bs], labels, loss.detach()


def to_module(Ws, bs, i: int, act=nn.ReLU) -> nn.Module:
    """Network ``i`` of the stacked weights as an ``nn.Sequential`` with ``act()`` between layers."""
    layers = []
    for k, (W, b) in enumerate(zip(Ws, bs)):
        lin = nn.Linear(W.shape[2], W.shape[1])
        with torch.no_grad():
            lin.weight.copy_(W[i])
            lin.bias.copy_(b[i])
        layers += [lin, act()] if k < len(Ws) - 1 else [lin]
    return nn.Sequential(*layers).eval()


def test_rows(n: int, test_fraction: float, strata=None) -> np.ndarray:
    """Which of ``n`` rows are test: the last ``round(n · test_fraction)``, or with ``strata`` (a class
    per row) as many taken from the end of each class in turn, so a small test set holds every class
    in proportion (a random 60-network test set of 10 classes can leave a class with one network)."""
    n_test = int(round(n * test_fraction))
    test = np.zeros(n, bool)
    if strata is None:
        test[n - n_test:] = True
        return test
    strata = np.asarray(strata)
    from_end = np.empty(n, int)            # 0 for the last row of its class, 1 for the one before, ...
    for c in np.unique(strata):
        rows = np.flatnonzero(strata == c)
        from_end[rows] = np.arange(len(rows))[::-1]
    test[np.lexsort((strata, from_end))[:n_test]] = True
    return test


def write_population(out: Path, Ws, bs, test_fraction: float, columns, act=nn.ReLU, strata=None) -> None:
    """Export network i of the stacked weights as ``mlp_{i:04d}.onnx`` into ``out`` and write
    ``labels.csv`` (model, split — see ``test_rows`` —, then ``columns(i)``)."""
    n = len(Ws[0])
    test = test_rows(n, test_fraction, strata)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(n):
            name = f"mlp_{i:04d}.onnx"
            torch.onnx.export(to_module(Ws, bs, i, act), (torch.zeros(1, Ws[0].shape[-1]),), out / name, dynamo=False,
                              input_names=["x"], output_names=["y"])
            rows.append({"model": name, "split": "test" if test[i] else "train", **columns(i)})
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    Ws, bs, labels, mse = fit(args.n, args.seed, args.steps)
    write_population(args.out, Ws, bs, args.test_fraction, lambda i: {
        "label": int(labels[i]), "frequency": FREQS[int(labels[i])], "fit_mse": float(mse[i])})
    per = {FREQS[c]: float(mse[labels == c].mean()) for c in range(len(FREQS))}
    print(f"{args.n} MLPs → {args.out} (fit MSE per frequency: "
          + ", ".join(f"f={k:g}: {v:.3f}" for k, v in per.items()) + ")")


if __name__ == "__main__":
    main()
