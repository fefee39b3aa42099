"""The nngraph plugin interface: hook specifications and the descriptors they return.

A plugin is any importable object (usually a module) named by an entry point in the
``nngraph`` group::

    [project.entry-points.nngraph]
    myformat = "my_package.nngraph_plugin"

Its functions decorated with :data:`hookimpl` and named like the specs below are called once,
when plugins load; each returns a list of descriptors. The built-in adapters, encoders and
heads are registered this way too, so a third party's plugin is a first-class citizen.

Example::

    from nngraph.hookspecs import hookimpl, AdapterSpec

    @hookimpl
    def nngraph_adapters():
        return [AdapterSpec(name="myformat", convert=convert, sniff=sniff, extensions=(".my",))]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import pluggy

if TYPE_CHECKING:
    import numpy as np

    from .graph.ir import NeuralGraph

PROJECT = "nngraph"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ------------------------------------------------------------------------------ descriptors
@dataclass(frozen=True)
class AdapterSpec:
    """Reads one model format into a :class:`~nngraph.NeuralGraph`.

    ``convert(path, **options)`` builds the graph; ``sniff(path)`` says whether a file looks
    like this format (it must be cheap: look at the suffix and a few bytes). The optional
    callables let ``ngraph verify`` and model writing work for this format:
    ``export(source, params, out)`` writes the model at ``source`` with its parameters replaced
    by ``params`` (name → array) to ``out``; ``run(path, inputs)`` evaluates a model file on a
    dict of named arrays; ``example_inputs(path, seed)`` draws valid random inputs;
    ``read_params(path)`` reads the source tensors directly, to check the exact round trip.
    ``activations(path, graph, inputs)`` returns neuron sets' outputs as ``[samples, size]``
    arrays (activation matching); ``recalibrate(path, inputs, out)`` re-estimates
    normalization statistics on ``inputs`` and writes the model to ``out`` (merging).
    """

    name: str
    convert: Callable[..., "NeuralGraph"]
    sniff: Callable[[Path], bool]
    extensions: tuple[str, ...] = ()
    description: str = ""
    export: Callable[[Path, Mapping[str, "np.ndarray"], Path], None] | None = None
    run: Callable[[Path, Mapping[str, "np.ndarray"]], dict[str, "np.ndarray"]] | None = None
    example_inputs: Callable[[Path, int], dict[str, "np.ndarray"]] | None = None
    read_params: Callable[[Path], dict[str, "np.ndarray"]] | None = None
    activations: Callable[[Path, "NeuralGraph", Mapping[str, "np.ndarray"]], dict[str, "np.ndarray"]] | None = None
    recalibrate: Callable[[Path, Mapping[str, "np.ndarray"], Path], int] | None = None


@dataclass(frozen=True)
class OpRule:
    """Lowers one ONNX op type to neural-graph structure.

    ``lower(ctx, node)`` reads its inputs from the lowering context and records its outputs;
    the engine picks, for each node, the rule of the highest ``since_version`` not above the
    model's opset for ``domain``. The context API is ``nngraph.adapters.onnx.context.LoweringContext``;
    built-in rules register with ``nngraph.adapters.onnx.registry.rule``.
    """

    op_type: str
    lower: Callable[[Any, Any], None]
    domain: str = ""
    since_version: int = 1


@dataclass(frozen=True)
class EncoderSpec:
    """A graph encoder: ``factory(**config)`` returns a ``torch.nn.Module`` mapping a PyG batch of
    featurized graphs to ``(node_embeddings, graph_embeddings)``. ``config`` includes ``hidden``
    (and ``layers`` where it applies) and the feature sizes ``node_dim``, ``edge_dim``,
    ``max_positions``; accept and ignore what you do not use, and raise ``ValueError`` for values you
    cannot take (``ngraph train`` reports it as bad input, the option names as its flags: ``heads`` →
    ``--heads``).

    ``train_defaults`` are the options this encoder trains with when the user leaves them unset
    (``ngraph train``, :meth:`nngraph.learn.train.TrainConfig.for_encoder`), e.g. ``{"pool_norm":
    "batch"}``, chosen from measurements (``benchmarks/learning``); the keys an encoder may set are
    ``nngraph.learn.train.TRAIN_DEFAULT_KEYS`` (``pool_norm``, ``pool_fixed``, ``batch_size``, ``probes``,
    ``probe_inputs``, ``probe_summary``). ``pool_norm`` is what ``pool_norm="auto"`` resolves to where a
    batch can be standardized (batches of at least two graphs, one process; elsewhere ``"none"``): set
    ``"batch"`` only if the encoder implements it. Probe features given here (``probes``) are optional: a
    population that cannot be probed trains without them, with a note."""

    name: str
    factory: Callable[..., Any]
    description: str = ""
    train_defaults: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class HeadSpec:
    """A task head: ``factory(in_dim, out_dim, **config)`` returns a ``torch.nn.Module``."""

    name: str
    factory: Callable[..., Any]
    task: str = ""
    description: str = ""


@dataclass(frozen=True)
class CommandSpec:
    """An extra ``ngraph`` sub-command (a ``click.Command``)."""

    name: str
    command: Any


@dataclass
class Contributions:
    adapters: list[AdapterSpec] = field(default_factory=list)
    onnx_rules: list[OpRule] = field(default_factory=list)
    encoders: list[EncoderSpec] = field(default_factory=list)
    heads: list[HeadSpec] = field(default_factory=list)
    commands: list[CommandSpec] = field(default_factory=list)


# ------------------------------------------------------------------------------ hook specs
@hookspec
def nngraph_adapters() -> list[AdapterSpec]:
    """Model formats this plugin can convert."""


@hookspec
def nngraph_onnx_rules() -> list[OpRule]:
    """ONNX op lowering rules (teach the ONNX engine a custom or missing op)."""


@hookspec
def nngraph_encoders() -> list[EncoderSpec]:
    """Graph encoders (GNNs and baselines) usable by name in ``ngraph train``."""


@hookspec
def nngraph_heads() -> list[HeadSpec]:
    """Task heads usable by name in ``ngraph train``."""


@hookspec
def nngraph_commands() -> list[CommandSpec]:
    """Extra ``ngraph`` sub-commands."""


#: hook name → (Contributions field, descriptor type)
HOOKS: dict[str, tuple[str, type]] = {
    "nngraph_adapters": ("adapters", AdapterSpec),
    "nngraph_onnx_rules": ("onnx_rules", OpRule),
    "nngraph_encoders": ("encoders", EncoderSpec),
    "nngraph_heads": ("heads", HeadSpec),
    "nngraph_commands": ("commands", CommandSpec),
}
