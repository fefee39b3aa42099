"""The ``onnx`` adapter plugin: ONNX files → neural graphs, and back."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from nngraph.errors import InputError
from nngraph.hookspecs import AdapterSpec, OpRule, hookimpl
from nngraph.graph.ir import NeuralGraph

__version__ = "0.1.0"


def sniff(path: Path) -> bool:
    if path.suffix.lower() == ".onnx":
        return True
    if path.is_file() and path.suffix.lower() in ("", ".pb", ".model"):
        with open(path, "rb") as f:
            head = f.read(2)
        return head[:1] == b"\x08"   # protobuf field 1 (ir_version, varint) opens every ModelProto
    return False


def convert(path: Path, bind: Mapping[str, np.ndarray] | None = None, strict: bool = False,
            **options) -> NeuralGraph:
    """Lower an ONNX file. ``bind`` gives values for graph inputs that hold parameters;
    ``strict`` refuses a model with any structure that would be pinned."""
    from nngraph.loader import registry

    from .driver import lower_model
    from .folding import fold
    from .reader import read_model
    from .registry import RuleTable

    rules = RuleTable(registry().onnx_rules)
    return lower_model(read_model(path), rules, _checked(fold, path), dict(bind) if bind else None,
                       strict=strict)


def _checked(fold, path: Path):
    """Folding evaluates the model's own constant subgraphs: when numpy cannot (a Reshape or
    Expand to an impossible shape, mismatched operands), the model is inconsistent: exit 4."""
    from nngraph.errors import NNGraphError

    def checked_fold(ctx, node, ins):
        try:
            return fold(ctx, node, ins)
        except NNGraphError:
            raise
        except (ValueError, TypeError, IndexError, OverflowError) as e:
            raise InputError(f"{path}: node {node.name or node.op_type!r} ({node.op_type}): its constant inputs "
                             f"cannot be evaluated ({type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from None
    return checked_fold


def export(source: Path, params: Mapping[str, np.ndarray], out: Path) -> None:
    from .writer import export as _export

    _export(source, params, out)


def run(path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    from .runtime import run as _run

    return _run(path, inputs)


def example_inputs(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    from .runtime import example_inputs as _example_inputs

    return _example_inputs(path, seed)


def activations(path: Path, graph: NeuralGraph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of every neuron set the engine found a value for (``graph.meta["probes"]``)."""
    from .runtime import activations as _activations

    probes = graph.meta.get("probes")
    if not probes:
        raise InputError(f"{path}: the graph records no activation probes; convert it again with this version")
    return _activations(path, probes, inputs)


def recalibrate(path: Path, inputs: Mapping[str, np.ndarray], out: Path) -> int:
    from .runtime import recalibrate as _recalibrate

    return _recalibrate(path, inputs, out)


def read_params(path: Path) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node values, read straight from the file."""
    from onnx import numpy_helper

    from .graphs import all_graphs
    from .reader import read_model

    model = read_model(path)
    params = {}
    for g in all_graphs(model.graph):
        params.update({t.name: model.tensor(t) for t in g.initializer})
        for node in g.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                params[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return params


@hookimpl
def nngraph_adapters() -> list[AdapterSpec]:
    return [AdapterSpec(
        name="onnx", convert=convert, sniff=sniff, extensions=(".onnx",),
        description="ONNX models (any exporter): lowered op by op", export=export, run=run,
        example_inputs=example_inputs, read_params=read_params, activations=activations,
        recalibrate=recalibrate)]


@hookimpl
def nngraph_onnx_rules() -> list[OpRule]:
    from .rules import BUILTIN_RULES

    return list(BUILTIN_RULES)


__all__ = ["InputError", "convert", "export", "run", "example_inputs", "sniff"]
