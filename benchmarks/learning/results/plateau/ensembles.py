"""Train and test τ of single seeds, of seed ensembles (mean prediction) and of rank blends with stats+gbt, and τ
among collapsed (test accuracy < 0.105) and trained networks, from preds.py files.

    python ensembles.py PREFIX NAME [NAME ...]   # reads PREFIX_NAME.npz, PREFIX_gbt.npz
"""
import sys

import numpy as np
from scipy.stats import kendalltau, rankdata

prefix = sys.argv[1]
gbt = np.load(f"{prefix}_gbt.npz")
for name in sys.argv[2:]:
    g = np.load(f"{prefix}_{name}.npz")
    y, k = g["y_te"], sum(1 for f in g.files if f.startswith("te"))
    preds = [g[f"te{s}"] for s in range(k)]
    col = y < 0.105
    tau = lambda p, m=slice(None): kendalltau(y[m], p[m])[0]  # noqa: E731
    train = np.mean([kendalltau(g["y_tr"], g[f"tr{s}"])[0] for s in range(k)])
    line = (f"{name}: {k} seeds, train {train:.3f}, test single {np.mean([tau(p) for p in preds]):.3f} (collapsed "
            f"{np.mean([tau(p, col) for p in preds]):.3f}, trained {np.mean([tau(p, ~col) for p in preds]):.3f})")
    if k >= 3:
        line += f", ensemble of 3 {np.mean([tau(np.mean(preds[a:a + 3], 0)) for a in range(0, k - 2, 3)]):.3f}"
    if k >= 6:
        line += f", of 6 {tau(np.mean(preds[:6], 0)):.3f}"
    blends = [np.mean([tau((1 - w) * rankdata(p) + w * rankdata(gbt['te0'])) for p in preds]) for w in (0.1, 0.2, 0.3)]
    print(line + ", rank blend with stats+gbt w=0.1/0.2/0.3 " + " / ".join(f"{b:.3f}" for b in blends))
