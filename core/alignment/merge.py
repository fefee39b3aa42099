"""Align and merge model files: what ``ngraph align`` and ``ngraph merge`` run.

Alignment happens on neural graphs (:mod:`nngraph.alignment.matching`); this module converts the files,
gathers what each method needs (activations on ``--data`` through the adapter, node embeddings
from a checkpoint), writes the results through the source format's adapter, and checks them in
the adapter's runtime before anything reaches the output path.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .matching import Alignment, align, check_compatible, interpolate, node_embeddings
from ..api import find_adapter
from ..errors import GraphError, InputError, PluginError
from ..files import atomic_output
from ..graph.ir import NeuralGraph
from ..verify import compare_outputs, graph_depth, output_tolerance

Inputs = Mapping[str, np.ndarray]


def _load(paths: list[Path], fmt: str | None):
    adapters = [find_adapter(p, fmt) for p in paths]
    names = {a.name for a in adapters}
    if len(names) > 1:
        raise InputError(f"models of different formats ({', '.join(sorted(names))}); convert them to one format first")
    graphs = [adapters[0].convert(p).validate() for p in paths]
    for p, g in zip(paths[1:], graphs[1:]):
        check_compatible(graphs[0], g, (paths[0].name, p.name))
    return adapters[0], graphs


def _align_all(adapter, paths: list[Path], graphs: list[NeuralGraph], method: str, data: Inputs | None,
               checkpoint: Path | None, seed: int) -> list[Alignment]:
    """Align every graph after the first to the first."""
    extra: dict[str, Any] = {}
    if method == "activation":
        if data is None:
            raise InputError("--method activation needs --data FILE.npz (sample inputs, named like the model's)")
        if adapter.activations is None:
            raise PluginError(f"adapter {adapter.name!r} cannot compute activations; use --method weight")
        acts = [adapter.activations(p, g, data) for p, g in zip(paths, graphs)]
    if method == "embedding":
        if checkpoint is None:
            raise InputError("--method embedding needs --checkpoint CKPT (a trained encoder, see `ngraph train`)")
        embs = node_embeddings(checkpoint, graphs, paths=paths)
    out = []
    for i in range(1, len(graphs)):
        if method == "activation":
            extra = {"activations": (acts[0], acts[i])}
        elif method == "embedding":
            extra = {"embeddings": (embs[0], embs[i])}
        out.append(align(graphs[0], graphs[i], method, seed=seed, **extra))
    return out


def _same_function(adapter, reference: Path, candidate: Path, inputs: Inputs, depth: int = 0) -> float:
    """Largest relative output difference; raises :class:`GraphError` above the tolerance of the
    model's output dtype and depth (:func:`nngraph.verify.output_tolerance`)."""
    ref = adapter.run(reference, inputs)
    rtol = output_tolerance(ref, depth)
    _, worst, problems = compare_outputs(ref, adapter.run(candidate, inputs))
    if problems:
        raise GraphError(f"the aligned model differs from the original: {problems[0]}; nothing written")
    if worst > rtol:
        raise GraphError(f"the aligned model does not compute the original's function (relative difference "
                         f"{worst:.3g} > {rtol:g}); nothing written")
    return worst


def _check_inputs(adapter, path: Path, data: Inputs | None, seed: int) -> Inputs:
    if data is not None:
        return data
    if adapter.example_inputs is None:
        raise InputError(f"{path}: adapter {adapter.name!r} cannot make example inputs; pass --data")
    return adapter.example_inputs(path, seed)


@dataclass
class AlignResult:
    alignment: Alignment
    output: Path
    max_rel_diff: float

    def to_json(self) -> dict:
        return {**self.alignment.to_json(), "output": str(self.output), "max_rel_diff": self.max_rel_diff,
                "moved_groups": len(self.alignment.symmetry.perms)}


def align_files(a: Path, b: Path, out: Path, method: str = "weight", *, data: Inputs | None = None,
                checkpoint: Path | None = None, fmt: str | None = None, seed: int = 0) -> AlignResult:
    """Write ``b`` permuted to be closest to ``a``; checked to compute ``b``'s function first."""
    a, b, out = Path(a), Path(b), Path(out)
    adapter, graphs = _load([a, b], fmt)
    if adapter.export is None or adapter.run is None:
        raise PluginError(f"adapter {adapter.name!r} cannot write or run models, so it cannot write aligned ones")
    alignment = _align_all(adapter, [a, b], graphs, method, data, checkpoint, seed)[0]
    feeds = _check_inputs(adapter, b, data, seed)
    with atomic_output(out) as final, _scratch(final) as tmp:
        staged = tmp / f"aligned{b.suffix}"
        adapter.export(b, graphs[1].permute(alignment.symmetry).to_params(), staged)
        worst = _same_function(adapter, b, staged, feeds, graph_depth(graphs[1]))
        _publish(staged, final)
    return AlignResult(alignment, out, worst)


@dataclass
class MergeResult:
    output: Path
    weights: list[float]
    alignments: list[Alignment] = field(default_factory=list)
    recalibrated: int = 0

    def to_json(self) -> dict:
        return {"output": str(self.output), "weights": self.weights, "recalibrated_norm_layers": self.recalibrated,
                "alignments": [a.to_json() for a in self.alignments]}


def merge_files(paths: list[Path], out: Path, weights: list[float] | None = None, method: str | None = "weight", *,
                data: Inputs | None = None, checkpoint: Path | None = None, fmt: str | None = None,
                seed: int = 0) -> MergeResult:
    """Align every model to the first (unless ``method`` is None), average the parameters with
    ``weights`` (default: equal) and write the result; with ``data``, re-estimate the merged
    model's BatchNorm statistics on it."""
    paths = [Path(p) for p in paths]
    out = Path(out)
    if len(paths) < 2:
        raise InputError("merge needs at least two models")
    weights = list(weights) if weights is not None else [1.0 / len(paths)] * len(paths)
    if len(weights) != len(paths):
        raise InputError(f"--weights has {len(weights)} values for {len(paths)} models")
    if not np.isclose(sum(weights), 1.0):
        raise InputError(f"--weights must sum to 1 (they sum to {sum(weights):g})")
    adapter, graphs = _load(paths, fmt)
    if adapter.export is None:
        raise PluginError(f"adapter {adapter.name!r} cannot write models, so it cannot write a merged one")
    alignments = _align_all(adapter, paths, graphs, method, data, checkpoint, seed) if method else []
    aligned = [graphs[0]] + [g.permute(al.symmetry) for g, al in zip(graphs[1:], alignments)] if method else graphs
    merged = interpolate(aligned, weights)
    recalibrated = 0
    with atomic_output(out) as final, _scratch(final) as tmp:
        staged = tmp / f"merged{paths[0].suffix}"
        adapter.export(paths[0], merged, staged)
        if data is not None and adapter.recalibrate is not None:
            recalibrated = adapter.recalibrate(staged, data, tmp / f"recalibrated{paths[0].suffix}")
            staged = tmp / f"recalibrated{paths[0].suffix}"
        _publish(staged, final)
    return MergeResult(out, weights, alignments, recalibrated)


@contextlib.contextmanager
def _scratch(final: Path):
    """A folder beside ``final`` (``files.atomic_output``'s temporary path) to write and check models in,
    removed afterwards: they keep their format's suffix (runtimes may read it), and files an adapter
    writes beside a model (safetensors' config.json, ONNX external data) never reach the output folder."""
    with tempfile.TemporaryDirectory(prefix=".nngraph-stage-", dir=final.parent) as tmp:
        yield Path(tmp)


def _publish(staged: Path, final: Path) -> None:
    """Hand a checked model to ``atomic_output`` (``final``), which renames it onto the output on success.
    One file is published: a model with an external-data file is refused (two renames are not atomic,
    and its stored location would name the staged file)."""
    if (staged.parent / f"{staged.name}.data").exists():
        raise GraphError("models above 2 GB cannot be aligned or merged yet (external data)")
    os.replace(staged, final)


__all__ = ["AlignResult", "MergeResult", "align_files", "merge_files"]
