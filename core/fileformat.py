"""The ``.ngraph`` file: safetensors with the graph's structure as JSON metadata.

Layout (plain safetensors, readable by ``safetensors.safe_open``): each source tensor once, in
its source layout (``L<i>``); every graph array with an origin is rebuilt on load as a view of
its source tensor through that origin, so a weight is never stored twice nor transposed on
write. Arrays without an origin are stored as themselves (``s<i>.<key>`` for set arrays,
``b<i>`` for block weights), unmapped tensors as ``u<i>``. The structure is a JSON document in
``__metadata__ = {"format": "nngraph", "nngraph": …}``. Reading maps the file once and hands out
zero-copy views, so opening a multi-GB graph costs nothing until the arrays are touched;
``read_header`` reads only the JSON. Writes stream to a temporary file in the destination
folder renamed into place, so a failure never leaves a partial file.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import InputError
from .ir import EdgeBlock, NeuralGraph, NeuronSet, Param, SourceTensor, TieGroup, Unmapped, _np_dtype
from .origin import Origin

SCHEMA_VERSION = 1
MAX_HEADER = 256 * 1024 * 1024

_ST_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}
_NP_DTYPES = {v: k for k, v in _ST_DTYPES.items()}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# ------------------------------------------------------------------------------ writing
def save(graph: NeuralGraph, path: str | os.PathLike) -> Path:
    """Write ``graph`` to ``path`` atomically. Returns the path."""
    path = Path(path)
    tensors: dict[str, np.ndarray] = {}
    params = graph.to_params()
    leaf_keys = {}
    for i, name in enumerate(n for n in graph.sources if n not in graph.unmapped):
        leaf_keys[name] = f"L{i}"
        tensors[f"L{i}"] = params[name]

    def ref(key: str, p: Param | None) -> dict | None:
        if p is None:
            return None
        doc: dict = {"origin": p.origin.to_json() if p.origin else None}
        if p.origin is not None and p.origin.tensor in leaf_keys:
            doc["tensor"] = None                       # a view of its source tensor
        else:
            tensors[key] = p.data
            doc["tensor"] = key
        if p.shared:
            doc["shared"] = True
        return doc

    doc = {
        "schema": SCHEMA_VERSION,
        "meta": graph.meta,
        "summary": {k: v for k, v in graph.summary().items()},
        "groups": [vars(g) for g in graph.groups.values()],
        "sets": [{"name": s.name, "size": s.size, "role": s.role, "depth": s.depth, "group": s.group,
                  "activation": s.activation, "attrs": s.attrs,
                  "arrays": {k: ref(f"s{i}.{k}", p) for k, p in s.arrays.items()}}
                 for i, s in enumerate(graph.sets.values())],
        "blocks": [{"name": b.name, "source": b.source, "target": b.target, "kind": b.kind,
                    "attrs": b.attrs, "weight": ref(f"b{i}", b.weight)}
                   for i, b in enumerate(graph.blocks)],
        "sources": {n: {"shape": list(t.shape), "dtype": t.dtype, "tensor": leaf_keys.get(n)}
                    for n, t in graph.sources.items()},
        "unmapped": {n: {"reason": u.reason, "tensor": ref(f"u{i}", Param(u.data))["tensor"]
                         if u.data is not None else None}
                     for i, (n, u) in enumerate(graph.unmapped.items())},
    }
    metadata = {"format": "nngraph", "nngraph": json.dumps(doc, default=_jsonable)}
    _write_safetensors(path, tensors, metadata)
    return path


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key, arr in tensors.items():
        dtype = _ST_DTYPES.get(arr.dtype.name)
        if dtype is None:
            raise ValueError(f"cannot store array {key!r} of dtype {arr.dtype}")
        header[key] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for arr in tensors.values():
                _write_array(f, arr)
            f.flush()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_array(f: BinaryIO, arr: np.ndarray, chunk_bytes: int = 64 << 20) -> None:
    """Stream in C order without materializing a contiguous copy of a large view."""
    if arr.flags.c_contiguous:
        f.write(memoryview(arr.reshape(-1).view(np.uint8)))
        return
    rows = max(1, chunk_bytes // max(1, arr[0].nbytes)) if arr.ndim else 1
    for start in range(0, len(arr), rows):
        f.write(np.ascontiguousarray(arr[start:start + rows]).tobytes())


# ------------------------------------------------------------------------------ reading
def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(nngraph document, safetensors tensor table, data start offset) — reads only the header."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise InputError(f"{path}: not an .ngraph file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, MAX_HEADER):
            raise InputError(f"{path}: not an .ngraph file or truncated (header of {n} bytes, file of {size})")
        try:
            table = json.loads(f.read(n))
            doc = json.loads(table["__metadata__"]["nngraph"])
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path}: not an .ngraph file (no nngraph metadata)") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_VERSION:
        raise InputError(f"{path}: unsupported .ngraph schema {doc.get('schema') if isinstance(doc, dict) else '?'}"
                         f" (this nngraph reads schema {SCHEMA_VERSION})")
    data_len = size - 8 - n
    for key, t in table.items():
        if key == "__metadata__":
            continue
        begin, end = t["data_offsets"]
        expected = int(np.prod(t["shape"], dtype=np.int64)) * np.dtype(_np_dtype(_NP_DTYPES[t["dtype"]])).itemsize
        if end > data_len or end - begin != expected or begin < 0:
            raise InputError(f"{path}: truncated or corrupt (tensor {key!r} needs bytes {begin}–{end}, "
                             f"data section has {data_len})")
    return doc, table, 8 + n


def load(path: str | os.PathLike) -> NeuralGraph:
    """Open an ``.ngraph`` file; arrays are read-only views of one memory map."""
    path = Path(path)
    doc, table, start = read_header(path)
    buf = np.memmap(path, dtype=np.uint8, mode="r", offset=start) if path.stat().st_size > start else np.zeros(0, np.uint8)

    def array(key: str) -> np.ndarray:
        t = table[key]
        begin, end = t["data_offsets"]
        return buf[begin:end].view(_np_dtype(_NP_DTYPES[t["dtype"]])).reshape(t["shape"])

    try:
        leaves = {n: array(t["tensor"]) for n, t in doc["sources"].items() if t.get("tensor")}
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: corrupt .ngraph metadata ({type(e).__name__}: {e})") from None

    def param(ref: dict | None) -> Param | None:
        if ref is None:
            return None
        origin = Origin.from_json(ref["origin"]) if ref["origin"] else None
        if ref["tensor"] is None:
            data = origin.apply(leaves[origin.tensor])
        else:
            data = array(ref["tensor"])
        return Param(data, origin, bool(ref.get("shared", False)))

    try:
        g = NeuralGraph(doc.get("meta", {}))
        g.groups = {d["name"]: TieGroup(**d) for d in doc["groups"]}
        for d in doc["sets"]:
            g.sets[d["name"]] = NeuronSet(d["name"], d["size"], d["role"], d["depth"], d["group"],
                                          d["activation"], {k: param(r) for k, r in d["arrays"].items()},
                                          d["attrs"])
        g.blocks = [EdgeBlock(d["name"], d["source"], d["target"], d["kind"], param(d["weight"]), d["attrs"])
                    for d in doc["blocks"]]
        g.sources = {n: SourceTensor(tuple(t["shape"]), t["dtype"]) for n, t in doc["sources"].items()}
        g.unmapped = {n: Unmapped(u["reason"], array(u["tensor"]) if u["tensor"] else None)
                      for n, u in doc["unmapped"].items()}
        g.leaves = leaves
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: corrupt .ngraph metadata ({type(e).__name__}: {e})") from None
    return g
