"""Predict CNN test accuracy and classify hyperparameters from weights, on digits model zoos.

    python examples/make_zoo.py zoo --n 320
    python examples/make_zoo.py zoo_wide --n 320 --seed 1 --wide-test
    python benchmarks/zoo_benchmark.py zoo zoo_wide [--epochs 40] [--seeds 3] [--json]

Trains each encoder on the train split, reports on the held-out test split: Kendall τ for test
accuracy (in-distribution zoo, and the zoo whose test networks are wider than any training one),
accuracy for classifying the activation function, and training throughput (graphs/s). Every
number is the mean (± standard deviation) over ``--seeds`` training seeds: with 64 test networks
one seed's τ moves by ±0.05. All encoders use the ``TrainConfig`` defaults.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from nngraph.learn.dataset import load_dataset
from nngraph.learn.checkpoint import save_checkpoint
from nngraph.learn.train import TrainConfig, evaluate, train


def run(data, target: str, task: str, encoder: str, epochs: int, seed: int, tmp: str) -> tuple[dict, float]:
    cfg = TrainConfig(target=target, task=task, encoder=encoder, epochs=epochs, seed=seed, device="auto")
    start = time.perf_counter()
    model, meta, _ = train(data, cfg, progress=False)
    seconds = time.perf_counter() - start
    path = f"{tmp}/{encoder}-{target}.safetensors"
    save_checkpoint(path, model, meta)
    n = len(data.split("train"))
    return evaluate(path, data, "test"), n * epochs / seconds


def main() -> None:
    import tempfile
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo")
    ap.add_argument("wide_zoo")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--encoders", nargs="*", default=["ng-gnn", "ng-transformer", "statnn"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    zoo, wide = load_dataset(args.zoo, progress=False), load_dataset(args.wide_zoo, progress=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for enc in args.encoders:
            runs = []
            for seed in range(args.seeds):
                reg, speed = run(zoo, "test_acc", "regression", enc, args.epochs, seed, tmp)
                ood, _ = run(wide, "test_acc", "regression", enc, args.epochs, seed, tmp)
                cls, _ = run(zoo, "activation", "classification", enc, args.epochs, seed, tmp)
                runs.append({"tau": reg["kendall_tau"], "r2": reg["r2"], "tau_wider_test": ood["kendall_tau"],
                             "activation_accuracy": cls["accuracy"], "graphs_per_s": speed})
            row = {"encoder": enc, "n_train": len(zoo.split("train")), "n_test": reg["n"], "seeds": args.seeds}
            for key in runs[0]:
                values = [r[key] for r in runs]
                row[key], row[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| encoder | Kendall τ (test acc.) | R² | τ, wider test nets | activation accuracy | train graphs/s |")
    print("|---|---|---|---|---|---|")
    pm = lambda r, k: f"{r[k]:.3f} ± {r[k + '_std']:.3f}"  # noqa: E731
    for r in rows:
        print(f"| {r['encoder']} | {pm(r, 'tau')} | {pm(r, 'r2')} | {pm(r, 'tau_wider_test')} | "
              f"{pm(r, 'activation_accuracy')} | {r['graphs_per_s']:.0f} |")
    print(f"\n{rows[0]['n_train']} training / {rows[0]['n_test']} test networks per zoo, {args.epochs} epochs, "
          f"mean ± std over {args.seeds} seeds.")


if __name__ == "__main__":
    main()
