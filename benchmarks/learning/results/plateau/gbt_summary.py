"""Gradient boosting (3 seeds) on the 64-probe output summary, the weight statistics, and both: test τ.

    python gbt_summary.py ZOO_DIR     # run from the repository root
"""
import sys
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau
from sklearn.ensemble import GradientBoostingRegressor

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))      # benchmarks/learning: run._features
from run import _features  # noqa: E402

from nngraph.learn.dataset import load_dataset  # noqa: E402
from nngraph.learn.featurize import output_summary  # noqa: E402
from nngraph.learn.probes import PROBE, attach_probes  # noqa: E402


def summary(entries):
    rows = []
    for e in entries:
        g = attach_probes(e.graph, e.path, 64, 0, "uniform")
        out = next(s for s in g.sets.values() if s.role == "output")
        rows.append(output_summary(out.arrays[PROBE].data).ravel())
    return np.stack(rows)


data = load_dataset(sys.argv[1], progress=False)
tr, te = data.split("train"), data.split("test")
y_tr = np.array([float(e.row["test_acc"]) for e in tr])
y_te = np.array([float(e.row["test_acc"]) for e in te])
(s_tr, _), (s_te, _) = _features(tr), _features(te)
m_tr, m_te = summary(tr), summary(te)
for name, a, b in (("weight statistics", s_tr, s_te), ("summary", m_tr, m_te),
                   ("both", np.hstack([s_tr, m_tr]), np.hstack([s_te, m_te]))):
    taus = [kendalltau(y_te, GradientBoostingRegressor(random_state=k).fit(a, y_tr).predict(b))[0] for k in range(3)]
    print(f"{name}: test τ {np.mean(taus):.3f}")
