"""Probe features: what each neuron outputs on a few fixed inputs (Kofinas et al. 2024, §3.3).

Weights alone describe a network only up to what an encoder can infer from them; the values its
neurons take on a handful of fixed inputs describe *what it computes* directly. Every network of a
population gets the same ``k`` inputs (``example_inputs(path, seed=j)`` of its adapter, so networks
with the same input signature see identical probes), and each neuron's output, averaged over the
samples of one input (batch, tokens, spatial positions), becomes one node feature.

Where the probe inputs come from (``inputs``, ``FeatureConfig.probe_inputs``): ``"normal"`` (the
default) uses the adapter's example inputs as they are — float inputs standard normal; ``"uniform"``
redraws every float input uniformly from [-1, 1] (integer ids and masks stay the adapter's). A network
whose inputs live in [-1, 1] — a coordinate network (INR) reading pixel coordinates, or any model fed
inputs scaled to that range — is only meaningful there: with standard-normal probes 2-input SIRENs
were probed inside their domain at 41–62 % of the points (8–32 probes), and logistic regression on the
output neuron's probe values (the image samples) scored test accuracy 0.34–0.40 against 0.51–0.70
with uniform probes (benchmarks/learning, inr population, 80 test INRs).

The values are stored on the graph as a per-neuron array ``PROBE`` of shape ``[neurons, k]`` with no
origin (they are measurements, not parameters): :func:`nngraph.graph.symmetry.permute` moves them
with their neurons, so a permuted network has permuted probe features, and ``featurize`` reads them
into the last ``FeatureConfig.probes`` node columns. Probing needs an adapter that can run the
model file (ONNX, torch, Keras exports); a checkpoint trained with probes needs the model files at
prediction time too.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..graph.dtypes import is_float
from ..graph.ir import NeuralGraph, Param

#: Name of the per-neuron array that holds probe values (never a parameter slot).
PROBE = "probe"
#: ``graph.meta`` key recording which probe inputs (:data:`PROBE_INPUTS`) the values came from.
PROBE_INPUTS_KEY = "probe_inputs"
#: Probe-input distributions: the adapter's example inputs, or float inputs redrawn from U(-1, 1).
PROBE_INPUTS = ("normal", "uniform")


def has_probes(graph: NeuralGraph, k: int, inputs: str = "normal") -> bool:
    return graph.meta.get(PROBE_INPUTS_KEY, "normal") == inputs and all(
        PROBE in s.arrays and s.arrays[PROBE].data.shape[1:] == (k,) for s in graph.sets.values())


def is_probe_file(inputs: str) -> bool:
    """``inputs`` names a file of probe samples (``.npz``) rather than a distribution."""
    return inputs not in PROBE_INPUTS and str(inputs).endswith(".npz")


@functools.lru_cache(maxsize=4)
def load_probe_file(path: str) -> dict[str, np.ndarray]:
    """The arrays of a probe-sample file: an ``.npz`` (never unpickled) whose arrays are named after the
    model inputs they feed (any name when the model has one float input), sample ``j`` of each along
    the first axis being probe ``j``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, EOFError):
        # numpy reports a file that is no zip of arrays as "pickled data": neither is read
        raise InputError(f"{path}: not a readable .npz of probe inputs (a zip of plain arrays; "
                         f"pickled objects are never loaded)") from None
    if not arrays:
        raise InputError(f"{path}: no arrays in the probe-input file")
    return arrays


def _file_feeds(feeds: dict, source: str, seed: int, model: str | Path) -> dict:
    """``feeds`` with each float input replaced by sample ``seed`` of its array in ``source``."""
    arrays = load_probe_file(str(source))
    floats = [n for n, v in feeds.items() if is_float(np.asarray(v).dtype)]
    out = dict(feeds)
    for name in floats:
        arr = arrays.get(name)
        if arr is None and len(arrays) == 1 and len(floats) == 1:
            arr = next(iter(arrays.values()))
        if arr is None:
            raise InputError(f"{source}: no array named {name!r} (an input of {model})")
        if seed >= len(arr):
            raise InputError(f"{source}: {name!r} has {len(arr)} probe samples, probe {seed + 1} was asked for")
        shape, sample = np.shape(feeds[name]), arr[seed]
        if sample.size == int(np.prod(shape)):
            value = sample.reshape(shape)
        elif len(shape) > 1 and sample.size == int(np.prod(shape[1:])):       # one sample, repeated over the batch
            value = np.broadcast_to(sample.reshape((1, *shape[1:])), shape)
        else:
            raise InputError(f"{source}: a sample of {name!r} has shape {sample.shape}, "
                             f"{model} takes {tuple(shape)}")
        out[name] = np.ascontiguousarray(value, dtype=np.asarray(feeds[name]).dtype)
    return out


def probe_feeds(adapter, path: str | Path, seed: int, inputs: str = "normal") -> dict[str, np.ndarray]:
    """The ``seed``-th probe input of the model at ``path``: the adapter's example inputs, with float
    arrays redrawn from U(-1, 1) (same shapes and dtypes, seeded by ``seed``) when ``inputs`` is
    ``"uniform"``, or taken from sample ``seed`` of an ``.npz`` file when ``inputs`` names one (inputs from
    the networks' own data: a CNN's outputs on real images tell how well it classifies them); identical
    for every model with the same input signature."""
    if not (inputs in PROBE_INPUTS or is_probe_file(inputs)):
        raise InputError(f"probe inputs must be one of {', '.join(PROBE_INPUTS)} or an .npz file, got {inputs!r}")
    feeds = adapter.example_inputs(path, seed)
    if is_probe_file(inputs):
        return _file_feeds(feeds, inputs, seed, path)
    if inputs == "uniform":
        rng = np.random.default_rng(seed)
        feeds = {n: rng.uniform(-1, 1, np.shape(v)).astype(np.asarray(v).dtype) if is_float(np.asarray(v).dtype)
                 else v for n, v in feeds.items()}
    return feeds


def attach_probes(graph: NeuralGraph, path: str | Path, k: int, seed: int = 0, inputs: str = "normal") -> NeuralGraph:
    """Run the model at ``path`` on ``k`` fixed inputs (:func:`probe_feeds`) and store each neuron's
    mean output on ``graph`` (``set.arrays[PROBE]``, ``[size, k]``); returns ``graph``. Sets the
    runtime does not expose (heads, fixed tables) get zeros; input neurons get the input values."""
    from ..api import find_adapter
    if has_probes(graph, k, inputs):
        return graph
    adapter = find_adapter(path)
    if adapter.activations is None or adapter.example_inputs is None:
        raise InputError(f"{path}: probe features need a model the {adapter.name!r} adapter can run")
    values = {name: np.zeros((s.size, k), np.float32) for name, s in graph.sets.items()}
    for j in range(k):
        feeds = probe_feeds(adapter, path, seed + j, inputs)
        acts = adapter.activations(path, graph, feeds)
        for name, s in graph.sets.items():
            a = acts.get(name)
            if a is None and s.role == "input" and name in feeds:
                a = np.asarray(feeds[name], np.float32).reshape(-1, s.size)
            if a is not None and a.shape[-1] == s.size and len(a):
                col = np.asarray(a, np.float64).mean(axis=0)
                values[name][:, j] = np.nan_to_num(col, nan=0.0, posinf=0.0, neginf=0.0)
    for name, s in graph.sets.items():
        s.arrays[PROBE] = Param(values[name])
    graph.meta[PROBE_INPUTS_KEY] = inputs
    return graph


def attach_all(graphs: list, paths: list | None, k: int, seed: int = 0, inputs: str = "normal",
               advance=None) -> None:
    """:func:`attach_probes` for each graph (``None`` entries skipped); ``paths`` are required.
    ``advance()`` is called after each graph (a progress bar: probing runs each model ``k`` times)."""
    if k <= 0:
        return
    if paths is None or len(paths) != len(graphs):
        raise InputError("this checkpoint uses probe features: it needs the model files, not only their graphs")
    for g, p in zip(graphs, paths):
        if g is not None:
            attach_probes(g, p, k, seed, inputs)
        if advance is not None:
            advance()
