"""Read an ONNX file's structure without loading its weights.

``onnx.load`` parses every initializer's bytes into the protobuf message, then
``numpy_helper.to_array`` copies them again: twice the file in memory before any work starts.
Here the protobuf wire format is walked directly over a memory map: the main graph's large
``raw_data`` fields are cut out (their file offsets kept, so the weights can be memory-mapped
in place) and only the small remainder is parsed by onnx.
"""
from __future__ import annotations

import mmap
from pathlib import Path

MODEL_GRAPH, GRAPH_INITIALIZER, TENSOR_NAME, TENSOR_RAW_DATA = 7, 5, 8, 9


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _fields(buf, start: int, end: int):
    """(field number, wire type, key start, value start, value end) for each field in [start, end)."""
    pos = start
    while pos < end:
        key_start = pos
        key, pos = _varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == 0:
            _, vend = _varint(buf, pos)
            yield field, wt, key_start, pos, vend
            pos = vend
        elif wt == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise ValueError("field runs past its message")
            yield field, wt, key_start, pos, pos + n
            pos += n
        elif wt == 1:
            yield field, wt, key_start, pos, pos + 8
            pos += 8
        elif wt == 5:
            yield field, wt, key_start, pos, pos + 4
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
    if pos != end:
        raise ValueError("message overruns its length")


def _message(field: int, payload: bytes) -> bytes:
    return _encode_varint(field << 3 | 2) + _encode_varint(len(payload)) + payload


def strip_weights(path: Path, min_bytes: int = 4096) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The model's bytes with large main-graph ``raw_data`` removed, and for each such
    initializer name its (offset, length) in the file."""
    raw: dict[str, tuple[int, int]] = {}
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            raise ValueError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf = memoryview(mm)
            try:
                parts = []
                for field, wt, k0, v0, v1 in _fields(buf, 0, size):
                    if field == MODEL_GRAPH and wt == 2:
                        parts.append(_message(field, _strip_graph(buf, v0, v1, raw, min_bytes)))
                    else:
                        parts.append(bytes(buf[k0:v1]))
                return b"".join(parts), raw
            finally:
                buf.release()


def _strip_graph(buf, start: int, end: int, raw: dict, min_bytes: int) -> bytes:
    parts = []
    for field, wt, k0, v0, v1 in _fields(buf, start, end):
        if field != GRAPH_INITIALIZER or wt != 2:
            parts.append(bytes(buf[k0:v1]))
            continue
        name, data, kept = None, None, []
        for tf, twt, tk0, tv0, tv1 in _fields(buf, v0, v1):
            if tf == TENSOR_NAME and twt == 2:
                name = bytes(buf[tv0:tv1]).decode("utf-8", "replace")
            if tf == TENSOR_RAW_DATA and twt == 2 and tv1 - tv0 >= min_bytes:
                data = (tv0, tv1 - tv0)
                continue
            kept.append(bytes(buf[tk0:tv1]))
        if data is None or name is None or name in raw:
            parts.append(bytes(buf[k0:v1]))
            continue
        raw[name] = data
        parts.append(_message(field, b"".join(kept)))
    return b"".join(parts)
