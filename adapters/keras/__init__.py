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
from nngraph.graph.ir import NeuralGraph

__version__ = "0.1.0"


KERAS_PRODUCERS = (b"tf2onnx", b"keras")


def _keras_onnx(path: Path) -> bool:
    """An ONNX file written by tf2onnx or keras.Model.export (producer_name near the start)."""
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(256)
    return any(p in head for p in KERAS_PRODUCERS)


def sniff(path: Path) -> bool:
    if _keras_onnx(path):
        return True
    if path.suffix.lower() != ".keras" or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return "config.json" in z.namelist()


def convert(path: Path, bind=None, **options) -> NeuralGraph:
    if path.suffix.lower() == ".onnx":          # already exported: the ONNX engine normalises the layout
        from nngraph.adapters.onnx import convert as convert_onnx
        graph = convert_onnx(path, bind=bind, strict=bool(options.get("strict")))
        graph.meta.update({"format": "keras", "source": path.name})
        return graph
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
        graph = convert_onnx(out, strict=bool(options.get("strict")))
        graph.detach()   # outlive the temporary ONNX file
    graph.meta.update({"format": "keras", "source": path.name})
    return graph


def _onnx_only(fn_name: str):
    def call(path, *args):
        from nngraph.adapters import onnx as onnx_adapter
        if Path(path).suffix.lower() != ".onnx":
            raise InputError(f"{path}: export it to ONNX first (ngraph verify runs ONNX exports of Keras models)")
        return getattr(onnx_adapter, fn_name)(path, *args)
    return call


@hookimpl
def nngraph_adapters() -> list[AdapterSpec]:
    return [AdapterSpec(name="keras", convert=convert, sniff=sniff, extensions=(".keras", ".onnx"),
                        description="Keras: .keras models (through tf2onnx; needs the [keras] extra) and "
                                    "Keras-exported ONNX",
                        export=_onnx_only("export"), run=_onnx_only("run"),
                        example_inputs=_onnx_only("example_inputs"), read_params=_onnx_only("read_params"),
                        activations=_onnx_only("activations"), recalibrate=_onnx_only("recalibrate"))]
