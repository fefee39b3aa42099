"""Analyse a converted network: weight statistics per layer and per edge kind, with a plot.

    ngraph convert examples/mlp.onnx -o mlp.ngraph
    python examples/analyse.py mlp.ngraph [--plot mlp_weights.png] [--json]

Reads the .ngraph file memory-mapped; statistics are computed per edge block (one row per
layer connection) and aggregated per block kind, the view a weight-space study starts from.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

import nngraph


def block_stats(graph: nngraph.NeuralGraph) -> list[dict]:
    rows = []
    for b in graph.blocks:
        if b.weight is None:
            continue
        w = np.asarray(b.weight.data, dtype=np.float64).ravel()
        q = np.quantile(w, [0.05, 0.5, 0.95])
        rows.append({"block": b.name, "kind": b.kind, "source": b.source, "target": b.target,
                     "depth": graph.sets[b.target].depth, "count": int(w.size), "mean": float(w.mean()),
                     "std": float(w.std()), "abs_mean": float(np.abs(w).mean()), "q05": float(q[0]),
                     "median": float(q[1]), "q95": float(q[2]), "fro_norm": float(np.linalg.norm(w))})
    return rows


def kind_stats(graph: nngraph.NeuralGraph) -> dict[str, dict]:
    values = defaultdict(list)
    for b in graph.blocks:
        if b.weight is not None:
            values[b.kind].append(np.asarray(b.weight.data, dtype=np.float64).ravel())
    out = {}
    for kind, parts in values.items():
        w = np.concatenate(parts)
        out[kind] = {"count": int(w.size), "mean": float(w.mean()), "std": float(w.std()),
                     "abs_max": float(np.abs(w).max())}
    for key in ("bias", "scale", "shift"):
        arrs = [np.asarray(s.arrays[key].data, np.float64).ravel() for s in graph.sets.values() if key in s.arrays]
        if arrs:
            w = np.concatenate(arrs)
            out[f"{key} (per neuron)"] = {"count": int(w.size), "mean": float(w.mean()), "std": float(w.std()),
                                          "abs_max": float(np.abs(w).max())}
    return out


def _label(name: str, width: int = 22) -> str:
    """A block name short enough for an axis: its last dotted/slashed parts, then an ellipsis."""
    parts = [p for p in name.replace("/", ".").split(".") if p] or [name]
    label = parts[-1]
    for p in reversed(parts[:-1]):
        if len(p) + 1 + len(label) > width:
            break
        label = f"{p}.{label}"
    return label if len(label) <= width else "…" + label[-(width - 1):]


def plot(graph: nngraph.NeuralGraph, rows: list[dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    weighted = [b for b in graph.blocks if b.weight is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    ax1.boxplot([np.asarray(b.weight.data, np.float64).ravel() for b in weighted], showfliers=False)
    every = max(1, len(weighted) // 30)          # at most ~30 labels, the others left blank
    ax1.set_xticks(range(1, len(weighted) + 1),
                   [f"{i + 1}: {_label(b.name)}" if i % every == 0 else "" for i, b in enumerate(weighted)],
                   rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax1.set_title("weight distribution per block")
    ax1.set_ylabel("weight")
    ax2.plot([r["depth"] for r in rows], [r["std"] for r in rows], "o", label="std")
    ax2.plot([r["depth"] for r in rows], [r["abs_mean"] for r in rows], "s", mfc="none", label="mean |w|")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))    # depths are layer numbers
    ax2.set_xlabel("depth (layer)")
    ax2.set_title("weight scale by depth")
    ax2.legend()
    fig.suptitle(f"{title}: {graph.num_nodes:,} neurons, {graph.num_edges:,} edges")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graph", help=".ngraph file (from `ngraph convert`)")
    ap.add_argument("--plot", default=None, help="PNG to write [default: <graph>_weights.png]")
    ap.add_argument("--json", action="store_true", help="print statistics as JSON")
    args = ap.parse_args(argv)
    try:
        graph = nngraph.load(args.graph)
    except nngraph.NNGraphError as e:
        print(f"analyse: error: {e}", file=sys.stderr)
        return e.exit_code
    rows, kinds = block_stats(graph), kind_stats(graph)
    png = args.plot or args.graph.rsplit(".", 1)[0] + "_weights.png"
    plot(graph, rows, png, Path(args.graph).name)
    if args.json:
        print(json.dumps({"blocks": rows, "kinds": kinds, "plot": png}, indent=2))
        return 0
    print(f"{args.graph}: {graph.num_nodes:,} neurons, {graph.num_edges:,} edges, coverage {graph.coverage:.4f}")
    print(f"{'block':<28}{'kind':<10}{'depth':>6}{'count':>10}{'mean':>10}{'std':>10}{'q05':>10}{'q95':>10}")
    for r in rows:
        print(f"{r['block'][-27:]:<28}{r['kind']:<10}{r['depth']:>6}{r['count']:>10}{r['mean']:>10.4f}"
              f"{r['std']:>10.4f}{r['q05']:>10.4f}{r['q95']:>10.4f}")
    print("\nper kind:")
    for kind, s in kinds.items():
        print(f"  {kind:<22} n={s['count']:<9} mean={s['mean']:+.4f} std={s['std']:.4f} max|w|={s['abs_max']:.4f}")
    print(f"\nplot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
