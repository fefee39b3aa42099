"""Convert, verify and (optionally) align every ONNX file of a corpus of real models (issue 10).

    python benchmarks/corpus.py                        # builds benchmarks/models/corpus/
    python benchmarks/real_models.py [DIR] [--json] [--verify-trials N] [--align] [--timeout S] [-k PATTERN]
                                     [--baseline EARLIER.json]

Per model, in its own subprocess with a timeout (a crash or hang costs one row): does it convert,
coverage, does ``ngraph verify`` pass (with ``--randomize`` when some weight tensor is one constant,
as in the onnx package's ``light_*`` models, where any permutation would look right), free_fraction,
pins grouped by reason, seconds to convert, and the one-line error when refused. With ``--align``,
a model with free groups is also aligned (``ngraph align``, weight matching) with a randomly
permuted copy of itself; the weight distance after must be 0. ``--baseline`` compares with an
earlier ``--json`` run and lists every model that got worse (refused, verify lost, lower coverage,
fewer free neurons, align lost): issue 10's "no model loses free neurons" check.

free_fraction = hidden neurons in tie groups that are not (effectively) fixed / all hidden neurons,
hidden meaning every neuron set not tied to an input or output set: ``graph.free_fraction`` when the
graph has it, else the same definition computed here. Pins are ``graph.meta["pins"]`` (dicts with node, op, reason, sets).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = HERE / "models" / "corpus"
NOT_HIDDEN = ("input", "output", "token")


def _ngraph_cmd() -> list[str]:
    return [sys.executable, "-c", "from nngraph.cli import entry; entry()"]


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def free_fraction(graph) -> float:
    """Share of hidden neurons that some symmetry can move (``NeuralGraph.free_fraction``)."""
    return float(graph.free_fraction)


def _free_groups(graph) -> int:
    fixed = graph.fixed_groups()
    return sum(1 for g in graph.groups.values() if g.name not in fixed and g.size > 1)


def _constant_weights(graph) -> bool:
    """True when at least half of the floating-point parameter tensors (of more than one element)
    are each a single value, as in the onnx package's light_* models. A real model with a few
    constant tensors (zero biases) is verified as it is."""
    import numpy as np
    n = const = 0
    for value in graph.to_params().values():
        a = np.asarray(value)
        if a.size > 1 and np.issubdtype(a.dtype, np.floating):
            n += 1
            const += bool(a.min() == a.max())
    return n > 0 and 2 * const >= n


def _run_cli(args: list[str], timeout: float) -> tuple[int, dict | None, str]:
    try:
        r = subprocess.run(_ngraph_cmd() + args, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, None, f"timed out after {timeout:.0f}s"
    doc = None
    try:
        doc = json.loads(r.stdout) if r.stdout.strip() else None
    except json.JSONDecodeError:
        pass
    return r.returncode, doc, _one_line(r.stderr) or _one_line(r.stdout)


def measure(path: Path, trials: int, do_align: bool, timeout: float) -> dict:
    """Everything for one model (run inside the worker subprocess)."""
    import nngraph
    from nngraph.errors import NNGraphError
    from nngraph.loader import registry

    registry()                      # plugins load once per process: not part of the convert time
    row: dict = {"model": path.name, "mib": round(path.stat().st_size / 2**20, 2)}
    t0 = time.perf_counter()
    try:
        graph = nngraph.convert(path)
    except NNGraphError as e:
        msg = " ".join(str(e).split())
        row.update(converts=False, seconds=round(time.perf_counter() - t0, 3),
                   error=msg.removeprefix(f"{path}: "), error_type=type(e).__name__)
        return row
    except Exception as e:  # noqa: BLE001 - an internal error is a finding, not a crash of the benchmark
        row.update(converts=False, seconds=round(time.perf_counter() - t0, 3),
                   error=f"internal {type(e).__name__}: {' '.join(str(e).split())[:300]}", error_type="internal")
        return row
    row["seconds"] = round(time.perf_counter() - t0, 3)
    pins = list(graph.meta.get("pins", []) or [])
    row.update(converts=True, coverage=graph.coverage, free_fraction=free_fraction(graph),
               free_groups=_free_groups(graph), hidden_neurons=sum(s.size for s in graph.sets.values()
                                                                   if s.role not in NOT_HIDDEN),
               pins=len(pins), pins_by_reason=dict(Counter(f"{p.get('op', '?')}: {_error_kind(str(p.get('reason', '?')))}"
                                                           for p in pins)),
               pinned_parameters=int(sum(int(p.get("parameters", 0) or 0) for p in pins)))
    randomize = _constant_weights(graph)
    row["randomized"] = randomize
    vargs = ["verify", str(path), "--json", "--trials", str(trials)] + (["--randomize"] if randomize else [])
    rc, doc, err = _run_cli(vargs, timeout)
    row["verify_ok"] = bool(doc and doc.get("ok")) and rc == 0
    err = err.replace(f"{path.parent}/", "")
    if doc:
        row["verify_max_rel"] = doc.get("max_rel_diff")
        row["groups_moved"] = doc.get("groups_moved")
        if not row["verify_ok"]:
            row["verify_error"] = "; ".join(doc.get("problems", []))[:400] or err
    else:
        row["verify_error"] = f"exit {rc}: {err}"
    if do_align:
        if row["free_groups"] == 0:
            row["align"] = "no free groups"
        else:
            row.update(_align_with_permuted_copy(path, graph, randomize, timeout))
    return row


def _align_with_permuted_copy(path: Path, graph, randomize: bool, timeout: float) -> dict:
    """``ngraph align`` the model (randomized first if its weights are constant) with a random
    permutation of itself: weight matching must find the permutation back (distance 0)."""
    import nngraph
    with tempfile.TemporaryDirectory(prefix="real-models-align-") as tmp:
        adapter = nngraph.find_adapter(path)
        base = path
        if randomize:
            from nngraph.graph.randomize import randomize as redraw
            redraw(graph, 0)
            base = Path(tmp) / "base.onnx"
            adapter.export(path, graph.to_params(), base)
        permuted = Path(tmp) / "permuted.onnx"
        adapter.export(path, graph.permute(graph.random_symmetry(12345)).to_params(), permuted)
        rc, doc, err = _run_cli(["align", str(base), str(permuted), "-o", str(Path(tmp) / "aligned.onnx"),
                                 "--json"], timeout)
        err = err.replace(f"{tmp}/", "").replace(f"{path.parent}/", "")
    if rc or not doc:
        return {"align": f"failed (exit {rc}): {err}"}
    before, after = doc.get("distance_before"), doc.get("distance_after")
    ok = after is not None and after <= 1e-6 * max(1.0, before or 0.0)
    return {"align": "ok" if ok else "distance not 0", "align_before": before, "align_after": after}


# ---------------------------------------------------------------------------------------------

def _fmt(x, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def table(rows: list[dict], with_align: bool) -> str:
    head = ["model", "MiB", "converts", "coverage", "verify", "free_fraction", "pins (by reason)", "s", "error"]
    if with_align:
        head.insert(7, "align (dist. before → after)")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("converts"):
            pins = ", ".join(f"{k} ×{v}" for k, v in sorted(r["pins_by_reason"].items())) or "0"
            verify = ("ok" if r["verify_ok"] else "FAIL") + (" (randomized)" if r.get("randomized") else "")
            cells = [r["model"], _fmt(r["mib"], ".2f"), "yes", _fmt(r["coverage"], ".4f"), verify,
                     _fmt(r["free_fraction"]), pins, _fmt(r["seconds"], ".2f"), r.get("verify_error", "")]
        else:
            cells = [r["model"], _fmt(r.get("mib"), ".2f"), "no", "–", "–", "–", "–", _fmt(r.get("seconds"), ".2f"),
                     r.get("error", "")]
        if with_align:
            a = r.get("align", "–")
            if "align_after" in r:
                a += f" ({_fmt(r['align_before'], '.4g')} → {_fmt(r['align_after'], '.2g')})"
            cells.insert(7, a)
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out)


def _group(row: dict) -> str:
    """Family or package a corpus file belongs to (all exporters of one family in one row)."""
    import re
    m, prov = row["model"], row.get("provenance", "")
    if m.startswith("hf_"):
        mode = m.removesuffix(".onnx").rsplit("_", 1)[1]
        return "transformers " + m[3:].removesuffix(f"_{mode}.onnx")
    if m.startswith("ort_"):
        kind, name = m[4:].removesuffix(".onnx").split("_", 1)
        return f"onnxruntime {kind}: {name}"
    if m.startswith("onnx_light_"):
        return "onnx test zoo (light_*)"
    if m.startswith("onnx_"):
        return "onnx pytorch-converted modules (opset 6)"
    hit = re.search(r"PyPI (\S+)==(\S+)", prov)
    return f"{hit.group(1)} {hit.group(2)}" if hit else m


def group_table(rows: list[dict]) -> str:
    """One line per family or package: counts, mean free_fraction, the first refusal or failure."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_group(r), []).append(r)
    out = ["| models | files | convert | verify ok | free_fraction (mean) | align → 0 | first refusal or failure |",
           "|---|---|---|---|---|---|---|"]
    for name, rs in groups.items():
        conv = [r for r in rs if r.get("converts")]
        ff = [r["free_fraction"] for r in conv if r.get("free_fraction") is not None]
        tried = [r for r in rs if r.get("align") not in (None, "no free groups")]
        err = next((r["error"] for r in rs if not r.get("converts")), None) or \
            next((r.get("verify_error", "") for r in conv if not r.get("verify_ok")), "")
        err = (err[:107] + "…" if len(err) > 110 else err).replace("|", "\\|")
        out.append(f"| {name} | {len(rs)} | {len(conv)} | {sum(1 for r in conv if r.get('verify_ok'))} | "
                   f"{_fmt(sum(ff) / len(ff) if ff else None, '.2f')} | "
                   f"{sum(1 for r in tried if r['align'] == 'ok')}/{len(tried)} | {f'`{err}`' if err else ''} |")
    return "\n".join(out)


def summary(rows: list[dict]) -> dict:
    conv = [r for r in rows if r.get("converts")]
    ff = [r["free_fraction"] for r in conv if r.get("free_fraction") is not None]
    s = {"models": len(rows), "convert": len(conv), "coverage_1": sum(1 for r in conv if r["coverage"] == 1.0),
         "verify_ok": sum(1 for r in conv if r.get("verify_ok")),
         "mean_free_fraction": round(sum(ff) / len(ff), 3) if ff else None,
         "pins": sum(r.get("pins", 0) for r in conv),
         "pins_by_reason": dict(sum((Counter(r.get("pins_by_reason", {})) for r in conv), Counter()).most_common()),
         "refused_by_error": dict(Counter(_error_kind(r["error"]) for r in rows if not r.get("converts")))}
    by_source: dict[str, list[int]] = {}
    for r in rows:
        c = by_source.setdefault(r.get("source", "?"), [0, 0, 0])
        c[0] += 1
        c[1] += bool(r.get("converts"))
        c[2] += bool(r.get("verify_ok"))
    s["by_source"] = {k: {"models": a, "convert": b, "verify_ok": v} for k, (a, b, v) in sorted(by_source.items())}
    if any("align" in r for r in rows):
        s["align_ok"] = sum(1 for r in rows if r.get("align") == "ok")
        s["align_tried"] = sum(1 for r in rows if "align_after" in r or str(r.get("align", "")).startswith("failed"))
    return s


def regressions(rows: list[dict], baseline: list[dict]) -> list[str]:
    """Models that did better in ``baseline`` (an earlier ``--json`` run): converted or verified
    then and not now, lower coverage, or fewer free neurons (free_fraction down by more than 1e-9)."""
    before = {r["model"]: r for r in baseline}
    out = []
    for r in rows:
        b = before.get(r["model"])
        if b is None or not b.get("converts"):
            continue
        name = r["model"]
        if not r.get("converts"):
            out.append(f"{name}: converted before, now refused: {r.get('error')}")
            continue
        if b.get("verify_ok") and not r.get("verify_ok"):
            out.append(f"{name}: verified before, now: {r.get('verify_error')}")
        if r["coverage"] < b["coverage"]:
            out.append(f"{name}: coverage {b['coverage']} → {r['coverage']}")
        fb, fa = b.get("free_fraction"), r.get("free_fraction")
        if fb is not None and (fa is None or fa < fb - 1e-9):
            out.append(f"{name}: free_fraction {fb:.4f} → {_fmt(fa, '.4f')}")
        if b.get("align") == "ok" and r.get("align") not in (None, "ok"):
            out.append(f"{name}: aligned before, now: {r.get('align')}")
    return out


def _error_kind(msg: str) -> str:
    """The error without the model path and node names: what to group refusals by."""
    import re
    text = msg.split(": ", 1)[1] if msg.startswith("/") and ": " in msg else msg
    text = re.sub(r"^node '[^']*' \(([\w:.]+)\): ", r"\1: ", text)          # node name out, op kept
    text = re.sub(r"\([^()]*\)", "(…)", text)                               # shapes and node lists
    text = re.sub(r"'[^']*'", "'…'", text)                                   # set and input names
    return text[:100]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--json", action="store_true", help="print one JSON object (rows and summary)")
    ap.add_argument("--verify-trials", type=int, default=2)
    ap.add_argument("--align", action="store_true", help="align each model with a permuted copy of itself")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per model")
    ap.add_argument("-k", "--pattern", default="*", help="only files matching this glob")
    ap.add_argument("-q", "--quiet", action="store_true", help="no per-model progress on stderr")
    ap.add_argument("--group", action="store_true", help="markdown table with one row per family or package")
    ap.add_argument("--from-json", type=Path, help="print the tables of an earlier --json run; run nothing")
    ap.add_argument("--baseline", type=Path, help="an earlier --json output: list regressions against it, "
                    "exit 1 if any")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.verify_trials, args.align, args.timeout)))
        return
    if args.from_json:
        rows = json.loads(args.from_json.read_text())["rows"]
        report(rows, summary(rows), args)
        return
    files = sorted(p.resolve() for p in args.dir.glob("*.onnx") if fnmatch.fnmatch(p.name, args.pattern)
                   and not p.name.endswith(".part.onnx"))
    if not files:
        sys.exit(f"real_models.py: no .onnx files in {args.dir} (run benchmarks/corpus.py first)")
    manifest = args.dir / "manifest.json"     # written by corpus.py: provenance per file
    provenance = json.loads(manifest.read_text())["models"] if manifest.exists() else {}
    rows = []
    for i, path in enumerate(files):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(path), "--verify-trials",
               str(args.verify_trials), "--timeout", str(args.timeout)] + (["--align"] if args.align else [])
        t0 = time.perf_counter()
        try:
            # in a scratch folder: onnxruntime's symbolic shape inference leaves temporary files in the cwd
            with tempfile.TemporaryDirectory(prefix="real-models-cwd-") as cwd:
                r = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=cwd,
                                   timeout=args.timeout * (3 if args.align else 2))
            row = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None
            if row is None:
                row = {"model": path.name, "converts": False,
                       "error": f"worker died (exit {r.returncode}): {_one_line(r.stderr)[:300]}", "error_type": "crash"}
        except subprocess.TimeoutExpired:
            row = {"model": path.name, "converts": False, "error": "timed out", "error_type": "timeout"}
        row.setdefault("mib", round(path.stat().st_size / 2**20, 2))
        row["source"] = provenance.get(path.name, {}).get("source") or path.name.split("_", 1)[0]
        if path.name in provenance:
            row["provenance"] = provenance[path.name]["provenance"]
        row["wall"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        if not args.quiet:
            status = ("ok" if row.get("verify_ok") else "VERIFY FAIL") if row.get("converts") else "REFUSED"
            print(f"[{i + 1}/{len(files)}] {path.name}: {status} ({row['wall']} s)", file=sys.stderr, flush=True)
    s = summary(rows)
    regressed = regressions(rows, json.loads(args.baseline.read_text())["rows"]) if args.baseline else []
    if args.baseline:
        s["regressions"] = regressed
    if args.json:
        print(json.dumps({"rows": rows, "summary": s}, indent=1))
        sys.exit(1 if regressed else 0)
    report(rows, s, args)
    if args.baseline:
        print(f"\n{len(regressed)} regressions against {args.baseline}")
        for line in regressed:
            print(f"  REGRESSION {line}")
        sys.exit(1 if regressed else 0)


def report(rows: list[dict], s: dict, args) -> None:
    with_align = any("align" in r for r in rows)
    print(group_table(rows) if args.group else table(rows, with_align))
    print()
    print(f"{s['convert']}/{s['models']} convert, {s['coverage_1']} with coverage 1.0, "
          f"{s['verify_ok']}/{s['convert']} verify ok, mean free_fraction {s['mean_free_fraction']}, "
          f"{s['pins']} pins" + (f", align ok {s['align_ok']}/{s['align_tried']}" if "align_ok" in s else ""))
    for src, c in s["by_source"].items():
        print(f"  {src}: {c['convert']}/{c['models']} convert, {c['verify_ok']} verify ok")
    for kind, n in sorted(s["refused_by_error"].items(), key=lambda kv: -kv[1]):
        print(f"  refused ×{n}: {kind}")
    for kind, n in s.get("pins_by_reason", {}).items():
        print(f"  pinned ×{n}: {kind}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
