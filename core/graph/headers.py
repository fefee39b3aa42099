"""Untrusted headers, checked against a schema before any field is used.

A safetensors header (``.safetensors`` checkpoints, ``.ngraph`` files, encoder checkpoints) and
the ``.ngraph`` structure document are JSON written by someone else: they may be deeply nested,
of the wrong type, miss keys, or claim byte ranges outside the file. Every reader goes through
:func:`read_safetensors_header` and :func:`check`, so a bad header is one :class:`HeaderError`
(exit 4) naming the field, never a ``KeyError`` or ``RecursionError`` from deep inside a reader.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO, Mapping

from ..errors import InputError

MAX_HEADER = 256 * 1024 * 1024
MAX_DEPTH = 32          # free-form JSON (meta, attrs) deeper than this is refused


class HeaderError(InputError):
    """A header that is not what its format promises (exit 4)."""


# ------------------------------------------------------------------------------ schema
@dataclass(frozen=True)
class Opt:
    """``schema`` or JSON ``null``."""
    schema: Any


@dataclass(frozen=True)
class DictOf:
    """An object whose keys are strings and whose values all match ``schema``."""
    schema: Any


@dataclass(frozen=True)
class ListOf:
    """An array of items matching ``schema`` (exactly ``length`` of them when given)."""
    schema: Any
    length: int | None = None


@dataclass(frozen=True)
class Fields:
    """An object with the ``required`` keys (and ``optional`` ones if present); others are allowed."""
    required: Mapping[str, Any]
    optional: Mapping[str, Any] | None = None


FREE = "free"            # any JSON value up to MAX_DEPTH levels
NAT = "nat"              # an integer ≥ 0 (not a bool)
POS = "pos"              # an integer ≥ 1 (not a bool)
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true/false", dict: "an object",
               list: "an array", NAT: "a non-negative integer"}


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "true/false", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def check(value: Any, schema: Any, where: str = "header") -> None:
    """Raise :class:`HeaderError` naming the first place where ``value`` does not match ``schema``.

    Schemas: a type (``str``, ``int``, ``float`` accepts ints too, ``bool``, ``dict``/``list``
    with free contents), ``NAT``, ``FREE``, :class:`Opt`, :class:`ListOf`, :class:`DictOf`,
    :class:`Fields`. Iterative, so hostile nesting cannot exhaust the stack."""
    stack = [(value, schema, where)]
    while stack:
        v, s, w = stack.pop()
        if isinstance(s, Opt):
            if v is not None:
                stack.append((v, s.schema, w))
            continue
        if s is FREE:
            depth_ok(v, w)
            continue
        if s is NAT or s is POS:
            if type(v) is not int or v < (0 if s is NAT else 1):
                raise HeaderError(f"{w}: expected a {'non-negative' if s is NAT else 'positive'} integer, "
                                  f"got {_kind(v) if type(v) is not int else v}")
            continue
        if s in (str, bool, int, float):
            ok = (type(v) is s if s in (str, bool) else
                  type(v) is int if s is int else type(v) in (int, float))
            if not ok:
                raise HeaderError(f"{w}: expected {_TYPE_NAMES[s]}, got {_kind(v)}")
            continue
        if s in (dict, list):
            if type(v) is not s:
                raise HeaderError(f"{w}: expected {_TYPE_NAMES[s]}, got {_kind(v)}")
            depth_ok(v, w)
            continue
        if isinstance(s, ListOf):
            if type(v) is not list:
                raise HeaderError(f"{w}: expected an array, got {_kind(v)}")
            if s.length is not None and len(v) != s.length:
                raise HeaderError(f"{w}: expected {s.length} items, got {len(v)}")
            stack.extend((item, s.schema, f"{w}[{i}]") for i, item in enumerate(v))
            continue
        if isinstance(s, DictOf):
            if type(v) is not dict:
                raise HeaderError(f"{w}: expected an object, got {_kind(v)}")
            stack.extend((item, s.schema, f"{w}.{k}") for k, item in v.items())
            continue
        if isinstance(s, Fields):
            if type(v) is not dict:
                raise HeaderError(f"{w}: expected an object, got {_kind(v)}")
            for k, sub in s.required.items():
                if k not in v:
                    raise HeaderError(f"{w}: missing key {k!r}")
                stack.append((v[k], sub, f"{w}.{k}"))
            for k, sub in (s.optional or {}).items():
                if k in v:
                    stack.append((v[k], sub, f"{w}.{k}"))
            continue
        raise TypeError(f"bad schema {s!r}")      # a bug here, not bad input


def depth_ok(value: Any, where: str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than ``max_depth`` (later printing or dumping would recurse)."""
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d >= max_depth:
                raise HeaderError(f"{where}: nested more than {max_depth} levels deep")
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))


def loads(data: bytes | str, where: str) -> Any:
    """``json.loads`` whose every failure (bad UTF-8, syntax, nesting past the recursion limit)
    is a :class:`HeaderError`."""
    try:
        return json.loads(data)
    except RecursionError:
        raise HeaderError(f"{where}: JSON nested too deeply") from None
    except (ValueError, TypeError) as e:
        raise HeaderError(f"{where}: not valid JSON ({str(e).splitlines()[0][:120]})") from None


# ------------------------------------------------------------------------------ Hugging Face config.json
#: Sizes a model family reads from ``config.json``: when present they must be positive integers.
CONFIG_SIZES = ("n_head", "num_attention_heads", "num_key_value_heads", "n_layer", "num_hidden_layers",
                "hidden_size", "n_embd", "intermediate_size", "n_inner", "vocab_size", "type_vocab_size",
                "n_positions", "max_position_embeddings", "image_size", "patch_size", "num_channels", "head_dim")
CONFIG_SCHEMA = Fields({}, {"model_type": str, **{k: Opt(POS) for k in CONFIG_SIZES},
                            "architectures": Opt(ListOf(str)), "partial_rotary_factor": Opt(float),
                            "rotary_pct": Opt(float), "use_parallel_residual": Opt(bool),
                            "rope_parameters": Opt(dict), "rope_scaling": Opt(dict)})


def read_config(data: bytes | str, where: str) -> dict:
    """A ``config.json`` as a checked object: JSON, an object, not nested deeper than
    :data:`MAX_DEPTH`, with the sizes of :data:`CONFIG_SIZES` positive integers (or null)."""
    cfg = loads(data, where)
    check(cfg, dict, where)
    check(cfg, CONFIG_SCHEMA, where)
    return cfg


# ------------------------------------------------------------------------------ safetensors
TENSOR_ENTRY = Fields({"dtype": str, "shape": ListOf(NAT), "data_offsets": ListOf(NAT, 2)})


def read_safetensors_header(f: BinaryIO, size: int, itemsizes: Mapping[str, int], where: str
                            ) -> tuple[dict[str, dict], dict[str, str], int]:
    """(tensor table, ``__metadata__``, data start) of an open safetensors file of ``size`` bytes.

    Checked: the header length fits the file, the header is a JSON object of tensor entries
    (``dtype`` one of ``itemsizes``, ``shape`` of naturals, two ``data_offsets``) and a
    string-to-string ``__metadata__``; every byte range is ``begin ≤ end`` inside the data section
    and exactly ``prod(shape) · itemsize`` long (exact integers: a huge shape cannot wrap around)."""
    raw = f.read(8)
    if len(raw) < 8:
        raise HeaderError(f"{where}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", raw)
    if n > min(size - 8, MAX_HEADER):
        raise HeaderError(f"{where}: not a safetensors file or truncated (header of {n} bytes, file of {size})")
    header = loads(f.read(n), f"{where}: header")
    if type(header) is not dict:
        raise HeaderError(f"{where}: header is {_kind(header)}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    check(metadata, DictOf(str), f"{where}: __metadata__")
    data_len = size - 8 - n
    for key, t in header.items():
        check(t, TENSOR_ENTRY, f"{where}: tensor {key!r}")
        itemsize = itemsizes.get(t["dtype"])
        if itemsize is None:
            raise HeaderError(f"{where}: tensor {key!r} has unsupported dtype {t['dtype']!r}")
        begin, end = t["data_offsets"]
        expected = itemsize
        for d in t["shape"]:
            expected *= d
        if not begin <= end <= data_len or end - begin != expected:
            raise HeaderError(f"{where}: truncated or corrupt (tensor {key!r} of shape {t['shape']} needs "
                              f"{expected} bytes, claims {begin}–{end}, data section has {data_len})")
    return header, metadata, 8 + n
