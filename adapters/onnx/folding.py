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
from nngraph.graph.origin import Origin

from .context import LoweringContext
from .values import AUX, Const

NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                    "Bernoulli"}


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
    if op == "Slice":
        return _slice_fold(ctx, node, ins)
    if op == "Concat":
        return _concat_fold(ctx, node, ins)
    if op == "Gather" and x.origin is not None and ins[1] is not None and np.asarray(ins[1].data).ndim == 1:
        axis = ctx.attr(node, "axis", 0) % x.data.ndim
        idx = np.asarray(ins[1].data).astype(np.int64) % x.data.shape[axis]
        if len(set(idx.tolist())) == len(idx):
            return x.take(axis, idx.tolist())
    return None


def _slice_fold(ctx: LoweringContext, node: onnx.NodeProto, ins: list) -> Const | None:
    x = ins[0]
    if x.origin is None or any(v is None for v in ins[1:3]):
        return None
    starts, ends = (np.asarray(v.data).reshape(-1).tolist() for v in ins[1:3])
    axes = np.asarray(ins[3].data).reshape(-1).tolist() if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
    steps = np.asarray(ins[4].data).reshape(-1).tolist() if len(ins) > 4 and ins[4] is not None else [1] * len(axes)
    out = x
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        if sp != 1:
            return None
        ax %= x.data.ndim
        n = x.data.shape[ax]
        st = max(0, st + n if st < 0 else min(st, n))
        en = max(0, en + n if en < 0 else min(en, n))
        out = out.slice(ax, st, en)
    return out


def _concat_fold(ctx: LoweringContext, node: onnx.NodeProto, ins: list) -> Const | None:
    """Slices of one tensor concatenated along the sliced axis: the tensor with its blocks
    reordered (PyTorch's i,f,g,o gates become ONNX's i,o,f,c) — still an exact origin."""
    parts = [v for v in ins if v is not None]
    if not parts or any(p.origin is None and p.parts is None for p in parts) or not parts[0].is_float:
        return None
    axis = ctx.attr(node, "axis") % parts[0].data.ndim
    base = parts[0].origin
    if any(p.origin is None or p.origin.tensor != base.tensor for p in parts):   # several tensors stacked
        bounds, lo = [], 0
        for p in parts:
            if p.parts is not None and p.parts[0] == axis:
                bounds.extend((lo + a, lo + b, q) for a, b, q in p.parts[1])
            elif p.origin is not None or p.parts is not None:
                bounds.append((lo, lo + p.data.shape[axis], p))
            else:
                return None
            lo += p.data.shape[axis]
        return Const(np.concatenate([p.data for p in parts], axis=axis), None, parts=(axis, bounds))
    idx = []
    for p in parts:
        o = p.origin
        if o.tensor != base.tensor or not o.steps or o.steps[:-1] != base.steps[:-1]:
            return None
        last = o.steps[-1]
        if last[0] != "slice" or last[1] % parts[0].data.ndim != axis:
            return None
        idx.extend(range(last[2], last[3]))
    if len(set(idx)) != len(idx):
        return None
    root = Origin(base.tensor, base.steps[:-1])
    return Const(np.concatenate([p.data for p in parts], axis=axis), root.take(axis, idx))


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _numpy(node: onnx.NodeProto, vals: list) -> list[np.ndarray] | None:
    """Fast, exact numpy versions of the ops constant subgraphs are made of (None: not here)."""
    op, a = node.op_type, vals
    if op == "ConstantOfShape":
        t = _attr(node, "value")
        fill = numpy_helper.to_array(t).reshape(-1)[0] if t is not None else np.float32(0)
        return [np.full(tuple(int(d) for d in a[0].reshape(-1)), fill, dtype=np.asarray(fill).dtype)]
    if op == "Cast":
        return [a[0].astype(onnx.helper.tensor_dtype_to_np_dtype(_attr(node, "to")))]
    if op == "Gather":
        return [np.take(a[0], a[1], axis=_attr(node, "axis", 0))]
    if op == "GatherElements":
        axis = _attr(node, "axis", 0)
        idx = np.where(a[1] < 0, a[1] + a[0].shape[axis], a[1])
        return [np.take_along_axis(a[0], idx, axis=axis)]
    if op == "Concat":
        return [np.concatenate([v for v in a if v is not None], axis=_attr(node, "axis"))]
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
    if op in ("DequantizeLinear", "QuantizeLinear"):
        x, scale = a[0], a[1]
        zp = a[2] if len(a) > 2 and a[2] is not None else np.zeros((), x.dtype if op == "DequantizeLinear" else np.uint8)
        axis = _attr(node, "axis", 1)
        if scale.ndim == 1 and scale.size > 1:     # per-channel along `axis`
            shape = [1] * x.ndim
            shape[axis % x.ndim] = scale.size
            scale, zp = scale.reshape(shape), (zp.reshape(shape) if zp.ndim == 1 else zp)
        if op == "DequantizeLinear":
            return [((x.astype(np.float32) - zp.astype(np.float32)) * scale).astype(scale.dtype)]
        info = np.iinfo(zp.dtype)
        return [np.clip(np.rint(x / scale) + zp.astype(np.int32), info.min, info.max).astype(zp.dtype)]
    unary = {"Neg": np.negative, "Sqrt": np.sqrt, "Not": np.logical_not, "Abs": np.abs}
    if op in unary:
        r = unary[op](a[0])
        return [r.astype(np.float32) if op == "Sqrt" and a[0].dtype.kind in "iu" else r.astype(a[0].dtype, copy=False)
                if r.dtype.kind == a[0].dtype.kind else r]
    return None


def run_node(node: onnx.NodeProto, arrays: list, opset_import) -> list[np.ndarray]:
    """Evaluate one node on constant inputs (None for absent ones): exact numpy for the ops
    constant subgraphs are made of, the ONNX reference implementation for the rest."""
    from onnx.reference import ReferenceEvaluator

    with np.errstate(all="ignore"):    # log(0) in T5's bucket maths etc.: values as ONNX defines them
        fast = _numpy(node, arrays)
    if fast is not None:
        return fast
    names = [f"in{i}" if i_name else "" for i, i_name in enumerate(node.input)]
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in names if n]
    outputs = [onnx.helper.make_tensor_value_info(f"out{i}", onnx.TensorProto.UNDEFINED, None)
               for i in range(len(node.output))]
    single = onnx.helper.make_node(node.op_type, names, [o.name for o in outputs], domain=node.domain)
    single.attribute.extend(node.attribute)
    m = onnx.helper.make_model(onnx.helper.make_graph([single], "fold", inputs, outputs), opset_imports=opset_import)
    import warnings
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return list(ReferenceEvaluator(m).run(None, {n: a for n, a in zip(names, arrays) if n}))


def _evaluate(ctx: LoweringContext, node: onnx.NodeProto, ins: list) -> list[np.ndarray]:
    try:
        return run_node(node, [None if v is None else np.asarray(v.value) for v in ins],
                        ctx.model.proto.opset_import)
    except Exception as e:  # noqa: BLE001
        raise UnsupportedModelError(f"{ctx.model.path}: cannot fold constant node "
                                    f"{node.name or node.output[0]!r} ({node.op_type}): {e}") from None


def fold(ctx: LoweringContext, node: onnx.NodeProto, ins: list) -> list:
    """Values for ``node``'s outputs, given that all its inputs are constants."""
    if node.op_type == "Constant":
        name = node.output[0]
        value = constant_value(ctx, node)
        if value.dtype.kind == "f" and value.size > 1:
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
    from_params = any(v is not None and v.origin is not None and v.is_float and v.data.size > 1
                      and not v.synthetic and v.origin.tensor not in ctx.synthetic for v in ins)
    for name, arr in zip(node.output, computed):
        arr = np.asarray(arr)
        if arr.dtype.kind == "f" and arr.size > 1:
            ctx.leaves[name] = arr
            ctx.graph.meta.setdefault("derived", []).append(name)
            if not from_params:
                ctx.synthetic.add(name)
            outs.append(Const(arr, Origin(name), synthetic=not from_params))
        else:
            outs.append(Const(arr))
    return outs


def constant_value(ctx: LoweringContext, node: onnx.NodeProto) -> np.ndarray:
    """The tensor a Constant node holds, whichever of its value attributes it uses."""
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    v = onnx.helper.get_attribute_value(a)
    if a.name in ("value_float", "value_int"):
        return np.asarray(v, dtype=np.float32 if a.name == "value_float" else np.int64)
    if a.name in ("value_floats", "value_ints"):
        return np.asarray(list(v), dtype=np.float32 if a.name == "value_floats" else np.int64)
    raise UnsupportedModelError(f"{ctx.model.path}: Constant node {node.name!r} with attribute {a.name!r}")
