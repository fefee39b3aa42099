"""dtype-aware checks (issue 12): an fp16 model verifies and aligns within a tolerance of its
dtype and depth (a permutation changes summation order, hence fp16 rounding); NaN/Inf weights
never make an exact round trip fail; bf16 tensors are floats to alignment."""
from __future__ import annotations

import numpy as np

import nngraph
from conftest import ngraph
from nngraph.verify import RTOL, compare_outputs, output_tolerance, same_bits, verify


def mlp_onnx(path, dtype=np.float16, widths=(16, 256, 256, 256, 256), nan_at=None, seed=0, batch=256):
    """A ReLU MLP as a hand-built ONNX model computing in ``dtype``."""
    import onnx
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits, x = [], [], "x"
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(dtype)
        bias = (rng.standard_normal(b) * 0.1).astype(dtype)
        if nan_at is not None and i == len(widths) - 2:
            w[nan_at] = np.nan                      # one weight of the last layer: one output column NaN
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        x = f"a{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", elem, [batch, widths[0]])],
                              [helper.make_tensor_value_info(x, elem, [batch, widths[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def test_fp16_model_verifies_within_its_dtype_tolerance(tmp_path):
    path = mlp_onnx(tmp_path / "fp16.onnx")
    strict = verify(path, trials=3, rtol=RTOL)
    report = verify(path, trials=3)
    assert report.roundtrip_exact and report.ok, report.problems
    assert RTOL < report.rtol < 1e-2 and report.max_rel_diff <= report.rtol
    # float32 rounding would pass the old 1e-4; fp16 permuted models differ by fp16 rounding steps
    assert not strict.ok and strict.max_rel_diff > RTOL
    r = ngraph("verify", path, "--trials", "2")
    assert r.returncode == 0, r.stderr


def test_wrong_permutation_still_fails_in_fp16(tmp_path):
    """The looser tolerance must still catch a permutation that is no symmetry."""
    import onnxruntime as ort
    from nngraph.adapters.onnx import export
    path = mlp_onnx(tmp_path / "fp16.onnx")
    g = nngraph.convert(path)
    params = g.to_params()
    bad = dict(params)
    bad["w0"] = np.ascontiguousarray(params["w0"][:, ::-1])      # first layer's outputs moved, second's inputs not
    export(path, bad, tmp_path / "bad.onnx")
    x = {"x": np.random.default_rng(1).standard_normal((256, 16)).astype(np.float16)}
    run = lambda p: dict(zip(["y"], ort.InferenceSession(str(p)).run(None, x)))  # noqa: E731
    ref = run(path)
    _, rel, _ = compare_outputs(ref, run(tmp_path / "bad.onnx"))
    assert rel > 10 * output_tolerance(ref, 8)


def test_fp16_models_align(tmp_path):
    """ngraph align writes B only after checking its function: within fp16's tolerance."""
    a = mlp_onnx(tmp_path / "a.onnx", seed=0)
    g = nngraph.convert(a)
    from nngraph.adapters.onnx import export
    export(a, g.permute(g.random_symmetry(3)).to_params(), tmp_path / "b.onnx")
    r = ngraph("align", a, tmp_path / "b.onnx", "-o", tmp_path / "b_aligned.onnx", "--json")
    assert r.returncode == 0, r.stderr
    aligned = nngraph.convert(tmp_path / "b_aligned.onnx").to_params()
    for k, v in g.to_params().items():                          # the permuted copy is recovered exactly
        assert same_bits(v, aligned[k]), k


def test_nan_weight_round_trips_exactly(tmp_path):
    path = mlp_onnx(tmp_path / "nan.onnx", dtype=np.float32, nan_at=(3, 2))
    report = verify(path, trials=2)
    assert report.roundtrip_exact, report.problems
    assert not any("round-trip" in p or "changes after writing" in p for p in report.problems)
    assert report.ok, report.problems                          # NaN equals NaN in its fixed output column


def test_same_bits_and_nan_aware_comparison():
    a = np.array([1.0, np.nan, np.inf, -0.0], np.float32)
    assert same_bits(a, a.copy()) and not same_bits(a, np.array([1.0, np.nan, np.inf, 0.0], np.float32))
    assert not np.array_equal(a, a.copy())                    # what the round trip used to do
    _, rel, problems = compare_outputs({"y": a}, {"y": a.copy()})
    assert rel == 0 and not problems
    _, rel, _ = compare_outputs({"y": a}, {"y": np.array([1.0, 2.0, np.inf, 0.0], np.float32)})
    assert rel == float("inf")                                # NaN on one side only is a difference
    import ml_dtypes
    b = np.array([1.5, -2.0], ml_dtypes.bfloat16)
    assert output_tolerance({"y": b}, 10) > output_tolerance({"y": np.zeros(2, np.float16)}, 10) > RTOL
    assert output_tolerance({"y": np.zeros(2, np.float32)}, 100) == RTOL


def test_bf16_graphs_align_and_interpolate():
    """bfloat16 weights are floats to alignment (numpy calls them void)."""
    from pathlib import Path
    g = nngraph.convert(Path(__file__).parent / "fixtures" / "safetensors" / "tinyllama" / "model.safetensors.index.json")
    h = g.permute(g.random_symmetry(5))
    res = nngraph.align(g, h)
    assert res.distance_before > 0 and res.distance_after == 0.0
    mid = nngraph.interpolate([g, h.permute(res.symmetry)], [0.5, 0.5])
    assert all(same_bits(v, g.to_params()[k]) for k, v in mid.items())
