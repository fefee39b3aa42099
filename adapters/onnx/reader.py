"""Read an ONNX model without copying its weights, and without trusting its paths.

The protobuf is parsed without external data; each external tensor is then memory-mapped from
its file after checking that the file stays inside the model's folder (no absolute paths, no
``..``, no symlink out) and that the declared byte range lies inside the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nngraph.errors import InputError


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
    from .wire import strip_weights

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
    return OnnxModel(path, proto, raw)


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
    offset = int(info.get("offset", 0) or 0)
    length = int(info["length"]) if info.get("length") else None
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
