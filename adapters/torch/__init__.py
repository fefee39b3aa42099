"""The ``torch`` adapter plugin: PyTorch modules, ``torch.export`` programs (.pt2) and
state-dict checkpoints.

Modules are captured with ``torch.export`` through the dynamo ONNX exporter (``optimize=False``,
so initializers keep the module's parameter names) and lowered by the ONNX engine: origins name
``state_dict`` keys, ``to_state_dict`` gives the (permuted) weights back, and ``verify_module``
loads them into the module and compares outputs. Files are never unpickled beyond tensors:
every ``torch.load`` runs with ``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from nngraph.errors import InputError, MissingExtraError, UnsupportedModelError
from nngraph.hookspecs import AdapterSpec, hookimpl
from nngraph.graph.ir import NeuralGraph

__version__ = "0.1.0"
SUFFIXES = (".pt2", ".pt", ".pth", ".bin", ".ckpt")


NNGRAPH_REQUIRES = ["torch", "onnxscript"]    # shown by `ngraph plugins` when missing


def _torch():
    try:
        import torch
    except ImportError:  # depends on the install
        raise MissingExtraError("torch", "torch") from None
    return torch


@contextlib.contextmanager
def _safe_torch_load():
    """Force ``weights_only=True`` on every ``torch.load`` inside (``torch.export.load`` would
    otherwise fall back to full unpickling for objects it cannot read safely)."""
    torch = _torch()
    original = torch.load

    def guarded(*args, **kwargs):
        if kwargs.get("weights_only") is False:
            raise InputError("the file needs arbitrary unpickling to load; refused (weights_only=True only)")
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = guarded
    try:
        yield
    finally:
        torch.load = original


def _as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def export_onnx(module_or_program, example_inputs, path: Path) -> Path:
    """The dynamo ONNX export nngraph lowers: no graph optimizations, so parameter names and
    layouts stay the module's own."""
    torch = _torch()
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it
    except ImportError:
        raise MissingExtraError("onnxscript", "torch") from None
    import warnings
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module_or_program, _as_tuple(example_inputs), dynamo=True, optimize=False,
                                        verbose=False)
        except Exception as e:  # noqa: BLE001 - torch.export's errors are long; keep the first line
            raise UnsupportedModelError(f"torch.export cannot capture this module: "
                                        f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}") from None
        program.save(str(path), external_data=False)
    return path


def from_torch(module, example_inputs, *, keep_onnx: str | Path | None = None, strict: bool = False) -> NeuralGraph:
    """Convert a ``torch.nn.Module`` (anything ``torch.export`` captures) to a neural graph whose
    origins are the module's ``state_dict`` keys. ``strict`` refuses structure that would be pinned."""
    from nngraph.adapters.onnx import convert as convert_onnx

    try:
        module = module.eval() if hasattr(module, "eval") else module
    except NotImplementedError:     # an exported program's module: already in inference form
        pass
    with tempfile.TemporaryDirectory(prefix="nngraph-torch-") as tmp:
        path = export_onnx(module, example_inputs, Path(keep_onnx) if keep_onnx else Path(tmp) / "model.onnx")
        graph = convert_onnx(path, strict=strict)
        graph.detach()   # outlive the temporary ONNX file
    state = module.state_dict() if callable(getattr(module, "state_dict", None)) else (
        dict(module.state_dict) if hasattr(module, "state_dict") else {})
    graph.meta.update({"format": "torch", "module": type(module).__name__,
                       "state_dict_keys": [k for k in graph.sources if k in state]})
    foreign = [k for k in graph.sources if state and k not in state]
    if foreign:
        graph.meta["derived_sources"] = foreign
    return graph.validate()


def to_state_dict(graph: NeuralGraph, like: Mapping[str, Any] | None = None) -> dict:
    """The graph's parameters as torch tensors keyed like the module's ``state_dict``."""
    torch = _torch()
    params = graph.to_params()
    out = {}
    for name, value in params.items():
        t = torch.from_numpy(np.ascontiguousarray(value))
        if like is not None and name in like:
            t = t.to(dtype=like[name].dtype, device=like[name].device)
        out[name] = t
    return out


def verify_module(module, example_inputs, *, trials: int = 3, seed: int = 0, rtol: float = 1e-4) -> dict:
    """Permuted state dicts loaded into copies of ``module`` must give the same outputs."""
    torch = _torch()
    graph = from_torch(module, example_inputs)
    state = module.state_dict()
    params = graph.to_params()
    derived = graph.meta.get("derived_sources", [])
    roundtrip = all(np.array_equal(params[k], state[k].detach().cpu().numpy()) for k in params if k in state)
    args = _as_tuple(example_inputs)
    with torch.no_grad():
        reference = _flat(module(*args))
    worst = 0.0
    problems = []
    if derived:
        problems.append(f"parameters computed by the export, not in the state dict: {derived[:5]}")
    for t in range(trials):
        permuted = graph.permute(graph.random_symmetry(seed + 1 + t))
        clone = copy.deepcopy(module)
        missing = clone.load_state_dict(to_state_dict(permuted, state), strict=False)
        if missing.unexpected_keys:
            problems.append(f"keys not in the module: {missing.unexpected_keys[:5]}")
        with torch.no_grad():
            out = _flat(clone(*args))
        for a, b in zip(reference, out):
            d = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
            worst = max(worst, d / max(1.0, float(a.abs().max()) if a.numel() else 1.0))
    if worst > rtol:
        problems.append(f"permuted modules differ by {worst:.3g} (relative)")
    if not roundtrip:
        problems.append("a parameter does not round-trip exactly")
    return {"ok": not problems, "trials": trials, "max_rel_diff": worst, "roundtrip_exact": roundtrip,
            "coverage": graph.coverage, "problems": problems}


def _flat(out) -> list:
    torch = _torch()
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flat(o)]
    if hasattr(out, "to_tuple"):
        return _flat(out.to_tuple())
    return []


# ---------------------------------------------------------------------------- files
def _kind(path: Path) -> str | None:
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, UnicodeDecodeError, ValueError, EOFError, NotImplementedError) as e:
        raise InputError(f"{path}: damaged zip archive ({type(e).__name__}: {str(e)[:120]})") from None
    if any(n.endswith("archive_format") or "/models/" in n or n.endswith(".json") and "serialized" in n
           for n in names) and path.suffix == ".pt2":
        return "pt2"
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "state_dict"
    return None


def sniff(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES and path.is_file() and _kind(path) is not None


def _random_inputs(program) -> tuple:
    """Example inputs drawn from an exported program's input specs."""
    torch = _torch()
    from torch.export.graph_signature import InputKind
    args = []
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for spec in program.graph_signature.input_specs:
        if spec.kind != InputKind.USER_INPUT:
            continue
        val = placeholders[spec.arg.name].meta.get("val")
        shape = [int(d) if str(d).isdigit() else 2 for d in val.shape]
        if val.dtype.is_floating_point:
            args.append(torch.randn(shape, dtype=val.dtype))
        else:
            args.append(torch.zeros(shape, dtype=val.dtype))
    return tuple(args)


def convert(path: Path, bind=None, example_inputs: Sequence | None = None, **options) -> NeuralGraph:
    torch = _torch()
    kind = _kind(path)
    if kind == "pt2":
        program = _program(path)
        if example_inputs is None and bind:
            example_inputs = tuple(torch.from_numpy(np.asarray(bind[k])) for k in sorted(bind, key=str))
        inputs = example_inputs or _random_inputs(program)
        graph = from_torch(program, inputs, strict=bool(options.get("strict")))
    elif kind == "torchscript":
        if example_inputs is None and bind:
            example_inputs = tuple(torch.from_numpy(np.asarray(bind[k])) for k in sorted(bind))
        if example_inputs is None:
            raise InputError(f"{path}: a TorchScript file records no input shapes; pass example inputs with "
                             f"--inputs FILE.npz (arrays in positional order by key)")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{path}: not a readable TorchScript file ({type(e).__name__}: {e})") from None
        graph = _from_torchscript(module, example_inputs)
    elif kind == "state_dict":
        from nngraph.adapters.safetensors import convert_state_dict
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001
            if isinstance(e, pickle.UnpicklingError):         # never loaded in full here (torch's text says how)
                if "GLOBAL" in str(e).upper():
                    raise InputError(f"{path}: not a tensors-only checkpoint: it pickles Python objects (a whole "
                                     f"module?), which are never unpickled here; save its state_dict(), or export "
                                     f"it to ONNX or torch.export") from None
                raise InputError(f"{path}: not a tensors-only checkpoint (its pickle does not load as plain "
                                 f"tensors)") from None
            raise InputError(f"{path}: not a tensors-only checkpoint ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise InputError(f"{path}: not a state dict of tensors")
        graph = convert_state_dict({k: v.numpy() for k, v in state.items()}, path)
    else:
        raise InputError(f"{path}: not a PyTorch file nngraph reads (.pt2 program, TorchScript, state dict)")
    graph.meta["source"] = path.name
    return graph


def _from_torchscript(module, example_inputs) -> NeuralGraph:
    """TorchScript modules go through the TorchScript ONNX exporter (the dynamo one cannot trace them)."""
    torch = _torch()
    from nngraph.adapters.onnx import convert as convert_onnx
    import warnings
    with tempfile.TemporaryDirectory(prefix="nngraph-ts-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        try:
            torch.onnx.export(module, _as_tuple(example_inputs), str(path), dynamo=False, opset_version=17,
                              keep_initializers_as_inputs=False, do_constant_folding=False)
        except Exception as e:  # noqa: BLE001
            raise UnsupportedModelError(f"TorchScript module cannot be exported: {str(e).splitlines()[0][:300]}") from None
        graph = convert_onnx(path)
        graph.detach()   # outlive the temporary ONNX file
    graph.meta["format"] = "torch"
    return graph


def _program(path: Path):
    """The exported program in ``path``; a damaged archive is an :class:`InputError` (exit 4) for
    convert and verify alike."""
    torch = _torch()
    if _kind(path) != "pt2":
        raise InputError(f"{path}: only torch.export programs (.pt2) can be run; a state dict has no computation")
    with _safe_torch_load():
        try:
            return torch.export.load(str(path))
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - any damage inside the archive
            detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise InputError(f"{path}: not a readable torch.export program ({type(e).__name__}: {detail})") from None


def export(source: Path, params, out: Path) -> None:
    """A copy of the .pt2 program with its parameters replaced."""
    torch = _torch()
    program = _program(Path(source))
    for name, value in params.items():
        if name in program.state_dict:
            old = program.state_dict[name]
            new = torch.from_numpy(np.ascontiguousarray(value)).to(old.dtype)
            program.state_dict[name] = torch.nn.Parameter(new, requires_grad=old.requires_grad) \
                if isinstance(old, torch.nn.Parameter) else new
    torch.export.save(program, str(out))


def run(path: Path, inputs) -> dict:
    torch = _torch()
    program = _program(Path(path))
    args = [torch.from_numpy(np.asarray(inputs[k])) for k in sorted(inputs, key=lambda k: int(k))]
    with torch.no_grad():
        outs = _flat(program.module()(*args))
    return {str(i): o.detach().numpy() for i, o in enumerate(outs)}


def example_inputs(path: Path, seed: int = 0) -> dict:
    torch = _torch()
    torch.manual_seed(seed)
    return {str(i): a.numpy() for i, a in enumerate(_random_inputs(_program(Path(path))))}


def read_params(path: Path) -> dict:
    program = _program(Path(path))
    return {k: v.detach().numpy() for k, v in program.state_dict.items()}


@hookimpl
def nngraph_adapters() -> list[AdapterSpec]:
    return [AdapterSpec(name="torch", convert=convert, sniff=sniff, extensions=SUFFIXES,
                        description="PyTorch: torch.export programs (.pt2), TorchScript, tensors-only state dicts",
                        export=export, run=run, example_inputs=example_inputs, read_params=read_params)]
