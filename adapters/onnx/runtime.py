"""Run ONNX models in onnxruntime, and draw valid random inputs for them."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Mapping

import numpy as np

from nngraph.errors import InputError


def session(path: Path, proto=None):
    """An unoptimized CPU session for the model at ``path`` (or for ``proto``, a changed copy of
    it, e.g. with intermediate values as outputs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4          # errors come back as exceptions: no second copy on stderr
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        source = str(path) if proto is None else proto.SerializeToString()
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        error = e
    upgraded = _upgraded(path, proto) if "NOT_IMPLEMENTED" in str(error) else None
    if upgraded is not None:       # onnxruntime has no kernels for opsets before 7: run the same graph upgraded
        try:
            return ort.InferenceSession(upgraded, opts, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - report the original failure
            pass
    raise InputError(f"{path}: onnxruntime cannot load the model ({str(error).splitlines()[0]})") from None


#: Models up to this file size keep their sessions between calls (:func:`reused_session`); larger ones
#: are loaded per call, so that no large model stays in memory after its last use.
REUSE_BELOW_BYTES = 256 << 20


def reused_session(path: Path, outputs: tuple[str, ...] = ()):
    """:func:`session` for the model at ``path`` (with ``outputs`` as extra graph outputs), reused while
    the file is unchanged: probe features run a model on ``k`` inputs in a row (its example inputs, then
    its intermediate values), which built 2k sessions before. Small self-contained models only (under
    :data:`REUSE_BELOW_BYTES`, no external data); two are kept (the plain and the probing session of the
    model at hand)."""
    path = Path(path).resolve()
    stamp = file_stamp(path)
    if stamp[0] >= REUSE_BELOW_BYTES or _has_external_data(str(path), stamp):
        return _session_for.__wrapped__(str(path), stamp, outputs)
    return _session_for(str(path), stamp, outputs)


def file_stamp(path: Path) -> tuple[int, int, int, int]:
    """(size, mtime, ctime, inode) of ``path``: what caches keyed by a model file compare, so a file
    replaced under the same name (same size and mtime, say) is read again."""
    stat = Path(path).stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


@functools.lru_cache(maxsize=2)
def _session_for(path: str, stamp: tuple, outputs: tuple[str, ...]):
    return session(Path(path), _with_outputs(Path(path), list(outputs)) if outputs else None)


@functools.lru_cache(maxsize=64)
def _has_external_data(path: str, stamp: tuple) -> bool:
    """Whether any initializer of the model lives in another file (its size is not the file's)."""
    from onnx import TensorProto
    from .graphs import all_graphs
    from .reader import read_model
    return any(t.data_location == TensorProto.EXTERNAL
               for g in all_graphs(read_model(path).proto.graph) for t in g.initializer)


def _upgraded(path: Path, proto) -> bytes | None:
    """The model converted to opset 7 (where onnxruntime's kernels start) when it is older;
    weights and structure stay what they are (the converter only rewrites op versions)."""
    import onnx
    from onnx import version_converter

    try:
        model = proto if proto is not None else onnx.load(str(path))
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset is None or opset >= 7:
            return None
        return version_converter.convert_version(model, 7).SerializeToString()
    except Exception:  # noqa: BLE001 - not convertible: the caller reports the load failure
        return None


def run(path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, _run(sess, path, names, {k: v for k, v in inputs.items() if k in wanted})))


def _run(sess, path: Path, names: list[str], feeds: Mapping[str, np.ndarray]) -> list:
    """``sess.run``; a model onnxruntime loads but cannot execute (inconsistent shapes, inputs
    of the wrong type) is an :class:`InputError` naming the file."""
    try:
        return sess.run(names, dict(feeds))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail / InvalidArgument types
        raise InputError(f"{path}: onnxruntime cannot run the model ({str(e).strip().splitlines()[0][:300]})") from None


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def _id_ranges(path: Path) -> dict[str, int]:
    """For integer inputs that index a lookup table (directly or through casts and reshapes),
    the number of rows of that table: ids drawn below it are valid. Read once per version of the file
    (probing draws k example inputs in a row)."""
    return dict(_id_ranges_of(str(Path(path).resolve()), file_stamp(path)))


@functools.lru_cache(maxsize=8)
def _id_ranges_of(path: str, stamp: tuple) -> dict[str, int]:
    from .reader import read_model

    g = read_model(path).graph        # corrupt protobuf: InputError (exit 4); weights stay in the file
    rows = {t.name: t.dims[0] for t in g.initializer if len(t.dims) == 2}
    consumers: dict[str, list] = {}
    for n in g.node:
        for k, i in enumerate(n.input):
            consumers.setdefault(i, []).append((n, k))
    out = {}
    for inp in g.input:
        frontier, seen = [inp.name], set()
        while frontier:
            v = frontier.pop()
            if v in seen:
                continue
            seen.add(v)
            for n, k in consumers.get(v, []):
                if n.op_type == "Gather" and k == 1 and n.input[0] in rows:
                    out[inp.name] = min(out.get(inp.name, 1 << 62), rows[n.input[0]])
                elif n.op_type == "EmbedLayerNormalization" and k in (0, 1):
                    table = n.input[2 if k == 0 else 4]
                    if table in rows:
                        out[inp.name] = min(out.get(inp.name, 1 << 62), rows[table])
                elif n.op_type in ("Cast", "Unsqueeze", "Squeeze", "Reshape", "Identity", "Flatten") and k == 0:
                    frontier.extend(n.output)
    return out


#: Sizes tried for dynamic dims (the batch gets the size, other dims twice it) until the model
#: runs: small first; conv stacks that downsample 32× or read raw audio need the larger ones.
DYNAMIC_SIZES = (2, 16, 64, 256)


def example_inputs(path: Path, seed: int = 0, dynamic: int | None = None) -> dict[str, np.ndarray]:
    """Random inputs from the declared types: dynamic dims become ``dynamic`` (by default the
    first of :data:`DYNAMIC_SIZES` the model runs with), floats are standard normal, integer
    ids cover the rows of the table they index, masks are ones."""
    sess = reused_session(path)
    if dynamic is not None or all(isinstance(d, int) and d > 0 for i in sess.get_inputs() for d in i.shape):
        return _example_inputs(path, sess, seed, dynamic or DYNAMIC_SIZES[0])
    import onnxruntime as ort

    quiet = ort.RunOptions()
    quiet.log_severity_level = 4          # a size that is too small is expected, not an error to print
    for size in DYNAMIC_SIZES:
        feeds = _example_inputs(path, sess, seed, size)
        try:
            sess.run(None, feeds, quiet)
            return feeds
        except Exception:  # noqa: BLE001 - too small for the model: try the next size
            continue
    return _example_inputs(path, sess, seed, DYNAMIC_SIZES[0])


def _example_inputs(path: Path, sess, seed: int, dynamic: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    symbols: dict[str, int] = {}
    ranges = _id_ranges(path)
    for i in sess.get_inputs():
        dtype = _ORT_TYPES.get(i.type)
        if dtype is None:
            raise InputError(f"{path}: cannot make example inputs of type {i.type} for {i.name!r}; pass --inputs")
        shape = []
        for k, d in enumerate(i.shape):       # one size per symbol: inputs that share a dim agree on it
            if isinstance(d, int) and d > 0:
                shape.append(d)
            else:
                size = symbols.setdefault(d, dynamic * (2 if k else 1)) if isinstance(d, str) and d else \
                    dynamic * (2 if k else 1)
                shape.append(size)
        if np.dtype(dtype).kind == "f":
            feeds[i.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[i.name] = np.ones(shape, dtype=bool)
        elif "mask" in i.name.lower():
            feeds[i.name] = np.ones(shape, dtype=dtype)
        else:
            feeds[i.name] = rng.integers(0, ranges.get(i.name, 2), size=shape).astype(dtype)
    return feeds


def _feeds(sess, path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = [i.name for i in sess.get_inputs()]
    missing = [n for n in wanted if n not in inputs]
    if missing:
        raise InputError(f"{path}: the data has no array for input(s) {', '.join(missing)} "
                         f"(it holds {', '.join(sorted(inputs)) or 'nothing'})")
    return {n: inputs[n] for n in wanted}


def _with_outputs(path: Path, names: list[str]):
    """The model's proto with extra graph outputs (types left to onnxruntime's inference)."""
    import onnx
    from .reader import read_model
    from .writer import inline_copy
    proto = inline_copy(read_model(path))
    have = {o.name for o in proto.graph.output}
    for n in names:
        if n not in have:
            proto.graph.output.append(onnx.ValueInfoProto(name=n))
    return proto


def activations(path: Path, probes: Mapping[str, list], inputs: Mapping[str, np.ndarray],
                max_samples: int = 50_000, seed: int = 0) -> dict[str, np.ndarray]:
    """Each probed neuron set's outputs as ``[samples, neurons]`` (batch, tokens and space all
    count as samples; at most ``max_samples`` rows, drawn without replacement)."""
    names = sorted({v for v, _ in probes.values()})
    sess = reused_session(path, tuple(names))
    values = dict(zip(names, _run(sess, path, names, _feeds(sess, path, inputs))))
    rng = np.random.default_rng(seed)
    out = {}
    for set_name, (value, axis) in probes.items():
        x = np.moveaxis(np.asarray(values[value]), axis, -1)
        x = x.reshape(-1, x.shape[-1])
        if len(x) > max_samples:
            x = x[np.sort(rng.choice(len(x), max_samples, replace=False))]
        out[set_name] = x
    return out


def recalibrate(path: Path, inputs: Mapping[str, np.ndarray], out: Path) -> int:
    """Re-estimate every BatchNormalization's running mean and variance on ``inputs`` (REPAIR's
    "reset BN": averaged weights shift each channel's statistics) and write the model to
    ``out``. Layers are done in graph order, each after the ones before it; returns how many."""
    import onnx
    from onnx import numpy_helper
    from .reader import read_model
    from .writer import inline_copy, save_atomic
    proto = inline_copy(read_model(path))
    inits = {t.name: t for t in proto.graph.initializer}
    bns = [n for n in proto.graph.node if n.op_type == "BatchNormalization" and len(n.input) >= 5
           and n.input[3] in inits and n.input[4] in inits]
    for node in bns:      # each layer's input depends on the statistics set before it
        proto.graph.output.append(onnx.ValueInfoProto(name=node.input[0]))
        sess = session(path, proto)
        proto.graph.output.pop()
        x = np.asarray(_run(sess, path, [node.input[0]], _feeds(sess, path, inputs))[0], np.float64)
        axes = tuple(i for i in range(x.ndim) if i != 1)
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        for name, value in ((node.input[3], mean), (node.input[4], var)):
            t = inits[name]
            t.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(t).dtype), name))
    save_atomic(proto, out)
    return len(bns)
