"""Predict CNN test accuracy and classify hyperparameters from weights, on digits model zoos.

    python examples/make_zoo.py zoo --n 320
    python examples/make_zoo.py zoo_wide --n 320 --seed 1 --wide-test
    python benchmarks/zoo_benchmark.py zoo zoo_wide [--epochs 40] [--json]

Trains each encoder on the train split, reports on the held-out test split: Kendall τ for test
accuracy (in-distribution zoo, and the zoo whose test networks are wider than any training one),
accuracy for classifying the activation function, and training throughput (graphs/s).
"""
from __future__ import annotations

import argparse
import json
import time

from nngraph.dataset import load_dataset
from nngraph.train import TrainConfig, evaluate, save_checkpoint, train


def run(data, target: str, task: str, encoder: str, epochs: int, tmp: str) -> tuple[dict, float]:
    cfg = TrainConfig(target=target, task=task, encoder=encoder, epochs=epochs, hidden=64, layers=3,
                      batch_size=32, lr=2e-3, device="auto")
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
    ap.add_argument("--encoders", nargs="*", default=["ng-gnn", "ng-transformer", "statnn"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    zoo, wide = load_dataset(args.zoo, progress=False), load_dataset(args.wide_zoo, progress=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for enc in args.encoders:
            reg, speed = run(zoo, "test_acc", "regression", enc, args.epochs, tmp)
            ood, _ = run(wide, "test_acc", "regression", enc, args.epochs, tmp)
            cls, _ = run(zoo, "activation", "classification", enc, args.epochs, tmp)
            rows.append({"encoder": enc, "tau": reg["kendall_tau"], "r2": reg["r2"], "tau_wider_test": ood["kendall_tau"],
                         "activation_accuracy": cls["accuracy"], "graphs_per_s": speed,
                         "n_train": len(zoo.split("train")), "n_test": reg["n"]})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| encoder | Kendall τ (test acc.) | R² | τ, wider test nets | activation accuracy | train graphs/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['encoder']} | {r['tau']:.3f} | {r['r2']:.3f} | {r['tau_wider_test']:.3f} | "
              f"{r['activation_accuracy']:.3f} | {r['graphs_per_s']:.0f} |")
    print(f"\n{rows[0]['n_train']} training / {rows[0]['n_test']} test networks per zoo, {args.epochs} epochs.")


if __name__ == "__main__":
    main()
