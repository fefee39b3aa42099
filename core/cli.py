"""The ``ngraph`` command line. Exit codes: 0 ok, 1 failure, 2 usage, 3 plugin problem,
4 unsupported or corrupt input. Errors are one line on stderr; ``--debug`` adds the traceback."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import InputError, NNGraphError, missing_extra
from .train import TrainConfig


def _console(stderr: bool = False) -> Console:
    """Rich on a terminal; in a pipe or file no wrapping at 80 columns (paths stay whole)."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=100_000, soft_wrap=True)


err = _console(stderr=True)
out = _console()


def _spinner(text: str, as_json: bool):
    """A spinner on an interactive stderr; nothing under --json or in a pipe."""
    return err.status(text, spinner="dots") if not as_json and err.is_terminal else contextlib.nullcontext()


def _emit_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ngraph")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """nngraph: neural networks as neural graphs (neurons = nodes, weights = edges)."""
    ctx.ensure_object(dict)["debug"] = debug
    logging.disable(logging.NOTSET if debug else logging.CRITICAL)   # torch.export & co. log tracebacks
    if not debug:                       # and torch.load warns about pickle protocols: one line only
        warnings.simplefilter("ignore")


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
    from .api import convert as _convert
    from .fileformat import check_output, save
    from .verify import load_inputs

    output = check_output(output or model.with_suffix(".ngraph"))
    start = time.perf_counter()
    with _spinner(f"converting {model}", as_json):
        options = {"bind": load_inputs(inputs)} if inputs else {}
        if strict:
            options["strict"] = True
        graph = _convert(model, fmt, **options)
        save(graph, output)
    summary = {**graph.summary(), "format": graph.meta.get("format"), "output": str(output),
               "seconds": round(time.perf_counter() - start, 3)}
    if as_json:
        _emit_json(summary)
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
    from .fileformat import read_header

    doc, _, _ = read_header(file)
    summary = doc.get("summary", {})
    kinds = Counter(b["kind"] for b in doc["blocks"])
    roles = Counter(s["role"] for s in doc["sets"])
    if as_json:
        _emit_json({"file": str(file), "schema": doc["schema"], "meta": doc.get("meta", {}), **summary,
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
    from .loader import registry

    reg = registry()
    if as_json:
        _emit_json([p.to_json() for p in reg.plugins])
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
    from .verify import load_inputs, verify as _verify

    feeds = load_inputs(inputs) if inputs else None
    report = _verify(model, format=fmt, trials=trials, inputs=feeds, seed=seed, randomize=randomize)
    tested = any(report.tensors_changed)      # a symmetry that changes no weight proves nothing
    if as_json:
        _emit_json({**report.to_json(), "tested": tested})
    else:
        mark = ("[bold red]✗ FAILED[/]" if not report.ok else "[bold green]✓ ok[/]" if tested
                else "[bold yellow]? nothing tested[/]")
        out.print(f"{mark}  {escape(str(model))}: {report.trials} random symmetries "
                  f"(tie groups moved: {', '.join(map(str, report.groups_moved))}), max |Δ| = {report.max_abs_diff:.3g} "
                  f"(relative {report.max_rel_diff:.3g}), round trip {'exact' if report.roundtrip_exact else 'NOT exact'}, "
                  f"coverage {report.coverage:.4f}")
        _print_symmetry({"free_fraction": report.free_fraction, "pins": report.pins})
        if not tested:
            out.print("  no random symmetry changed any weight (no free neurons, or constant weights): the "
                      "permutation test was vacuous; rerun with --randomize")
        for p in report.problems:
            out.print(f"  - {escape(p)}")
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--target", default="", help="Column of labels.csv to predict (not needed for --task embedding).")
@click.option("--task", type=click.Choice(["regression", "classification", "embedding"]), default="regression",
              show_default=True, help="embedding: contrastive, random symmetries of a network are its positives")
@click.option("--encoder", default="ng-gnn", show_default=True, help="Encoder plugin (see `ngraph plugins`).")
@click.option("--head", default=None, help="Head plugin [default: the task's].")
@click.option("--epochs", default=TrainConfig.epochs, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=TrainConfig.lr, show_default=True, type=float)
@click.option("--batch-size", default=TrainConfig.batch_size, show_default=True, type=click.IntRange(1))
@click.option("--hidden", default=TrainConfig.hidden, show_default=True, type=click.IntRange(1))
@click.option("--layers", default=TrainConfig.layers, show_default=True, type=click.IntRange(1))
@click.option("--heads", default=TrainConfig.heads, show_default=True, type=click.IntRange(1),
              help="Attention heads (ng-transformer); must divide --hidden.")
@click.option("--dropout", default=TrainConfig.dropout, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Dropout in the head.")
@click.option("--val-fraction", default=TrainConfig.val_fraction, show_default=True,
              type=click.FloatRange(0, 1, max_open=True),
              help="Hold this fraction of the training networks out for validation (when labels.csv has no 'val').")
@click.option("--patience", default=TrainConfig.patience, show_default=True, type=click.IntRange(0),
              help="Early stopping: stop after this many epochs without a lower validation loss, keep the best (0: off).")
@click.option("--no-input-scaling", is_flag=True, help="Feed raw weights (no per-dataset RMS scaling).")
@click.option("--threads", default=0, type=click.IntRange(0), help="CPU threads for torch [default: torch's choice].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed: initialization, batches, sampled symmetries.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Checkpoint (.safetensors).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines: one per epoch, then the summary.")
def train(dataset, target, task, encoder, head, epochs, lr, batch_size, hidden, layers, heads, dropout, val_fraction,
          patience, no_input_scaling, threads, device, seed, output, as_json):
    """Train an encoder + head on DATASET (a folder with labels.csv); writes a checkpoint and a curve plot.

    Progress: a bar on a terminal, one line per epoch on stderr otherwise, JSON lines with --json."""
    from .dataset import load_dataset
    from .fileformat import check_output
    from .train import save_checkpoint, train as _train

    check_output(output)            # before hours of training, not after
    if encoder == "ng-transformer" and hidden % heads:
        raise InputError(f"--heads {heads} must divide --hidden {hidden}")
    if threads:
        import torch
        torch.set_num_threads(threads)
    data = load_dataset(dataset, progress=not as_json and err.is_terminal)
    for name, why in data.failed:
        err.print(f"[yellow]skipped[/] {name}: {why}")
    cfg = TrainConfig(target=target, task=task, encoder=encoder, head=head, epochs=epochs, lr=lr,
                      batch_size=batch_size, hidden=hidden, layers=layers, heads=heads, dropout=dropout,
                      val_fraction=val_fraction, patience=patience, input_scaling=not no_input_scaling,
                      device=device, seed=seed)
    interactive = not as_json and err.is_terminal

    def log(record):
        if as_json:
            click.echo(json.dumps(_rounded(record)))
        elif not interactive:
            click.echo(f"epoch {record['epoch']}/{epochs}  {_format_record(record)}", err=True)

    model, meta, history = _train(data, cfg, progress=interactive, log=log)
    save_checkpoint(output, model, meta)
    plot = _plot_history(history, output.with_suffix(".png"))
    summary = {"checkpoint": str(output), "models": len(data.entries), "skipped": len(data.failed),
               "epochs_run": len(history), "best_epoch": meta["best_epoch"],
               "final": _rounded(history[meta["best_epoch"] - 1]), "plot": plot}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        held = f" ({meta['n_val']} held out for validation)" if meta["n_val"] else ""
        out.print(f"[bold green]✓[/] trained {encoder} on {meta['n_train']} networks{held} → {output}", soft_wrap=True)
        which = "best" if meta["best_epoch"] != len(history) else "last"
        out.print(f"  {which} epoch {meta['best_epoch']}/{len(history)}: "
                  f"{_format_record(history[meta['best_epoch'] - 1])}", soft_wrap=True, highlight=False)


def _rounded(record: dict) -> dict:
    """Metrics at 5 significant digits (JSON output), NaN as null."""
    return {k: (None if isinstance(v, float) and v != v else float(f"{v:.5g}") if isinstance(v, float) else v)
            for k, v in record.items()}


def _format_record(record: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in record.items() if k != "epoch")


def _plot_history(history, path: Path) -> str | None:
    """Loss curves on the left, metrics on the right (their scales differ), integer epochs."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    epochs = [h["epoch"] for h in history]
    keys = list(history[-1])
    losses = [k for k in keys if k.endswith("_loss")]
    scores = [k for k in keys if k != "epoch" and k not in losses and not k.endswith("_mse")]
    fig, axes = plt.subplots(1, 2 if scores else 1, figsize=(10 if scores else 6, 4), squeeze=False)
    for ax, group, title in zip(axes[0], (losses, scores), ("loss", "metrics")):
        for key in group:
            ax.plot(epochs, [h.get(key) for h in history], label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True, help="train | val | test | all")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(checkpoint, dataset, split, device, as_json):
    """Evaluate CHECKPOINT on DATASET's split (regression: kendall_tau, r2, mse; classification: accuracy)."""
    from .dataset import load_dataset
    from .train import evaluate as _evaluate

    data = load_dataset(dataset, progress=not as_json and err.is_terminal)
    result = _evaluate(checkpoint, data, None if split == "all" else split, device)
    if as_json:
        _emit_json(result)
    else:
        out.print("  ".join(f"{k} = {v:.4f}" if isinstance(v, float) else f"{k} = {v}" for k, v in result.items()))


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
def predict(checkpoint, models, device, as_json):
    """Predict the trained target for each of MODELS (any convertible format, or .ngraph)."""
    from .api import convert as _convert
    from .fileformat import load
    from .train import predict as _predict

    graphs = [load(m) if m.suffix == ".ngraph" else _convert(m) for m in models]
    values = _predict(checkpoint, graphs, device)
    if as_json:
        _emit_json([{"model": str(m), "prediction": v} for m, v in zip(models, values)])
    else:
        width = max(len(str(m)) for m in models)
        for m, v in zip(models, values):
            out.print(f"{str(m):{width}}  {v:.4g}" if isinstance(v, float) else f"{str(m):{width}}  {v}",
                      highlight=False, markup=False)


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Embeddings (.npz).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def embed(checkpoint, dataset, output, device, as_json):
    """Embed every network of DATASET with CHECKPOINT's encoder; writes names and unit vectors."""
    import numpy as np

    from .dataset import load_dataset
    from .fileformat import check_output
    from .train import embed as _embed

    check_output(output)
    data = load_dataset(dataset, progress=not as_json and err.is_terminal)
    vectors = _embed(checkpoint, [e.graph for e in data.entries], device)
    names = np.array([e.row["model"] for e in data.entries])
    with open(output, "wb") as f:
        np.savez(f, names=names, embeddings=vectors, checkpoint=np.array(str(Path(checkpoint).resolve())))
    summary = {"output": str(output), "networks": len(names), "dim": int(vectors.shape[1])}
    _emit_json(summary) if as_json else out.print(f"[bold green]✓[/] {len(names)} embeddings → {output}")


@cli.command()
@click.argument("embeddings", type=click.Path(path_type=Path))
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-k", "--top", "k", default=5, show_default=True, type=click.IntRange(1), help="How many networks to list.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
def search(embeddings, model, k, device, as_json):
    """The K networks of an `ngraph embed` file most similar to MODEL (cosine similarity)."""
    import numpy as np

    from .api import convert as _convert
    from .fileformat import load
    from .train import embed as _embed
    from .verify import load_inputs

    table = load_inputs(embeddings)
    if not {"names", "embeddings", "checkpoint"} <= set(table):
        raise InputError(f"{embeddings}: not an `ngraph embed` file")
    graph = load(model) if model.suffix == ".ngraph" else _convert(model)
    query = _embed(str(table["checkpoint"]), [graph], device)[0]
    sims = table["embeddings"] @ query
    top = np.argsort(-sims)[:k]
    hits = [{"model": str(table["names"][i]), "similarity": float(sims[i])} for i in top]
    if as_json:
        _emit_json(hits)
    else:
        for h in hits:
            out.print(f"{h['similarity']:.4f}  {h['model']}")


def _add_plugin_commands() -> None:
    from .loader import registry

    for spec in registry().commands.values():
        if spec.name not in cli.commands:
            cli.add_command(spec.command, spec.name)


@cli.command()
@click.argument("model_a", type=click.Path(path_type=Path))
@click.argument("model_b", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Where to write B aligned to A.")
@click.option("--method", type=click.Choice(["weight", "activation", "embedding"]), default="weight",
              show_default=True, help="weight matching; activation matching on --data; node embeddings of --checkpoint")
@click.option("--data", type=click.Path(path_type=Path), help=".npz of sample inputs named like the model's inputs.")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Trained encoder checkpoint (--method embedding).")
@click.option("--format", "fmt", help="Adapter to use; sniffed when omitted.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed: alignment and the random inputs of the function check.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def align(model_a, model_b, output, method, data, checkpoint, fmt, seed, as_json) -> None:
    """Permute MODEL_B's neurons to match MODEL_A's; write it (checked to compute B's function)."""
    from .fileformat import check_output
    from .merge import align_files
    from .verify import load_inputs

    _check_method(method, data, checkpoint)
    check_output(output)
    with _spinner(f"aligning {model_b} to {model_a}", as_json):
        result = align_files(model_a, model_b, output, method, data=load_inputs(data) if data else None,
                             checkpoint=checkpoint, fmt=fmt, seed=seed)
    doc = result.to_json()
    if as_json:
        _emit_json(doc)
        return
    out.print(f"[bold green]✓[/] {model_b} aligned to {model_a} ({method} matching) → {output}")
    out.print(f"  weight distance {doc['distance_before']:.4g} → {doc['distance_after']:.4g}; "
              f"{doc['moved_groups']}/{doc['groups_aligned']} tie groups moved; same function as B "
              f"(max relative difference {doc['max_rel_diff']:.2g})")
    if doc["fallback_to_weight"]:
        out.print(f"  no activations for {len(doc['fallback_to_weight'])} groups: weight-matched instead")


def _check_method(method: str | None, data, checkpoint) -> None:
    """Options that must come together are usage errors (exit 2), found before any work."""
    if method == "activation" and not data:
        raise click.UsageError("--method activation needs --data FILE.npz (sample inputs named like the model's)")
    if method == "embedding" and not checkpoint:
        raise click.UsageError("--method embedding needs --checkpoint CKPT (a trained encoder, see `ngraph train`)")


def _weights(text: str | None, n: int) -> list[float] | None:
    if text is None:
        return None
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers", param_hint="--weights") from None
    if len(weights) != n:
        raise click.BadParameter(f"{len(weights)} values for {n} models", param_hint="--weights")
    if not all(math.isfinite(w) for w in weights) or not math.isclose(sum(weights), 1.0, rel_tol=1e-5, abs_tol=1e-8):
        raise click.BadParameter(f"must be finite and sum to 1 (they sum to {sum(weights):g})", param_hint="--weights")
    return weights


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Where to write the merged model.")
@click.option("--weights", help="Interpolation weights, comma-separated, summing to 1 [default: equal].")
@click.option("--method", "--align", "method", type=click.Choice(["weight", "activation", "embedding", "none"]),
              default="weight", show_default=True, help="How to align every model to the first before averaging.")
@click.option("--data", type=click.Path(path_type=Path),
              help=".npz of sample inputs: activation matching, and BatchNorm statistics re-estimated on it.")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Trained encoder checkpoint (--method embedding).")
@click.option("--format", "fmt", help="Adapter to use; sniffed when omitted.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed: alignment and the random inputs of the function check.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def merge(models, output, weights, method, data, checkpoint, fmt, seed, as_json) -> None:
    """Align MODELS to the first and average their parameters into one model."""
    from .fileformat import check_output
    from .merge import merge_files
    from .verify import load_inputs

    if len(models) < 2:
        raise click.UsageError("merge needs at least two models")
    weights = _weights(weights, len(models))
    _check_method(method, data, checkpoint)
    check_output(output)
    with _spinner(f"merging {len(models)} models", as_json):
        result = merge_files(list(models), output, weights, None if method == "none" else method,
                             data=load_inputs(data) if data else None, checkpoint=checkpoint, fmt=fmt, seed=seed)
    doc = result.to_json()
    if as_json:
        _emit_json(doc)
        return
    out.print(f"[bold green]✓[/] merged {len(models)} models → {output} (weights {', '.join(f'{w:g}' for w in result.weights)})")
    for m, a in zip(models[1:], doc["alignments"]):
        out.print(f"  {m}: weight distance to {models[0]} {a['distance_before']:.4g} → {a['distance_after']:.4g}")
    if data:
        out.print(f"  BatchNorm statistics re-estimated in {doc['recalibrated_norm_layers']} layers")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        _add_plugin_commands()
        cli.main(argv, prog_name="ngraph", standalone_mode=False)
        return 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        err.print("aborted")
        return 1
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except NNGraphError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"ngraph: error: {e}", err=True)
        return e.exit_code
    except MemoryError:
        click.echo("ngraph: error: out of memory", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - one line, not a traceback, unless --debug
        if debug:
            traceback.print_exc()
        extra = missing_extra(e)
        if extra is not None:               # base install: say which extra to install
            click.echo(f"ngraph: error: {extra}", err=True)
            return extra.exit_code
        click.echo(f"ngraph: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
