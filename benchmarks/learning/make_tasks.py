"""Behaviour classification: MLPs on scikit-learn digits, each trained for one of four binary tasks.

    python benchmarks/learning/make_tasks.py OUT_DIR [--n 200] [--seed 0] [--test-fraction 0.2]

Every network is an MLP [64, 32, 16, 2] (ReLU) with the same architecture, activation and init
distribution; what differs is the task it was trained for — digit parity, digit < 5, digit
divisible by 3, digit prime — and that task is the label. Training hyperparameters vary per network
(learning rate, steps, weight decay, training subset) so the label is not an artefact of one
recipe. All networks train at once as one batched model (seconds on a CPU). Deterministic in --seed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from make_freq import write_population

TASKS = {"parity": lambda d: d % 2 == 0, "small": lambda d: d < 5, "div3": lambda d: d % 3 == 0,
         "prime": lambda d: np.isin(d, [2, 3, 5, 7])}
LAYOUT = (64, 32, 16, 2)


def digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    return torch.tensor(d.data / 16.0, dtype=torch.float32), d.target


def fit(n: int, seed: int, steps: int = 300):
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    x, digit = digits()
    names = list(TASKS)
    labels = rng.permutation(np.arange(n) % len(names))
    ys = torch.stack([torch.tensor(TASKS[names[t]](digit).astype(np.int64)) for t in labels])   # [n, samples]
    lr = torch.tensor(10 ** rng.uniform(-3, -2, n), dtype=torch.float32)
    wd = torch.tensor(10 ** rng.uniform(-5, -3, n), dtype=torch.float32)
    active = torch.tensor(rng.integers(steps // 3, steps + 1, n))                      # steps per network
    subset = torch.tensor(rng.uniform(0.3, 1.0, n), dtype=torch.float32)
    Ws, bs = [], []
    for a, b in zip(LAYOUT[:-1], LAYOUT[1:]):
        bound = 1 / np.sqrt(a)
        Ws.append(((torch.rand(n, b, a, generator=g) * 2 - 1) * bound).requires_grad_())
        bs.append(((torch.rand(n, b, generator=g) * 2 - 1) * bound).requires_grad_())
    params = Ws + bs
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    limit = (subset * len(digit)).long()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(digit), (n, 64), generator=g) % limit[:, None]
        h = x[idx]
        for i, (W, b) in enumerate(zip(Ws, bs)):
            h = torch.baddbmm(b[:, None, :], h, W.transpose(1, 2))
            if i < len(Ws) - 1:
                h = torch.relu(h)
        y = torch.gather(ys, 1, idx)
        loss = torch.nn.functional.cross_entropy(h.reshape(-1, 2), y.reshape(-1), reduction="none").view(n, -1).mean(1)
        grads = torch.autograd.grad(loss.sum(), params)
        on = (step <= active).float()
        with torch.no_grad():                                 # Adam with per-network lr, weight decay and stop step
            for p, gr, mm, vv in zip(params, grads, m, v):
                shape = (-1,) + (1,) * (p.ndim - 1)
                gr = gr + wd.view(shape) * p
                mm.mul_(0.9).add_(0.1 * gr)
                vv.mul_(0.999).add_(0.001 * gr * gr)
                upd = (mm / (1 - 0.9 ** step)) / ((vv / (1 - 0.999 ** step)).sqrt() + 1e-8)
                p.sub_((lr * on).view(shape) * upd)
    with torch.no_grad():
        h = x.expand(n, -1, -1)
        for i, (W, b) in enumerate(zip(Ws, bs)):
            h = torch.baddbmm(b[:, None, :], h, W.transpose(1, 2))
            if i < len(Ws) - 1:
                h = torch.relu(h)
        acc = (h.argmax(-1) == ys).float().mean(1)
    return [W.detach() for W in Ws], [b.detach() for b in bs], labels, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    Ws, bs, labels, acc = fit(args.n, args.seed, args.steps)
    names = list(TASKS)
    write_population(args.out, Ws, bs, args.test_fraction, lambda i: {
        "task": names[int(labels[i])], "accuracy": round(float(acc[i]), 4)})
    per = {t: float(acc[labels == k].mean()) for k, t in enumerate(names)}
    print(f"{args.n} MLPs → {args.out} (accuracy on their task: "
          + ", ".join(f"{k} {v:.3f}" for k, v in per.items()) + ")")


if __name__ == "__main__":
    main()
