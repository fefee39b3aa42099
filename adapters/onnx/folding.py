"""Fold nodes whose inputs are all constants.

Index-only ops (Identity, Transpose, Reshape, Squeeze, Unsqueeze, Flatten) keep the exact
origin of their input, so a weight stored transposed or reshaped still round-trips to its
initializer. Any other op (``ConstantOfShape``, ``Cast``, ``DequantizeLinear``, arithmetic …) is
evaluated with the ONNX reference implementation; a floating-point result becomes a *derived
leaf*: a source tensor named after the node's output, which the writer emits as an initializer
in place of the subgraph that computed it.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from nngraph.errors import UnsupportedModelError
from nngraph.origin import Origin

from .engine import AUX, Const, LoweringContext

NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                    "Bernoulli"}


def _axes(ctx: LoweringContext, node: onnx.NodeProto, ins: list) -> list[int] | None:
    if len(ins) > 1 and ins[1] is not None:
        return [int(a) for a in np.asarray(ins[1].data).reshape(-1)]
    axes = ctx.attr(node, "axes")
    return None if axes is None else [int(a) for a in axes]


def _index_fold(ctx: LoweringContext, node: onnx.NodeProto, ins: list) -> Const | None:
    op, x = node.op_type, ins[0] if ins else None
    if x is None or x.broadcast is not None:
        return None
    if op == "Identity":
        return x
    if op == "Expand" and x.is_float and x.origin is not None:
        # a parameter broadcast (a class token to the batch): keep the parameter itself
        shape = np.broadcast_shapes(x.data.shape, tuple(int(d) for d in np.asarray(ins[1].data).reshape(-1)))
        return Const(x.data, x.origin, shape)
    if op == "Transpose":
        perm = ctx.attr(node, "perm") or list(range(x.data.ndim))[::-1]
        return x.transpose(perm)
    if op in ("Reshape", "Squeeze", "Unsqueeze", "Flatten"):
        shape = _evaluate(ctx, node, ins)[0].shape
        return x.reshape(shape)
    return None


def _numpy(ctx: LoweringContext, node: onnx.NodeProto, vals: list) -> list[np.ndarray] | None:
    """Fast, exact numpy versions of the ops constant subgraphs are made of (None: not here)."""
    op, a = node.op_type, vals
    if op == "ConstantOfShape":
        t = ctx.attr(node, "value")
        fill = numpy_helper.to_array(t).reshape(-1)[0] if t is not None else np.float32(0)
        return [np.full(tuple(int(d) for d in a[0].reshape(-1)), fill, dtype=np.asarray(fill).dtype)]
    if op == "Cast":
        return [a[0].astype(onnx.helper.tensor_dtype_to_np_dtype(ctx.attr(node, "to")))]
    if op == "Gather":
        return [np.take(a[0], a[1], axis=ctx.attr(node, "axis", 0))]
    if op == "GatherElements":
        axis = ctx.attr(node, "axis", 0)
        idx = np.where(a[1] < 0, a[1] + a[0].shape[axis], a[1])
        return [np.take_along_axis(a[0], idx, axis=axis)]
    if op == "Concat":
        return [np.concatenate([v for v in a if v is not None], axis=ctx.attr(node, "axis"))]
    if op == "Range":
        return [np.arange(a[0], a[1], a[2]).astype(a[0].dtype)]
    if op == "Where":
        return [np.where(a[0], a[1], a[2])]
    binary = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Equal": np.equal, "Less": np.less,
              "Greater": np.greater, "And": np.logical_and, "Or": np.logical_or}
    if op in binary and a[0].dtype == a[1].dtype:
        return [binary[op](a[0], a[1])]
    if op == "Div" and a[0].dtype == a[1].dtype:
        q = a[0] / a[1]
        return [q.astype(a[0].dtype) if a[0].dtype.kind == "f" else np.trunc(q).astype(a[0].dtype)]
    unary = {"Neg": np.negative, "Sqrt": np.sqrt, "Not": np.logical_not, "Abs": np.abs}
    if op in unary:
        return [unary[op](a[0])]
    return None


def _evaluate(ctx: LoweringContext, node: onnx.NodeProto, ins: list) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    with np.errstate(all="ignore"):    # log(0) in T5's bucket maths etc.: values as ONNX defines them
        fast = _numpy(ctx, node, [None if v is None else np.asarray(v.value) for v in ins])
    if fast is not None:
        return fast

    names = [f"in{i}" if i_name else "" for i, i_name in enumerate(node.input)]
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in names if n]
    outputs = [onnx.helper.make_tensor_value_info(f"out{i}", onnx.TensorProto.UNDEFINED, None)
               for i in range(len(node.output))]
    single = onnx.helper.make_node(node.op_type, names, [o.name for o in outputs], domain=node.domain)
    single.attribute.extend(node.attribute)
    g = onnx.helper.make_graph([single], "fold", inputs, outputs)
    m = onnx.helper.make_model(g, opset_imports=ctx.model.proto.opset_import)
    feeds = {n: np.asarray(v.value) for n, v in zip(names, ins) if n}
    try:
        import warnings
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return list(ReferenceEvaluator(m).run(None, feeds))
    except Exception as e:  # noqa: BLE001
        raise UnsupportedModelError(f"{ctx.model.path}: cannot fold constant node "
                                    f"{node.name or node.output[0]!r} ({node.op_type}): {e}") from None


def fold(ctx: LoweringContext, node: onnx.NodeProto, ins: list) -> list:
    """Values for ``node``'s outputs, given that all its inputs are constants."""
    if node.op_type == "Constant":
        name = node.output[0]
        value = _constant_value(ctx, node)
        if value.dtype.kind == "f":
            ctx.leaves[name] = value
            return [Const(value, Origin(name))]
        return [Const(value)]
    if node.op_type in NONDETERMINISTIC:
        return [AUX] * len(node.output)
    c = _index_fold(ctx, node, ins)
    if c is not None:
        return [c]
    outs = []
    computed = _evaluate(ctx, node, ins)
    for v in ins:                       # leaves folded into a new derived leaf live on inside it
        if v is not None and v.origin is not None and v.is_float:
            ctx.absorbed.add(v.origin.tensor)
    for name, arr in zip(node.output, computed):
        arr = np.asarray(arr)
        if arr.dtype.kind == "f" and arr.size > 1:
            ctx.leaves[name] = arr
            ctx.graph.meta.setdefault("derived", []).append(name)
            outs.append(Const(arr, Origin(name)))
        else:
            outs.append(Const(arr))
    return outs


def _constant_value(ctx: LoweringContext, node: onnx.NodeProto) -> np.ndarray:
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    v = onnx.helper.get_attribute_value(a)
    if a.name in ("value_float", "value_int"):
        return np.asarray(v, dtype=np.float32 if a.name == "value_float" else np.int64)
    if a.name in ("value_floats", "value_ints"):
        return np.asarray(list(v), dtype=np.float32 if a.name == "value_floats" else np.int64)
    raise UnsupportedModelError(f"{ctx.model.path}: Constant node {node.name!r} with attribute {a.name!r}")
