"""Every built-in encoder can fit a weight-dependent label: 32 small MLP graphs whose label is the
sign of the network's output at a fixed input (nothing in the architecture or the one-hot features
gives it away) reach 100 % training accuracy within 150 steps (message passing) or 300 (the cheap baselines), at the
default learning rate. Before inputs were scaled to the
population's RMS (``featurize.feature_scales``), ng-gnn stayed at chance on such labels."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")

from nngraph.learn.dataset import Entry, ModelDataset  # noqa: E402
from nngraph.graph.ir import NeuralGraph, Param  # noqa: E402
from nngraph.learn.checkpoint import save_checkpoint  # noqa: E402
from nngraph.learn.train import TrainConfig, evaluate, train  # noqa: E402

LAYOUT = (2, 16, 16, 1)
PROBE = np.array([1.0, -0.5], np.float32)


def mlp_graph(rng) -> tuple[NeuralGraph, int]:
    """A ReLU MLP with small weights (RMS 0.1, as after training) and its label."""
    g = NeuralGraph({"producer": "test_overfit"})
    g.add_set("l0", LAYOUT[0], "input", fixed=True)
    h = PROBE
    for i, (a, b) in enumerate(zip(LAYOUT[:-1], LAYOUT[1:]), start=1):
        last = i == len(LAYOUT) - 1
        W = (0.1 * rng.standard_normal((b, a))).astype(np.float32)
        bias = (0.05 * rng.standard_normal(b)).astype(np.float32)
        s = g.add_set(f"l{i}", b, "output" if last else "hidden", depth=i, fixed=last,
                      activation=None if last else "relu")
        s.arrays["bias"] = Param(bias)
        g.add_block(f"w{i}", f"l{i - 1}", f"l{i}", "dense", Param(W))
        h = W @ h + bias
        h = h if last else np.maximum(h, 0)
    return g.validate(), int(h[0] > 0)


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("overfit")
    graphs, labels = [], []
    while len(graphs) < 32:                          # balanced: 16 of each label
        g, y = mlp_graph(rng)
        if labels.count(y) < 16:
            graphs.append(g)
            labels.append(y)
    entries = [Entry(root / f"m{i}", {"model": f"m{i}", "split": "train", "label": str(y)}, g)
               for i, (g, y) in enumerate(zip(graphs, labels))]
    return ModelDataset(root, entries)


@pytest.mark.parametrize("encoder,steps", [("ng-gnn", 150), ("ng-transformer", 150), ("statnn", 300),
                                           ("deepsets", 300)])
def test_overfits_weight_dependent_label(population, tmp_path, encoder, steps):
    torch.set_num_threads(1)
    cfg = TrainConfig(target="label", task="classification", encoder=encoder, epochs=steps, batch_size=32,
                      device="cpu")                  # one batch per epoch: epochs = steps
    model, meta, history = train(population, cfg, progress=False)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model, meta)
    assert evaluate(ckpt, population, "train", device="cpu")["accuracy"] == 1.0
    assert history[-1]["train_loss"] < 0.1


def near_identical_population(root, n: int = 33):
    """``n`` MLPs that share one set of weights up to a 2 % deviation each (INRs fitted from one
    init look like this); label: is the output at ``PROBE`` above the population's median."""
    rng = np.random.default_rng(1)
    base = [(rng.standard_normal((b, a)), rng.standard_normal(b)) for a, b in zip(LAYOUT[:-1], LAYOUT[1:])]
    graphs, outs = [], []
    for _ in range(n):
        g = NeuralGraph({"producer": "test_overfit"})
        g.add_set("l0", LAYOUT[0], "input", fixed=True)
        h = PROBE
        for i, (W0, b0) in enumerate(base, start=1):
            last = i == len(base)
            W = (W0 + 0.02 * rng.standard_normal(W0.shape)).astype(np.float32)
            bias = (b0 + 0.02 * rng.standard_normal(b0.shape)).astype(np.float32)
            s = g.add_set(f"l{i}", len(bias), "output" if last else "hidden", depth=i, fixed=last,
                          activation=None if last else "tanh")
            s.arrays["bias"] = Param(bias)
            g.add_block(f"w{i}", f"l{i - 1}", f"l{i}", "dense", Param(W))
            h = W @ h + bias
            h = h if last else np.tanh(h)
        graphs.append(g.validate())
        outs.append(float(h[0]))
    labels = (np.array(outs) > np.median(outs)).astype(int)
    return ModelDataset(root, [Entry(root / f"m{i}", {"model": f"m{i}", "split": "train", "label": str(y)}, g)
                               for i, (g, y) in enumerate(zip(graphs, labels))])


@pytest.mark.parametrize("encoder,pool_norm", [("ng-gnn", "batch"), ("deepsets", "auto")])
def test_pool_norm_fits_near_identical_networks(tmp_path, encoder, pool_norm):
    """``pool_norm="batch"`` standardizes pooled vectors across the batch, so networks that differ by 2 %
    of their weights become separable; 33 graphs in batches of 16 also train the one-graph last batch
    (normalized by the running statistics). deepsets has it by default (``pool_norm="auto"``)."""
    torch.set_num_threads(1)
    data = near_identical_population(tmp_path)
    cfg = TrainConfig(target="label", task="classification", encoder=encoder, epochs=60, batch_size=16,
                      device="cpu", pool_norm=pool_norm)
    model, meta, history = train(data, cfg, progress=False)
    assert meta["encoder_config"]["pool_norm"] == "batch"
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model, meta)
    assert evaluate(ckpt, data, "train", device="cpu")["accuracy"] >= 0.95
