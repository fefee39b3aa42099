"""Train a population of small CNNs on scikit-learn's bundled digits and export each to ONNX.

    python examples/make_zoo.py OUT_DIR [--n 300] [--seed 0] [--wide-test] [--recipe trainable|original]

Hyperparameters vary per network: width, depth, kernel size, activation, optimizer, learning rate,
weight decay, init scale, dropout, data fraction, label noise and training length (a step budget;
``--recipe original``: epochs, see ``sample``). OUT_DIR/labels.csv gets
``model, split, test_acc, train_acc`` and every hyperparameter. ``--wide-test`` puts the widest
networks (more channels than any training network) in the test split, for out-of-distribution
generalisation. Needs torch and scikit-learn.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import warnings
from pathlib import Path

import numpy as np

try:
    import torch
    from torch import nn
except ImportError:
    raise SystemExit(f'{__file__}: needs torch: pip install torch==2.13.0 && pip install -e ".[learn]"') from None


def digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit(f'{__file__}: needs scikit-learn: pip install -e ".[learn]"') from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(y), generator=g)
    return x[idx[:TRAIN_SIZE]], y[idx[:TRAIN_SIZE]], x[idx[TRAIN_SIZE:]], y[idx[TRAIN_SIZE:]]


TRAIN_SIZE = 1200                       # digits the networks train on; the other 597 measure test_acc
ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


def make_net(h: dict) -> nn.Module:
    layers, c = [], 1
    for i in range(h["depth"]):
        layers += [nn.Conv2d(c, h["width"], h["kernel"], padding=h["kernel"] // 2), ACTS[h["activation"]]()]
        if i == 0:
            layers.append(nn.MaxPool2d(2))
        c = h["width"]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(h["dropout"]), nn.Linear(c, 10)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(h["init_scale"])
    return net


def sample(rng, i: int, widths, recipe: str = "trainable") -> dict:
    """One network's hyperparameters. ``original``: one learning-rate range for Adam and plain SGD and
    2–24 epochs — 79 % of a 320-network zoo ended at chance (SGD 99 %, Adam 58 %), so Kendall τ on it
    mostly ranked which constant class dead networks predict. ``trainable`` (default): SGD with momentum
    0.9, a learning-rate range per optimizer, batches of 32 and a budget of 160–1600 steps, so most networks learn something and
    accuracy is spread by capacity, data, noise and regularization (the distributions stay varied:
    sigmoid, tiny inits and short runs still fail at times)."""
    h = {"width": int(rng.choice(widths)), "depth": int(rng.integers(1, 4)), "kernel": int(rng.choice([3, 5])),
         "activation": str(rng.choice(list(ACTS))), "optimizer": str(rng.choice(["adam", "sgd"]))}
    if recipe == "original":
        h |= {"lr": float(10 ** rng.uniform(-3.3, -1.3)), "momentum": 0.0}
    else:
        lo, hi = (-3.3, -1.8) if h["optimizer"] == "adam" else (-2.3, -0.7)
        h |= {"lr": float(10 ** rng.uniform(lo, hi)), "momentum": 0.0 if h["optimizer"] == "adam" else 0.9}
    h |= {"weight_decay": float(10 ** rng.uniform(-6, -2)),
          "init_scale": float(rng.uniform(0.3, 1.5)), "dropout": float(rng.choice([0.0, 0.2, 0.5])),
          "data_fraction": float(rng.uniform(0.1, 1.0)), "label_noise": float(rng.choice([0.0, 0.1, 0.3])),
          "seed": i}
    if recipe == "original":
        h |= {"epochs": int(rng.integers(2, 25)), "batch": 64}
    else:                               # a step budget, so that small data fractions still train
        steps_per_epoch = -(-max(32, int(TRAIN_SIZE * h["data_fraction"])) // 32)
        h |= {"epochs": max(1, round(10 ** rng.uniform(2.2, 3.2) / steps_per_epoch)), "batch": 32}
    return h


def train_one(h: dict, data) -> tuple[nn.Module, float, float]:
    xtr, ytr, xte, yte = data
    torch.manual_seed(h["seed"])
    n = max(32, int(len(ytr) * h["data_fraction"]))
    x, y = xtr[:n], ytr[:n].clone()
    noisy = torch.rand(n) < h["label_noise"]
    y[noisy] = torch.randint(0, 10, (int(noisy.sum()),))
    net = make_net(h)
    if h["optimizer"] == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])
    else:
        opt = torch.optim.SGD(net.parameters(), lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"])
    for _ in range(h["epochs"]):
        net.train()
        for b in torch.randperm(n).split(h["batch"]):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return net, float((net(xtr[:n]).argmax(1) == ytr[:n]).float().mean()), float((net(xte).argmax(1) == yte).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wide-test", action="store_true")
    ap.add_argument("--recipe", choices=["trainable", "original"], default="trainable",
                    help="hyperparameter ranges (see sample(); 'original' rebuilds the zoos of earlier results)")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    data = digits()                     # before anything is created: a missing dependency fails here
    created = not args.out.exists()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        write_zoo(args, rng, data)
    except BaseException:
        if created:                     # a folder without labels.csv is no zoo: leave nothing behind
            shutil.rmtree(args.out, ignore_errors=True)
        raise


def write_zoo(args, rng, data) -> None:
    rows = []
    torch.set_num_threads(1)
    for i in range(args.n):
        wide = args.wide_test and i >= int(args.n * 0.8)
        h = sample(rng, i, [24, 32] if wide else [4, 8, 12, 16], args.recipe)
        net, train_acc, test_acc = train_one(h, data)
        name = f"net{i:04d}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), args.out / name, dynamo=False,
                              input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "b"}})
        split = "test" if (wide or (not args.wide_test and i % 5 == 4)) else ("val" if i % 10 == 3 else "train")
        rows.append({"model": name, "split": split, "test_acc": round(test_acc, 4), "train_acc": round(train_acc, 4), **h})
        if (i + 1) % 25 == 0:
            print(f"{i + 1}/{args.n} networks", flush=True)
    with open(args.out / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out / 'labels.csv'}: {len(rows)} networks")


if __name__ == "__main__":
    main()
