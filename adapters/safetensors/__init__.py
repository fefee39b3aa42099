"""The ``safetensors`` adapter plugin: checkpoints without a computation graph.

Structure comes from tensor names and shapes. Plain chains (MLP/CNN state dicts such as
``layers.0.weight``, ``conv1.weight``) are ordered by module path with natural sorting and
chained by shapes: rank-2 weights are dense layers, rank 3-5 convolutions, rank-1 parameters
next to running statistics batch norms, other rank-1 pairs affine norms. Anything that cannot be
placed stops the conversion (exit 4) naming the tensors and why — never a silent partial graph.
Tensors are memory-mapped, never read into memory whole.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np

from nngraph.errors import InputError, UnsupportedModelError
from nngraph.files import atomic_output
from nngraph.hookspecs import AdapterSpec, hookimpl
from nngraph.graph.ir import NeuralGraph, Param
from nngraph.graph.origin import Origin

__version__ = "0.1.0"

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
try:     # bfloat16 and fp8 as numpy dtypes (ml_dtypes comes with onnx): mapped as stored, so the
    import ml_dtypes    # round trip stays bit-exact; every consumer reads them as float32
    _DTYPES.update({"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
                    "F8_E5M2": ml_dtypes.float8_e5m2})
except ImportError:      # pragma: no cover - onnx is a dependency
    pass


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file (or of the shards an index names), memory-mapped."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        from nngraph.graph.headers import DictOf, Fields, check, loads
        try:
            index = loads(path.read_bytes(), f"{path}: not a safetensors index")
        except OSError as e:
            raise InputError(f"{path}: not a readable safetensors index ({e})") from None
        check(index, Fields({"weight_map": DictOf(str)}), f"{path}: not a safetensors index")
        shards = sorted(set(index["weight_map"].values()))
        out: dict[str, np.ndarray] = {}
        folder = path.resolve().parent
        for shard in shards:
            target = (folder / shard).resolve()
            if folder not in target.parents:
                raise InputError(f"{path}: shard {shard!r} is outside the index's folder")
            out.update(read_tensors(target))
        return out
    from nngraph.graph.headers import read_safetensors_header
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:     # schema-checked: types, keys, byte ranges inside the file
            header, _, start = read_safetensors_header(
                f, size, {k: np.dtype(v).itemsize for k, v in _DTYPES.items()}, str(path))
    except OSError as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None
    out = {}
    for name, t in header.items():
        dtype = _DTYPES[t["dtype"]]
        b, e = t["data_offsets"]
        shape = tuple(t["shape"])
        out[name] = (np.memmap(path, dtype=dtype, mode="r", offset=start + b, shape=shape) if e > b
                     else np.zeros(shape, dtype))
    return out


def _natural(key: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


NORM_STATS = ("running_mean", "running_var")
SKIP = ("num_batches_tracked",)


def convert_state_dict(tensors: Mapping[str, np.ndarray], path: Path | str = "<state dict>") -> NeuralGraph:
    """A plain chain of layers inferred from names and shapes (see the module docstring)."""
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf in SKIP:
            continue
        modules.setdefault(prefix, {})[leaf] = value
    order = sorted(modules, key=_natural)
    g = NeuralGraph({"format": "state_dict", "structure": "chain"})
    problems: dict[str, list[str]] = {}
    prev: str | None = None
    depth = 0

    def add(name: str, arr: np.ndarray) -> Param:
        g.add_source(name, arr.shape, arr.dtype)
        return Param(arr, Origin(name))

    for mod in order:
        p = modules[mod]
        w, b = p.get("weight"), p.get("bias")
        keys = lambda *leaves: [f"{mod}.{leaf}" if mod else leaf for leaf in leaves]  # noqa: E731
        full = dict(zip(p, keys(*p)))
        if w is None:
            problems.setdefault("no weight in module", []).extend(full.values())
            continue
        if w.ndim >= 2:
            out_ch, per_group = w.shape[:2]
            taps = 1
            groups = 1
            if prev is None:
                inp = g.add_set("input", per_group, "input", fixed=True)
                prev = inp.name
            n_prev = g.sets[prev].size
            kind = "dense" if w.ndim == 2 else "conv"
            if kind == "dense" and per_group != n_prev:
                if per_group % n_prev:
                    problems.setdefault(f"{per_group} inputs do not follow {n_prev} neurons", []).append(full["weight"])
                    continue
                taps = per_group // n_prev          # a flatten in between: spatial positions per channel
            if kind == "conv" and per_group != n_prev:
                if n_prev % per_group or out_ch % (n_prev // per_group):
                    problems.setdefault(f"{per_group} input channels per group do not divide {n_prev}", []).append(
                        full["weight"])
                    continue
                groups = n_prev // per_group
            depth += 1
            if groups > 1 and groups == n_prev == out_ch:
                s = g.add_set(mod or "layer", out_ch, depth=depth, tie=prev)
            elif groups > 1:
                s = g.add_set(mod or "layer", out_ch, depth=depth, parent=g.partition(prev, groups))
            else:
                s = g.add_set(mod or "layer", out_ch, depth=depth)
            weight = add(full["weight"], w)
            if taps > 1:
                o = Origin(full["weight"]).reshape((out_ch, n_prev, taps))
                weight = Param(o.apply(w), o)
            g.add_block(s.name, prev, s.name, kind, weight, groups=groups)
            if b is not None:
                s.arrays["bias"] = add(full["bias"], b)
            prev = s.name
        elif w.ndim == 1 and prev is not None and w.shape[0] == g.sets[prev].size:
            s = g.sets[prev]
            stats = all(k in p for k in NORM_STATS)
            tag = "bn" if stats else "norm"
            s.arrays[f"{tag}_scale"] = add(full["weight"], w)
            if b is not None:
                s.arrays[f"{tag}_shift"] = add(full["bias"], b)
            if stats:
                s.arrays["bn_mean"] = add(full["running_mean"], p["running_mean"])
                s.arrays["bn_var"] = add(full["running_var"], p["running_var"])
        else:
            problems.setdefault(f"shape {tuple(w.shape)} does not continue the chain", []).append(full["weight"])
            continue
        for leaf in p:
            if leaf not in ("weight", "bias", *NORM_STATS):
                problems.setdefault("unknown parameter", []).append(full[leaf])
    if problems:
        raise UnsupportedModelError(f"{path}: cannot place these tensors in a layer chain", problems)
    if prev is None:
        raise InputError(f"{path}: no layers found")
    g.sets[prev].role = "output"
    g.fix(prev)
    return g.validate()


def sniff(path: Path) -> bool:
    return path.name.endswith((".safetensors", ".safetensors.index.json"))


def convert(path: Path, bind=None, **options) -> NeuralGraph:
    tensors = read_tensors(path)
    config = path.parent / "config.json"
    if config.is_file():
        from nngraph.graph.headers import POS, Fields, check, read_config

        from .families import FAMILIES, convert_family
        try:
            cfg = read_config(config.read_bytes(), str(config))     # schema-checked: an object, sizes ≥ 1
        except OSError as e:
            raise InputError(f"{config}: cannot read ({e})") from None
        fam = FAMILIES.get(cfg.get("model_type"))
        if fam is not None:                                        # the sizes this family cannot do without
            check(cfg, Fields({fam.heads_key: POS, fam.layers_key: POS}), str(config))
        graph = convert_family(tensors, cfg, path)
    else:
        graph = convert_state_dict(tensors, path)
    graph.meta["format"] = "safetensors"
    graph.leaves = {k: v for k, v in tensors.items() if k in graph.sources}
    return graph


def export(source: Path, params, out: Path) -> None:
    """Write the parameters as a safetensors file, with the source's config.json beside it."""
    import shutil

    from safetensors.numpy import save_file

    out = Path(out)
    with atomic_output(out) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, str(tmp))
    config = Path(source).parent / "config.json"
    if config.is_file() and config.resolve() != (out.parent / "config.json").resolve():
        shutil.copy(config, out.parent / "config.json")


def _needs_config(path: Path) -> Path:
    """Running (and drawing inputs for) a checkpoint needs the model its config describes."""
    if not (Path(path).parent / "config.json").is_file():
        from nngraph.errors import PluginError
        raise PluginError(f"{path}: a checkpoint without config.json has no computation to run; "
                          f"verification needs a Hugging Face config")
    return Path(path)


def run(path: Path, inputs):
    from .families import hf_run
    return hf_run(_needs_config(path), inputs)


def example_inputs(path: Path, seed: int = 0):
    from .families import hf_example_inputs
    return hf_example_inputs(_needs_config(path), seed)


def read_params(path: Path):
    return read_tensors(path)


@hookimpl
def nngraph_adapters() -> list[AdapterSpec]:
    return [AdapterSpec(name="safetensors", convert=convert, sniff=sniff, export=export, run=run,
                        example_inputs=example_inputs, read_params=read_params,
                        extensions=(".safetensors", ".safetensors.index.json"),
                        description="safetensors checkpoints: layer chains by names and shapes; "
                                    "Hugging Face bert/gpt2/llama/vit with config.json")]
