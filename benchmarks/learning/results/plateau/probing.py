"""Probing without an encoder: models on each network's per-probe outputs, and agreement with the consensus
of the best training networks.

    python probing.py DIR K [uniform|FILE.npz]

Per-probe softmax probabilities, log-probabilities and raw logits of the output set, flattened
([outputs · K] per network), fed to ridge regression and gradient boosting; then, per probe, the class the
top training networks (by test accuracy, quantile q) agree on, and each network's agreement with it.
Prints test τ, τ among collapsed (test accuracy < 0.105) and trained test networks, and train τ.
"""
import sys

import numpy as np
from scipy.stats import kendalltau
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import RidgeCV

from nngraph.learn.dataset import load_dataset
from nngraph.learn.probes import PROBE, attach_all

folder, k = sys.argv[1], int(sys.argv[2])
inputs = sys.argv[3] if len(sys.argv) > 3 else "uniform"
data = load_dataset(folder, progress=False)
tr, te = data.split("train"), data.split("test")


def outputs(entries):
    graphs = [e.graph for e in entries]
    attach_all(graphs, [e.path for e in entries], k, inputs=inputs)
    out = []
    for g in graphs:
        v = np.asarray(next(s for s in g.sets.values() if s.role == "output").arrays[PROBE].data, np.float64)
        out.append(v)
    return np.array(out)                                  # [networks, outputs, K]


def softmax(v):
    e = np.exp(v - v.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


V_tr, V_te = outputs(tr), outputs(te)
P_tr, P_te = softmax(V_tr), softmax(V_te)
y_tr = np.array([float(e.row["test_acc"]) for e in tr])
y_te = np.array([float(e.row["test_acc"]) for e in te])
col = y_te < 0.105


def report(name, p_te, p_tr):
    print(f"{name}: test {kendalltau(y_te, p_te)[0]:.3f} collapsed {kendalltau(y_te[col], p_te[col])[0]:.3f} "
          f"trained {kendalltau(y_te[~col], p_te[~col])[0]:.3f} train {kendalltau(y_tr, p_tr)[0]:.3f}", flush=True)


flat = {"prob": (P_tr, P_te), "logp": (np.log(P_tr + 1e-9), np.log(P_te + 1e-9)), "raw": (V_tr, V_te)}
for name, (a, b) in flat.items():
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    for mname, m in [("ridge", RidgeCV(alphas=np.logspace(-3, 3, 13))), ("gbt", GradientBoostingRegressor(random_state=0))]:
        m.fit(a, y_tr)
        report(f"flat {name} {mname}", m.predict(b), m.predict(a))
for q in (0.5, 0.9):
    consensus = P_tr[y_tr >= np.quantile(y_tr, q)].mean(0).argmax(0)        # [K]: the class top networks pick
    agree = lambda P: (P.argmax(1) == consensus).mean(1)                    # noqa: E731
    report(f"agreement with the top {1 - q:.0%} of training networks", agree(P_te), agree(P_tr))
