"""Which training options help the default encoder: train and test metric, mean ± std over seeds,
for one population and a list of settings (each a variation of the ``TrainConfig`` defaults).

    python benchmarks/learning/defaults.py DATASET --target label [--task classification]
        [--settings default dropout early-stop probes] [--seeds 3] [--epochs 40] [--threads 1] [--json]

Settings:
  default     the ``TrainConfig`` defaults
  dropout     ``dropout=0.1`` (in the head)
  early-stop  ``val_fraction=0.2, patience=8``: a fifth of the training networks held out, the best
              validation epoch kept
  probes      probe features (``FeatureConfig(probes=K)``, ``ngraph train --probes K``; Kofinas et al.):
              every neuron's output for ``--probes`` fixed inputs (the adapter's example inputs for
              seeds 0..K-1, the same for every network) as node features, scaled to RMS 1 over the
              training networks by input scaling (``nngraph.learn.probes``).

Random-symmetry augmentation and edge-direction features are not settings here: every encoder is
exactly invariant to neuron permutations (``EncoderConformance``), so permuting a training network
changes nothing but floating-point summation order; and ng-gnn already has separate message
functions along and against the edges.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace

import numpy as np

from nngraph.learn import checkpoint as checkpoint_mod
from nngraph.learn import train as train_mod
from nngraph.learn.dataset import load_dataset

PRIMARY = {"classification": "accuracy", "regression": "kendall_tau"}
SETTINGS = {
    "default": {},
    "dropout": {"dropout": 0.1},
    "early-stop": {"val_fraction": 0.2, "patience": 8},
    "probes": {},
}


def run(data, target: str, task: str, setting: str, seed: int, epochs: int, features, tmp: str) -> dict:
    cfg = train_mod.TrainConfig(target=target, task=task, epochs=epochs, seed=seed, **SETTINGS[setting])
    if setting == "probes":
        cfg = replace(cfg, features=replace(cfg.features, probes=features))
    start = time.perf_counter()
    model, meta, history = train_mod.train(data, cfg, progress=False)
    seconds = time.perf_counter() - start
    path = checkpoint_mod.save_checkpoint(f"{tmp}/{setting}.safetensors", model, meta)
    key = PRIMARY[task]
    return {"train": train_mod.evaluate(path, data, "train")[key], "test": train_mod.evaluate(path, data, "test")[key],
            "epochs": len(history), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--target", required=True)
    ap.add_argument("--task", choices=["classification", "regression"], default="classification")
    ap.add_argument("--settings", nargs="*", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--probes", type=int, default=8, help="fixed inputs for the probes setting")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, progress=False)
    features = args.probes
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            runs = [run(data, args.target, args.task, setting, s, args.epochs, features, tmp)
                    for s in range(args.seeds)]
            row = {"setting": setting, "seeds": len(runs)}
            for key in ("train", "test", "epochs", "seconds"):
                v = np.array([r[key] for r in runs], float)
                row[key], row[f"{key}_std"] = float(v.mean()), float(v.std())
            rows.append(row)
            if not args.json:
                print(f"{setting:11s} train {row['train']:.3f} ± {row['train_std']:.3f}   test {row['test']:.3f} ± "
                      f"{row['test_std']:.3f}   epochs {row['epochs']:.0f}   {row['seconds']:.0f} s", flush=True)
    if args.json:
        print(json.dumps({"dataset": args.dataset, "target": args.target, "task": args.task,
                          "metric": PRIMARY[args.task], "epochs": args.epochs, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
