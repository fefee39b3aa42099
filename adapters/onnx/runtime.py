"""Run ONNX models in onnxruntime, and draw valid random inputs for them."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from nngraph.errors import InputError


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: onnxruntime cannot load the model ({str(e).splitlines()[0]})") from None


def run(path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in inputs.items() if k in wanted})))


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def example_inputs(path: Path, seed: int = 0, dynamic: int = 2) -> dict[str, np.ndarray]:
    """Random inputs from the declared types: dynamic dims become ``dynamic``, floats are
    standard normal, integers are small non-negative ids."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session(path).get_inputs():
        dtype = _ORT_TYPES.get(i.type)
        if dtype is None:
            raise InputError(f"{path}: cannot make example inputs of type {i.type} for {i.name!r}; pass --inputs")
        shape = [d if isinstance(d, int) and d > 0 else dynamic for d in i.shape]
        if np.dtype(dtype).kind == "f":
            feeds[i.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[i.name] = np.ones(shape, dtype=bool)
        else:
            feeds[i.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds
