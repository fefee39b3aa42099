"""Gradient boosting (3 seeds) on the 64-probe output summary, the weight statistics, and both: test τ.

    python gbt_summary.py ZOO_DIR
"""
import sys

import numpy as np
from scipy.stats import kendalltau
from sklearn.ensemble import GradientBoostingRegressor
from torch_geometric.data import Batch

from nngraph import featurize
from nngraph.learn.dataset import load_dataset
from nngraph.learn.featurize import output_summary
from nngraph.learn.probes import PROBE, attach_probes
from nngraph.plugins.encoders.statnn import weight_statistics


def statistics(entries):
    """The suite's stats+gbt features (run.py): per-depth weight statistics of the plain featurization."""
    return weight_statistics(Batch.from_data_list([featurize(e.graph) for e in entries])).numpy()


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
s_tr, s_te = statistics(tr), statistics(te)
m_tr, m_te = summary(tr), summary(te)
for name, a, b in (("weight statistics", s_tr, s_te), ("summary", m_tr, m_te),
                   ("both", np.hstack([s_tr, m_tr]), np.hstack([s_te, m_te]))):
    taus = [kendalltau(y_te, GradientBoostingRegressor(random_state=k).fit(a, y_tr).predict(b))[0] for k in range(3)]
    print(f"{name}: test τ {np.mean(taus):.3f}")
