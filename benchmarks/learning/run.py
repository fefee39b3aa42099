"""Learning benchmark: train and test metric (mean ± std over seeds) for every encoder and two
outside baselines on one population of networks.

    python benchmarks/learning/run.py DATASET --target label --task classification [--seeds 3]
        [--epochs 40] [--encoders ng-gnn ng-transformer statnn deepsets] [--no-baselines] [--threads N]
        [--json] [--out RESULT.json] [--name NAME] [--set key=value ...]

DATASET is a folder made by one of the generators here (make_freq.py, make_tasks.py, make_inr.py,
make_hetero.py) or by examples/make_zoo.py: labels.csv with a train/test split. Encoders train with
the configuration ``ngraph train`` uses (``TrainConfig.for_encoder``: the encoder's training defaults,
plus ``--epochs``); the metric is accuracy (classification) or Kendall τ (regression).
Baselines: ``stats+gbt`` — per-depth weight statistics (``statnn.weight_statistics``) into
scikit-learn gradient boosting; ``flat+linear`` — every weight and bias in graph order (zero-padded
to the longest network) into logistic regression (classification) or ridge regression.
``--set`` overrides ``TrainConfig`` fields (``lr=1e-3``) or ``FeatureConfig`` fields (``probes=8``,
``scale=block``) for every encoder (``pool_norm=batch`` only for ng-gnn, ng-transformer and deepsets,
``pool_fixed`` and ``probe_summary`` only for ng-gnn and ng-transformer: the others refuse them, so pass
``--encoders``); the overrides are recorded in the JSON.
Throughput is training graphs/s (epochs × training networks / seconds, featurization included);
peak memory is the process's resident-set high-water mark after each encoder (it only grows, so it
bounds that encoder's peak from above). ``--out`` writes the summary (and every seed's numbers)
as JSON, rewritten after each method so a long run leaves its finished rows behind.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nngraph import featurize
from nngraph.learn.dataset import load_dataset
from nngraph.learn.checkpoint import save_checkpoint
from nngraph.learn.featurize import FeatureConfig
from nngraph.learn.train import TrainConfig, evaluate, metrics, train

PRIMARY = {"classification": "accuracy", "regression": "kendall_tau"}


def parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs (values read as JSON where they parse, else as strings), checked against
    ``TrainConfig`` and ``FeatureConfig`` fields."""
    out = {}
    for kv in pairs:
        key, sep, value = kv.partition("=")
        if not sep or key == "features" or (key not in TrainConfig.__dataclass_fields__
                                             and key not in FeatureConfig.__dataclass_fields__):
            raise SystemExit(f"--set {kv!r}: expected key=value with a TrainConfig or FeatureConfig field")
        if value in ("True", "False"):            # Python spelling: "False" must not stay a truthy string
            out[key] = value == "True"
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def make_config(target: str, task: str, encoder: str, epochs: int, seed: int, overrides: dict | None = None):
    """The configuration ``ngraph train`` would use (the encoder's training defaults included), with
    ``--epochs``, the seed and the ``--set`` overrides."""
    return TrainConfig.for_encoder(target, encoder, task=task, epochs=epochs, seed=seed, **(overrides or {}))


def run_encoder(data, target: str, task: str, encoder: str, epochs: int, seed: int, tmp: str,
                overrides: dict | None = None) -> dict:
    cfg = make_config(target, task, encoder, epochs, seed, overrides)
    start = time.perf_counter()
    model, meta, history = train(data, cfg, progress=False, note=lambda m: print(f"note: {m}", file=sys.stderr))
    seconds = time.perf_counter() - start
    path = save_checkpoint(f"{tmp}/{encoder}.safetensors", model, meta)
    key = PRIMARY[task]
    return {"train": evaluate(path, data, "train")[key], "test": evaluate(path, data, "test")[key],
            "graphs_per_s": len(data.split("train")) * len(history) / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "probes": meta["features"]["probes"]}        # what it trained with (default probes may be dropped)


def _features(entries):
    """(weight statistics [n, F], flattened weights [n, P]) for a list of dataset entries."""
    from torch_geometric.data import Batch

    from nngraph.plugins.encoders.statnn import weight_statistics
    datas = [featurize(e.graph) for e in entries]
    stats = weight_statistics(Batch.from_data_list(datas)).numpy()
    flat = [np.concatenate([d.edge_attr[:, :1].numpy().ravel(), d.x.numpy().ravel()]) for d in datas]
    return stats, flat


def run_baselines(data, target: str, task: str, seed: int) -> dict[str, dict]:
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    tr, te = data.split("train"), data.split("test")
    cls = task == "classification"
    raw_tr, raw_te = [e.row[target] for e in tr], [e.row[target] for e in te]
    if cls:
        classes = sorted(set(raw_tr))
        y_tr = np.array([classes.index(v) for v in raw_tr])
        y_te = np.array([classes.index(v) if v in classes else -1 for v in raw_te])
    else:
        y_tr, y_te = np.array(raw_tr, float), np.array(raw_te, float)
    s_tr, f_tr = _features(tr)
    s_te, f_te = _features(te)
    width = max(len(v) for v in f_tr + f_te)
    pad = lambda rows: np.stack([np.pad(r, (0, width - len(r))) for r in rows])  # noqa: E731
    f_tr, f_te = pad(f_tr), pad(f_te)
    models = {
        "stats+gbt": ((GradientBoostingClassifier if cls else GradientBoostingRegressor)(random_state=seed), s_tr, s_te),
        "flat+linear": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0) if cls
                                      else Ridge(alpha=1.0)), f_tr, f_te),
    }
    out = {}
    key = PRIMARY[task]
    for name, (model, xtr, xte) in models.items():
        start = time.perf_counter()
        model.fit(xtr, y_tr)
        seconds = time.perf_counter() - start
        out[name] = {"train": metrics(task, y_tr, model.predict(xtr))[key],
                     "test": metrics(task, y_te, model.predict(xte))[key], "graphs_per_s": len(tr) / seconds,
                     "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return out


def summarize(name: str, runs: list[dict]) -> dict:
    """Mean and (population) std over seeds of every number, plus the per-seed values."""
    row = {"method": name, "seeds": len(runs)}
    for key in runs[0]:
        values = np.array([r[key] for r in runs], float)
        row[key], row[f"{key}_std"] = float(values.mean()), float(values.std())
    row["per_seed"] = runs
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--target", required=True)
    ap.add_argument("--task", choices=["classification", "regression"], default="classification")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--encoders", nargs="*", default=["ng-gnn", "ng-transformer", "statnn", "deepsets"])
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON instead of lines")
    ap.add_argument("--out", help="also write the summary as JSON to this file (after every method)")
    ap.add_argument("--name", help="population name recorded in the JSON (default: the folder's name)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="TrainConfig / FeatureConfig overrides for every encoder (lr=1e-3, probes=8)")
    args = ap.parse_args()
    overrides = parse_overrides(args.set)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, progress=False)
    rows = []
    doc = {"name": args.name or Path(args.dataset).name, "target": args.target, "task": args.task,
           "metric": PRIMARY[args.task], "n_train": len(data.split("train")), "n_test": len(data.split("test")),
           "epochs": args.epochs, "threads": args.threads or torch.get_num_threads(),
           "command": " ".join(sys.argv), "overrides": overrides, "rows": rows}

    def emit(row: dict) -> None:
        rows.append(row)
        if not args.json:
            print(_line(row), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        for enc in args.encoders:
            emit(summarize(enc, [run_encoder(data, args.target, args.task, enc, args.epochs, s, tmp, overrides)
                                 for s in range(args.seeds)]))
    if not args.no_baselines:
        runs = [run_baselines(data, args.target, args.task, s) for s in range(args.seeds)]
        for name in runs[0]:
            emit(summarize(name, [r[name] for r in runs]))
    if args.json:
        print(json.dumps(doc, indent=2))


def _line(r: dict) -> str:
    return (f"{r['method']:15s} train {r['train']:.3f} ± {r['train_std']:.3f}   test {r['test']:.3f} ± "
            f"{r['test_std']:.3f}   {r['graphs_per_s']:.0f} graphs/s   peak RSS {r['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
