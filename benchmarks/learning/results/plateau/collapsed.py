"""Where ng-gnn's τ is lost: among collapsed networks (test accuracy < 0.105), among trained ones.

    python collapsed.py ZOO_DIR SEED [EPOCHS] [key=value ...]   # TrainConfig.for_encoder options
"""
import sys
import tempfile

import numpy as np
import torch
from scipy.stats import kendalltau

from nngraph.learn.dataset import load_dataset
from nngraph.learn.checkpoint import save_checkpoint
from nngraph.learn.train import TrainConfig, train, predict
torch.set_num_threads(1)
folder, seed = sys.argv[1], int(sys.argv[2]); epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 25
extra = {}
for k, v in (kv.split("=", 1) for kv in sys.argv[4:]):
    extra[k] = v == "True" if v in ("True", "False") else float(v) if v[0].isdigit() and ("." in v or "e" in v) \
        else int(v) if v.isdigit() else v
data = load_dataset(folder, progress=False)
cfg = TrainConfig.for_encoder("test_acc", "ng-gnn", task="regression", epochs=epochs, seed=seed, **extra)
model, meta, _ = train(data, cfg, progress=False)
tmp = tempfile.mkdtemp()
p = save_checkpoint(f"{tmp}/m.safetensors", model, meta)
for split in ("train", "test"):
    es = data.split(split)
    y = np.array([float(e.row["test_acc"]) for e in es])
    pr = np.array(predict(p, [e.graph for e in es], paths=[e.path for e in es]))
    col = y < 0.105
    t = lambda m: kendalltau(y[m], pr[m])[0] if m.sum() > 2 else float("nan")
    # pairs: collapsed-collapsed share
    n = len(y); cc = col.sum() * (col.sum() - 1) / 2; tot = n * (n - 1) / 2
    print(f"{split}: n={n} collapsed={col.sum()} tau={t(np.ones(n,bool)):.3f} tau_collapsed={t(col):.3f} "
          f"tau_trained={t(~col):.3f} cc_pair_share={cc/tot:.2f}")
