"""Built-in encoders pass the encoder conformance kit; heads have the right shapes; the
featurizer is deterministic and symmetry-consistent."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")

import nngraph  # noqa: E402
from nngraph.learn.featurize import FeatureConfig, featurize, output_summary  # noqa: E402
from nngraph.loader import registry  # noqa: E402
from nngraph.testing import EncoderConformance, example_graphs, with_random_probes  # noqa: E402


class TestNGGNN(EncoderConformance):
    encoder = "ng-gnn"
    config = {"hidden": 32, "layers": 2}


class TestNGGNNLogSum(EncoderConformance):
    encoder = "ng-gnn"
    config = {"hidden": 32, "layers": 2, "sum_scaler": "log"}


class TestNGGNNPoolNorm(EncoderConformance):
    encoder = "ng-gnn"
    config = {"hidden": 32, "layers": 2, "pool_norm": "batch"}


class TestNGGNNPoolFixed(EncoderConformance):
    encoder = "ng-gnn"
    config = {"hidden": 32, "layers": 2, "pool_fixed": True, "pool_norm": "batch"}


class TestNGTransformer(EncoderConformance):
    encoder = "ng-transformer"
    config = {"hidden": 32, "layers": 2, "heads": 4}


class TestStatNN(EncoderConformance):
    encoder = "statnn"
    config = {"hidden": 32}


class TestDeepSets(EncoderConformance):
    encoder = "deepsets"
    config = {"hidden": 32}


class _ProbeSummary(EncoderConformance):
    """Graphs with probe values and the output summary columns (``FeatureConfig.probe_summary``)."""
    features = FeatureConfig(probes=3, probe_summary=True)

    def graphs(self):
        return with_random_probes(example_graphs(), 3)

    def _data(self, graph):
        return featurize(graph, self.features)


class TestNGGNNProbeSummary(_ProbeSummary):
    encoder = "ng-gnn"
    config = {"hidden": 32, "layers": 2, "node_dim": _ProbeSummary.features.node_dim,
              "summary_dim": _ProbeSummary.features.summary_dim}


class TestNGTransformerProbeSummary(_ProbeSummary):
    encoder = "ng-transformer"
    config = {"hidden": 32, "layers": 2, "heads": 4, "pool_norm": "batch",
              "node_dim": _ProbeSummary.features.node_dim, "summary_dim": _ProbeSummary.features.summary_dim}


class TestDeepSetsPoolNorm(EncoderConformance):
    encoder = "deepsets"
    config = {"hidden": 32, "pool_norm": "batch"}


def test_featurizer_is_symmetry_consistent():
    for g in example_graphs():
        sym = g.random_symmetry(5)
        a, b = nngraph.featurize(g), nngraph.featurize(g.permute(sym))
        from nngraph.testing import node_permutation
        perm = node_permutation(g, sym)
        assert torch.equal(b.x, a.x[perm]) and torch.equal(b.node_pos, a.node_pos[perm])
        # the same (source, target) → features map, after renaming nodes
        ea = {(int(s), int(t)): tuple(np.round(f.numpy(), 5)) for (s, t), f in zip(a.edge_index.T, a.edge_attr)}
        eb = {(int(perm[s]), int(perm[t])): tuple(np.round(f.numpy(), 5)) for (s, t), f in zip(b.edge_index.T, b.edge_attr)}
        assert ea == eb


def test_featurizer_taps_and_scaling():
    g = example_graphs()[-1]                        # conv graph: 3×3 kernels and 4 flatten taps
    from nngraph.graph.vocab import EDGE_KINDS
    d = nngraph.featurize(g, nngraph.FeatureConfig(taps=4, scale="block"))
    assert d.edge_attr.shape[1] == 4 + len(EDGE_KINDS) and torch.isfinite(d.edge_attr).all()
    conv = [b for b in g.blocks if b.kind == "conv" and b.groups == 2][0]
    w = np.asarray(conv.weight.data, np.float64)
    taps = w[0, 0].reshape(-1) / np.sqrt(np.mean(w ** 2))           # block-scaled kernel of edge 0
    bins = np.linspace(0, 9, 5).round().astype(int)                  # 9 taps → 4 averaged bins
    expected = [taps[a:b].mean() for a, b in zip(bins[:-1], bins[1:])]
    first = d.edge_attr[d.edge_kind == list(EDGE_KINDS).index("conv")][0, :4].numpy()
    np.testing.assert_allclose(first, expected, rtol=1e-5)


@pytest.mark.parametrize("name,in_dim,out_dim", [("regression", 8, 1), ("classification", 8, 5), ("embedding", 8, 16)])
def test_heads(name, in_dim, out_dim):
    head = registry().head(name).factory(in_dim, out_dim)
    y = head(torch.randn(3, in_dim))
    assert y.shape == (3, out_dim)
    if name == "embedding":
        torch.testing.assert_close(y.norm(dim=-1), torch.ones(3))


def _plain_ng_gnn_layer(layer, h, e, edge_index):
    """NGGNNLayer written the direct way (concatenate, then each MLP on every edge; PyG scatters for
    the PNA aggregates): the fused implementation must compute the same function."""
    from torch_geometric.utils import scatter

    def aggregate(msg, index, size):
        mean = scatter(msg, index, 0, dim_size=size, reduce="mean")
        total = scatter(msg, index, 0, dim_size=size, reduce="sum")
        if layer.sum_scaler == "log":           # PNA's logarithmic amplification of the mean
            degree = scatter(torch.ones_like(index, dtype=msg.dtype), index, 0, dim_size=size, reduce="sum")
            total = mean * torch.log(1 + degree).unsqueeze(-1)
        var = scatter(msg * msg, index, 0, dim_size=size, reduce="mean") - mean * mean
        return torch.cat([mean, scatter(msg, index, 0, dim_size=size, reduce="max"), total,
                          torch.sqrt(var.clamp(min=0) + 1e-6)], dim=-1)

    src, dst = edge_index
    e = layer.norm_e(e + layer.edge(torch.cat([h[src], h[dst], e], dim=-1)))
    fwd = aggregate(layer.msg_fwd(torch.cat([h[src], e], dim=-1)), dst, h.shape[0])
    bwd = aggregate(layer.msg_bwd(torch.cat([h[dst], e], dim=-1)), src, h.shape[0])
    return layer.norm_h(h + layer.node(torch.cat([h, fwd, bwd], dim=-1))), e


@pytest.mark.parametrize("norm,sum_scaler", [("none", "linear"), ("layer", "linear"), ("none", "log")])
def test_ng_gnn_layer_equals_plain_formulation(norm, sum_scaler):
    from nngraph.plugins.encoders.ng_gnn import NGGNNLayer
    torch.manual_seed(0)
    layer = NGGNNLayer(8, norm, sum_scaler)
    n, E = 30, 120
    edge_index = torch.randint(0, n - 2, (2, E))       # the last two nodes get no edges
    edge_index[:, :10] = edge_index[:, 10:20]          # repeated edges ...
    outs, grads = [], []
    for f in (layer, lambda *a: _plain_ng_gnn_layer(layer, *a)):
        h = torch.randn(n, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
        e = torch.randn(E, 8, generator=torch.Generator().manual_seed(2))
        e[:10] = e[10:20]                              # ... with equal features: equal messages
        e.requires_grad_()
        layer.zero_grad()
        ho, eo = f(h, e, edge_index)
        (ho.square().sum() + eo.sin().sum()).backward()
        outs.append((ho.detach(), eo.detach()))
        grads.append([h.grad, e.grad] + [p.grad.clone() for p in layer.parameters()])
    for a, b in zip(outs[0], outs[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads[0], grads[1]):      # float32 sums over 120 edges in another order: 1.6e-4 seen
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def _widened_chain(tmp_path, width: int, c: float = 0.5):
    """A CNN state dict of the given width whose every weight and bias is ±c/√fan-in (the scale
    standard inits draw at), converted to a NeuralGraph."""
    from torch import nn
    torch.manual_seed(width)
    module = nn.Sequential(nn.Conv2d(2, width, 3), nn.ReLU(), nn.Conv2d(width, width, 3), nn.ReLU(),
                           nn.Flatten(), nn.Linear(width * 2 * 2, 4))
    with torch.no_grad():
        for m in module:
            if hasattr(m, "weight"):
                fan_in = m.weight[0].numel()
                for p in (m.weight, m.bias):
                    p.copy_(torch.sign(torch.randn_like(p)) * c / fan_in ** 0.5)
    torch.save(module.state_dict(), tmp_path / f"w{width}.pt")
    return nngraph.convert(tmp_path / f"w{width}.pt")


def test_fan_in_scaling_removes_width_from_weight_scale(tmp_path):
    """scale="fan_in": weights and biases at ±c/√fan-in featurize to ±c at every width (conv kernels,
    flatten→dense taps, dense), where unscaled features shrink with width."""
    from nngraph.learn.featurize import param_columns
    rms = {}
    for width in (4, 32):
        g = _widened_chain(tmp_path, width)
        d = nngraph.featurize(g, nngraph.FeatureConfig(scale="fan_in"))
        taps = d.edge_attr[:, :9]
        np.testing.assert_allclose(taps[taps != 0].abs().numpy(), 0.5, rtol=1e-5)
        bias = d.x[:, param_columns().start]
        assert (bias != 0).sum() == 2 * width + 4
        np.testing.assert_allclose(bias[bias != 0].abs().numpy(), 0.5, rtol=1e-5)
        raw = nngraph.featurize(g).edge_attr[:, :9]
        rms[width] = float(raw[raw != 0].square().mean().sqrt())
    assert rms[4] > 2 * rms[32]                     # what the option removes


def test_column_helpers_name_the_columns_featurize_writes():
    """role_column / activation_column / param_columns / summary_columns, the layout encoders read, are
    where featurize puts each neuron's role, activation, bias and output summary."""
    from nngraph.graph.vocab import ROLES
    from nngraph.learn.featurize import activation_column, param_columns, role_column, summary_columns
    from nngraph.learn.probes import PROBE
    config = FeatureConfig(probes=3, probe_summary=True)
    g = with_random_probes(example_graphs(), 3)[0]
    x, offsets = featurize(g, config).x.numpy(), g.set_offsets()
    assert x[:, :len(ROLES)].sum(1).tolist() == [1.0] * g.num_nodes
    for s in g.sets.values():
        rows = slice(offsets[s.name], offsets[s.name] + s.size)
        assert (x[rows, role_column(s.role)] == 1).all() and (x[rows, activation_column(s.activation)] == 1).all()
        bias = s.arrays["bias"].data if "bias" in s.arrays else np.zeros(s.size)
        np.testing.assert_array_equal(x[rows, param_columns(config).start], bias)
        summary = output_summary(s.arrays[PROBE].data[:, :3]) if s.role == "output" else np.zeros((s.size, 4))
        np.testing.assert_allclose(x[rows, summary_columns(config.summary_dim)], summary, rtol=1e-6)
    assert x[:, summary_columns(0)].shape[1] == 0


def test_feature_config_rejects_unknown_scale():
    with pytest.raises(ValueError, match="fan_in"):
        nngraph.FeatureConfig(scale="width")


def test_fan_in_scaling_leaves_embeddings_at_their_scale():
    """Embedding tables are drawn at std 1 whatever the vocabulary, so fan-in scaling (whose fan-in
    would be the vocabulary size) leaves their edges as they are; dense blocks are still scaled."""
    from pathlib import Path
    from nngraph.learn.featurize import fan_in_scales
    g = nngraph.convert(Path(__file__).parent / "fixtures" / "safetensors" / "gpt2" / "model.safetensors")
    blocks, _ = fan_in_scales(g)
    kinds = [b.kind for b in g.blocks]
    assert "embedding" in kinds and "dense" in kinds
    assert all(i not in blocks for i, k in enumerate(kinds) if k == "embedding")
    assert any(i in blocks and blocks[i] > 1 for i, k in enumerate(kinds) if k == "dense")
    d0, d1 = nngraph.featurize(g), nngraph.featurize(g, nngraph.FeatureConfig(scale="fan_in"))
    emb = d0.edge_attr[:, 9 + list(nngraph.graph.vocab.EDGE_KINDS).index("embedding")] == 1
    assert emb.any()
    torch.testing.assert_close(d1.edge_attr[emb, :9], d0.edge_attr[emb, :9])


def test_pool_norm_rejects_unknown_values():
    with pytest.raises(ValueError, match="pool_norm"):
        registry().encoder("ng-gnn").factory(hidden=8, layers=1, pool_norm="layer")


def test_output_summary_columns():
    """Per output neuron: softmax probability across the set averaged over probes, fraction of probes it
    wins, mean and std of its values; only output neurons get them, and they need probes."""
    v = np.array([[0.0, 5.0], [0.0, 0.0]])          # probe 0: a tie (first wins), probe 1: neuron 0 wins
    got = output_summary(v)
    p1 = np.exp(5) / (np.exp(5) + 1)
    np.testing.assert_allclose(got, [[(0.5 + p1) / 2, 1.0, 2.5, 2.5], [(0.5 + 1 - p1) / 2, 0.0, 0.0, 0.0]],
                               rtol=1e-6)
    config = FeatureConfig(probes=3, probe_summary=True)
    g = with_random_probes(example_graphs(), 3)[0]
    x = featurize(g, config).x.numpy()
    assert x.shape[1] == FeatureConfig(probes=3).node_dim + 4 == config.node_dim
    offsets = g.set_offsets()
    for s in g.sets.values():
        rows = x[offsets[s.name]:offsets[s.name] + s.size, -4:]
        if s.role == "output":
            np.testing.assert_allclose(rows, output_summary(s.arrays["probe"].data), rtol=1e-6)
        else:
            assert not rows.any(), s.name
    with pytest.raises(ValueError, match="needs probes"):
        FeatureConfig(probe_summary=True)
