"""The ``keras`` adapter plugin: Keras models (``.keras``), exported to ONNX and lowered.

Keras-exported ONNX (tf2onnx, ``keras.Model.export(format="onnx")``) needs no adapter of its
own: the ONNX engine follows NHWC layouts through their Transposes, reads Dense kernels
``[in, out]`` and channels-last flattens, folds or keeps BatchNorm as Mul/Add, and tracks the
heads of MultiHeadAttention through its einsum decompositions — so a Keras network becomes the
same graph as its PyTorch twin. This adapter adds ``.keras`` files: with Keras installed
(``pip install "nngraph[keras]"``), the model is exported to ONNX and converted; without it,
a clear error says what to install.
"""
from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from nngraph.errors import InputError, UnsupportedModelError
from nngraph.hookspecs import AdapterSpec, hookimpl
from nngraph.ir import NeuralGraph

__version__ = "0.1.0"


def sniff(path: Path) -> bool:
    if path.suffix.lower() != ".keras" or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return "config.json" in z.namelist()


def convert(path: Path, bind=None, **options) -> NeuralGraph:
    try:
        import keras
        import tensorflow as tf
        import tf2onnx
    except ImportError:
        raise InputError(f"{path}: converting .keras files needs Keras with TensorFlow and tf2onnx: "
                         f'pip install "nngraph[keras]" (or export to ONNX and convert that)') from None
    from nngraph.adapters.onnx import convert as convert_onnx

    try:
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - safe_mode refuses lambdas / arbitrary code
        raise InputError(f"{path}: not a loadable Keras model ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    spec = [tf.TensorSpec((None, *i.shape[1:]), i.dtype, name=i.name) for i in model.inputs]
    with tempfile.TemporaryDirectory(prefix="nngraph-keras-") as tmp:
        out = Path(tmp) / "model.onnx"
        try:
            tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(out))
        except Exception as e:  # noqa: BLE001
            raise UnsupportedModelError(f"{path}: tf2onnx cannot export it: {str(e).splitlines()[0][:300]}") from None
        graph = convert_onnx(out)
        import numpy as np
        graph.leaves = {k: np.array(v) for k, v in (graph.leaves or {}).items()}
        for _, p in graph.params():
            if p.origin is not None and p.origin.tensor in graph.leaves:
                p.data = p.origin.apply(graph.leaves[p.origin.tensor])
    graph.meta.update({"format": "keras", "source": path.name})
    return graph


@hookimpl
def nngraph_adapters() -> list[AdapterSpec]:
    return [AdapterSpec(name="keras", convert=convert, sniff=sniff, extensions=(".keras",),
                        description="Keras .keras models (exported through tf2onnx; needs the [keras] extra)")]
