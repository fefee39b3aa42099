"""Which training options help the default encoder: train and test metric, mean ± std over seeds,
for one population and a list of settings (each a variation of the ``TrainConfig`` defaults).

    python benchmarks/learning/defaults.py DATASET --target label [--task classification]
        [--settings default dropout early-stop probes] [--seeds 3] [--epochs 40] [--threads 1] [--json]

Settings:
  default     the ``TrainConfig`` defaults
  dropout     ``dropout=0.1`` (in the head)
  early-stop  ``val_fraction=0.2, patience=8``: a fifth of the training networks held out, the best
              validation epoch kept
  probes      probe features (Kofinas et al.): every neuron's output for ``--probes`` fixed random
              inputs (standard normal, the same for every network) appended to its node features,
              computed with the model file's adapter (``activations`` runtime hook; input neurons get
              the input values), divided by their RMS over the training networks. A prototype: it
              lives in this script (``ProbeFeatures`` extends ``FeatureConfig``), not in the library.

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
from dataclasses import dataclass, replace

import numpy as np

from nngraph.learn import checkpoint as checkpoint_mod
from nngraph.learn import train as train_mod
from nngraph.learn.dataset import load_dataset
from nngraph.learn.featurize import FeatureConfig

PRIMARY = {"classification": "accuracy", "regression": "kendall_tau"}
SETTINGS = {
    "default": {},
    "dropout": {"dropout": 0.1},
    "early-stop": {"val_fraction": 0.2, "patience": 8},
    "probes": {},
}


@dataclass(frozen=True)
class ProbeFeatures(FeatureConfig):
    """``FeatureConfig`` plus ``probes`` node-feature columns after the library's own."""
    probes: int = 0

    @property
    def node_dim(self) -> int:
        return super().node_dim + self.probes

    def base(self) -> FeatureConfig:
        return FeatureConfig(taps=self.taps, scale=self.scale, max_positions=self.max_positions)


def probe_values(entry, k: int, seed: int = 1234) -> np.ndarray:
    """[num_nodes, k]: each neuron's output for k fixed random inputs (node order of featurize)."""
    from nngraph.api import find_adapter
    adapter = find_adapter(entry.path)
    if adapter.activations is None or adapter.example_inputs is None:
        raise SystemExit(f"{entry.path}: its adapter ({adapter.name}) cannot run the model for probe features")
    g = entry.graph
    shapes = {name: (v.shape, v.dtype) for name, v in adapter.example_inputs(entry.path, 0).items()}
    rng = np.random.default_rng(seed)
    probes = [{n: rng.standard_normal(s).astype(dt) for n, (s, dt) in shapes.items()} for _ in range(k)]
    offsets = g.set_offsets()
    out = np.zeros((g.num_nodes, k), np.float32)
    for j, feeds in enumerate(probes):
        acts = adapter.activations(entry.path, g, feeds)
        for name, s in g.sets.items():
            if name in acts:
                out[offsets[name]:offsets[name] + s.size, j] = acts[name].mean(axis=0)
            elif s.role == "input" and name in feeds:
                out[offsets[name]:offsets[name] + s.size, j] = feeds[name].reshape(-1, s.size).mean(axis=0)
    return out


def install_probes(data, k: int) -> ProbeFeatures:
    """Compute probe values for every network and make training featurize them into ``x``."""
    import torch
    table = {id(e.graph): probe_values(e, k) for e in data.entries}
    train_ids = [id(e.graph) for e in data.split("train")]
    rms = np.sqrt(np.mean(np.concatenate([table[i] for i in train_ids]) ** 2, axis=0)).clip(min=1e-12)
    table = {i: torch.from_numpy(v / rms) for i, v in table.items()}
    original = train_mod.featurize.__wrapped__ if hasattr(train_mod.featurize, "__wrapped__") else train_mod.featurize

    def featurize(graph, config=FeatureConfig()):
        if not isinstance(config, ProbeFeatures) or not config.probes:
            return original(graph, config)
        d = original(graph, config.base())
        d.x = torch.cat([d.x, table[id(graph)]], dim=1)
        return d

    featurize.__wrapped__ = original
    train_mod.featurize = featurize
    train_mod.FeatureConfig = ProbeFeatures    # checkpoints with probe columns load back
    checkpoint_mod.FeatureConfig = ProbeFeatures
    return ProbeFeatures(probes=k)


def run(data, target: str, task: str, setting: str, seed: int, epochs: int, features, tmp: str) -> dict:
    cfg = train_mod.TrainConfig(target=target, task=task, epochs=epochs, seed=seed, **SETTINGS[setting])
    if setting == "probes":
        cfg = replace(cfg, features=features)
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
    features = install_probes(data, args.probes) if "probes" in args.settings else None
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
