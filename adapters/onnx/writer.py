"""Write an ONNX model back with new parameter values (permuted, merged, aligned …)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from nngraph.errors import GraphError

from .reader import read_model


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
    for i, t in enumerate(g.initializer):
        if t.name in remaining:
            new = _tensor(remaining.pop(t.name), t.name, t.data_type)
            g.initializer[i].CopyFrom(new)
        elif t.data_location == onnx.TensorProto.EXTERNAL:
            g.initializer[i].CopyFrom(_tensor(model.tensor(t), t.name, t.data_type))
    if remaining:
        producers = {o: n for n in g.node for o in n.output}
        keep = []
        for n in g.node:
            if any(o in remaining for o in n.output) and len(n.output) == 1:
                continue
            keep.append(n)
        graph_inputs = {i.name for i in g.input}
        for name, value in remaining.items():
            if name not in producers and name not in graph_inputs:
                raise GraphError(f"{source}: no tensor named {name!r} to replace")
        bound = [i for i in g.input if i.name in remaining]      # parameters fed as inputs
        for i in bound:
            g.input.remove(i)
        del g.node[:]
        g.node.extend(keep)
        for name, value in remaining.items():
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent if str(out.parent) else ".")
    os.close(fd)
    try:
        onnx.save(proto, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _tensor(value: np.ndarray, name: str, data_type: int) -> onnx.TensorProto:
    value = np.ascontiguousarray(value)
    t = numpy_helper.from_array(value, name)
    if t.data_type != data_type:
        raise GraphError(f"tensor {name!r}: new value of type {value.dtype} does not match the model's")
    return t
