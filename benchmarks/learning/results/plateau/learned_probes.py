"""Learned probe inputs on a CNN zoo made by examples/make_zoo.py (ProbeGen / Kofinas et al. style), outside the
library: each network rebuilt in torch with its ONNX weights, K probe images as parameters, an MLP on the flattened
log-softmax outputs, MSE + rank loss. ``fixed`` keeps the probes at their U(-1, 1) draw.

    python learned_probes.py DIR K learn|fixed SEED [EPOCHS]    # from the repository root
"""
import csv
import sys

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from scipy.stats import kendalltau

sys.path.insert(0, "examples")
from make_zoo import make_net  # noqa: E402

torch.set_num_threads(2)
folder, K, learn, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "learn", int(sys.argv[4])
epochs = int(sys.argv[5]) if len(sys.argv) > 5 else 60
rows = list(csv.DictReader(open(f"{folder}/labels.csv")))
KINDS = {"width": int, "depth": int, "kernel": int, "activation": str, "dropout": float, "init_scale": float}


def load(row) -> torch.nn.Module:
    net = make_net({k: kind(row[k]) for k, kind in KINDS.items()})
    weights = onnx.load(f"{folder}/{row['model']}").graph.initializer
    net.load_state_dict({t.name: torch.tensor(numpy_helper.to_array(t)) for t in weights})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


nets = [load(r) for r in rows]
y = torch.tensor([float(r["test_acc"]) for r in rows])
split = np.array([r["split"] for r in rows])
tr, te = np.where(split == "train")[0], np.where(split == "test")[0]
torch.manual_seed(seed)
probes = torch.nn.Parameter(2 * torch.rand(K, 1, 8, 8) - 1, requires_grad=learn)
head = torch.nn.Sequential(torch.nn.Linear(10 * K, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
opt = torch.optim.Adam(list(head.parameters()) + ([probes] if learn else []), lr=3e-3, weight_decay=1e-4)
mean, std = y[tr].mean(), y[tr].std()


def features(idx) -> torch.Tensor:
    return torch.stack([torch.log_softmax(nets[i](probes), 1).flatten() for i in idx])


def rank_loss(out, target):
    sign = torch.sign(target[:, None] - target[None])
    pairs = (sign != 0).float()
    return (torch.nn.functional.softplus(-sign * (out[:, None] - out[None])) * pairs).sum() / pairs.sum().clamp(min=1)


rng = np.random.default_rng(seed)
for epoch in range(epochs):
    for batch in np.array_split(rng.permutation(tr), max(1, len(tr) // 32)):
        out, target = head(features(batch)).squeeze(-1), (y[batch] - mean) / std
        loss = ((out - target) ** 2).mean() + rank_loss(out, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            probes.clamp_(-3, 3)
    if epoch % 20 == 19 or epoch == epochs - 1:
        with torch.no_grad():
            p_tr, p_te = head(features(tr)).squeeze(-1), head(features(te)).squeeze(-1)
        col = (y[te] < 0.105).numpy()
        print(f"{'learned' if learn else 'fixed'} K={K} seed={seed} epoch {epoch + 1}: "
              f"train {kendalltau(y[tr], p_tr)[0]:.3f} test {kendalltau(y[te], p_te)[0]:.3f} "
              f"collapsed {kendalltau(y[te][col], p_te[col])[0]:.3f} trained {kendalltau(y[te][~col], p_te[~col])[0]:.3f}",
              flush=True)
