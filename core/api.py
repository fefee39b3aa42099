"""The Python entry points: convert a model file with the right adapter."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError
from .hookspecs import AdapterSpec
from .graph.ir import NeuralGraph
from .loader import registry


def find_adapter(path: str | os.PathLike, format: str | None = None) -> AdapterSpec:
    """The adapter named ``format``, or the first whose ``sniff`` accepts ``path``."""
    reg = registry()
    if format is not None:
        return reg.adapter(format)
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    for adapter in reg.adapters.values():
        try:
            if adapter.sniff(path):
                return adapter
        except OSError as e:
            raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    known = ", ".join(f"{a.name} ({' '.join(a.extensions)})" for a in reg.adapters.values()) or "none loaded"
    raise InputError(f"{path}: not a model format any loaded adapter recognizes (known: {known}); "
                     f"pass --format to force one")


def convert(path: str | os.PathLike, format: str | None = None, **options) -> NeuralGraph:
    """Convert a model file to a validated :class:`NeuralGraph`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    adapter = find_adapter(path, format)
    graph = adapter.convert(path, **options)
    graph.meta.setdefault("format", adapter.name)
    graph.meta.setdefault("source", path.name)
    return graph.validate()


def from_torch(module, example_inputs, **options) -> NeuralGraph:
    """Convert a live ``torch.nn.Module`` (anything ``torch.export`` captures) with
    ``example_inputs``: origins are its ``state_dict`` keys. Needs the ``[torch]`` extra."""
    from nngraph.adapters.torch import from_torch as _from_torch

    return _from_torch(module, example_inputs, **options).validate()
