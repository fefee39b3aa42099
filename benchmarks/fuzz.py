"""Longer fuzz run over the CLI than the CI subset in tests/test_fuzz.py (same families, same checks).

    python benchmarks/fuzz.py [--cases 500] [--seed 1] [--families onnx-proto,pickle] [--kills 20] [--json]

Prints, per family, the cases run, exit codes seen, seconds and every broken property (exit code
outside 0–4, more than one line or a traceback on stderr, an internal error, files written outside
the output path, an invalid output after exit 0, code run by unpickling, a hang); with ``--kills``
also SIGKILLs ``ngraph convert`` at random moments and checks the output is absent or valid.
Exit status 1 when anything broke.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np  # noqa: E402

import fuzzlib  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=500, help="cases per family")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--families", default=",".join(fuzzlib.FAMILIES))
    ap.add_argument("--kills", type=int, default=10, help="SIGKILLed conversions")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report, broken = {}, 0
    with tempfile.TemporaryDirectory(prefix="nngraph-fuzz-") as tmp:
        folder = Path(tmp)
        seeds = fuzzlib.make_seeds(folder / "seeds")
        for i, family in enumerate(f for f in args.families.split(",") if f):
            fuzzlib.EXIT_CODES.clear()
            start = time.perf_counter()
            n, problems = fuzzlib.run_family(family, seeds, folder / family, args.cases, args.seed * 1000 + i)
            report[family] = {"cases": n, "exit_codes": dict(sorted(fuzzlib.EXIT_CODES.items())),
                              "seconds": round(time.perf_counter() - start, 1), "problems": problems}
            broken += len(problems)
            if not args.json:
                print(f"{family:<20} {n:>5} cases  exits {report[family]['exit_codes']}  "
                      f"{report[family]['seconds']:>6} s  {len(problems)} problems", flush=True)
                for p in problems[:20]:
                    print(f"    {p}")
        if args.kills:
            rng = np.random.default_rng(args.seed)
            model = seeds["resnet"]
            start = time.perf_counter()
            problems = fuzzlib.sigkill_convert(model, folder / "kills", list(rng.uniform(0.2, 4.0, size=args.kills)))
            report["sigkill"] = {"cases": args.kills, "seconds": round(time.perf_counter() - start, 1),
                                 "problems": problems}
            broken += len(problems)
            if not args.json:
                print(f"{'sigkill':<20} {args.kills:>5} kills  {report['sigkill']['seconds']:>6} s  {len(problems)} problems")
    if args.json:
        print(json.dumps(report, indent=2))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
