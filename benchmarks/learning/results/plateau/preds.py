"""Per-seed train and test predictions of one encoder (or of stats+gbt) on a zoo, for ensembles and blends.

    python preds.py DIR OUT.npz ENCODER SEEDS EPOCHS [key=value ...]   # ENCODER 'gbt': the suite's stats+gbt
"""
import sys
import tempfile

import numpy as np
import torch
from scipy.stats import kendalltau

from nngraph.learn.checkpoint import save_checkpoint
from nngraph.learn.dataset import load_dataset
from nngraph.learn.featurize import featurize
from nngraph.learn.train import TrainConfig, predict, train

torch.set_num_threads(1)
folder, out, enc, seeds, epochs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
extra = {}
for k, v in (kv.split("=", 1) for kv in sys.argv[6:]):
    try:
        extra[k] = int(v) if v.lstrip("-").isdigit() else float(v)
    except ValueError:
        extra[k] = v == "True" if v in ("True", "False") else v
data = load_dataset(folder, progress=False)
tr, te = data.split("train"), data.split("test")
res = {"y_tr": np.array([float(e.row["test_acc"]) for e in tr]), "y_te": np.array([float(e.row["test_acc"]) for e in te])}
if enc == "gbt":
    from sklearn.ensemble import GradientBoostingRegressor
    from torch_geometric.data import Batch

    from nngraph.plugins.encoders.statnn import weight_statistics
    stats = lambda es: weight_statistics(Batch.from_data_list([featurize(e.graph) for e in es])).numpy()  # noqa: E731
    s_tr, s_te = stats(tr), stats(te)
    for s in range(seeds):
        m = GradientBoostingRegressor(random_state=s).fit(s_tr, res["y_tr"])
        res[f"tr{s}"], res[f"te{s}"] = m.predict(s_tr), m.predict(s_te)
else:
    tmp = tempfile.mkdtemp()
    for s in range(seeds):
        cfg = TrainConfig.for_encoder("test_acc", enc, task="regression", epochs=epochs, seed=s, **extra)
        model, meta, _ = train(data, cfg, progress=False)
        p = save_checkpoint(f"{tmp}/m.safetensors", model, meta)
        res[f"tr{s}"] = np.array(predict(p, [e.graph for e in tr], paths=[e.path for e in tr]))
        res[f"te{s}"] = np.array(predict(p, [e.graph for e in te], paths=[e.path for e in te]))
        print(s, kendalltau(res["y_te"], res[f"te{s}"])[0], flush=True)
np.savez(out, **res)
