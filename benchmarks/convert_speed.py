"""Whole-process `ngraph convert` against the floor: `onnx.load` plus reading every initializer.

    python benchmarks/make_models.py          # once: full-size ResNet-50 and ViT-B/16 (random weights)
    python benchmarks/convert_speed.py [--repeat 3] [--json]

Each command runs in a fresh process (imports included), timed by wall clock; peak memory is
the child's max RSS (getrusage). Reports the median of --repeat runs, the time ratio
convert / baseline and peak memory / file size.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASELINE = """
import sys, onnx
from onnx import numpy_helper
m = onnx.load(sys.argv[1])
total = sum(numpy_helper.to_array(t).size for t in m.graph.initializer)
"""


def run(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=[str(HERE / "models" / "resnet50.onnx"),
                                                    str(HERE / "models" / "vit_b16.onnx")])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in map(Path, args.models):
            if not model.exists():
                raise SystemExit(f"{model} missing: run benchmarks/make_models.py first")
            base = [run([sys.executable, "-c", BASELINE, str(model)]) for _ in range(args.repeat)]
            conv = [run([sys.executable, "-m", "nngraph.cli", "convert", str(model), "-o",
                         str(Path(tmp) / "out.ngraph")]) for _ in range(args.repeat)]
            size = model.stat().st_size / 2**20
            bt, bm = statistics.median(t for t, _ in base), statistics.median(m for _, m in base)
            ct, cm = statistics.median(t for t, _ in conv), statistics.median(m for _, m in conv)
            floor = run([sys.executable, "-c", "import nngraph.cli, nngraph.adapters.onnx.rules"])[1]
            rows.append({"model": model.name, "file_mib": round(size, 1), "baseline_s": round(bt, 2),
                         "convert_s": round(ct, 2), "time_ratio": round(ct / bt, 2),
                         "baseline_peak_mib": round(bm), "convert_peak_mib": round(cm),
                         "peak_over_file": round(cm / size, 2), "import_floor_mib": round(floor),
                         "peak_above_imports_over_file": round((cm - floor) / size, 2)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| model | file MiB | onnx.load+read s | convert s | time ratio | baseline peak MiB | convert peak MiB "
          "| peak / file | (peak − imports) / file |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['file_mib']} | {r['baseline_s']} | {r['convert_s']} | {r['time_ratio']} | "
              f"{r['baseline_peak_mib']} | {r['convert_peak_mib']} | {r['peak_over_file']} | "
              f"{r['peak_above_imports_over_file']} |")


if __name__ == "__main__":
    main()
