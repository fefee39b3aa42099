"""Static shapes for the engine: ONNX (or onnxruntime's symbolic) shape inference, run with a
concrete batch size, plus the small integer values computable from static shapes that ONNX's
data propagation leaves unknown (reshape targets an exporter computes with Shape → Gather →
ReduceProd → Concat).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .folding import run_node
from .graphs import all_graphs
from .reader import OnnxModel

BATCH = 3   # a concrete batch size for shape inference: keeps reshapes through the batch axis followable


def _with_static_batch(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose data inputs have a concrete leading (batch) dimension. Symbolic batch dims
    defeat the regrouping of reshapes that fold heads into the batch; the structure does not
    depend on the batch size."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = {t.name for t in out.graph.initializer}
    for inp in out.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if inp.name not in inits and len(dims) >= 2 and not dims[0].HasField("dim_value"):
            dims[0].dim_value = BATCH
    return out


def _shape_constants(proto: onnx.ModelProto, shapes: dict) -> dict[str, np.ndarray]:
    """Small integer values computable from static shapes (Shape → Gather → ReduceProd →
    Concat …, as exporters build reshape targets): ONNX's data propagation stops at ops like
    ReduceProd, this does not."""
    known: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer
                                    if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
                                    and t.HasField("raw_data") or t.int64_data}
    out: dict[str, np.ndarray] = {}
    for node in proto.graph.node:
        if node.op_type == "Shape":
            shp = shapes.get(node.input[0])
            if shp is not None and all(isinstance(d, int) for d in shp):
                start, end = 0, None
                for a in node.attribute:
                    start = a.i if a.name == "start" else start
                    end = a.i if a.name == "end" else end
                known[node.output[0]] = out[node.output[0]] = np.asarray(shp[start:end], np.int64)
            continue
        if node.op_type == "Constant":
            try:
                v = numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].name == "value" else None
            except Exception:  # noqa: BLE001
                v = None
            if v is not None and v.dtype.kind in "iu" and v.size <= 64:
                known[node.output[0]] = v
            continue
        if node.domain or not node.input or not all(i in known or not i for i in node.input):
            continue
        if node.op_type not in ("Gather", "Concat", "ReduceProd", "Mul", "Add", "Sub", "Div", "Unsqueeze", "Squeeze",
                                "Slice", "Cast", "Reshape", "Max", "Min", "Equal", "Where", "Range", "Neg", "Abs"):
            continue
        try:
            res = run_node(node, [known[i] if i else None for i in node.input], proto.opset_import)
        except Exception:  # noqa: BLE001 - best effort: a value it cannot compute stays unknown
            continue
        for name, value in zip(node.output, res):
            value = np.asarray(value)
            if value.dtype.kind in "iub" and value.size <= 64:
                known[name] = out[name] = value
    return out


#: Ops whose operands after the first are sizes, bounds or axes (what :func:`infer_shapes` feeds back).
SHAPE_OPERANDS = frozenset({"Reshape", "Expand", "Tile", "Slice", "Split", "Unsqueeze", "Squeeze"})


def infer_shapes(model: OnnxModel) -> tuple[dict[str, tuple], dict[str, str]]:
    """Static shapes (and element kinds: "f", "i" …) of every value inference can tell."""
    shapes, types = _infer_shapes_once(model.proto)
    consts = _shape_constants(model.proto, shapes)
    # every shape-valued operand ONNX inference could not compute: reshape, expand and tile targets, slice
    # bounds (TorchScript exports `chunk` as Slice ends computed from Shape → Gather → Div), split
    # sizes, pads, axes; fed back as constants so that the outputs they shape get static shapes
    nodes = model.graph.node
    targets = {i for n in nodes if n.op_type in SHAPE_OPERANDS for i in n.input[1:]}
    fill = {k: v for k, v in consts.items() if k in targets}
    proto = model.proto
    if fill:      # tell ONNX inference the values it could not compute, and infer again
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        for name, value in fill.items():
            proto.graph.initializer.append(numpy_helper.from_array(value.astype(np.int64), name))
        keep = [n for n in proto.graph.node if not (set(n.output) & set(fill))]
        del proto.graph.node[:]
        proto.graph.node.extend(keep)
        again, again_types = _infer_shapes_once(proto)
        _merge(shapes, types, again, again_types)
    # onnxruntime's symbolic inference carries symbolic sizes through reshapes and products where ONNX's
    # renames them (a sequence length stays "seq" through attention, so a dynamic-shape export's
    # `[B, T, H, d] → [B, T, -1]` is followable; a pooled CNN keeps its batch). Without merging symbols it
    # assumes nothing and refuses what it cannot finish. Run once, where ONNX's left a size unknown, and
    # not on graphs that resize (its Resize inference simplifies symbolic image sizes for 1–2 s, and on
    # the detection models of benchmarks/models/corpus it then fails anyway).
    if not _has_contrib_ops(proto) and not any(n.op_type in ("Resize", "Upsample") for n in proto.graph.node) \
            and any(not isinstance(d, int) for v in shapes.values() for d in v):
        symbolic = _symbolic(proto, merge=False)
        if symbolic is not None:
            _merge(shapes, types, *_read_shapes(symbolic), prefer_new=True)
    return shapes, types


def _merge(shapes: dict, types: dict, new: dict, new_types: dict, prefer_new: bool = False) -> None:
    """Take ``new``'s shape of a value where it is all numbers and the old one is not, or, with
    ``prefer_new`` (onnxruntime's inference, whose symbols never clash with ONNX's: it refuses ONNX's
    ``unk__``), wherever it knows as many sizes as numbers or the ranks disagree (ONNX's LSTM outputs in a
    CRNN came out of the wrong rank). Two runs of ONNX's inference name their unknown
    sizes ``unk__0``, ``unk__1`` … independently: a symbolic shape from the second next to one from the
    first could claim two different sizes equal, so only static shapes cross between them."""
    for k, v in new_types.items():
        types.setdefault(k, v)
    known = lambda dims: sum(isinstance(d, int) for d in dims)  # noqa: E731
    for k, v in new.items():
        old = shapes.get(k)
        if old is None and (prefer_new or known(v) == len(v)) or old is not None and (
                known(v) == len(v) > known(old) or prefer_new and (len(old) != len(v) or known(v) >= known(old))):
            shapes[k] = v


def _infer_shapes_once(proto: onnx.ModelProto) -> tuple[dict[str, tuple], dict[str, str]]:
    """Static shapes of every value ONNX shape inference can tell (weights are not needed); for graphs
    with onnxruntime's contrib ops (fused attention, norms), which ONNX's cannot read, onnxruntime's
    symbolic inference, merging symbols (assuming broadcast sizes equal) only where it must."""
    inferred = None
    if _has_contrib_ops(proto):
        inferred = _symbolic(proto, merge=False) or _symbolic(proto, merge=True)
    if inferred is None:
        try:
            inferred = onnx.shape_inference.infer_shapes(_with_static_batch(proto), data_prop=True)
        except Exception:  # noqa: BLE001 - inference is best effort; rules that need shapes say so
            inferred = proto
    return _read_shapes(inferred)


def _read_shapes(inferred: onnx.ModelProto) -> tuple[dict[str, tuple], dict[str, str]]:
    shapes: dict[str, tuple] = {}
    types: dict[str, str] = {}
    for g in all_graphs(inferred.graph):
        for vi in [*g.input, *g.value_info, *g.output]:
            t = vi.type.tensor_type
            if t.elem_type:
                types[vi.name] = _elem_kind(t.elem_type)
            if t.HasField("shape"):   # ints, symbolic names (str: equal names are equal sizes), None
                shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value")
                                        else (d.dim_param or None) for d in t.shape.dim)
        for t in g.initializer:
            shapes[t.name] = tuple(t.dims)
    return shapes, types


def _has_contrib_ops(proto: onnx.ModelProto) -> bool:
    return any(n.domain == "com.microsoft" for n in proto.graph.node)


@functools.lru_cache(maxsize=1)
def _symbolic_inference():
    """onnxruntime's ``SymbolicShapeInference``, loaded from its file: importing it as
    ``onnxruntime.tools.symbolic_shape_infer`` runs ``onnxruntime.tools``' ``__init__``, which imports torch
    (a second per conversion)."""
    # a private copy of the module, always: its class is replaced below (its static infer_shapes names
    # the module's global), which must not change onnxruntime's own module for anyone else
    spec = importlib.util.find_spec("onnxruntime")
    path = Path(spec.origin).parent / "tools" / "symbolic_shape_infer.py"
    module_spec = importlib.util.spec_from_file_location("nngraph_ort_symbolic_shape_infer", path)
    loaded = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(loaded)
    if hasattr(loaded, "logger"):      # "unsupported broadcast …": expected where sizes stay unknown
        loaded.logger.setLevel(logging.ERROR)
    base = loaded.SymbolicShapeInference

    class Sound(base):
        """Equal of sizes decided only where sympy can tell (``seq`` ≠ -1: sizes are not negative).
        onnxruntime's compares expressions structurally, so ``Equal(seq, 4)`` was False, and a size
        computed by ``Where(Equal(T, 4), 2, 4)`` became a wrong number (a reshape then claimed 4 heads
        where there are 2)."""

        def _infer_symbolic_compute_ops(self, node):  # noqa: N802
            super()._infer_symbolic_compute_ops(node)
            if node.op_type == "Equal" and node.output[0] in self.sympy_data_:
                values = self._get_int_or_float_values(node, broadcast=True)
                pairs = list(zip(*values)) if any(isinstance(v, list) for v in values) else [tuple(values)]
                decided = all(loaded.sympy.Eq(a, b) in (loaded.sympy.true, loaded.sympy.false) for a, b in pairs)
                if not decided:
                    del self.sympy_data_[node.output[0]]

    loaded.SymbolicShapeInference = Sound
    return Sound


def _symbolic(proto: onnx.ModelProto, merge: bool) -> onnx.ModelProto | None:
    """onnxruntime's symbolic shape inference, or None where it fails. When it cannot finish it saves
    sym_shape_infer_temp.onnx into the cwd: it runs in a temporary one (the cwd is process-wide; parallel
    conversions run in processes, not threads)."""
    with tempfile.TemporaryDirectory(prefix="nngraph-shapes-") as tmp:
        cwd = os.getcwd()
        try:
            os.chdir(tmp)
            return _symbolic_inference().infer_shapes(_with_static_batch(proto), auto_merge=merge)
        except Exception:  # noqa: BLE001 - best effort: ONNX's inference is the fallback
            return None
        finally:
            os.chdir(cwd)


def _elem_kind(elem_type: int) -> str:
    """numpy's kind letter of an ONNX element type ("f" for every float format, bf16 and fp8 too)."""
    name = onnx.TensorProto.DataType.Name(elem_type)
    if name.startswith(("FLOAT", "BFLOAT", "DOUBLE")):
        return "f"
    return {"BOOL": "b", "STRING": "U"}.get(name, "u" if name.startswith("UINT") else "i")
