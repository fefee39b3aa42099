"""Write an ONNX model back with new parameter values (permuted, merged, aligned …)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from nngraph.errors import GraphError
from nngraph.files import atomic_output

from .graphs import all_graphs
from .reader import read_model

EXTERNAL_ABOVE = 1_800_000_000   # bytes of weights above which the model is written with external data


def export(source: str | os.PathLike, params: Mapping[str, np.ndarray], out: str | os.PathLike) -> Path:
    """Copy the model at ``source`` to ``out`` with every tensor named in ``params`` replaced.

    A name is an initializer, the output of a ``Constant`` node, or a *derived leaf* (the output
    of a folded constant subgraph): the latter two become initializers and their producing
    nodes are dropped. All weights are written inline; the write is atomic.
    """
    model = read_model(source)
    proto = model.proto
    g = proto.graph
    remaining = dict(params)
    graphs = list(all_graphs(g))
    for sub in graphs:                    # initializers, in the main graph and in If/Loop bodies
        for i, t in enumerate(sub.initializer):
            if t.name in remaining:
                sub.initializer[i].CopyFrom(_tensor(remaining.pop(t.name), t.name, t.data_type))
            elif t.data_location == onnx.TensorProto.EXTERNAL or model.stripped(t):
                sub.initializer[i].CopyFrom(_tensor(model.tensor(t), t.name, t.data_type))
    if remaining:
        graph_inputs = {i.name for i in g.input}
        found = set()
        for sub in graphs:               # Constant nodes and folded subgraphs become initializers
            keep = []
            for n in sub.node:
                hit = [o for o in n.output if o in remaining]
                if hit and len(n.output) == 1:
                    found.add(hit[0])
                    t = numpy_helper.from_array(np.ascontiguousarray(remaining[hit[0]]), hit[0])
                    sub.initializer.append(t)
                    if proto.ir_version < 4 and sub is g:    # before IR 4 every initializer is also a graph input
                        _declare_input(g, t)
                    continue
                keep.append(n)
            del sub.node[:]
            sub.node.extend(keep)
        missing = [n for n in remaining if n not in found and n not in graph_inputs]
        if missing:
            raise GraphError(f"{source}: no tensor named {missing[0]!r} to replace")
        for i in [i for i in g.input if i.name in remaining and i.name not in found]:    # parameters fed as inputs
            t = numpy_helper.from_array(np.ascontiguousarray(remaining[i.name]), i.name)
            g.initializer.append(t)
            if proto.ir_version < 4:
                _declare_input(g, t)     # the input stays, declaring the initializer (opset upgraders need it)
            else:
                g.input.remove(i)
    return save_atomic(proto, out)


def _declare_input(g: onnx.GraphProto, t: onnx.TensorProto) -> None:
    """The graph input of an initializer (IR < 4), with the initializer's type and shape: an
    input declared without a shape would hide the weight's shape from shape inference."""
    info = onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
    for i in g.input:
        if i.name == t.name:
            i.CopyFrom(info)
            return
    g.input.append(info)


def inline_copy(model) -> onnx.ModelProto:
    """The model's proto with every weight inline (external or memory-mapped ones read in)."""
    proto = model.proto
    for sub in all_graphs(proto.graph):
        for i, t in enumerate(sub.initializer):
            if t.data_location == onnx.TensorProto.EXTERNAL or model.stripped(t):
                sub.initializer[i].CopyFrom(_tensor(model.tensor(t), t.name, t.data_type))
    return proto


def save_atomic(proto: onnx.ModelProto, out: str | os.PathLike) -> Path:
    """Write ``proto`` to ``out`` via a temporary file and a rename: never half a model.
    Above ~1.8 GB of weights they go to ``OUT.data`` beside it (protobuf's 2 GB limit)."""
    g = proto.graph
    out = Path(out)
    big = sum(t.ByteSize() for t in g.initializer) > EXTERNAL_ABOVE
    with atomic_output(out) as tmp:       # umask permissions; nothing left behind on failure
        if big:   # protobuf cannot hold 2 GB: weights go to OUT.data beside the model
            onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=f"{out.name}.data", size_threshold=1024)
            produced = tmp.parent / f"{out.name}.data"
            if produced != out.parent / f"{out.name}.data":
                os.replace(produced, out.parent / f"{out.name}.data")
        else:
            onnx.save(proto, str(tmp))
    return out



def _tensor(value: np.ndarray, name: str, data_type: int) -> onnx.TensorProto:
    value = np.ascontiguousarray(value)
    t = numpy_helper.from_array(value, name)
    if t.data_type != data_type:
        raise GraphError(f"tensor {name!r}: new value of type {value.dtype} does not match the model's")
    return t
