"""Streamed encoding (``nngraph.learn.stream``): chunked features are featurize's, streamed forwards
equal the in-memory ones on MLP, grouped-CNN, attention and LLaMA-layout graphs, are invariant
under symmetries, and ``predict``/``embed`` give the same answers streamed or not."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")

import nngraph  # noqa: E402
from nngraph.errors import InputError  # noqa: E402
from nngraph.learn.featurize import FeatureConfig, featurize  # noqa: E402
from nngraph.learn.stream import GraphStream, encode_streamed  # noqa: E402
from nngraph.learn.checkpoint import GraphModel, save_checkpoint  # noqa: E402
from nngraph.learn.train import embed, predict  # noqa: E402
from nngraph.loader import registry  # noqa: E402
from nngraph.testing import example_graphs, node_permutation  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENCODERS = [("ng-gnn", {"hidden": 16, "layers": 1}), ("ng-gnn", {"hidden": 16, "layers": 3}),
            ("ng-gnn", {"hidden": 16, "layers": 2, "norm": "layer"}), ("statnn", {"hidden": 16}),
            ("ng-gnn", {"hidden": 16, "layers": 2, "sum_scaler": "log"}),
            ("ng-gnn", {"hidden": 16, "layers": 2, "pool_fixed": True}),
            ("deepsets", {"hidden": 16})]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The conformance graphs (dense chain + residual + heads, grouped and depthwise conv with a
    4-tap flatten) and a 1-layer LLaMA checkpoint (grouped-query attention, bf16) as the scale
    benchmark writes it."""
    spec = importlib.util.spec_from_file_location("scale_benchmark", ROOT / "benchmarks" / "scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    cfg = scale.llama_config("tiny", vocab=40)
    cfg.update(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=8)
    llama = nngraph.convert(scale.write_checkpoint(tmp_path_factory.mktemp("llama"), cfg, shards=2))
    return example_graphs() + [llama]


def _encoder(name, cfg, seed=0):
    torch.manual_seed(seed)
    return registry().encoder(name).factory(**cfg).eval()


def _close(actual, desired):
    """Equal up to float summation order (chunks sum in another order than one scatter)."""
    a, d = actual.numpy(), desired.numpy()
    np.testing.assert_allclose(a, d, rtol=1e-4, atol=1e-5 * (1 + np.abs(d).max()))


def _chunks(graph) -> tuple[int, int]:
    """A chunk size that splits blocks mid-way (a few dozen chunks at most) and one that does not."""
    return max(7, graph.num_edges // 12), 1 << 16


def _in_memory(model, graph, config=FeatureConfig()):
    from torch_geometric.data import Batch
    with torch.no_grad():
        return model(Batch.from_data_list([featurize(graph, config)]))


@pytest.mark.parametrize("config", [FeatureConfig(), FeatureConfig(taps=4, scale="block"),
                                    FeatureConfig(scale="graph"), FeatureConfig(scale="fan_in")])
def test_chunks_are_featurize_rows(graphs, config):
    """Concatenated chunks, padded and one-hot, are featurize's edge rows in featurize's order."""
    from nngraph.graph.vocab import EDGE_KINDS
    for g in graphs:
        d = featurize(g, config)
        parts = [c.flat() + (c.kind,) for c in GraphStream(g, config, chunk_edges=_chunks(g)[0]).chunks()]
        src = torch.cat([p[0] for p in parts])
        dst = torch.cat([p[1] for p in parts])
        assert torch.equal(torch.stack([src, dst]), d.edge_index)
        attr = torch.zeros(len(src), config.edge_dim)
        e = 0
        for _, _, taps, kind in parts:
            attr[e:e + len(taps), :taps.shape[1]] = taps
            attr[e:e + len(taps), config.taps + kind] = 1
            e += len(taps)
        np.testing.assert_allclose(attr.numpy(), d.edge_attr.numpy(), rtol=1e-6, atol=1e-7)
        assert d.edge_kind.dtype == torch.int32 and torch.equal(d.edge_kind.long(), attr[:, config.taps:].argmax(1))
        assert len(EDGE_KINDS) == config.edge_dim - config.taps


@pytest.mark.parametrize("name,cfg", ENCODERS)
def test_streamed_equals_in_memory(graphs, name, cfg):
    model = _encoder(name, cfg)
    for g in graphs:
        n1, p1 = _in_memory(model, g)
        for chunk in _chunks(g):
            n2, p2 = model.forward_stream(GraphStream(g, chunk_edges=chunk))
            _close(p2, p1)
            _close(n2, n1)


def test_probe_summary_streamed_equals_in_memory(graphs):
    """The output-summary readout (``FeatureConfig.probe_summary``) reads the streamed node features."""
    from nngraph.testing import with_random_probes
    config = FeatureConfig(probes=3, probe_summary=True)
    model = _encoder("ng-gnn", {"hidden": 16, "layers": 2, "node_dim": config.node_dim,
                                "summary_dim": config.summary_dim})
    for g in with_random_probes(example_graphs(), 3):
        _, p1 = _in_memory(model, g, config)
        _, p2 = model.forward_stream(GraphStream(g, config, chunk_edges=_chunks(g)[0]))
        _close(p2, p1)


@pytest.mark.parametrize("name,cfg", ENCODERS[1:2])
def test_streamed_is_invariant(graphs, name, cfg):
    model = _encoder(name, cfg)
    for g in graphs:
        sym = g.random_symmetry(3)
        chunk = _chunks(g)[0]
        n1, p1 = model.forward_stream(GraphStream(g, chunk_edges=chunk))
        n2, p2 = model.forward_stream(GraphStream(g.permute(sym), chunk_edges=chunk))
        _close(p2, p1)
        _close(n2, n1[node_permutation(g, sym)])


@pytest.mark.parametrize("config", [FeatureConfig(), FeatureConfig(probes=3, probe_summary=True)])
def test_input_scales_match_the_pre_hook(graphs, config):
    """A trained checkpoint's input scales reach the streamed features as the pre-hook applies them
    (with the probe summary: also the summary columns the readout reads)."""
    from nngraph.testing import with_random_probes
    model = GraphModel.build("ng-gnn", {"hidden": 16, "layers": 2}, "regression", 1, config, True)
    enc = model.encoder.eval()
    gen = torch.Generator().manual_seed(1)
    enc.input_node_scale.copy_(torch.rand(enc.input_node_scale.shape, generator=gen) * 3)
    enc.input_edge_scale.copy_(torch.rand(enc.input_edge_scale.shape, generator=gen) * 5)
    for g in (with_random_probes(example_graphs(), 3) if config.probes else graphs):
        _, p1 = _in_memory(enc, g, config)
        _, p2 = encode_streamed(enc, g, config, chunk_edges=_chunks(g)[0])
        _close(p2, p1)


def test_predict_and_embed_streamed_or_not(graphs, tmp_path):
    model = GraphModel.build("ng-gnn", {"hidden": 16, "layers": 2}, "embedding", 8, FeatureConfig(), True)
    meta = {"encoder": "ng-gnn", "encoder_config": {"hidden": 16, "layers": 2}, "head": "embedding", "head_config": {},
            "out_dim": 8, "task": "embedding", "target": "", "classes": None, "y_mean": 0.0, "y_std": 1.0,
            "features": FeatureConfig().to_json(), "input_scaling": True}
    ckpt = save_checkpoint(tmp_path / "emb.safetensors", model, meta)
    a = embed(ckpt, graphs, "cpu", stream=False)
    b = embed(ckpt, graphs, "cpu", stream=True)
    c = embed(ckpt, graphs, "cpu")                                  # auto: all below the threshold
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert np.array_equal(c, a) and a.shape == (len(graphs), 8)
    meta.update(task="regression", head="regression", out_dim=1, y_mean=2.0, y_std=3.0)
    reg = GraphModel.build("ng-gnn", {"hidden": 16, "layers": 2}, "regression", 1, FeatureConfig(), True)
    ckpt = save_checkpoint(tmp_path / "reg.safetensors", reg, meta)
    np.testing.assert_allclose(predict(ckpt, graphs, "cpu", stream=True), predict(ckpt, graphs, "cpu", stream=False),
                               rtol=1e-4, atol=1e-5)


def test_encoder_without_streamed_forward_is_refused(graphs, tmp_path):
    cfg = {"hidden": 16, "layers": 1, "heads": 2}
    model = GraphModel.build("ng-transformer", cfg, "regression", 1, FeatureConfig())
    meta = {"encoder": "ng-transformer", "encoder_config": cfg, "head": "regression", "head_config": {}, "out_dim": 1,
            "task": "regression", "target": "y", "classes": None, "y_mean": 0.0, "y_std": 1.0,
            "features": FeatureConfig().to_json(), "input_scaling": False}
    ckpt = save_checkpoint(tmp_path / "t.safetensors", model, meta)
    with pytest.raises(InputError, match="no streamed forward"):
        predict(ckpt, graphs[:1], "cpu", stream=True)
    assert len(predict(ckpt, graphs[:1], "cpu")) == 1           # auto falls back to in memory


def test_cli_stream_flag(graphs, tmp_path):
    from click.testing import CliRunner

    from nngraph.cli import cli
    model = GraphModel.build("statnn", {"hidden": 8}, "regression", 1, FeatureConfig())
    meta = {"encoder": "statnn", "encoder_config": {"hidden": 8}, "head": "regression", "head_config": {}, "out_dim": 1,
            "task": "regression", "target": "y", "classes": None, "y_mean": 0.0, "y_std": 1.0,
            "features": FeatureConfig().to_json(), "input_scaling": False}
    ckpt = save_checkpoint(tmp_path / "s.safetensors", model, meta)
    path = tmp_path / "conv.ngraph"
    nngraph.save(graphs[2], path)
    runs = [CliRunner().invoke(cli, ["predict", str(ckpt), str(path), "--json", flag])
            for flag in ("--stream", "--no-stream")]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    import json
    v = [json.loads(r.stdout)[0]["prediction"] for r in runs]
    assert v[0] == pytest.approx(v[1], rel=1e-5, abs=1e-6)


def test_cli_workers_share_the_streamed_pass(graphs, tmp_path):
    """``--workers 2`` splits ng-gnn's streamed pass between threads: the same prediction as one
    thread up to float rounding, and the same bits run to run; ``--workers 0`` is a usage error."""
    import json

    from click.testing import CliRunner

    from nngraph.cli import cli
    cfg = {"hidden": 8, "layers": 2}
    model = GraphModel.build("ng-gnn", cfg, "regression", 1, FeatureConfig())
    meta = {"encoder": "ng-gnn", "encoder_config": cfg, "head": "regression", "head_config": {}, "out_dim": 1,
            "task": "regression", "target": "y", "classes": None, "y_mean": 0.0, "y_std": 1.0,
            "features": FeatureConfig().to_json(), "input_scaling": False}
    ckpt = save_checkpoint(tmp_path / "g.safetensors", model, meta)
    path = tmp_path / "conv.ngraph"
    nngraph.save(graphs[2], path)
    runs = [CliRunner().invoke(cli, ["predict", str(ckpt), str(path), "--json", "--stream", "--workers", w])
            for w in ("1", "2", "2")]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    v = [json.loads(r.stdout)[0]["prediction"] for r in runs]
    assert v[1] == v[2] and v[0] == pytest.approx(v[1], rel=1e-4, abs=1e-5)
    bad = CliRunner().invoke(cli, ["predict", str(ckpt), str(path), "--workers", "0"])
    assert bad.exit_code == 2 and "--workers" in bad.output


def test_statnn_quantiles_exact_in_one_or_two_passes(graphs):
    """Streamed per-depth quantiles are the sorted values' (radix selection); bfloat16 weights (the
    LLaMA graph) need one pass, float32 ones two."""
    from torch_geometric.data import Batch

    from nngraph.plugins.encoders.statnn import streamed_group_stats, weight_statistics
    for g, passes in ((graphs[0], 2), (graphs[-1], 1)):
        stream = GraphStream(g, chunk_edges=_chunks(g)[0])
        got = streamed_group_stats(stream, 8)
        want = weight_statistics(Batch.from_data_list([featurize(g)]), 8)[0, :9 * 7].view(9, 7)
        assert torch.equal(got[:, 2:], want[:, 2:]) and stream.passes == passes
        _close(got[:, :2], want[:, :2])


def test_code_chunks_are_the_tap_chunks(graphs):
    """``chunks(codes=True)``: a code block's chunk carries weight codes whose ``code_values`` rows
    are bit for bit the taps ``chunks()`` gives the same edges (the LLaMA graph's bf16 blocks and
    its weightless ones); other blocks' chunks are unchanged. Shares of a pass partition it."""
    config = FeatureConfig(scale="block")
    g = graphs[-1]
    stream = GraphStream(g, config, chunk_edges=_chunks(g)[0], edge_scale=torch.linspace(0.5, 2, 10))
    plain, coded = list(stream.chunks()), list(stream.chunks(codes=True))
    assert len(plain) == len(coded) and sum(c.codes is not None for c in coded) > len(coded) // 2
    for p, c in zip(plain, coded):
        assert (c.rows, c.cols, c.block, c.shape) == (p.rows, p.cols, p.block, p.shape)
        if c.codes is None:
            assert torch.equal(c.taps, p.taps)
            continue
        codes, taps, size = stream.code_values(c.block)
        table = torch.full((size, taps.shape[1]), float("nan"))
        table[codes] = taps
        assert torch.equal(table[c.codes.long()], p.taps)
    shares = [list(stream.chunks(codes=True, share=(k, 3))) for k in range(3)]
    assert sorted((c.block, c.rows, c.cols, c.num_edges) for s in shares for c in s) == \
        sorted((c.block, c.rows, c.cols, c.num_edges) for c in coded)


def test_folded_pass_and_workers(graphs):
    """ng-gnn's folded streamed pass equals its layer-by-layer recomputation; worker threads give
    the one-thread result up to summation order, the same bits on every run."""
    model = _encoder("ng-gnn", {"hidden": 16, "layers": 3})
    for g in graphs[-1:] + graphs[:1]:                      # bf16 code blocks, float32 tap blocks
        chunk = _chunks(g)[0]
        n1, p1 = model._forward_stream_recomputed(GraphStream(g, chunk_edges=chunk))
        n2, p2 = model.forward_stream(GraphStream(g, chunk_edges=chunk))
        _close(p2, p1)
        _close(n2, n1)
        runs = [model.forward_stream(GraphStream(g, chunk_edges=chunk, workers=2)) for _ in range(2)]
        assert torch.equal(runs[0][1], runs[1][1]) and torch.equal(runs[0][0], runs[1][0])
        _close(runs[0][1], p2)
        _close(runs[0][0], n2)


def _rss_file_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS by kind needs Linux /proc")
def test_release_pages_drops_mapped_weights_from_rss(tmp_path, graphs):
    """Streaming releases each memory-mapped block after its pass: the pages leave the resident set
    (RssFile falls by the array's size), the data stay readable and equal, and arrays that are not
    file maps are left alone."""
    from nngraph.graph.fileformat import release_pages
    path = tmp_path / "big.bin"
    np.arange(8 << 20, dtype=np.float32).tofile(path)                 # 32 MiB
    m = np.memmap(path, dtype=np.float32, mode="r")
    total = float(m.sum(dtype=np.float64))                          # touches every page
    before = _rss_file_kib()
    assert release_pages(m[1:])                                     # unaligned view: whole inner pages
    assert before - _rss_file_kib() > 30 << 10                      # ≥ 30 of the 32 MiB left the RSS
    assert float(m.sum(dtype=np.float64)) == total
    assert not release_pages(np.zeros(1 << 20, np.float32))
    nngraph.save(graphs[0], tmp_path / "g.ngraph")
    g = nngraph.load(tmp_path / "g.ngraph")
    w = g.blocks[0].weight.data
    copy = np.array(w)
    release_pages(w)
    assert np.array_equal(np.asarray(w), copy)
