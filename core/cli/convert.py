"""Commands on one model: convert, info, verify, plugins."""
from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .app import cli, emit_json, out, spinner


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output .ngraph file [default: MODEL.ngraph].")
@click.option("--format", "fmt", help="Adapter to use (see `ngraph plugins`); sniffed when omitted.")
@click.option("--inputs", type=click.Path(path_type=Path),
              help=".npz with values for graph inputs that hold parameters (old exporters).")
@click.option("--strict", is_flag=True,
              help="Refuse (exit 4) a model with any structure that would be pinned, naming the first.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def convert(model: Path, output: Path | None, fmt: str | None, inputs: Path | None, strict: bool,
            as_json: bool) -> None:
    """Convert MODEL to a neural graph (.ngraph).

    Structures the converter cannot follow are pinned (their neurons kept fixed, their
    parameters kept as opaque blocks) and reported; --strict refuses them instead."""
    from ..api import convert as _convert
    from ..files import check_output
    from ..graph.fileformat import save
    from ..verify import load_inputs

    output = check_output(output or model.with_suffix(".ngraph"))
    start = time.perf_counter()
    with spinner(f"converting {model}", as_json):
        options = {"bind": load_inputs(inputs)} if inputs else {}
        if strict:
            options["strict"] = True
        graph = _convert(model, fmt, **options)
        save(graph, output)
    summary = {**graph.summary(), "format": graph.meta.get("format"), "output": str(output),
               "seconds": round(time.perf_counter() - start, 3)}
    if as_json:
        emit_json(summary)
        return
    out.print(f"[bold green]✓[/] {model} → {output}  ({summary['format']}, {summary['seconds']} s)")
    out.print(f"  {summary['nodes']:,} neurons in {summary['sets']} sets, {summary['edges']:,} edges in "
              f"{summary['blocks']} blocks; {summary['mapped_parameters']:,}/{summary['parameters']:,} "
              f"parameters mapped (coverage {summary['coverage']:.4f})")
    _print_symmetry(summary)


def _print_symmetry(summary: dict) -> None:
    """The symmetry kept: free fraction, and every pin with its reason (grouped by op and reason)."""
    pins = summary.get("pins")
    pins = [p for p in pins if isinstance(p, dict)] if isinstance(pins, list) else []   # headers are untrusted
    free = summary.get("free_fraction")
    if not isinstance(free, (int, float)) or isinstance(free, bool):
        return
    out.print(f"  free fraction {free:.3f} (hidden neurons some symmetry moves); "
              f"{len(pins)} pin{'s' if len(pins) != 1 else ''}")
    if not pins:
        return
    table = Table("pinned node", "op", "why", "sets", box=None)
    for p in pins[:30]:
        sets = p.get("sets")
        table.add_row(*map(escape, (str(p.get("node")), str(p.get("op")), str(p.get("reason")),
                                    str(len(sets)) if isinstance(sets, list) else "?")))
    out.print(table)
    if len(pins) > 30:
        out.print(f"  … {len(pins) - 30} more pins (use --json for all)")


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the header as JSON.")
def info(file: Path, as_json: bool) -> None:
    """Describe an .ngraph FILE (reads the header only)."""
    from ..graph.fileformat import read_header

    doc, _, _ = read_header(file)
    summary = doc.get("summary", {})
    kinds = Counter(b["kind"] for b in doc["blocks"])
    roles = Counter(s["role"] for s in doc["sets"])
    if as_json:
        emit_json({"file": str(file), "schema": doc["schema"], "meta": doc.get("meta", {}), **summary,
                    "block_kinds": dict(kinds), "set_roles": dict(roles),
                    "sets": [{k: s[k] for k in ("name", "size", "role", "depth", "activation", "group")}
                             for s in doc["sets"]]})
        return
    meta = doc.get("meta", {})
    out.print(f"[bold]{escape(str(file))}[/]  schema {doc['schema']}, from {escape(str(meta.get('source', '?')))} "
              f"({escape(str(meta.get('format', '?')))})")
    out.print(f"  {summary.get('nodes', 0):,} neurons, {summary.get('edges', 0):,} edges, "
              f"{summary.get('parameters', 0):,} parameters, coverage {summary.get('coverage', 0):.4f}")
    out.print(f"  block kinds: {escape(', '.join(f'{k} {v}' for k, v in kinds.most_common()))}")
    _print_symmetry(summary)
    table = Table("set", "size", "role", "depth", "activation", "tie group", box=None)
    for s in doc["sets"][:60]:
        table.add_row(*map(escape, (s["name"], str(s["size"]), s["role"], str(s["depth"]), s["activation"] or "",
                                    s["group"] if s["group"] != s["name"] else "")))
    out.print(table)
    if len(doc["sets"]) > 60:
        out.print(f"  … {len(doc['sets']) - 60} more sets (use --json for all)")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the plugin list as JSON.")
def plugins(as_json: bool) -> None:
    """List plugins: name, package, version, status, what each provides."""
    from ..loader import registry

    reg = registry()
    if as_json:
        emit_json([p.to_json() for p in reg.plugins])
        return
    table = Table("plugin", "package", "version", "status", "provides", box=None)
    colors = {"active": "green", "failed": "red", "blocked": "yellow", "needs-extra": "yellow"}
    for p in reg.plugins:
        provides = "; ".join(f"{k}: {', '.join(v) if len(v) <= 6 else f'{len(v)} rules'}" for k, v in p.provides.items())
        table.add_row(escape(p.name), escape(p.package), escape(p.version), f"[{colors.get(p.status, 'red')}]{p.status}[/]",
                      escape(provides if p.status == "active" else (p.error or "")))
    out.print(table)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--inputs", type=click.Path(path_type=Path), help=".npz of named inputs [default: random].")
@click.option("--trials", default=3, show_default=True, type=click.IntRange(1), help="Random symmetries to test.")
@click.option("--format", "fmt", help="Adapter to use; sniffed when omitted.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random symmetries and inputs.")
@click.option("--randomize", is_flag=True, help="Redraw all parameters first (for constant or zero weights).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def verify(model: Path, inputs: Path | None, trials: int, fmt: str | None, seed: int, randomize: bool,
           as_json: bool) -> None:
    """Check that random symmetries of MODEL's graph give models computing the same function."""
    from ..verify import load_inputs
    from ..verify import verify as _verify

    feeds = load_inputs(inputs) if inputs else None
    report = _verify(model, format=fmt, trials=trials, inputs=feeds, seed=seed, randomize=randomize)
    tested = any(report.tensors_changed)      # a symmetry that changes no weight proves nothing
    if as_json:
        emit_json({**report.to_json(), "tested": tested})
    else:
        mark = ("[bold red]✗ FAILED[/]" if not report.ok else "[bold green]✓ ok[/]" if tested
                else "[bold yellow]? nothing tested[/]")
        out.print(f"{mark}  {escape(str(model))}: {report.trials} random symmetries "
                  f"(tie groups moved: {', '.join(map(str, report.groups_moved))}), max |Δ| = {report.max_abs_diff:.3g} "
                  f"(relative {report.max_rel_diff:.3g}), round trip {'exact' if report.roundtrip_exact else 'NOT exact'}, "
                  f"coverage {report.coverage:.4f}")
        _print_symmetry({"free_fraction": report.free_fraction, "pins": report.pins})
        if report.bound_inputs:
            out.print(f"  graph inputs read as weights, bound to the {'--inputs' if inputs else 'example'} values: "
                      f"{escape(', '.join(report.bound_inputs))} (convert pins their layers without --inputs)")
        if not tested:
            out.print("  no random symmetry changed any weight (no free neurons, or constant weights): the "
                      "permutation test was vacuous; rerun with --randomize")
        for p in report.problems:
            out.print(f"  - {escape(p)}")
    if not report.ok:
        sys.exit(1)
