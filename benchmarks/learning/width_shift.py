"""Does a network's width move it out of what an encoder was trained on? Measured per width group.

    python benchmarks/learning/width_shift.py DATASET [--target test_acc] [--group width] [--epochs 25]
        [--seed 0] [--set key=value ...] [--no-train] [--oracle-exclude train_acc width seed]

First the labels of each split: quartiles, std, the fraction of network pairs whose labels lie within
0.01 of each other (pairs Kendall τ can only rank by noise), and the τ of an *oracle* that sees no
weights: scikit-learn gradient boosting on the other columns of labels.csv (the training
hyperparameters; minus ``--oracle-exclude``), fitted on the training split. A test split where that
oracle, or any method, sits near τ = 0 cannot tell methods apart.

Then, per value of the ``--group`` column of labels.csv (make_zoo.py writes ``width``), mean over its
networks of: edges, the largest in-degree, and the RMS of the scaled inputs (each edge kind's
non-zero taps, the bias slot) after the training split's input scaling — also divided by the
network's ``init_scale`` when labels.csv has one. Then (unless ``--no-train``) ng-gnn is trained as
``run.py`` trains it (``--set`` overrides, e.g. ``sum_scaler=log`` or ``scale=fan_in``) and, per
group: the range and spread of its predictions, the RMS of each PNA aggregate (mean, max, sum,
std of the messages along the edges) in every layer, and how far the pooled vector lies from the
training networks' (|z| per dimension against their mean and std: its mean, and the fraction of
dimensions beyond 3). Groups of the training split are the reference; a group whose |z| or sums
lie well above them is out of distribution.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import make_config, parse_overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--target", default="test_acc")
    ap.add_argument("--group", default="width", help="labels.csv column to group networks by")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--oracle-exclude", nargs="*", default=["train_acc", "width", "seed"],
                    help="labels.csv columns the hyperparameter oracle must not see")
    args = ap.parse_args()
    import torch
    from nngraph.graph.vocab import EDGE_KINDS
    from nngraph.learn.dataset import load_dataset
    from nngraph.learn.featurize import apply_scales, feature_scales, featurize, param_columns
    from nngraph.learn.train import train
    from scipy.stats import kendalltau
    from torch_geometric.data import Batch
    torch.set_num_threads(1)
    cfg = make_config(args.target, "regression", "ng-gnn", args.epochs, args.seed, parse_overrides(args.set))
    feats = cfg.features
    data = load_dataset(args.dataset, progress=False)
    tr, te = data.split("train"), data.split("test")
    group = lambda e: float(e.row[args.group])
    label_report(tr, te, args.target, {"model", "split", args.target, *args.oracle_exclude})
    train_groups = {group(e) for e in tr}
    datas = {id(e): featurize(e.graph, feats) for e in tr + te}
    node_scale, edge_scale = feature_scales([datas[id(e)] for e in tr], feats)
    rows: dict = defaultdict(lambda: defaultdict(list))
    bias_col = param_columns(feats).start
    for e in tr + te:
        d = apply_scales(datas[id(e)], node_scale, edge_scale, feats)
        r = rows[group(e)]
        r["edges"].append(d.edge_index.shape[1])
        r["max_in_degree"].append(float(torch.bincount(d.edge_index[1]).max()))
        taps = d.edge_attr[:, :feats.taps]
        for k in sorted(set(d.edge_kind.tolist())):
            t = taps[d.edge_kind == k]
            rms = float(t[t != 0].square().mean().sqrt())
            r[f"rms_{EDGE_KINDS[k]}"].append(rms)
            if "init_scale" in e.row:
                r[f"rms/init_{EDGE_KINDS[k]}"].append(rms / float(e.row["init_scale"]))
        b = d.x[:, bias_col]
        if bool((b != 0).any()):
            r["rms_bias"].append(float(b[b != 0].square().mean().sqrt()))
    print(f"inputs after input scaling (training {args.group}s: {sorted(train_groups)})")
    for g in sorted(rows):
        print(f"  {args.group} {g:g} ({len(rows[g]['edges'])} networks): "
              + "  ".join(f"{k} {np.mean(v):.3g}" for k, v in rows[g].items()))
    if args.no_train:
        return
    model, meta, _ = train(data, cfg, progress=False)
    model.eval()
    seen: list = []
    for layer in model.encoder.layers:          # record the aggregates each node update receives
        update = layer.node_update
        layer.node_update = lambda h, f, b, update=update: (seen.append(f.detach()), update(h, f, b))[1]
    pooled: list = []
    model.encoder.readout.register_forward_pre_hook(lambda m, a: pooled.append(a[0].detach()))
    out: dict = defaultdict(lambda: defaultdict(list))
    prediction: dict = {}
    H = cfg.hidden
    for e in tr + te:
        seen.clear()
        pooled.clear()
        with torch.no_grad():
            pred = float(model(Batch.from_data_list([datas[id(e)].clone()])).squeeze())
        r = out[group(e)]
        prediction[id(e)] = pred * meta["y_std"] + meta["y_mean"]
        r["pred"].append(prediction[id(e)])
        r["y"].append(float(e.row[args.target]))
        r["pool"].append(pooled[0][0].numpy())
        for li, f in enumerate(seen):
            for ci, name in enumerate(("mean", "max", "sum", "std")):
                r[f"L{li + 1} {name}"].append(float(f[:, ci * H:(ci + 1) * H].square().mean().sqrt()))
    ref = np.stack([p for g in train_groups for p in out[g]["pool"]])
    mu, sd = ref.mean(0), ref.std(0) + 1e-8
    print(f"ng-gnn after {args.epochs} epochs (seed {args.seed}); RMS of the forward PNA aggregates per layer")
    for g in sorted(out):
        r = out[g]
        z = np.abs((np.stack(r["pool"]) - mu) / sd)
        print(f"  {args.group} {g:g}: prediction range [{min(r['pred']):.3f}, {max(r['pred']):.3f}] std "
              f"{np.std(r['pred']):.3f} | pooled |z| {z.mean():.2f}, > 3: {np.mean(z > 3):.3f} | "
              + "  ".join(f"{k} {np.mean(v):.3g}" for k, v in r.items() if k.startswith("L")))
    for name, entries in (("train", tr), ("test", te)):
        tau = kendalltau([prediction[id(e)] for e in entries], [float(e.row[args.target]) for e in entries])[0]
        print(f"{name} Kendall τ {tau:.3f}")

def label_report(tr, te, target: str, exclude: set) -> None:
    """Label spread per split and the τ of gradient boosting on the non-excluded labels.csv columns."""
    from scipy.stats import kendalltau
    from sklearn.ensemble import GradientBoostingRegressor
    for name, entries in (("train", tr), ("test", te)):
        y = np.array([float(e.row[target]) for e in entries])
        near = np.abs(y[:, None] - y[None])[np.triu_indices(len(y), 1)] < 0.01
        print(f"{name} labels ({len(y)}): quartiles {np.round(np.quantile(y, [0, .25, .5, .75, 1]), 3).tolist()} "
              f"std {y.std():.3f}, pairs within 0.01: {near.mean():.2f}")
    cols = [c for c in tr[0].row if c not in exclude]
    cats = {c: sorted({e.row[c] for e in tr + te}) for c in cols if not _numeric([e.row[c] for e in tr + te])}

    def encode(entries):
        out = []
        for e in entries:
            v = []
            for c in cols:
                v += [float(e.row[c] == k) for k in cats[c]] if c in cats else [float(e.row[c])]
            out.append(v)
        return np.array(out)
    xtr, xte = encode(tr), encode(te)
    ytr, yte = [float(e.row[target]) for e in tr], [float(e.row[target]) for e in te]
    m = GradientBoostingRegressor(random_state=0).fit(xtr, ytr)
    print(f"oracle (gradient boosting on {', '.join(cols)}): train τ {kendalltau(m.predict(xtr), ytr)[0]:.3f}, "
          f"test τ {kendalltau(m.predict(xte), yte)[0]:.3f}")


def _numeric(values) -> bool:
    try:
        [float(v) for v in values]
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    main()
