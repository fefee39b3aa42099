"""Ground truth for a converter: permuted models compute the same function.

For each trial, draw a random symmetry of the graph, rebuild the source parameters from the
permuted graph, write the permuted model with the adapter, run it and the original on the same
inputs, and compare. Separately, the unpermuted graph must give back every source tensor bit
for bit.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .api import find_adapter
from .errors import InputError, PluginError
from .graph.dtypes import is_float

RTOL = 1e-4


@dataclass
class VerifyReport:
    ok: bool
    trials: int
    max_abs_diff: float
    max_rel_diff: float
    roundtrip_exact: bool
    coverage: float
    groups_moved: list[int] = field(default_factory=list)
    #: per trial, how many source tensors the symmetry changed: all zero means nothing was tested
    #: (no free neurons, or constant weights a permutation cannot change)
    tensors_changed: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    free_fraction: float = 1.0                                  # hidden neurons some symmetry moves
    pins: list[dict] = field(default_factory=list)              # what the converter could not follow
    rtol: float = RTOL              # the tolerance used (see output_tolerance)
    #: graph inputs read as weights (old exporters) that verify bound to the feeds (example inputs or
    #: --inputs) to run the model: `ngraph convert` without --inputs pins the layers reading them instead
    bound_inputs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def _rel(diff: float, ref: np.ndarray) -> float:
    finite = np.abs(ref[np.isfinite(ref)]) if ref.size else ref
    scale = float(np.max(finite)) if finite.size else 0.0
    return diff / max(scale, 1.0)


def rounding_unit(dtype) -> float:
    """Machine epsilon of a float dtype (ml_dtypes ones too)."""
    try:
        return float(np.finfo(dtype).eps)
    except ValueError:
        import ml_dtypes
        return float(ml_dtypes.finfo(dtype).eps)


def output_tolerance(reference: Mapping[str, np.ndarray], depth: int, rtol: float = RTOL) -> float:
    """Relative tolerance for comparing a model with a permuted copy. A permutation changes the
    order of every sum, so each of ``depth`` layers may round differently in the precision the
    model computes in (its outputs' dtype): ``2·eps·√(depth + 1)``, never below ``rtol``. float32
    keeps 1e-4; float16 at depth 3 allows 3.9e-3 — a wrong permutation differs by O(1)."""
    eps = [rounding_unit(v.dtype) for v in reference.values() if is_float(v.dtype)]
    return max(rtol, 2.0 * max(eps, default=0.0) * float(np.sqrt(depth + 1)))


def graph_depth(graph) -> int:
    """Layers between input and output, as the converter numbered them."""
    return max((s.depth for s in graph.sets.values()), default=0)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact equality that NaN and Inf cannot break: bit patterns when the dtypes agree."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype == b.dtype and a.dtype.itemsize in (1, 2, 4, 8):
        view = np.dtype(f"u{a.dtype.itemsize}")
        return bool(np.array_equal(np.ascontiguousarray(a).view(view), np.ascontiguousarray(b).view(view)))
    if is_float(a.dtype) and is_float(b.dtype):
        return bool(np.array_equal(a.astype(np.float64), b.astype(np.float64), equal_nan=True))
    return bool(np.array_equal(a, b))


def compare_outputs(reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
                    ) -> tuple[float, float, list[str]]:
    """Largest absolute and relative difference of float outputs (compared in float64; NaN
    equals NaN, equal infinities are equal, a NaN or Inf on one side only differs by ``inf``),
    and the problems that make a comparison meaningless (a shape change, a differing integer
    output: relative ``inf``)."""
    max_abs = max_rel = 0.0
    problems: list[str] = []
    for name, out in outputs.items():
        ref = reference[name]
        if out.shape != ref.shape:
            problems.append(f"output {name!r} has shape {out.shape}, expected {ref.shape}")
            max_rel = float("inf")
            continue
        if not is_float(ref.dtype):
            if not np.array_equal(out, ref):
                problems.append(f"integer output {name!r} differs")
                max_rel = float("inf")
            continue
        if not ref.size:
            continue
        x, r = np.asarray(out, np.float64), np.asarray(ref, np.float64)
        with np.errstate(invalid="ignore"):
            diff = np.abs(x - r)
        diff[(x == r) | (np.isnan(x) & np.isnan(r))] = 0.0
        d = float(np.max(np.nan_to_num(diff, nan=np.inf)))
        max_abs, max_rel = max(max_abs, d), max(max_rel, _rel(d, r))
    return max_abs, max_rel, problems


def load_inputs(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - BadZipFile, a corrupt .npy header (TokenError) … : bad input
        raise InputError(f"{path}: not a readable .npz of inputs ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from None


def verify(path: str | Path, *, format: str | None = None, trials: int = 3, inputs: Mapping[str, np.ndarray] | None = None,
           seed: int = 0, rtol: float | None = None, randomize: bool = False,
           progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Convert ``path`` and check it: exact round trip, then ``trials`` random symmetries.

    ``rtol``: the allowed relative output difference; by default :func:`output_tolerance` of the
    model's output dtype and depth (1e-4 for float32 models).
    ``randomize`` redraws every parameter first (see :mod:`nngraph.graph.randomize`), for models whose
    weights are constants or zeros and would hide a wrong symmetry."""
    path = Path(path)
    adapter = find_adapter(path, format)
    if adapter.export is None or adapter.run is None:
        raise PluginError(f"adapter {adapter.name!r} cannot write or run models, so it cannot be verified")
    feeds = dict(inputs) if inputs is not None else (
        adapter.example_inputs(path, seed) if adapter.example_inputs else None)
    if feeds is None:
        raise InputError(f"{path}: adapter {adapter.name!r} cannot make example inputs; pass --inputs")
    graph = adapter.convert(path, bind=feeds).validate()
    problems: list[str] = []

    params = graph.to_params()
    roundtrip = True
    if adapter.read_params is not None:
        original = adapter.read_params(path)
        for name, value in params.items():
            if name in original and not same_bits(original[name], value):
                roundtrip = False
                problems.append(f"tensor {name!r} does not round-trip exactly")
    max_abs = max_rel = 0.0
    moved: list[int] = []
    changed: list[int] = []
    with tempfile.TemporaryDirectory(prefix="nngraph-verify-") as tmp, errors_named_after(path, tmp):
        same = Path(tmp) / f"roundtrip{path.suffix}"
        adapter.export(path, params, same)
        if graph.meta.get("bound_inputs"):
            base = same                      # parameters fed as inputs are now initializers
        else:
            base = path
            reference = adapter.run(path, feeds)
            # weights the converter folded out of constant subgraphs are written back as stored
            # tensors: the runtime may then pick other kernels, so only those outputs get a tolerance
            folded = bool(set(graph.meta.get("derived", ())) & set(graph.sources))
            for name, out in adapter.run(same, feeds).items():
                if same_bits(out, reference[name]):
                    continue
                if folded:
                    _, rel, trouble = compare_outputs({name: reference[name]}, {name: out})
                    if not trouble and rel <= RTOL:
                        continue
                roundtrip = False
                problems.append(f"output {name!r} changes after writing the unpermuted parameters back")
        if randomize:
            from .graph.randomize import randomize as _randomize
            _randomize(graph, seed)
            base = Path(tmp) / f"randomized{path.suffix}"
            adapter.export(path, graph.to_params(), base)
        reference = adapter.run(base, feeds)
        unpermuted = graph.to_params()
        for name, ref in reference.items():
            if is_float(ref.dtype) and ref.size and not np.any(np.isfinite(np.asarray(ref, np.float32))):
                problems.append(f"output {name!r} of the model is nowhere finite; verification is meaningless")
        if rtol is None:
            rtol = output_tolerance(reference, graph_depth(graph))
        for t in range(trials):
            sym = graph.random_symmetry(seed + 1 + t)
            moved.append(sum(1 for p in sym.perms.values() if not np.array_equal(p, np.arange(len(p)))))
            permuted = Path(tmp) / f"permuted{t}{path.suffix}"
            permuted_params = graph.permute(sym).to_params()
            changed.append(sum(1 for k, v in permuted_params.items()
                               if not np.array_equal(v, unpermuted[k], equal_nan=v.dtype.kind in "fc")))
            adapter.export(base, permuted_params, permuted)
            d_abs, d_rel, trial_problems = compare_outputs(reference, adapter.run(permuted, feeds))
            max_abs, max_rel = max(max_abs, d_abs), max(max_rel, d_rel)
            problems += [f"trial {t}: {p}" for p in trial_problems]
            if progress:
                progress(t + 1)
    if max_rel > rtol:
        problems.append(f"permuted models differ from the original by {max_abs:.3g} (relative {max_rel:.3g} > {rtol:g})")
    return VerifyReport(ok=not problems, trials=trials, max_abs_diff=max_abs, max_rel_diff=max_rel,
                        roundtrip_exact=roundtrip, coverage=graph.coverage, groups_moved=moved,
                        tensors_changed=changed, problems=problems, free_fraction=graph.free_fraction,
                        pins=list(graph.meta.get("pins", [])), rtol=rtol if rtol is not None else RTOL,
                        bound_inputs=list(graph.meta.get("bound_inputs", [])))


@contextmanager
def errors_named_after(path: Path, tmp: str):
    """An error about one of verify's temporary copies (written back, permuted, randomized) names the
    model the user gave, and which copy failed; the temporary folder is gone by the time it is read."""
    try:
        yield
    except InputError as e:
        message = str(e)
        if not message.startswith(tmp):
            raise
        copy, _, rest = message[len(tmp):].lstrip("/").partition(": ")
        raise InputError(f"{path}: its copy {Path(copy).stem!r} (parameters written back by verify): {rest}") from None
