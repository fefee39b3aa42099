"""Read an ONNX model without copying its weights, and without trusting its paths.

The protobuf is parsed without external data; each external tensor is then memory-mapped from
its file after checking that the file stays inside the model's folder (no absolute paths, no
``..``, no symlink out) and that the declared byte range lies inside the file.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nngraph.errors import InputError

from .graphs import all_graphs
from .wire import strip_weights


@dataclass
class OnnxModel:
    path: Path
    proto: onnx.ModelProto
    raw: dict = None          # initializer name → (offset, length) of raw data left in the file

    def __post_init__(self):
        self.raw = self.raw or {}

    @property
    def graph(self) -> onnx.GraphProto:
        return self.proto.graph

    @property
    def opsets(self) -> dict[str, int]:
        return {("" if o.domain == "ai.onnx" else o.domain): o.version for o in self.proto.opset_import}

    def tensor(self, t: TensorProto) -> np.ndarray:
        where = self.raw.get(t.name)
        if where is not None and t.data_location != TensorProto.EXTERNAL and not t.HasField("raw_data"):
            offset, length = where
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
            shape = tuple(t.dims)
            if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != length or dtype.kind not in "fiub":
                raise InputError(f"{self.path}: initializer {t.name!r} has {length} bytes for shape {shape}")
            return np.memmap(self.path, dtype=dtype.newbyteorder("<"), mode="r", offset=offset, shape=shape)
        return tensor_to_array(t, self.path)

    def stripped(self, t: TensorProto) -> bool:
        """True when the tensor's data was left in the file (see :mod:`.wire`)."""
        return t.name in self.raw and not t.HasField("raw_data") and t.data_location != TensorProto.EXTERNAL


def read_model(path: str | os.PathLike) -> OnnxModel:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    raw: dict = {}
    try:
        data, raw = strip_weights(path)
        proto = onnx.ModelProto.FromString(data)
    except Exception:  # noqa: BLE001 - not plain protobuf as expected: let onnx say what is wrong
        raw = {}
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf raises DecodeError, RuntimeWarning … on garbage
            raise InputError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    if not proto.graph.node and not proto.graph.initializer:
        raise InputError(f"{path}: not an ONNX model (empty graph)")
    if not proto.opset_import:
        raise InputError(f"{path}: not an ONNX model (no opset_import)")
    model = OnnxModel(path, proto, raw)
    check_model(model)
    return model


_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_PACKED = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(TensorProto, n)}


def _check_tensor(t: TensorProto, where: str, stripped: bool) -> None:
    """Dims natural, a known data type, and stored data exactly as long as the dims say: an
    initializer claiming huge dims is refused here, not by a failing reshape later."""
    if any(d < 0 for d in t.dims):
        raise InputError(f"{where}: tensor {t.name!r} has negative dims {list(t.dims)}")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    except Exception:  # noqa: BLE001 - unknown enum value
        raise InputError(f"{where}: tensor {t.name!r} has unknown data type {t.data_type}") from None
    count = 1
    for d in t.dims:
        count *= d
    if t.data_location == TensorProto.EXTERNAL or stripped:
        return                                    # checked against the file when it is read
    if t.data_type == TensorProto.STRING:
        if len(t.string_data) != count:
            raise InputError(f"{where}: tensor {t.name!r} stores {len(t.string_data)} strings for dims {list(t.dims)}")
        return
    packed = t.data_type in _PACKED
    if t.HasField("raw_data"):
        need = (count + 1) // 2 if packed else count * dtype.itemsize
        if len(t.raw_data) != need:
            raise InputError(f"{where}: tensor {t.name!r} has {len(t.raw_data)} bytes of data for dims "
                             f"{list(t.dims)} ({dtype}, needs {need})")
        return
    stored = sum(len(getattr(t, f)) for f in _TYPED_FIELDS)
    need = (count + 1) // 2 if packed else count * (2 if dtype.kind == "c" else 1)
    if stored != need:
        raise InputError(f"{where}: tensor {t.name!r} stores {stored} values for dims {list(t.dims)} (needs {need})")


@functools.lru_cache(maxsize=1)
def _contrib_schemas() -> dict:
    """onnxruntime's schemas of its contrib ops (com.microsoft …), which onnx does not know:
    (domain, op) → {attribute: (type, required)} of the newest version."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as C
        schemas = sorted(C.get_all_operator_schema(), key=lambda x: x.since_version)
    except Exception:  # noqa: BLE001 - no onnxruntime schemas: nothing to check against
        return {}
    return {(x.domain, x.name): _Schema({k: (int(v.type.value), bool(v.required)) for k, v in x.attributes.items()},
                                        x.min_input, x.max_input, x.min_output, x.max_output,
                                        tuple(i for i, p in enumerate(x.inputs) if int(p.option.value) == 0))
            for x in schemas}


@dataclass
class _Schema:
    attributes: dict          # name → (AttributeProto type, required)
    min_input: int
    max_input: int
    min_output: int
    max_output: int
    required: tuple = ()      # input positions that must be given (not optional, not variadic)


def _schema(domain: str, op: str, version: int) -> _Schema | None:
    """What an op takes, from onnx's schemas (or onnxruntime's for contrib ops); None if unknown."""
    from onnx import defs
    if defs.has(op, domain):
        try:
            defs.get_schema(op, version, domain)
        except Exception:  # noqa: BLE001 - newer than the model's opset: onnxruntime may still know it
            known = _contrib_schemas().get((domain, op))     # e.g. its LayerNormalization before opset 17
            if known is None:
                raise InputError(f"{op} does not exist at opset {version} of {domain or 'ai.onnx'}") from None
            return known
    try:
        x = defs.get_schema(op, version, domain)
        return _Schema({k: (int(v.type), bool(v.required)) for k, v in x.attributes.items()},
                       x.min_input, x.max_input, x.min_output, x.max_output,
                       tuple(i for i, p in enumerate(x.inputs) if int(p.option.value) == 0))
    except Exception:  # noqa: BLE001 - not an onnx op: maybe an onnxruntime contrib op
        pass
    if domain in ("", "ai.onnx", "ai.onnx.ml"):
        return None
    return _contrib_schemas().get((domain, op))


def check_model(model: OnnxModel) -> None:
    """Structural checks on an untrusted model before any rule sees it, so that malformed input
    is an :class:`InputError` (exit 4) and not a ``TypeError`` or ``IndexError`` inside a rule:
    names valid UTF-8; every initializer and ``Constant`` tensor consistent with its dims; every
    node with an output and, for a known op (onnx's schemas, onnxruntime's for contrib ops), the
    number of inputs and outputs it takes, its required attributes, each of the declared type,
    weight initializers of the rank the spec fixes, and no ``ConstantOfShape`` beyond memory."""
    from onnx import AttributeProto

    where = str(model.path)
    opsets = model.opsets
    tables: dict = {}
    for g in all_graphs(model.graph):
        inits = {t.name: t for t in g.initializer}
        for t in g.initializer:
            _check_tensor(t, where, model.stripped(t))
        names = [t.name for t in g.initializer] + [v.name for v in (*g.input, *g.output, *g.value_info)]
        names += [x for n in g.node for x in (n.name, n.op_type, n.domain, *n.input, *n.output)]
        names += [a.name for n in g.node for a in n.attribute]
        if not all(type(x) is str for x in names):      # protobuf gives bytes for invalid UTF-8
            raise InputError(f"{where}: a name in graph {g.name!r} is not valid UTF-8")
        for n in g.node:
            domain = "" if n.domain == "ai.onnx" else n.domain
            key = (domain, n.op_type)
            label = f"{where}: node {n.name or n.op_type!r} ({n.op_type})"
            if key not in tables:
                try:
                    tables[key] = _schema(domain, n.op_type, max(1, opsets.get(domain, 1)))
                except InputError as e:
                    raise InputError(f"{label}: {e}") from None
            schema = tables[key]
            if not n.output:
                raise InputError(f"{label}: the node has no outputs")
            declared = schema.attributes if schema is not None else {}
            if schema is not None:
                if not schema.min_input <= len(n.input) <= schema.max_input or any(
                        i < len(n.input) and not n.input[i] for i in schema.required):
                    raise InputError(f"{label}: {len(n.input)} inputs ({', '.join(map(repr, n.input))}); the op takes "
                                     f"{schema.min_input}–{schema.max_input}")
                if not schema.min_output <= len(n.output) <= schema.max_output:
                    raise InputError(f"{label}: {len(n.output)} outputs; the op gives "
                                     f"{schema.min_output}–{schema.max_output}")
            present = set()
            for a in n.attribute:
                present.add(a.name)
                if a.type == AttributeProto.UNDEFINED or a.type not in AttributeProto.AttributeType.values():
                    raise InputError(f"{label}: attribute {a.name!r} has no valid type")
                if a.name in declared and declared[a.name][0] != a.type:
                    raise InputError(f"{label}: attribute {a.name!r} is {AttributeProto.AttributeType.Name(a.type)}, "
                                     f"the op needs {AttributeProto.AttributeType.Name(declared[a.name][0])}")
                if a.type == AttributeProto.TENSOR:
                    _check_tensor(a.t, label, False)
            if n.op_type == "Concat" and domain == "" and "axis" not in present and opsets.get("", 1) < 4:
                n.attribute.append(helper.make_attribute("axis", 1))   # opset < 4: optional, default 1
                present.add("axis")
            missing = [k for k, (_, required) in declared.items() if required and k not in present]
            if missing:
                raise InputError(f"{label}: required attribute(s) {', '.join(sorted(missing))} missing")
            for i, (lo, hi) in _WEIGHT_RANKS.get(n.op_type, {}).items() if domain == "" else ():
                if i < len(n.input) and n.input[i] in inits and not lo <= len(inits[n.input[i]].dims) <= hi:
                    raise InputError(f"{label}: input {i} ({n.input[i]!r}) has rank {len(inits[n.input[i]].dims)}, "
                                     f"the op needs {lo if lo == hi else f'{lo}–{hi}'}")
            if n.op_type == "ConstantOfShape" and n.input and n.input[0] in inits:
                _check_constant_size(model, inits[n.input[0]], label)


# Ranks the ONNX spec fixes for weight inputs (input position → (min, max)), checked when the
# input is an initializer: rules unpack these shapes.
_RNN = {1: (3, 3), 2: (3, 3), 3: (2, 2)}
_WEIGHT_RANKS = {"LSTM": {**_RNN, 7: (3, 3)}, "GRU": _RNN, "RNN": _RNN, "Gemm": {0: (2, 2), 1: (2, 2)},
                 "Conv": {1: (3, 5)}, "ConvTranspose": {1: (3, 5)},
                 "BatchNormalization": {k: (1, 1) for k in range(1, 5)}, "InstanceNormalization": {1: (1, 1), 2: (1, 1)},
                 "PRelu": {1: (0, 8)}}


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 36


def _check_constant_size(model: OnnxModel, shape_tensor: TensorProto, label: str) -> None:
    """A ``ConstantOfShape`` is folded into a real array: refuse one larger than half the
    machine's memory (a few bytes of model must not take the machine down)."""
    try:
        dims = [int(d) for d in np.asarray(model.tensor(shape_tensor)).reshape(-1)]
    except (InputError, ValueError, TypeError):
        return
    count = 1
    for d in dims:
        count *= max(d, 0)
    if count * 8 > _memory_bytes() // 2:
        raise InputError(f"{label}: ConstantOfShape of shape {dims} would need {count * 8 / 2**30:.3g} GiB; refused")


def _external_info(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def external_file(t: TensorProto, model_path: Path) -> tuple[Path, int, int | None]:
    """Resolve and confine an external tensor's file; returns (file, offset, length)."""
    info = _external_info(t)
    location = info.get("location", "")
    folder = model_path.resolve().parent
    where = f"{model_path}: initializer {t.name!r}"
    if not location or os.path.isabs(location) or Path(location).is_absolute() or ".." in Path(location).parts:
        raise InputError(f"{where}: external data location {location!r} is outside the model's folder")
    target = (folder / location).resolve()
    if folder not in target.parents:
        raise InputError(f"{where}: external data location {location!r} escapes the model's folder")
    if not target.is_file():
        raise InputError(f"{where}: external data file {location!r} does not exist")
    try:
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise InputError(f"{where}: external data offset/length {info.get('offset')!r}/{info.get('length')!r} "
                         f"is not a number") from None
    if length is not None and length < 0:
        raise InputError(f"{where}: negative external data length {length}")
    size = target.stat().st_size
    if offset < 0 or offset > size or (length is not None and offset + length > size):
        raise InputError(f"{where}: external data range {offset}+{length} is past the end of {location!r} ({size} bytes)")
    return target, offset, length


def tensor_to_array(t: TensorProto, model_path: Path) -> np.ndarray:
    """The tensor's data: memory-mapped if external, a view of the protobuf bytes if raw."""
    if t.data_location == TensorProto.EXTERNAL:
        file, offset, length = external_file(t, model_path)
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        shape = tuple(t.dims)
        need = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if length is not None and length < need:
            raise InputError(f"{model_path}: initializer {t.name!r} declares {length} bytes, needs {need}")
        if file.stat().st_size < offset + need:
            raise InputError(f"{model_path}: initializer {t.name!r} is truncated in {file.name}")
        if need == 0:
            return np.zeros(shape, dtype)
        return np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=shape)
    try:
        return numpy_helper.to_array(t)
    except Exception as e:
        raise InputError(f"{model_path}: initializer {t.name!r} is corrupt ({e})") from None
