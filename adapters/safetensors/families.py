"""Hugging Face model families from ``config.json``: name patterns per family (filled next)."""
from __future__ import annotations

from nngraph.errors import UnsupportedModelError


def convert_family(tensors, cfg, path):
    raise UnsupportedModelError(f"{path}: model_type {cfg.get('model_type')!r} from config.json is not supported yet "
                                f"(remove config.json to read the file as a plain layer chain)")
