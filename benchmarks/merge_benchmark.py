"""Merging networks trained from different seeds: naive averaging vs weight vs activation matching.

    python examples/make_pairs.py pairs --pairs 3
    python benchmarks/merge_benchmark.py pairs [--points 11] [--json]

For every pair (``mlp_s0``/``mlp_s1``, ``cnn_s0``/``cnn_s1``, …) and every method, B is aligned to
A and the interpolation ``(1 − λ)·A + λ·B`` is evaluated in onnxruntime on the digits test split
at ``--points`` values of λ: test accuracy at the midpoint, and the loss barrier
``max_λ [L(λ) − ((1 − λ)·L(A) + λ·L(B))]``. For BatchNorm networks every interpolated model is also
evaluated after re-estimating its BatchNorm statistics on the training inputs ("+ BN reset").
Then two BERT-style transformers that are random permutations of each other
(``tests/fixtures/hf``): alignment must recover the permutation exactly.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from nngraph.alignment.matching import align, interpolate
from nngraph.api import convert, find_adapter
from nngraph.verify import load_inputs

ROOT = Path(__file__).resolve().parent.parent


def _loss_acc(adapter, path: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    logits = next(iter(adapter.run(path, {"image": x}).values())).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean()), float((logits.argmax(1) == y).mean())


def interpolation_curves(path_a: Path, path_b: Path, method: str | None, train: dict, test: dict, points: int,
                         tmp: Path, resets: tuple[bool, ...]) -> list[dict]:
    """Align B to A once, then one curve per entry of ``resets`` (BN statistics re-estimated or not)."""
    adapter = find_adapter(path_a)
    a, b = convert(path_a), convert(path_b)
    if method is not None:
        extra = {}
        if method == "activation":
            extra["activations"] = (adapter.activations(path_a, a, train), adapter.activations(path_b, b, train))
        result = align(a, b, method, **extra)
        b, distance = b.permute(result.symmetry), (result.distance_before, result.distance_after)
    else:
        from nngraph.alignment.matching import weight_distance
        distance = (weight_distance(a, b),) * 2
    lambdas = np.linspace(0, 1, points)
    mid = int(np.argmin(np.abs(lambdas - 0.5)))
    curves = {reset: ([], []) for reset in resets}
    for i, lam in enumerate(lambdas):
        merged = tmp / f"interp{i}.onnx"
        adapter.export(path_a, interpolate([a, b], [1 - lam, lam]), merged)
        for reset in resets:
            out = merged
            if reset:
                out = tmp / f"interp{i}_bn.onnx"
                adapter.recalibrate(merged, train, out)
            loss, acc = _loss_acc(adapter, out, test["image"], test["label"])
            curves[reset][0].append(loss)
            curves[reset][1].append(acc)
    rows = []
    for reset in resets:
        losses, accs = np.array(curves[reset][0]), curves[reset][1]
        barrier = float(np.max(losses - ((1 - lambdas) * losses[0] + lambdas * losses[-1])))
        rows.append({"bn_reset": reset, "midpoint_accuracy": accs[mid], "endpoint_accuracy": [accs[0], accs[-1]],
                     "loss_barrier": barrier, "distance_before": distance[0], "distance_after": distance[1],
                     "losses": losses.tolist(), "accuracies": accs})
    return rows


def merge_rows(folder: Path, points: int) -> list[dict]:
    train, test = load_inputs(folder / "digits_train.npz"), load_inputs(folder / "digits_test.npz")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("mlp", "cnn"):
            seeds = sorted(int(p.stem.split("_s")[1]) for p in folder.glob(f"{kind}_s*.onnx"))
            for k in range(0, len(seeds) - 1, 2):
                pa, pb = folder / f"{kind}_s{seeds[k]}.onnx", folder / f"{kind}_s{seeds[k + 1]}.onnx"
                for method in (None, "weight", "activation"):
                    resets = (False, True) if kind == "cnn" else (False,)
                    name = {None: "naive", "weight": "weight matching", "activation": "activation matching"}[method]
                    for r in interpolation_curves(pa, pb, method, train, test, points, Path(tmp), resets):
                        reset = r.pop("bn_reset")
                        rows.append({"pair": f"{pa.stem} + {pb.stem}", "kind": kind,
                                     "method": name + (" + BN reset" if reset else ""), **r})
                        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("losses", "accuracies")}),
                              flush=True)
    return rows


def permuted_copy_rows() -> list[dict]:
    """Align a random transformer to a random permutation of itself."""
    rows = []
    for name in ("bert_dynamo23.onnx", "bert_torchscript.onnx"):
        path = ROOT / "tests" / "fixtures" / "hf" / name
        adapter = find_adapter(path)
        a = convert(path)
        sym = a.random_symmetry(1)
        b = a.permute(sym)
        with tempfile.TemporaryDirectory() as tmp:
            pb = Path(tmp) / name
            adapter.export(path, b.to_params(), pb)
            b = convert(pb)
            feeds = adapter.example_inputs(path, 0)
            for method in ("weight", "activation"):
                extra = {}
                if method == "activation":
                    extra["activations"] = (adapter.activations(path, a, feeds), adapter.activations(pb, b, feeds))
                r = align(a, b, method, **extra)
                inverse = sym.inverse()
                exact = all(np.array_equal(r.symmetry.perm(g, len(p)), p) for g, p in inverse.perms.items())
                rows.append({"model": name, "method": method, "groups": len(inverse.perms), "recovered_exactly": exact,
                             "distance_before": r.distance_before, "distance_after": r.distance_after})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", type=Path)
    ap.add_argument("--points", type=int, default=11)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    merges, copies = merge_rows(args.pairs, args.points), permuted_copy_rows()
    if args.json:
        print(json.dumps({"merge": merges, "permuted_copies": copies}, indent=2))
        return
    print("\n| pair | method | endpoint acc. | midpoint acc. | loss barrier | weight distance |")
    print("|---|---|---|---|---|---|")
    for r in merges:
        print(f"| {r['pair']} | {r['method']} | {r['endpoint_accuracy'][0]:.3f} / {r['endpoint_accuracy'][1]:.3f} | "
              f"{r['midpoint_accuracy']:.3f} | {r['loss_barrier']:.3f} | {r['distance_after']:.2f} |")
    print("\n| model | method | groups permuted | recovered exactly | distance before → after |")
    print("|---|---|---|---|---|")
    for r in copies:
        print(f"| {r['model']} | {r['method']} | {r['groups']} | {r['recovered_exactly']} | "
              f"{r['distance_before']:.3f} → {r['distance_after']:.3g} |")


if __name__ == "__main__":
    main()
