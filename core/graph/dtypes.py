"""Numpy dtypes of stored parameters, including the ones numpy does not name itself.

bfloat16 and the float8 formats come from ``ml_dtypes`` (installed with onnx); numpy reports
them as void types, so "is this a float?" needs one answer shared by every module.
"""
from __future__ import annotations

import numpy as np


def numpy_dtype(name: str) -> np.dtype:
    """The dtype called ``name`` ("float32", "bfloat16", "float8_e4m3fn", ...)."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes  # optional at import time: only checkpoints in these formats need it
        return np.dtype(getattr(ml_dtypes, name))


def is_float(dtype) -> bool:
    """Floating point, including ml_dtypes' bfloat16 / float8 (numpy calls those void)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating):
        return True
    return dtype.name.startswith(("bfloat16", "float8", "float4", "float6"))
