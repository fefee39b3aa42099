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

import functools
import json
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import GraphError, InputError
from ..files import atomic_output
from .headers import FREE, NAT, DictOf, Fields, HeaderError, ListOf, Opt, check, loads, read_safetensors_header
from .dtypes import numpy_dtype
from .ir import EdgeBlock, NeuralGraph, NeuronSet, Param, SourceTensor, TieGroup, Unmapped
from .origin import Origin

SCHEMA_VERSION = 1
COMPACT_BYTES = 1024     # constant source tensors at least this large are stored as one value + shape

_ST_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}
_NP_DTYPES = {v: k for k, v in _ST_DTYPES.items()}
_ITEMSIZES = {code: np.dtype(numpy_dtype(name)).itemsize for code, name in _NP_DTYPES.items()}

# The structure document in the header. Free-form fields (meta, attrs) are depth-limited JSON.
_ORIGIN = Fields({"tensor": str}, {"steps": ListOf(list)})
_REF = Opt(Fields({"origin": Opt(_ORIGIN), "tensor": Opt(str)}, {"shared": bool}))
DOCUMENT_SCHEMA = Fields(
    {"schema": int,
     "groups": ListOf(Fields({"name": str, "size": NAT}, {"fixed": bool, "parent": Opt(str), "rigid": bool})),
     "sets": ListOf(Fields({"name": str, "size": NAT, "role": str, "depth": int, "group": str,
                            "activation": Opt(str), "attrs": dict, "arrays": DictOf(_REF)})),
     "blocks": ListOf(Fields({"name": str, "source": str, "target": str, "kind": str, "attrs": dict,
                              "weight": _REF})),
     "sources": DictOf(Fields({"shape": ListOf(NAT), "dtype": str, "tensor": Opt(str)}, {"constant": bool})),
     "unmapped": DictOf(Fields({"reason": str, "tensor": Opt(str)}))},
    {"meta": dict, "summary": Fields({}, {"nodes": NAT, "edges": NAT, "sets": NAT, "blocks": NAT,
                                          "parameters": NAT, "mapped_parameters": NAT, "coverage": float,
                                          "unmapped": FREE})})


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# ------------------------------------------------------------------------------ writing
def constant_value(arr: np.ndarray) -> np.ndarray | None:
    """The single value of an array whose elements are all bitwise equal (NaN and -0.0 count
    exactly), as a one-element array; None otherwise or when it is too small to matter.
    Weights made by ``ConstantOfShape`` are like this: stored as value + shape, not expanded."""
    if arr.nbytes < COMPACT_BYTES or arr.size < 2 or arr.dtype.kind not in "fiub":
        return None
    if all(st == 0 for st in arr.strides):                       # already a broadcast view
        return np.ascontiguousarray(arr.reshape(-1)[:1])
    if not arr.flags.c_contiguous:
        return None
    bits = arr.reshape(-1).view(f"u{arr.dtype.itemsize}")
    first = bits[0]
    probe = bits[:: max(1, bits.size // 64)]
    if not (probe == first).all():
        return None
    step = 1 << 22
    if not all((bits[i:i + step] == first).all() for i in range(0, bits.size, step)):
        return None
    return np.ascontiguousarray(arr.reshape(-1)[:1])


def save(graph: NeuralGraph, path: str | os.PathLike) -> Path:
    """Write ``graph`` to ``path`` atomically. Returns the path."""
    path = Path(path)
    tensors: dict[str, np.ndarray] = {}
    params = graph.to_params()
    leaf_keys, constant = {}, set()
    for i, name in enumerate(n for n in graph.sources if n not in graph.unmapped):
        leaf_keys[name] = f"L{i}"
        value = constant_value(params[name])
        if value is not None:
            constant.add(name)
        tensors[f"L{i}"] = params[name] if value is None else value

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
        "sources": {n: {"shape": list(t.shape), "dtype": t.dtype, "tensor": leaf_keys.get(n),
                        **({"constant": True} if n in constant else {})}
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
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in tensors.values():
            _write_array(f, arr)
        f.flush()


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
    """(nngraph document, safetensors tensor table, data start offset) — reads only the header.

    Both the safetensors table and the structure document are checked against their schemas
    (:mod:`nngraph.graph.headers`): whatever is returned has every key, of the right type."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        try:
            table, metadata, start = read_safetensors_header(f, size, _ITEMSIZES, f"{path}")
        except HeaderError as e:       # say what the user thinks they gave us
            detail = str(e).removeprefix(f"{path}: ").replace("safetensors file", ".ngraph file")
            raise HeaderError(f"{path}: not an .ngraph file or corrupt ({detail})") from None
    if metadata.get("format") != "nngraph" or "nngraph" not in metadata:
        raise InputError(f"{path}: not an .ngraph file (no nngraph metadata)")
    doc = loads(metadata["nngraph"], f"{path}: .ngraph structure")
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_VERSION:
        raise InputError(f"{path}: unsupported .ngraph schema {doc.get('schema') if isinstance(doc, dict) else '?'}"
                         f" (this nngraph reads schema {SCHEMA_VERSION})")
    check(doc, DOCUMENT_SCHEMA, f"{path}: .ngraph structure")
    return doc, table, start


def _leaf_shape_ok(t: dict, entry: dict, constant: bool) -> bool:
    return entry["shape"] == ([1] if constant else t["shape"])


def release_pages(arr: np.ndarray) -> bool:
    """Drop the pages of ``arr`` from this process's resident set when it is a view of a read-only
    memory map (what :func:`load` returns); True if it was. The data stay readable: the next access
    reads them again from the page cache or the file. Streaming a large graph reads every weight once
    per pass; releasing each block after it keeps the resident set at one block's pages instead of the
    whole file's (RSS counts the mapped pages a process has touched). A no-op elsewhere."""
    base = arr
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    if base is None or getattr(base, "mode", None) != "r" or not hasattr(os, "sysconf") or arr.nbytes == 0:
        return False
    import ctypes
    libc = _libc()
    if libc is None:
        return False
    page = os.sysconf("SC_PAGE_SIZE")
    start, end = arr.ctypes.data, arr.ctypes.data + arr.nbytes
    first, last = -(-start // page) * page, end // page * page      # whole pages inside the array only
    if last <= first:
        return False
    return libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED) == 0


_MADV_DONTNEED = 4          # Linux and the BSDs; madvise on a read-only shared file map only drops pages


@functools.cache
def _libc():
    """The C library with ``madvise`` typed (None where there is none, e.g. Windows)."""
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name, use_errno=True) if name else None
        if lib is not None:
            lib.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            lib.madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        lib = None
    return lib


def load(path: str | os.PathLike) -> NeuralGraph:
    """Open an ``.ngraph`` file; arrays are read-only views of one memory map.

    Every reference in the structure (tensor keys, origins, sets, groups) is checked and the
    graph validated, so an edited or hostile file is an :class:`InputError`, not a crash later."""
    path = Path(path)
    doc, table, start = read_header(path)
    buf = np.memmap(path, dtype=np.uint8, mode="r", offset=start) if path.stat().st_size > start else np.zeros(0, np.uint8)

    def bad(why: str) -> InputError:
        return InputError(f"{path}: corrupt .ngraph structure ({why})")

    def array(key: str) -> np.ndarray:
        t = table.get(key)
        if t is None:
            raise bad(f"no tensor {key!r} in the file")
        begin, end = t["data_offsets"]
        return buf[begin:end].view(numpy_dtype(_NP_DTYPES[t["dtype"]])).reshape(t["shape"])

    leaves = {}
    for n, t in doc["sources"].items():
        if not t["tensor"]:
            continue
        try:
            dtype = np.dtype(numpy_dtype(t["dtype"]))
        except (TypeError, AttributeError):
            raise bad(f"source {n!r} has unknown dtype {t['dtype']!r}") from None
        data = array(t["tensor"])
        constant = bool(t.get("constant"))
        if data.dtype != dtype or not _leaf_shape_ok(t, table[t["tensor"]], constant):
            raise bad(f"source {n!r} is {t['dtype']} {t['shape']}, its tensor is {data.dtype} {list(data.shape)}")
        leaves[n] = np.broadcast_to(data.reshape(()), tuple(t["shape"])) if constant else data

    def param(ref: dict | None, where: str) -> Param | None:
        if ref is None:
            return None
        try:
            origin = Origin.from_json(ref["origin"]) if ref["origin"] else None
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise bad(f"{where}: bad origin ({e})") from None
        if ref["tensor"] is None:
            if origin is None or origin.tensor not in leaves:
                raise bad(f"{where}: refers to no stored source tensor")
            try:
                data = origin.apply(leaves[origin.tensor])
            except (TypeError, ValueError, IndexError) as e:
                raise bad(f"{where}: origin does not fit its source tensor ({e})") from None
        else:
            data = array(ref["tensor"])
        return Param(data, origin, bool(ref.get("shared", False)))

    g = NeuralGraph(doc.get("meta", {}))
    g.groups = {d["name"]: TieGroup(d["name"], d["size"], bool(d.get("fixed", False)), d.get("parent"),
                                    bool(d.get("rigid", False))) for d in doc["groups"]}
    for d in doc["sets"]:
        g.sets[d["name"]] = NeuronSet(d["name"], d["size"], d["role"], d["depth"], d["group"], d["activation"],
                                      {k: param(r, f"set {d['name']!r} array {k!r}") for k, r in d["arrays"].items()},
                                      d["attrs"])
    g.blocks = [EdgeBlock(d["name"], d["source"], d["target"], d["kind"], param(d["weight"], f"block {d['name']!r}"),
                          d["attrs"]) for d in doc["blocks"]]
    g.sources = {n: SourceTensor(tuple(t["shape"]), t["dtype"]) for n, t in doc["sources"].items()}
    g.unmapped = {n: Unmapped(u["reason"], array(u["tensor"]) if u["tensor"] else None)
                  for n, u in doc["unmapped"].items()}
    g.leaves = leaves
    try:
        g.validate()
    except GraphError as e:
        raise bad(str(e)) from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise bad(f"{type(e).__name__}: {e}") from None
    return g
