"""How well the class that wins most probes ranks the collapsed networks (test accuracy < 0.105): each is
scored by the mean accuracy of the collapsed networks of the other splits that share that class.

    python lookup.py ZOO_DIR      # 64 uniform probes, as ng-gnn's defaults
"""
import collections
import sys

import numpy as np
from scipy.stats import kendalltau

from nngraph.learn.dataset import load_dataset
from nngraph.learn.featurize import output_summary
from nngraph.learn.probes import PROBE, attach_probes

data = load_dataset(sys.argv[1], progress=False)
rows = []
for e in data.entries:
    y = float(e.row["test_acc"])
    if y >= 0.105:
        continue
    g = attach_probes(e.graph, e.path, 64, 0, "uniform")
    out = next(s for s in g.sets.values() if s.role == "output")
    s = output_summary(out.arrays[PROBE].data)
    rows.append((e.row["split"], y, int(s[:, 1].argmax()), float(s[:, 1].max())))
by_class = collections.defaultdict(list)
for split, y, c, _ in rows:
    by_class[c].append(round(y, 4))
for c in sorted(by_class):
    print("class", c, "accuracies:", sorted(collections.Counter(by_class[c]).items()))
print("collapsed:", len(rows), "mean share of probes won by the top class:", round(np.mean([r[3] for r in rows]), 3))
other = [r for r in rows if r[0] != "test"]
means = {c: np.mean([r[1] for r in other if r[2] == c]) for c in {r[2] for r in other}}
for name, rs in (("other splits", other), ("test", [r for r in rows if r[0] == "test"])):
    print(name, "collapsed τ from the winning class:",
          round(kendalltau([r[1] for r in rs], [means.get(r[2], 0.1) for r in rs])[0], 3), f"({len(rs)})")
