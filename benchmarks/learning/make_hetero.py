"""Heterogeneous CNNs: different depths, widths, kernel sizes, partial-channel residuals; label = test accuracy.

    python benchmarks/learning/make_hetero.py OUT_DIR [--n 300] [--seed 0] [--test-fraction 0.2]

Every network is a CNN on scikit-learn's 8×8 digits with 2–5 convolutions, each of its own width
(4–16 channels) and kernel (1, 3 or 5), a max-pool after the first, global average pooling and a
linear classifier. A convolution after the first may carry a residual over only part of the
channels, as in the CNN zoo of Kofinas et al.: ``y[:, :k] += x[:, :k]`` with k = min(c_in, c_out),
so the skip crosses layers of different widths. Training varies activation, optimizer (Adam, or SGD
with momentum), learning rate, weight decay, init scale, data fraction, label noise and epochs, in
ranges where most networks learn something (a zoo whose median sits at chance turns accuracy
prediction into a did-it-train test). labels.csv gets ``test_acc`` (held-out digits), ``train_acc`` and the architecture.
Deterministic in --seed; one core, a few minutes for 300 networks.
"""
from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from make_zoo import ACTS, digits  # noqa: E402


class PartialResidualConv(nn.Module):
    """act(conv(x)), then x added onto the first min(c_in, c_out) output channels when ``residual``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, act: str, residual: bool):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
        self.act = ACTS[act]()
        self.residual, self.k = residual, min(c_in, c_out)

    def forward(self, x):
        y = self.act(self.conv(x))
        if not self.residual:
            return y
        if self.k == y.shape[1]:
            return y + x[:, :self.k]
        return torch.cat([y[:, :self.k] + x[:, :self.k], y[:, self.k:]], 1)


def make_net(h: dict) -> nn.Module:
    layers, c = [], 1
    for i, (w, k, r) in enumerate(zip(h["widths"], h["kernels"], h["residual"])):
        layers.append(PartialResidualConv(c, w, k, h["activation"], bool(r)))
        if i == 0:
            layers.append(nn.MaxPool2d(2))
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(h["init_scale"])
    return net


def sample(rng, i: int) -> dict:
    depth = int(rng.integers(2, 6))
    optimizer = str(rng.choice(["adam", "sgd"]))
    return {"depth": depth, "widths": [int(w) for w in rng.choice([4, 8, 12, 16], depth)],
            "kernels": [int(k) for k in rng.choice([1, 3, 5], depth, p=[0.2, 0.5, 0.3])],
            "residual": [0] + [int(r) for r in rng.random(depth - 1) < 0.5],
            "activation": str(rng.choice(["relu", "tanh", "gelu"])), "optimizer": optimizer,
            "lr": float(10 ** (rng.uniform(-3.0, -1.5) if optimizer == "adam" else rng.uniform(-2.0, -0.7))),
            "weight_decay": float(10 ** rng.uniform(-6, -2)), "init_scale": float(rng.uniform(0.5, 1.5)),
            "data_fraction": float(rng.uniform(0.1, 1.0)), "label_noise": float(rng.choice([0.0, 0.1, 0.3])),
            "epochs": int(rng.integers(2, 25)), "seed": i}


def train_one(h: dict, data, generator: torch.Generator):
    xtr, ytr, xte, yte = data
    torch.manual_seed(h["seed"])
    n = max(32, int(len(ytr) * h["data_fraction"]))
    x, y = xtr[:n], ytr[:n].clone()
    noisy = torch.rand(n, generator=generator) < h["label_noise"]
    y[noisy] = torch.randint(0, 10, (int(noisy.sum()),), generator=generator)
    net = make_net(h)
    opt = (torch.optim.Adam(net.parameters(), lr=h["lr"], weight_decay=h["weight_decay"]) if h["optimizer"] == "adam"
           else torch.optim.SGD(net.parameters(), lr=h["lr"], momentum=0.9, weight_decay=h["weight_decay"]))
    for _ in range(h["epochs"]):
        for b in torch.randperm(n, generator=generator).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = lambda xs, ys: float((net(xs).argmax(1) == ys).float().mean())  # noqa: E731
        return net, acc(xtr[:n], ytr[:n]), acc(xte, yte)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--max-epochs", type=int, default=1000, help="cap on the sampled epochs (quick tests)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    data = digits()
    args.out.mkdir(parents=True, exist_ok=True)
    n_test = int(round(args.n * args.test_fraction))
    rows, residuals = [], 0
    for i in range(args.n):
        h = sample(rng, i)
        residuals += sum(h["residual"])
        h["epochs"] = min(h["epochs"], args.max_epochs)
        net, train_acc, test_acc = train_one(h, data, gen)
        name = f"cnn_{i:04d}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), args.out / name, dynamo=False,
                              input_names=["image"], output_names=["logits"])
        rows.append({"model": name, "split": "test" if i >= args.n - n_test else "train",
                     "test_acc": round(test_acc, 4), "train_acc": round(train_acc, 4),
                     **{k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in h.items()}})
        if (i + 1) % 50 == 0:
            print(f"{i + 1}/{args.n} networks", flush=True)
    with open(args.out / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    acc = np.array([r["test_acc"] for r in rows])
    q = np.quantile(acc, [0, 0.25, 0.5, 0.75, 1])
    print(f"{args.n} CNNs → {args.out} (test accuracy quartiles " + " / ".join(f"{v:.2f}" for v in q) + "; "
          f"{residuals} partial-channel residuals)")


if __name__ == "__main__":
    main()
