"""A tiny ONNX graph builder for soundness tests: attention blocks with symbolic batch and sequence
dims whose reshape targets are computed at run time (Shape → Gather/Slice → Concat), the way dynamic
exports write them — the paths a static export never reaches."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BIG = 2 ** 62


class Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []

    def const(self, a) -> str:
        a = np.asarray(a)
        a = a.astype(np.int64 if a.dtype.kind in "iu" else np.float32)
        self.inits.append(numpy_helper.from_array(a, f"c{len(self.inits)}"))
        return self.inits[-1].name

    def op(self, kind: str, ins: list, n_out: int = 1, **attrs):
        outs = [f"v{len(self.nodes)}_{i}" for i in range(n_out)] if n_out > 1 else [f"v{len(self.nodes)}"]
        self.nodes.append(helper.make_node(kind, ins, outs, **attrs))
        return outs if n_out > 1 else outs[0]

    def lin(self, x: str, din: int, dout: int) -> str:
        return self.op("MatMul", [x, self.const(self.rng.standard_normal((din, dout)) / np.sqrt(din))])

    def dim(self, x: str, k: int) -> str:
        return self.op("Gather", [self.op("Shape", [x]), self.const([k])], axis=0)

    def dims(self, x: str, start: int, end: int) -> str:
        return self.op("Slice", [self.op("Shape", [x]), self.const([start]), self.const([end]), self.const([0])])

    def cat(self, parts: list) -> str:
        return self.op("Concat", [p if isinstance(p, str) else self.const(p) for p in parts], axis=0)

    def reshape(self, x: str, target) -> str:
        return self.op("Reshape", [x, target if isinstance(target, str) else self.const(target)])

    def T(self, x: str, perm: list) -> str:
        return self.op("Transpose", [x], perm=perm)

    def attention(self, q: str, k_t: str, v: str) -> str:
        return self.op("MatMul", [self.op("Softmax", [self.op("MatMul", [q, k_t])], axis=-1), v])

    def save(self, path, inputs: list, out: str, out_shape: list, more_outputs: tuple = ()):
        """Write the model: ``inputs`` as ``(name, shape)`` (float) or ``(name, shape, TensorProto type)``,
        output ``out`` and ``more_outputs`` (``(name, shape)``, float)."""
        graph = helper.make_graph(self.nodes, "m", [helper.make_tensor_value_info(n, *(t or [TensorProto.FLOAT]), s)
                                                    for n, s, *t in inputs],
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, s)
                                   for o, s in [(out, out_shape), *more_outputs]], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, path)
        return path
