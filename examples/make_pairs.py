"""Train pairs of networks that differ only in their random seed, for alignment and merging.

    python examples/make_pairs.py OUT_DIR [--pairs 3] [--width 64]

On scikit-learn's bundled digits (8×8 images, 10 classes) trains, for each pair index k,
an MLP (64 → W → W → 10, ReLU) and a CNN with BatchNorm (3 × conv-BN-ReLU, global average pool,
linear) from seeds 2k and 2k + 1, and exports each to ONNX with its BatchNorm layers kept
(``mlp_s0.onnx``, ``cnn_s0.onnx``, …). Writes ``digits_train.npz`` (``image``: inputs for
activation matching and BatchNorm re-estimation) and ``digits_test.npz`` (``image``, ``label``).
Needs torch and scikit-learn.
"""
from __future__ import annotations

import argparse
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
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[idx[:1300]], y[idx[:1300]], x[idx[1300:]], y[idx[1300:]]


def mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


def cnn(width: int) -> nn.Module:
    layers, c = [], 1
    for i in range(3):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        if i == 0:
            layers.append(nn.MaxPool2d(2))
        c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def train(net: nn.Module, x, y, seed: int, epochs: int = 40) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        net.train()
        for b in torch.randperm(len(y), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
    return net.eval()


def export(net: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # no constant folding: BatchNorm stays a node with its statistics (not folded into the conv)
        torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), path, dynamo=False, do_constant_folding=False,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "b"}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--width", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = digits()       # before anything is created: a missing dependency fails here
    created = not args.out.exists()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        write_pairs(args, xtr, ytr, xte, yte)
    except BaseException:
        if created:
            shutil.rmtree(args.out, ignore_errors=True)
        raise


def write_pairs(args, xtr, ytr, xte, yte) -> None:
    np.savez(args.out / "digits_train.npz", image=xtr.numpy())
    np.savez(args.out / "digits_test.npz", image=xte.numpy(), label=yte.numpy())
    for seed in range(2 * args.pairs):
        for kind, make in (("mlp", mlp), ("cnn", cnn)):
            torch.manual_seed(seed)
            net = train(make(args.width), xtr, ytr, seed)
            with torch.no_grad():
                acc = float((net(xte).argmax(1) == yte).float().mean())
            export(net, args.out / f"{kind}_s{seed}.onnx")
            print(f"{kind}_s{seed}.onnx  test accuracy {acc:.4f}", flush=True)


if __name__ == "__main__":
    main()
