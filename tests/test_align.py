"""Alignment and merging: a model aligned to a permuted copy of itself gets the permutation back
exactly (weight distance 0), aligned models compute the original function, merges and BatchNorm
re-estimation do what they claim, and bad requests fail cleanly."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import ngraph
from nngraph.alignment.matching import align, interpolate, node_embeddings, weight_distance
from nngraph.api import convert, find_adapter
from nngraph.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
HF = ROOT / "tests" / "fixtures" / "hf"


def _resnet_bn(path: Path, width: int = 6, seed: int = 0, module: bool = False):
    """A small ResNet-style CNN (conv-BN-ReLU stem, two residual blocks with BN, GAP, linear),
    exported with its BatchNorm nodes kept and random running statistics."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), Block(width), Block(width),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 5)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(2, 3, 8, 8),), path, dynamo=False, do_constant_folding=False,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "b"}})
    return (path, net) if module else path


def _permuted_copy(path: Path, out: Path, seed: int):
    """Write a random symmetry of the model at ``path``; returns (graph, symmetry, copy's graph)."""
    a = convert(path)
    sym = a.random_symmetry(seed)
    find_adapter(path).export(path, a.permute(sym).to_params(), out)
    return a, sym, convert(out)


def _many_inputs(adapter, path: Path, draws: int = 32) -> dict[str, np.ndarray]:
    """Example inputs stacked along the batch axis (when it is dynamic): activation matching
    needs samples."""
    import onnx
    dynamic = all(not i.type.tensor_type.shape.dim[0].HasField("dim_value")
                  for i in onnx.load(path, load_external_data=False).graph.input)
    feeds = [adapter.example_inputs(path, seed) for seed in range(draws if dynamic else 1)]
    return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}


def _assert_recovered(result, sym, a, b) -> None:
    inverse = sym.inverse()
    assert inverse.perms, "the test symmetry moved nothing"
    for g, p in inverse.perms.items():
        np.testing.assert_array_equal(result.symmetry.perm(g, len(p)), p, err_msg=f"group {g}")
    assert result.distance_before > 0
    assert result.distance_after == 0.0
    assert weight_distance(a, b, result.symmetry) == 0.0


@pytest.fixture(scope="module")
def resnet_bn(tmp_path_factory) -> Path:
    return _resnet_bn(tmp_path_factory.mktemp("resnet") / "resnet_bn.onnx")


@pytest.mark.parametrize("model", ["mlp", "resnet_bn", "bert_dynamo23", "bert_torchscript", "vit_dynamo18",
                                   "llama_dynamo18"])
@pytest.mark.parametrize("method", ["weight", "activation"])
def test_permuted_copy_is_recovered_exactly(model, method, mlp_onnx, resnet_bn, tmp_path):
    path = {"mlp": mlp_onnx, "resnet_bn": resnet_bn}.get(model, HF / f"{model}.onnx")
    a, sym, b = _permuted_copy(path, tmp_path / "copy.onnx", seed=3)
    extra = {}
    if method == "activation":
        adapter = find_adapter(path)
        feeds = _many_inputs(adapter, path)
        extra["activations"] = (adapter.activations(path, a, feeds), adapter.activations(tmp_path / "copy.onnx", b, feeds))
    result = align(a, b, method, **extra)
    _assert_recovered(result, sym, a, b)
    if model.startswith("bert"):      # heads moved as blocks and permuted inside
        assert any(a.groups[g].parent is not None for g in sym.perms)


def test_grouped_and_depthwise_convs_are_aligned_inside_their_groups(tmp_path):
    path = ROOT / "tests" / "fixtures" / "torch" / "convs_dynamo.onnx"
    a, sym, b = _permuted_copy(path, tmp_path / "copy.onnx", seed=5)
    _assert_recovered(align(a, b), sym, a, b)


def test_embedding_matching_with_an_encoder_checkpoint(mlp_onnx, tmp_path):
    from nngraph.learn.featurize import FeatureConfig
    from nngraph.learn.checkpoint import GraphModel, save_checkpoint
    model = GraphModel.build("ng-gnn", {"hidden": 16, "layers": 2}, "regression", 1, FeatureConfig())
    ckpt = save_checkpoint(tmp_path / "enc.safetensors", model, {
        "encoder": "ng-gnn", "encoder_config": {"hidden": 16, "layers": 2}, "head": "regression", "out_dim": 1,
        "task": "regression", "target": "y", "classes": None, "y_mean": 0.0, "y_std": 1.0,
        "features": FeatureConfig().to_json()})
    a, sym, b = _permuted_copy(mlp_onnx, tmp_path / "copy.onnx", seed=4)
    ea, eb = node_embeddings(ckpt, [a, b], device="cpu")
    _assert_recovered(align(a, b, "embedding", embeddings=(ea, eb)), sym, a, b)


def test_weight_matching_of_independent_networks_reduces_distance(tmp_path):
    a = convert(_resnet_bn(tmp_path / "a.onnx", seed=1))
    b = convert(_resnet_bn(tmp_path / "b.onnx", seed=2))
    result = align(a, b)
    assert result.distance_after < result.distance_before
    assert result.symmetry.perms


def test_cli_align_writes_a_model_computing_b(mlp_onnx, tmp_path):
    _permuted_copy(mlp_onnx, tmp_path / "b.onnx", seed=2)
    out = tmp_path / "aligned.onnx"
    r = ngraph("align", str(mlp_onnx), str(tmp_path / "b.onnx"), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["distance_after"] == 0.0 < doc["distance_before"] and doc["moved_groups"] == 2
    adapter = find_adapter(mlp_onnx)
    feeds = adapter.example_inputs(mlp_onnx, 1)
    for k, v in adapter.run(tmp_path / "b.onnx", feeds).items():
        np.testing.assert_allclose(adapter.run(out, feeds)[k], v, rtol=1e-5, atol=1e-6)
    # aligned to A and equal to it parameter for parameter
    pa, po = adapter.read_params(mlp_onnx), adapter.read_params(out)
    assert all(np.array_equal(pa[k], po[k]) for k in pa)


def test_cli_align_activation_needs_data_and_different_widths_fail(mlp_onnx, tmp_path, resnet_bn):
    out = tmp_path / "x.onnx"
    r = ngraph("align", str(mlp_onnx), str(mlp_onnx), "-o", str(out), "--method", "activation")
    assert r.returncode == 2 and "--data" in r.stderr and not out.exists()      # usage error (README)
    r = ngraph("align", str(mlp_onnx), str(resnet_bn), "-o", str(out))
    assert r.returncode == 4 and "different architectures" in r.stderr and not out.exists()
    narrow = _resnet_bn(tmp_path / "narrow.onnx", width=4)
    r = ngraph("merge", str(resnet_bn), str(narrow), "-o", str(out))
    assert r.returncode == 4 and "neurons" in r.stderr and not out.exists()
    r = ngraph("merge", str(mlp_onnx), str(mlp_onnx), "--weights", "0.7,0.7", "-o", str(out))
    assert r.returncode == 2 and "sum to 1" in r.stderr and not out.exists()
    assert list(tmp_path.glob(".*")) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["narrow.onnx"]


def test_failed_align_or_merge_leaves_the_output_folder_as_it_was(mlp_onnx, tmp_path, monkeypatch):
    """A failure after the model was written (its check, an external-data file) publishes nothing:
    an existing output keeps its bytes, and no staged file or folder is left beside it."""
    import dataclasses

    from nngraph.alignment import merge
    from nngraph.errors import GraphError
    _permuted_copy(mlp_onnx, tmp_path / "b.onnx", seed=3)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    before = sorted(p.name for p in tmp_path.iterdir())

    def differs(*args, **kwargs):
        raise GraphError("the aligned model differs from the original; nothing written")
    with monkeypatch.context() as m:
        m.setattr(merge, "_same_function", differs)
        with pytest.raises(GraphError, match="differs"):
            merge.align_files(mlp_onnx, tmp_path / "b.onnx", out)
    onnx_adapter = find_adapter(mlp_onnx)

    def export_with_data(source, params, staged):          # as a model above 2 GB is written
        onnx_adapter.export(source, params, staged)
        Path(f"{staged}.data").write_bytes(b"weights")
    monkeypatch.setattr(merge, "find_adapter", lambda p, fmt: dataclasses.replace(onnx_adapter, export=export_with_data))
    with pytest.raises(GraphError, match="external data"):
        merge.merge_files([mlp_onnx, tmp_path / "b.onnx"], out)
    assert out.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == before
    monkeypatch.undo()
    merge.merge_files([mlp_onnx, tmp_path / "b.onnx"], out)                  # the control: it does publish
    assert out.read_bytes() != b"previous" and sorted(p.name for p in tmp_path.iterdir()) == before


def test_merging_a_model_with_its_permuted_copy_gives_the_model_back(mlp_onnx, tmp_path):
    _permuted_copy(mlp_onnx, tmp_path / "b.onnx", seed=9)
    adapter = find_adapter(mlp_onnx)
    feeds = adapter.example_inputs(mlp_onnx, 2)
    ref = adapter.run(mlp_onnx, feeds)
    out = tmp_path / "merged.onnx"
    r = ngraph("merge", str(mlp_onnx), str(tmp_path / "b.onnx"), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    for k, v in adapter.run(out, feeds).items():
        np.testing.assert_allclose(v, ref[k], rtol=1e-5, atol=1e-6)
    naive = tmp_path / "naive.onnx"        # the control: averaging unaligned copies breaks the function
    assert ngraph("merge", str(mlp_onnx), str(tmp_path / "b.onnx"), "-o", str(naive), "--align", "none").returncode == 0
    assert not all(np.allclose(v, ref[k], rtol=1e-3) for k, v in adapter.run(naive, feeds).items())


def test_interpolate_weights(mlp_onnx):
    a = convert(mlp_onnx)
    b = a.permute(a.random_symmetry(1))
    pa, pb = a.to_params(), b.to_params()
    mixed = interpolate([a, b], [0.25, 0.75])
    for k in pa:
        np.testing.assert_allclose(mixed[k], 0.25 * pa[k].astype(np.float64) + 0.75 * pb[k], rtol=1e-6, atol=1e-8)
    with pytest.raises(InputError):
        interpolate([a, b], [1.0])


def test_batchnorm_statistics_are_re_estimated_like_torch(tmp_path):
    """After recalibration each BN's running mean/var are the statistics of its input on the
    data, earlier layers already recalibrated: what a torch forward pass in training mode
    (momentum None, one batch) records."""
    import onnx
    import torch
    from onnx import numpy_helper

    from nngraph.adapters.onnx.runtime import recalibrate
    path, net = _resnet_bn(tmp_path / "bn.onnx", module=True)
    x = np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32)
    out = tmp_path / "recal.onnx"

    def onnx_stats(p):
        model = onnx.load(p)
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        return [(inits[n.input[3]], inits[n.input[4]]) for n in model.graph.node if n.op_type == "BatchNormalization"]

    assert recalibrate(path, {"image": x}, out) == 5
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(x))
    n = 64 * 8 * 8
    before = onnx_stats(path)
    for (mean, var), m, (old_mean, _) in zip(onnx_stats(out), bns, before):
        np.testing.assert_allclose(mean, m.running_mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(var, m.running_var.numpy() * (n - 1) / n, rtol=1e-4, atol=1e-5)
        assert not np.allclose(old_mean, mean, atol=1e-2)      # the statistics did change


# ------------------------------------------------------------------ alignment at scale (issue 12)
ST = ROOT / "tests" / "fixtures" / "safetensors"


@pytest.fixture
def pruned(monkeypatch):
    """Make the tinyllama fixture's groups (64 residual, 128 FFN neurons) take the large-group
    paths: candidate-pruned sparse assignments and binned signatures."""
    import nngraph.alignment.matching as al
    monkeypatch.setattr(al, "PRUNE_N", 64)
    monkeypatch.setattr(al, "CANDIDATES", 4)
    monkeypatch.setattr(al, "SIG_EXACT", 16)
    monkeypatch.setattr(al, "SIG_BINS", 8)
    return al


def test_pruned_weight_matching_recovers_a_permuted_llm(pruned):
    """GQA slots, kv heads, the residual stream and the FFN of a bf16 LLaMA layout, through the
    pruned paths: the permutation comes back exactly, in one round (nothing moves after init)."""
    a = convert(ST / "tinyllama" / "model.safetensors.index.json")
    sym = a.random_symmetry(7)
    b = a.permute(sym)
    assert any(pruned._prunable(pruned._Hierarchy(a), r, {g: t.size for g, t in a.groups.items()})
               for r in pruned._Hierarchy(a).roots)
    res = align(a, b)
    assert res.distance_before > 0 and res.distance_after == 0.0 and res.iterations == 1
    # the alignment is the inverse of the symmetry on every group that moved
    for g, p in sym.perms.items():
        q = res.symmetry.perm(g, len(p))
        assert np.array_equal(p[q], np.arange(len(p))), g


def test_pruned_matching_of_noisy_and_unrelated_copies(pruned, monkeypatch):
    """A permuted copy with heavy noise (a stand-in for two similar networks): pruned and dense
    matching both find the permutation. An unrelated model: every pruned step is monotone (the
    current partner is always a candidate), so the distance never grows."""
    import ml_dtypes
    a = convert(ST / "tinyllama" / "model.safetensors.index.json")
    rng = np.random.default_rng(3)

    def redraw(g, noise):
        for _, p in g.params():
            x = np.asarray(p.data, np.float32)
            p.data = (noise * x + rng.standard_normal(p.shape).astype(np.float32) * x.std()).astype(ml_dtypes.bfloat16) \
                if noise is not None else rng.standard_normal(p.shape).astype(ml_dtypes.bfloat16)
        g.leaves = None
        return g

    sym = a.random_symmetry(1)
    noisy = redraw(a.permute(sym), 2.0)                        # signal 2σ, noise σ
    res = align(a, noisy)
    expected = sym.inverse()
    for g, p in sym.perms.items():
        assert np.array_equal(res.symmetry.perm(g, len(p)), expected.perm(g, len(p))), g
    monkeypatch.setattr(pruned, "PRUNE_N", 10 ** 9)
    dense = align(a, noisy)
    assert dense.distance_after == pytest.approx(res.distance_after)
    monkeypatch.setattr(pruned, "PRUNE_N", 64)
    unrelated = align(a, redraw(a.permute(sym), None), max_iter=20)
    assert unrelated.distance_after <= unrelated.distance_before


def test_sorted_sketch_is_permutation_invariant(pruned):
    x = np.random.default_rng(0).standard_normal((5, 100)).astype(np.float32)
    s = pruned._sorted_sketch(x)
    assert s.shape == (5, 8)
    np.testing.assert_array_equal(s, pruned._sorted_sketch(x[:, np.random.default_rng(1).permutation(100)]))
    # binned sorted rows keep the squared-norm scale of the rows (bin means × √width)
    np.testing.assert_allclose((s ** 2).sum(1), (x ** 2).sum(1), rtol=0.2)


def test_chunked_reads_give_the_whole_array_results(pruned, monkeypatch):
    """Signatures, norms, projections and candidate values read bf16 weights as float32 a few
    slices at a time, and A's signature features are built for a few neurons at a time: cut
    into many pieces or none, alignment finds the same permutations."""
    import ml_dtypes
    a = convert(ST / "tinyllama" / "model.safetensors.index.json")
    rng = np.random.default_rng(5)
    noisy = a.permute(a.random_symmetry(2))
    for _, p in noisy.params():
        x = np.asarray(p.data, np.float32)
        p.data = (2 * x + rng.standard_normal(p.shape).astype(np.float32) * x.std()).astype(ml_dtypes.bfloat16)
    noisy.leaves = None
    results = []
    for chunk, rows in ((1 << 30, 1 << 30), (100, 1000)):     # 1000 floats: A's signatures a few neurons at a time
        monkeypatch.setattr(pruned, "CHUNK", chunk)
        monkeypatch.setattr(pruned, "SIG_ROWS_BUDGET", rows)
        results.append(align(a, noisy, max_iter=5))
    whole, pieces = results
    assert whole.iterations == pieces.iterations and whole.symmetry.perms.keys() == pieces.symmetry.perms.keys()
    for g, p in whole.symmetry.perms.items():
        np.testing.assert_array_equal(pieces.symmetry.perms[g], p, err_msg=g)
    assert pieces.distance_after == pytest.approx(whole.distance_after, rel=1e-12)
    x = np.asarray(rng.standard_normal((70, 90, 3)), ml_dtypes.bfloat16)
    for k in range(3):                      # the same values as from a whole float32 copy
        np.testing.assert_array_equal(pruned._slice_sketch(x, k), pruned._sorted_sketch(pruned._slices(x.astype(np.float32), k)))
        assert pruned._axis_norms(x, k) == pytest.approx(
            np.square(x.astype(np.float64)).sum(axis=tuple(i for i in range(3) if i != k)), rel=1e-6)


def test_weight_distance_permutes_one_array_at_a_time(monkeypatch):
    """``weight_distance`` under a symmetry equals the distance to the permuted copy, without
    building that copy: its traced peak stays below the size of B's arrays."""
    import tracemalloc

    import nngraph.alignment.matching as al
    from nngraph.graph.symmetry import permute, permuted_params
    a = convert(ST / "tinyllama" / "model.safetensors.index.json")
    b = a.permute(a.random_symmetry(3))
    sym = b.random_symmetry(4)
    got = [(k, p.data) for k, p in permuted_params(b, sym)]
    want = [(k, p.data) for k, p in permute(b, sym).params()]
    assert [k for k, _ in got] == [k for k, _ in want]
    for (k, x), (_, y) in zip(got, want):
        np.testing.assert_array_equal(x, y, err_msg=k)
    direct = weight_distance(a, permute(b, sym))
    monkeypatch.setattr(al, "CHUNK", 256)
    tracemalloc.start()
    streamed = weight_distance(a, b, sym)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert streamed == pytest.approx(direct, rel=1e-12) and streamed > 0
    assert peak < sum(p.data.nbytes for _, p in b.params())
