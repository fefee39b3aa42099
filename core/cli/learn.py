"""Commands that learn over populations: prepare, train, evaluate, predict, embed, search."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..errors import InputError
from ..learn.featurize import WEIGHT_SCALES
from ..learn.train import TrainConfig
from .app import cli, emit_json, err, out


def _probe_inputs(ctx, param, value: str | None) -> str | None:
    from ..learn.probes import PROBE_INPUTS, is_probe_file, load_probe_file
    if value is None or value in PROBE_INPUTS:
        return value
    if not is_probe_file(value) or not Path(value).is_file():
        raise click.BadParameter(f"{value!r} is neither {' nor '.join(PROBE_INPUTS)} nor an existing .npz file")
    load_probe_file(str(Path(value).resolve()))     # a bad file fails now, not after converting the dataset
    return str(Path(value).resolve())


@cli.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--target", default="", help="Column of labels.csv to predict (not needed for --task embedding).")
@click.option("--task", type=click.Choice(["regression", "classification", "embedding"]), default="regression",
              show_default=True, help="embedding: contrastive, random symmetries of a network are its positives")
@click.option("--encoder", default="ng-gnn", show_default=True, help="Encoder plugin (see `ngraph plugins`).")
@click.option("--head", default=None, help="Head plugin [default: the task's].")
@click.option("--epochs", default=TrainConfig.epochs, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=TrainConfig.lr, show_default=True, type=float)
@click.option("--batch-size", default=None, type=click.IntRange(1),
              help=f"Graphs per batch [default: the encoder's; {TrainConfig.batch_size} for the built-in ones].")
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
@click.option("--probes", default=None, type=click.IntRange(0),
              help="Probe features: each neuron's output on this many fixed inputs (needs runnable model files) "
                   "[default: the encoder's; 64 for ng-gnn, ng-transformer and deepsets where every network can be "
                   "probed, 0 for statnn].")
@click.option("--weight-scale", type=click.Choice(WEIGHT_SCALES),
              default=TrainConfig(target="").features.scale,
              show_default=True, help="Edge-weight scaling: fan_in multiplies by √fan-in (networks of other widths).")
@click.option("--sum-scaler", type=click.Choice(["linear", "log"]), default=TrainConfig.sum_scaler, show_default=True,
              help="ng-gnn's PNA sum: plain, or mean·log(1+degree) (networks of other widths).")
@click.option("--pool-norm", type=click.Choice(["auto", "none", "batch"]), default=TrainConfig.pool_norm,
              show_default=True,
              help="Standardize the pooled graph vector across each batch (populations of near-identical "
                   "networks, e.g. INRs from one init); auto: the encoder's default (batch for ng-gnn, "
                   "ng-transformer and deepsets), none for batches of one graph and under torchrun.")
@click.option("--pool-fixed/--no-pool-fixed", default=None,
              help="The readout also reads the mean state of the fixed (input/output) neurons "
                   "[default: the encoder's; on for ng-gnn and ng-transformer].")
@click.option("--rank-weight", default=TrainConfig.rank_weight, show_default=True, type=click.FloatRange(0),
              help="Regression: add this times a pairwise ranking loss to the squared error (Kendall τ counts "
                   "ordered pairs).")
@click.option("--probe-summary/--no-probe-summary", default=None,
              help="With --probes: the readout also gets what each network predicts on the probes (per output "
                   "neuron: softmax probability, how often it wins, mean and spread of its values) "
                   "[default: the encoder's; on for ng-gnn and ng-transformer when they probe].")
@click.option("--probe-inputs", default=None, callback=_probe_inputs,
              help="Probe inputs: normal (the adapter's example inputs, standard normal floats), uniform (floats "
                   "from U(-1, 1): coordinate networks, inputs scaled to [-1, 1]) or FILE.npz (sample j of each "
                   "array, named after the model input, is probe j: e.g. images of the networks' own data) "
                   "[default: the encoder's; uniform for ng-gnn, ng-transformer and deepsets, normal otherwise].")
@click.option("--threads", default=0, type=click.IntRange(0), help="CPU threads for torch [default: torch's choice].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed: initialization, batches, sampled symmetries.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Checkpoint (.safetensors).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines: one per epoch, then the summary.")
def train(dataset, target, task, encoder, head, epochs, lr, batch_size, hidden, layers, heads, dropout, val_fraction,
          patience, no_input_scaling, probes, weight_scale, sum_scaler, pool_norm, pool_fixed, rank_weight, probe_summary, probe_inputs, threads, device, seed,
          output, as_json):
    """Train an encoder + head on DATASET (a folder with labels.csv); writes a checkpoint and a curve plot.

    Progress: a bar on a terminal, one line per epoch on stderr otherwise, JSON lines with --json.
    Under torchrun: one rank per process, each reading its shard of DATASET; rank 0 alone writes."""
    from ..files import check_output
    from ..learn.checkpoint import save_checkpoint
    from ..learn.dataset import load_dataset, unknown_splits
    from ..learn.distributed import init_from_env, sync_dataset
    from ..learn.train import check_config, pool_norm_for
    from ..learn.train import train as _train

    check_output(output)            # before hours of training, not after
    if threads:
        import torch
        torch.set_num_threads(threads)
    try:
        cfg = TrainConfig.for_encoder(
            target, encoder, task=task, head=head, epochs=epochs, lr=lr, batch_size=batch_size, hidden=hidden,
            layers=layers, heads=heads, dropout=dropout, val_fraction=val_fraction, patience=patience,
            input_scaling=not no_input_scaling, sum_scaler=sum_scaler, pool_norm=pool_norm, pool_fixed=pool_fixed,
            rank_weight=rank_weight, device=device, seed=seed, probes=probes, probe_inputs=probe_inputs,
            scale=weight_scale, probe_summary=probe_summary)
    except ValueError as e:
        if "probe_summary" in str(e):   # FeatureConfig: a summary without probes (--probes 0, or none by default)
            raise click.UsageError("--probe-summary needs --probes N (it summarizes the output neurons' probe "
                                   "values)") from None
        raise InputError(str(e)) from None
    world = os.environ.get("WORLD_SIZE", "1").strip()
    check_config(cfg, int(world) if world.isdigit() else 1)   # before hours of conversion (torchrun checks the rest)
    group = init_from_env(device)   # None without torchrun's variables: one process
    if group:
        click.get_current_context().call_on_close(group.close)
    main = group is None or group.main
    if group and main and pool_norm_for(cfg, group.world) != pool_norm_for(cfg):
        err.print(f"note: --pool-norm auto is 'none' under torchrun with {group.world} processes ({encoder} "
                  f"trains with 'batch' in one process: each rank would standardize by its own part of a batch)")
    status = _status_lines() if main else None
    data = load_dataset(dataset, progress=not as_json and err.is_terminal and main, status=status,
                        shard=group.shard if group else None,       # each rank converts and reads its shard
                        workers=max(1, (os.cpu_count() or 1) // group.local_world) if group else None)
    if group:
        sync_dataset(data, group)               # drops what failed on any rank, everywhere
    for name, why in data.failed if main else ():
        err.print(f"[yellow]skipped[/] {name}: {why}")
    unused = unknown_splits(data.entries) if main else {}
    if unused:
        named = ", ".join(f"{n} in '{s}'" if s else f"{n} with an empty split" for s, n in sorted(unused.items()))
        err.print(f"note: labels.csv rows outside train/val/test are not trained on: {named}", highlight=False)
    interactive = not as_json and err.is_terminal and main

    def log(record):
        if as_json:
            click.echo(json.dumps(_rounded(record)))
        elif not interactive:
            click.echo(f"epoch {record['epoch']}/{epochs}  {_format_record(record)}", err=True)

    model, meta, history = _train(data, cfg, progress=interactive, log=log if main else None, group=group,
                                  note=(lambda message: err.print(f"note: {message}")) if main else None,
                                  status=status)
    if not main:
        group.finish()
        return
    save_checkpoint(output, model, meta)
    plot = _plot_history(history, output.with_suffix(".png"))
    if group:
        group.finish()
    setup = _training_setup(meta)
    summary = {"checkpoint": str(output), "models": len(data.entries), "skipped": len(data.failed),
               "epochs_run": len(history), "best_epoch": meta["best_epoch"],
               "final": _rounded(history[meta["best_epoch"] - 1]), "setup": setup, "plot": plot}
    if group:
        summary["processes"] = group.world
    if as_json:
        click.echo(json.dumps(summary))
    else:
        held = f" ({meta['n_val']} held out for validation)" if meta["n_val"] else ""
        procs = f" in {group.world} processes" if group else ""
        out.print(f"[bold green]✓[/] trained {encoder} on {meta['n_train']} networks{held}{procs} → {output}",
                  soft_wrap=True)
        which = "best" if meta["best_epoch"] != len(history) else "last"
        out.print(f"  {which} epoch {meta['best_epoch']}/{len(history)}: "
                  f"{_format_record(history[meta['best_epoch'] - 1])}", soft_wrap=True, highlight=False)
        out.print(f"  {_describe_setup(setup)}", soft_wrap=True, highlight=False)


def _status_lines():
    """Progress lines on stderr for long conversions and probing when not on a terminal (a bar when it is)."""
    return None if err.is_terminal else (lambda line: err.print(line, highlight=False))


def _training_setup(meta: dict) -> dict:
    """What the model was trained with among the options an encoder may default (the probes, their
    inputs and summary, the pool norm, the fixed-neuron pool), as recorded in the checkpoint: the user sees
    which defaults applied, and whether optional probes were dropped."""
    features, encoder = meta["features"], meta["encoder_config"]
    probes = int(features.get("probes") or 0)
    return {"probes": probes, "probe_inputs": features.get("probe_inputs") if probes else None,
            "probe_summary": bool(features.get("probe_summary")), "pool_norm": encoder.get("pool_norm", "none"),
            "pool_fixed": bool(encoder.get("pool_fixed", False))}


def _describe_setup(setup: dict) -> str:
    parts = [f"{setup['probes']} probe features ({setup['probe_inputs']})"
             + (" and their summary" if setup["probe_summary"] else "") if setup["probes"] else "no probe features",
             f"pool norm {setup['pool_norm']}"]
    if setup["pool_fixed"]:
        parts.append("--pool-fixed")
    return "trained with " + ", ".join(parts)


def _shard(ctx, param, value):
    """``I/N`` → (I, N) with 0 <= I < N."""
    if value is None:
        return None
    i, _, n = value.partition("/")
    if not (i.isdigit() and n.isdigit()) or not 0 <= int(i) < int(n):
        raise click.BadParameter(f"{value!r} is not I/N with 0 <= I < N (e.g. 0/4)")
    return int(i), int(n)


@cli.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--shard", callback=_shard, metavar="I/N",
              help="Only shard I of N: the rows rank I of an N-process `ngraph train` under torchrun reads.")
@click.option("--list", "as_list", is_flag=True,
              help="Print the shard's model files (relative to DATASET), one per line; convert nothing.")
@click.option("--workers", default=0, type=click.IntRange(0), help="Conversion processes [default: one per CPU].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def prepare(dataset, shard, as_list, workers, as_json):
    """Convert DATASET's models (or one shard of them) into DATASET/.nngraph-cache ahead of training.

    Training converts what is missing itself; preparing first lets each machine of a distributed run
    convert only its shard, before the processes wait on each other."""
    from ..learn.dataset import load_dataset, read_labels, shard_rows

    if as_list:
        rows = read_labels(dataset)
        for row, held in zip(rows, shard_rows(rows, shard)):
            if held:
                click.echo(row["model"])
        return
    data = load_dataset(dataset, workers=workers or None, progress=not as_json and err.is_terminal, shard=shard,
                        status=_status_lines())
    ready = sum(1 for e in data.entries if e.graph is not None)
    which = f"shard {shard[0]}/{shard[1]}" if shard else "all"
    if as_json:
        emit_json({"dataset": str(dataset), "shard": f"{shard[0]}/{shard[1]}" if shard else None, "models": ready,
                   "skipped": [{"model": m, "error": why} for m, why in data.failed],
                   "cache": str(Path(dataset) / ".nngraph-cache")})
        return
    for name, why in data.failed:
        err.print(f"[yellow]skipped[/] {name}: {why}")
    out.print(f"[bold green]✓[/] {ready} models ({which}) ready in {Path(dataset) / '.nngraph-cache'}"
              + (f", {len(data.failed)} skipped" if data.failed else ""), soft_wrap=True, highlight=False)


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
    from ..learn.dataset import load_dataset
    from ..learn.train import evaluate as _evaluate

    data = load_dataset(dataset, progress=not as_json and err.is_terminal, status=_status_lines())
    result = _evaluate(checkpoint, data, None if split == "all" else split, device)
    if as_json:
        emit_json(result)
    else:
        out.print("  ".join(f"{k} = {v:.4f}" if isinstance(v, float) else f"{k} = {v}" for k, v in result.items()))


def streaming_options(command):
    """``--stream/--no-stream`` and ``--workers``, shared by the commands that encode with a checkpoint."""
    command = click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
                           help="Threads sharing each streamed pass (fixed shares: the same result on every "
                                "run); use the idle cores.")(command)
    return click.option("--stream/--no-stream", "stream", default=None,
                        help="Encode with the encoder's streamed forward (memory O(nodes), not O(edges)); "
                             "default: streamed for graphs of 200 k edges or more when the encoder has one."
                        )(command)


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@streaming_options
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
def predict(checkpoint, models, device, stream, workers, as_json):
    """Predict the trained target for each of MODELS (any convertible format, or .ngraph)."""
    from ..api import convert as _convert
    from ..graph.fileformat import load
    from ..learn.train import predict as _predict

    graphs = [load(m) if m.suffix == ".ngraph" else _convert(m) for m in models]
    values = _predict(checkpoint, graphs, device, paths=list(models), stream=stream, progress=True, workers=workers)
    if as_json:
        emit_json([{"model": str(m), "prediction": v} for m, v in zip(models, values)])
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
@streaming_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def embed(checkpoint, dataset, output, device, stream, workers, as_json):
    """Embed every network of DATASET with CHECKPOINT's encoder; writes names and unit vectors."""
    import numpy as np

    from ..files import check_output
    from ..learn.dataset import load_dataset
    from ..learn.train import embed as _embed

    check_output(output)
    data = load_dataset(dataset, progress=not as_json and err.is_terminal, status=_status_lines())
    vectors = _embed(checkpoint, [e.graph for e in data.entries], device, paths=[e.path for e in data.entries],
                     stream=stream, progress=True, workers=workers)
    names = np.array([e.row["model"] for e in data.entries])
    with open(output, "wb") as f:
        np.savez(f, names=names, embeddings=vectors, checkpoint=np.array(str(Path(checkpoint).resolve())))
    summary = {"output": str(output), "networks": len(names), "dim": int(vectors.shape[1])}
    emit_json(summary) if as_json else out.print(f"[bold green]✓[/] {len(names)} embeddings → {output}")


@cli.command()
@click.argument("embeddings", type=click.Path(path_type=Path))
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-k", "--top", "k", default=5, show_default=True, type=click.IntRange(1), help="How many networks to list.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
def search(embeddings, model, k, device, as_json):
    """The K networks of an `ngraph embed` file most similar to MODEL (cosine similarity)."""
    import numpy as np

    from ..api import convert as _convert
    from ..graph.fileformat import load
    from ..learn.train import embed as _embed
    from ..verify import load_inputs

    table = load_inputs(embeddings)
    if not {"names", "embeddings", "checkpoint"} <= set(table):
        raise InputError(f"{embeddings}: not an `ngraph embed` file")
    graph = load(model) if model.suffix == ".ngraph" else _convert(model)
    query = _embed(str(table["checkpoint"]), [graph], device, paths=[model])[0]
    sims = table["embeddings"] @ query
    top = np.argsort(-sims)[:k]
    hits = [{"model": str(table["names"][i]), "similarity": float(sims[i])} for i in top]
    if as_json:
        emit_json(hits)
    else:
        for h in hits:
            out.print(f"{h['similarity']:.4f}  {h['model']}")
