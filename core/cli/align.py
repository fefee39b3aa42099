"""Commands on several models of one architecture: align, merge."""
from __future__ import annotations

import math
from pathlib import Path

import click

from .app import cli, emit_json, out, spinner


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
    from ..alignment.merge import align_files
    from ..files import check_output
    from ..verify import load_inputs

    _check_method(method, data, checkpoint)
    check_output(output)
    with spinner(f"aligning {model_b} to {model_a}", as_json):
        result = align_files(model_a, model_b, output, method, data=load_inputs(data) if data else None,
                             checkpoint=checkpoint, fmt=fmt, seed=seed)
    doc = result.to_json()
    if as_json:
        emit_json(doc)
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
    from ..alignment.merge import merge_files
    from ..files import check_output
    from ..verify import load_inputs

    if len(models) < 2:
        raise click.UsageError("merge needs at least two models")
    weights = _weights(weights, len(models))
    _check_method(method, data, checkpoint)
    check_output(output)
    with spinner(f"merging {len(models)} models", as_json):
        result = merge_files(list(models), output, weights, None if method == "none" else method,
                             data=load_inputs(data) if data else None, checkpoint=checkpoint, fmt=fmt, seed=seed)
    doc = result.to_json()
    if as_json:
        emit_json(doc)
        return
    out.print(f"[bold green]✓[/] merged {len(models)} models → {output} (weights {', '.join(f'{w:g}' for w in result.weights)})")
    for m, a in zip(models[1:], doc["alignments"]):
        out.print(f"  {m}: weight distance to {models[0]} {a['distance_before']:.4g} → {a['distance_after']:.4g}")
    if data:
        out.print(f"  BatchNorm statistics re-estimated in {doc['recalibrated_norm_layers']} layers")
