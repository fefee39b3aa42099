"""Datasets of networks and train / evaluate / predict, end to end on a tiny zoo."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")
pytest.importorskip("scipy")

from conftest import ngraph  # noqa: E402


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """24 small MLPs exported to ONNX: half ReLU, half Tanh, random widths; a regression target
    (the RMS of the first layer's weights, scaled by a per-network factor) and the activation."""
    from torch import nn
    root = tmp_path_factory.mktemp("zoo")
    rows = []
    rng = np.random.default_rng(0)
    for i in range(24):
        act = "relu" if i % 2 == 0 else "tanh"
        width = int(rng.integers(4, 9))
        scale = float(rng.uniform(0.5, 2.0))
        torch.manual_seed(i)
        m = nn.Sequential(nn.Linear(5, width), nn.ReLU() if act == "relu" else nn.Tanh(), nn.Linear(width, 3)).eval()
        with torch.no_grad():
            m[0].weight.mul_(scale)
        torch.onnx.export(m, (torch.randn(1, 5),), root / f"m{i}.onnx", dynamo=False)
        rms = float(m[0].weight.pow(2).mean().sqrt())
        rows.append({"model": f"m{i}.onnx", "split": "test" if i >= 18 else "train", "rms": rms, "act": act})
    rows.append({"model": "broken.onnx", "split": "train", "rms": 0, "act": "relu"})
    (root / "broken.onnx").write_bytes(b"not a model")
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_train_evaluate_predict_regression(zoo, tmp_path):
    ckpt = tmp_path / "reg.safetensors"
    r = ngraph("train", zoo, "--target", "rms", "--encoder", "statnn", "--epochs", "60", "--hidden", "16",
               "--lr", "3e-3", "-o", ckpt, "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]     # JSON lines: one per epoch, then the summary
    assert [d["epoch"] for d in lines[:-1]] == list(range(1, 61)) and "train_kendall_tau" in lines[0]
    doc = lines[-1]
    assert doc["skipped"] == 1 and doc["models"] == 24 and ckpt.is_file() and (tmp_path / "reg.png").is_file()
    r = ngraph("evaluate", ckpt, zoo, "--split", "test", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["n"] == 6 and set(res) >= {"kendall_tau", "r2", "mse"}
    assert res["kendall_tau"] > 0.3          # weight scale is plainly visible to weight statistics
    r = ngraph("predict", ckpt, zoo / "m0.onnx", zoo / "m1.onnx", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 2


@pytest.mark.parametrize("encoder", ["ng-gnn", "ng-transformer", "deepsets"])
def test_classify_activation(zoo, tmp_path, encoder):
    ckpt = tmp_path / "cls.safetensors"
    r = ngraph("train", zoo, "--target", "act", "--task", "classification", "--encoder", encoder, "--epochs", "30", "--lr", "3e-3",
               "--hidden", "16", "--layers", "2", "-o", ckpt, "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = ngraph("evaluate", ckpt, zoo, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] >= 0.8     # the activation is a node feature (chance: 0.5)


def test_bad_dataset_and_device(tmp_path):
    r = ngraph("train", tmp_path, "--target", "x", "-o", tmp_path / "c.safetensors")
    assert r.returncode == 4 and "labels.csv" in r.stderr
    r = ngraph("evaluate", tmp_path / "nope.safetensors", tmp_path)
    assert r.returncode == 4


def test_contrastive_embedding_and_search(zoo, tmp_path):
    ckpt = tmp_path / "emb.safetensors"
    r = ngraph("train", zoo, "--task", "embedding", "--encoder", "ng-gnn", "--epochs", "8", "--hidden", "16",
               "--layers", "2", "-o", ckpt, "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = ngraph("embed", ckpt, zoo, "-o", tmp_path / "emb.npz", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["networks"] == 24
    r = ngraph("search", tmp_path / "emb.npz", zoo / "m3.onnx", "-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert hits[0]["model"] == "m3.onnx" and hits[0]["similarity"] > 0.999   # a network finds itself first
    # and a permuted copy of it (same function, other neuron order) embeds to the same point
    import onnx
    import nngraph
    from nngraph.adapters.onnx import export
    g = nngraph.convert(zoo / "m3.onnx")
    sym = next(s for s in (g.random_symmetry(i) for i in range(100)) if not s.is_identity())
    export(zoo / "m3.onnx", g.permute(sym).to_params(), tmp_path / "perm.onnx")
    assert not np.array_equal(onnx.load(tmp_path / "perm.onnx").graph.initializer[0].raw_data,
                              onnx.load(zoo / "m3.onnx").graph.initializer[0].raw_data)
    r = ngraph("search", tmp_path / "emb.npz", tmp_path / "perm.onnx", "-k", "1", "--json")
    assert json.loads(r.stdout)[0]["model"] == "m3.onnx"


def test_third_party_encoder_package_trains_by_name(zoo, tmp_path, install_plugin):
    """examples/nngraph-example-encoder, installed (its entry point on the path), is used by name."""
    import sys
    from pathlib import Path
    pkg = Path(__file__).resolve().parent.parent / "examples" / "nngraph-example-encoder"
    sys.path.insert(0, str(pkg))
    try:
        env = install_plugin("nngraph-example-encoder", {"example-encoder": "nngraph_example_encoder"})
        env["PYTHONPATH"] = f"{pkg}:{env['PYTHONPATH']}"
        r = ngraph("plugins", "--json", env=env)
        plugin = {p["name"]: p for p in json.loads(r.stdout)}["example-encoder"]
        assert plugin["status"] == "active" and plugin["provides"] == {"encoders": ["mean-mp"]}
        r = ngraph("train", zoo, "--target", "act", "--task", "classification", "--encoder", "mean-mp",
                   "--epochs", "3", "--hidden", "8", "-o", tmp_path / "m.safetensors", "--json", env=env)
        assert r.returncode == 0, r.stderr
        r = ngraph("evaluate", tmp_path / "m.safetensors", zoo, "--json", env=env)
        assert r.returncode == 0 and "accuracy" in json.loads(r.stdout)

        from nngraph.testing import EncoderConformance

        class Kit(EncoderConformance):
            encoder = "mean-mp"
        Kit().test_symmetry()
        Kit().test_batched_equals_one_by_one()
    finally:
        sys.path.remove(str(pkg))


def test_train_progress_validation_and_early_stopping(zoo, tmp_path):
    """Not on a TTY: one progress line per epoch on stderr; --val-fraction gives val_* records;
    --patience stops early and keeps the best epoch; the plot has a loss and a metrics panel."""
    ckpt = tmp_path / "es.safetensors"
    r = ngraph("train", zoo, "--target", "act", "--task", "classification", "--encoder", "statnn", "--epochs", "200",
               "--hidden", "8", "--lr", "0.05", "--val-fraction", "0.25", "--patience", "3", "--threads", "1",
               "-o", ckpt, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    progress = [line for line in r.stderr.splitlines() if line.startswith("epoch ")]
    assert progress and progress[0].startswith("epoch 1/200") and "val_accuracy" in progress[0]
    assert len(progress) < 200                                  # stopped early
    assert "{" not in r.stdout and "epoch" in r.stdout          # a readable summary, not a raw dict
    from nngraph.learn.checkpoint import load_checkpoint
    _, meta, _ = load_checkpoint(ckpt, "cpu")
    history = meta["history"]
    best = min(range(len(history)), key=lambda i: history[i]["val_loss"])
    assert meta["best_epoch"] == best + 1 and len(history) == best + 1 + 3
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(history[0])


def test_train_usage_errors(zoo, tmp_path):
    r = ngraph("train", zoo, "--target", "act", "--task", "classification", "--encoder", "ng-transformer",
               "--hidden", "10", "--heads", "4", "-o", tmp_path / "x.safetensors")
    assert r.returncode == 4 and "--heads 4 must divide --hidden 10" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = ngraph("train", zoo, "--target", "act", "--val-fraction", "1.5", "-o", tmp_path / "x.safetensors")
    assert r.returncode == 2


def test_predict_names_models(zoo, tmp_path):
    ckpt = tmp_path / "p.safetensors"
    r = ngraph("train", zoo, "--target", "rms", "--encoder", "statnn", "--epochs", "2", "-o", ckpt, "--json")
    assert r.returncode == 0, r.stderr
    r = ngraph("predict", ckpt, zoo / "m0.onnx", zoo / "m1.onnx")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[0].split()[0].endswith("m0.onnx") and lines[1].split()[0].endswith("m1.onnx")
    float(lines[0].split()[1])


def test_width_options_recorded_and_applied(zoo, tmp_path):
    """--weight-scale fan_in and --sum-scaler log reach the checkpoint (features and encoder
    config), so evaluate/predict featurize and aggregate as training did."""
    ckpt = tmp_path / "w.safetensors"
    r = ngraph("train", zoo, "--target", "rms", "--epochs", "2", "--hidden", "8", "--weight-scale", "fan_in",
               "--sum-scaler", "log", "--threads", "1", "-o", ckpt, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    from nngraph.learn.checkpoint import load_checkpoint
    model, meta, _ = load_checkpoint(ckpt, "cpu")
    assert meta["features"]["scale"] == "fan_in"
    assert json.dumps(meta).count('"sum_scaler": "log"') >= 1
    r = ngraph("evaluate", ckpt, zoo, "--split", "test", "--json")
    assert r.returncode == 0, r.stderr
    r = ngraph("train", zoo, "--target", "rms", "--weight-scale", "fan-in", "-o", tmp_path / "x.safetensors")
    assert r.returncode == 2 and not (tmp_path / "x.safetensors").exists()


def test_pool_norm_and_rank_weight_recorded_and_applied(zoo, tmp_path):
    """--pool-norm batch puts a BatchNorm (with its recomputed statistics) in the checkpoint and
    --rank-weight reaches the recorded config; evaluate loads and runs it; bad values exit 2."""
    ckpt = tmp_path / "p.safetensors"
    r = ngraph("train", zoo, "--target", "rms", "--epochs", "2", "--hidden", "8", "--pool-norm", "batch",
               "--pool-fixed", "--no-probe-summary", "--rank-weight", "0.5", "--threads", "1", "-o", ckpt,
               "--device", "cpu")
    assert r.returncode == 0, r.stderr
    from nngraph.learn.checkpoint import load_checkpoint
    model, meta, _ = load_checkpoint(ckpt, "cpu")
    assert meta["encoder_config"]["pool_norm"] == "batch" and meta["config"]["rank_weight"] == 0.5
    assert not meta["features"]["probe_summary"] and meta["features"]["probes"] == 64     # only what was asked
    assert meta["encoder_config"]["pool_fixed"] is True and model.encoder.readout[0].in_features == 3 * 8
    norm = model.encoder.pool_norm
    assert int(norm.num_batches_tracked) > 0 and float(norm.running_var.sum()) != float(norm.running_var.numel())
    r = ngraph("evaluate", ckpt, zoo, "--split", "test", "--json")
    assert r.returncode == 0, r.stderr
    for bad in (["--pool-norm", "layer"], ["--rank-weight", "-1"]):
        r = ngraph("train", zoo, "--target", "rms", *bad, "-o", tmp_path / "x.safetensors")
        assert r.returncode == 2 and not (tmp_path / "x.safetensors").exists()


def test_probe_summary_trains_records_and_is_refused_where_it_cannot_work(zoo, tmp_path):
    """--probe-summary adds the output-summary columns and readout (recorded in the checkpoint, which
    evaluates); without --probes it is a usage error (exit 2), with an encoder that does not read it exit 4."""
    ckpt = tmp_path / "s.safetensors"
    r = ngraph("train", zoo, "--target", "rms", "--epochs", "2", "--hidden", "8", "--probes", "2",
               "--probe-summary", "--threads", "1", "-o", ckpt, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    from nngraph.learn.checkpoint import load_checkpoint
    model, meta, _ = load_checkpoint(ckpt, "cpu")
    assert meta["features"]["probe_summary"] is True and model.encoder.summary_dim == 4
    r = ngraph("evaluate", ckpt, zoo, "--split", "test", "--json")
    assert r.returncode == 0, r.stderr
    # node embeddings (alignment by embedding) probe the model files as training did, or are refused
    import nngraph
    from nngraph.alignment.matching import node_embeddings
    from nngraph.errors import InputError
    paths = sorted(p for p in zoo.glob("m*.onnx"))[:2]
    with pytest.raises(InputError, match="model files"):
        node_embeddings(ckpt, [nngraph.convert(p) for p in paths], "cpu")
    graphs = [nngraph.convert(p) for p in paths]
    embs = node_embeddings(ckpt, graphs, "cpu", paths=paths)
    assert len(embs) == 2 and all(np.isfinite(e).all() for e in embs)
    assert not any("probe" in s.arrays for g in graphs for s in g.sets.values())   # the caller's graphs untouched
    out = tmp_path / "x.safetensors"
    for no_probes in (["--probes", "0"], ["--encoder", "statnn"]):     # statnn has no default probes
        r = ngraph("train", zoo, "--target", "rms", "--probe-summary", *no_probes, "-o", out)
        assert r.returncode == 2 and "--probes" in r.stderr and not out.exists(), r.stderr
    for probes in (["--probes", "2"], []):                  # deepsets probes (by default too) but has no summary term
        r = ngraph("train", zoo, "--target", "rms", "--epochs", "1", *probes, "--probe-summary",
                   "--encoder", "deepsets", "-o", out)
        assert r.returncode == 4 and "--probe-summary" in r.stderr and not out.exists(), r.stderr
    from nngraph.errors import InputError, PluginError
    from nngraph.learn.featurize import FeatureConfig
    from nngraph.learn.train import TrainConfig, check_config
    with pytest.raises(InputError, match="--probe-summary"):          # before any dataset is read
        check_config(TrainConfig(target="y", encoder="statnn", features=FeatureConfig(probes=2, probe_summary=True)))
    with pytest.raises(PluginError, match="no encoder named"):
        check_config(TrainConfig(target="y", encoder="nope"))


def test_summary_readout_reads_the_output_neurons():
    """The summary readout is in the graph embedding's path (its weights get gradient), and it reads only
    output neurons: with their summary columns zero and every other node's set to random values, its
    weights get none."""
    from torch_geometric.data import Batch
    from nngraph.learn.featurize import FeatureConfig, featurize
    from nngraph.loader import registry
    from nngraph.testing import example_graphs, with_random_probes
    config = FeatureConfig(probes=3, probe_summary=True)
    torch.manual_seed(0)
    model = registry().encoder("ng-gnn").factory(hidden=8, layers=1, node_dim=config.node_dim,
                                                 summary_dim=config.summary_dim)
    d = featurize(with_random_probes(example_graphs(), 3)[0], config)
    model(Batch.from_data_list([d]))[1].sum().backward()
    assert float(model.summary.weight.grad.abs().sum()) > 0
    model.zero_grad()
    from nngraph.learn.featurize import role_column
    out = d.x[:, role_column("output")] > 0
    assert 0 < int(out.sum()) < len(out)
    d.x[:, -4:] = torch.randn(len(out), 4)
    d.x[out, -4:] = 0
    model(Batch.from_data_list([d]))[1].sum().backward()
    assert float(model.summary.weight.grad.abs().sum()) == 0


def test_feature_scales_survive_a_diverged_network():
    """One network whose probe value is 3e19 (squared: beyond float32) leaves every scale finite and
    positive, and the other columns' scales as they were without it."""
    from nngraph.learn.featurize import FeatureConfig, feature_scales, featurize
    from nngraph.testing import example_graphs, with_random_probes
    config = FeatureConfig(probes=3, probe_summary=True)
    datas = [featurize(g, config) for g in with_random_probes(example_graphs(), 3)]
    calm, _ = feature_scales(datas, config)
    datas[0].x[0, config.base_node_dim] = 3e19
    node, edge = feature_scales(datas, config)
    assert bool(torch.isfinite(node).all()) and bool((node > 0).all()) and bool((edge > 0).all())
    nonzero = sum(int((d.x[:, config.base_node_dim] != 0).sum()) for d in datas)
    assert float(node[config.base_node_dim]) == pytest.approx(np.sqrt(nonzero) / 3e19, rel=1e-3)
    others = [c for c in range(config.node_dim) if c != config.base_node_dim]
    assert torch.equal(node[others], calm[others])
    datas[0].x[0, config.base_node_dim] = float("inf")             # a non-finite value is left out
    datas[0].edge_attr[0, 0] = float("nan")
    node, edge = feature_scales(datas, config)
    assert bool(torch.isfinite(node).all()) and bool((node > 0).all()) and bool((edge > 0).all())
    assert torch.equal(node[others], calm[others])


def test_task_loss_rank_term():
    """MSE plus rank_weight × the mean softplus(−margin) over ordered pairs; tied pairs do not count."""
    import math
    from nngraph.learn.train import rank_loss, task_loss
    y = torch.tensor([0.0, 1.0, 1.0])
    right, wrong = torch.tensor([[0.0], [1.0], [1.0]]), torch.tensor([[1.0], [0.0], [0.0]])
    # two ordered pairs, each with margin −1 (wrong) or +1 (right); the tied pair (1, 1) is left out
    assert float(rank_loss(wrong, y)) == pytest.approx(math.log1p(math.e))
    assert float(rank_loss(right, y)) == pytest.approx(math.log1p(math.exp(-1)))
    assert float(task_loss("regression", wrong, y, 1.0)) == pytest.approx(1.0 + math.log1p(math.e))
    assert float(task_loss("regression", wrong, y, 0.5)) == pytest.approx(1.0 + 0.5 * math.log1p(math.e))
    assert float(task_loss("regression", wrong, y)) == pytest.approx(1.0)        # function default: MSE only
    assert float(rank_loss(right, torch.ones(3))) == 0.0                          # all tied: no pairs


def test_pool_norm_refused_where_it_cannot_work(zoo, tmp_path):
    """statnn has no pooled vector, a batch of one graph has no spread: one-line errors, exit 4, no file."""
    for extra in (["--encoder", "statnn"], ["--batch-size", "1"]):
        out = tmp_path / "x.safetensors"
        r = ngraph("train", zoo, "--target", "rms", "--epochs", "1", "--pool-norm", "batch", *extra, "-o", out)
        assert r.returncode == 4 and "--pool-norm" in r.stderr and not out.exists(), r.stderr
    r = ngraph("train", zoo, "--target", "rms", "--epochs", "1", "--pool-fixed", "--encoder", "deepsets", "-o", out)
    assert r.returncode == 4 and "--pool-fixed" in r.stderr and not out.exists(), r.stderr
    r = ngraph("train", zoo, "--target", "rms", "--rank-weight", "nan", "-o", tmp_path / "y.safetensors")
    assert r.returncode == 4 and "--rank-weight must be a finite number" in r.stderr
    assert not (tmp_path / "y.safetensors").exists()
    from nngraph.learn.train import TrainConfig, check_config, pool_norm_for
    from nngraph.errors import InputError
    with pytest.raises(InputError, match="torchrun"):
        check_config(TrainConfig(target="y", pool_norm="batch"), world=2)
    with pytest.raises(InputError, match="auto, none or batch"):
        check_config(TrainConfig(target="y", pool_norm="layer"))
    check_config(TrainConfig(target="y", pool_norm="batch"), world=1)
    torch.manual_seed(0)                             # its throwaway encoder leaves the seeded stream alone
    expected = torch.rand(3)
    torch.manual_seed(0)
    check_config(TrainConfig(target="y"))
    assert torch.equal(torch.rand(3), expected)
    # auto: the registered default (batch for ng-gnn, deepsets, ng-transformer) where a batch can be standardized
    assert pool_norm_for(TrainConfig(target="y", encoder="deepsets")) == "batch"
    assert pool_norm_for(TrainConfig(target="y", encoder="deepsets", batch_size=1)) == "none"
    assert pool_norm_for(TrainConfig(target="y", encoder="deepsets"), world=2) == "none"
    assert pool_norm_for(TrainConfig(target="y", encoder="ng-transformer")) == "batch"
    assert pool_norm_for(TrainConfig(target="y", encoder="ng-gnn")) == "batch"
    assert pool_norm_for(TrainConfig(target="y", encoder="statnn")) == "none"
    assert pool_norm_for(TrainConfig(target="y", encoder="ng-gnn", pool_norm="batch")) == "batch"


def test_training_defaults_are_the_encoders_registration(install_plugin):
    """``pool_norm="auto"`` and ``TrainConfig.for_encoder`` read ``EncoderSpec.train_defaults``: a third
    party's encoder opts in by name-free registration, options given win over them; an encoder refusing its options (ValueError) is bad input in the CLI's words."""
    from nngraph.errors import InputError
    from nngraph.learn.train import TrainConfig, check_config, pool_norm_for
    from nngraph.plugins.encoders.ng_transformer import NGTransformer
    assert pool_norm_for(TrainConfig(target="y", encoder="normed-sets")) == "none"      # not registered yet
    install_plugin("poolnorm-nngraph", {"poolnorm": "poolnorm_nngraph"})
    cfg = TrainConfig(target="y", encoder="normed-sets", hidden=8)
    assert pool_norm_for(cfg) == "batch" and cfg.encoder_config()["pool_norm"] == "batch"
    assert pool_norm_for(TrainConfig(target="y", encoder="normed-sets", batch_size=1)) == "none"
    assert pool_norm_for(cfg, world=2) == "none"
    check_config(cfg)                                      # built with the batch norm it asked for
    assert TrainConfig.for_encoder("y", "normed-sets").batch_size == 8
    assert TrainConfig.for_encoder("y", "normed-sets", batch_size=4).batch_size == 4
    assert TrainConfig.for_encoder("y", "statnn").batch_size == TrainConfig(target="y").batch_size
    with pytest.raises(ValueError, match="heads 3 must divide hidden 8"):
        NGTransformer(hidden=8, heads=3)
    with pytest.raises(InputError, match="^--heads 3 must divide --hidden 8$"):
        check_config(TrainConfig(target="y", encoder="ng-transformer", hidden=8, heads=3))
    with pytest.raises(InputError, match="--sum-scaler must be one of"):
        check_config(TrainConfig(target="y", sum_scaler="cubic"))


def test_refresh_batch_norms_gives_exact_population_statistics():
    """Running statistics after the refresh are the mean and unbiased variance over every input, not an
    average of per-batch statistics (which would miss the spread between batches and over-weight a small
    last batch)."""
    from nngraph.learn.train import refresh_batch_norms
    torch.manual_seed(0)

    class Marked(torch.nn.BatchNorm1d):
        refresh_statistics = True

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = Marked(3)
            self.other = torch.nn.BatchNorm1d(3)                       # a plugin's own: left as trained
            self.untracked = Marked(3, track_running_stats=False)     # nothing to refresh

        def forward(self, batch):
            return self.untracked(self.other(self.norm(batch)))

    x = torch.cat([torch.randn(16, 3), torch.randn(16, 3) + 5, torch.randn(2, 3) - 9])   # sorted-like data
    model = Model()
    assert refresh_batch_norms(model, list(x.split(16)) + [x[:0]], "cpu")               # an empty batch too
    assert torch.allclose(model.norm.running_mean, x.mean(0), atol=1e-5)
    assert torch.allclose(model.norm.running_var, x.var(0), atol=1e-4)
    assert torch.equal(model.other.running_mean, torch.zeros(3)) and torch.equal(model.other.running_var, torch.ones(3))
    assert model.training and not refresh_batch_norms(torch.nn.Sequential(torch.nn.BatchNorm1d(3)), [x], "cpu")


def test_rank_loss_in_blocks_equals_whole():
    """Row blocks (O(block · n) memory for a large validation set) give the all-pairs value."""
    from nngraph.learn.train import rank_loss
    torch.manual_seed(0)
    out, y = torch.randn(50, 1), torch.randint(0, 5, (50,)).float()
    assert float(rank_loss(out, y, block=7)) == pytest.approx(float(rank_loss(out, y, block=1024)), rel=1e-6)


def test_non_finite_regression_target_is_refused(zoo, tmp_path):
    """A 'nan' or 'inf' label would make every loss NaN and train silently to nothing: exit 4, the
    models named, no checkpoint."""
    import shutil
    root = tmp_path / "z"
    shutil.copytree(zoo, root, ignore=shutil.ignore_patterns(".nngraph-cache"))
    rows = list(csv.DictReader(open(root / "labels.csv")))
    rows[0]["rms"], rows[1]["rms"] = "nan", "inf"
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = ngraph("train", root, "--target", "rms", "--epochs", "1", "-o", tmp_path / "x.safetensors")
    assert r.returncode == 4 and "not finite" in r.stderr and "m0.onnx" in r.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_ticker_prints_progress_of_long_work_only():
    """Not on a terminal, conversion and probing report ``label: done/total, t s`` every few seconds;
    work shorter than the interval prints nothing, and a job that reported ends with its total."""
    from nngraph.learn.progress import Ticker
    lines = []
    quiet = Ticker("probing 3 networks", 3, lines.append, every_s=3600)
    for _ in range(3):
        quiet.advance()
    assert lines == []
    loud = Ticker("converting 3 models", 3, lines.append, every_s=0)
    for _ in range(3):
        loud.advance()
    assert len(lines) == 3 and lines[-1].startswith("converting 3 models: 3/3, ")


def test_labels_csv_from_a_spreadsheet_reads_as_meant(zoo, tmp_path):
    """A byte-order mark, spaces around column names and 'Test' for 'test' (a spreadsheet's CSV) put no
    row out of its split; a split train does not know is named in a note, not dropped in silence; a
    file that is not UTF-8 is one line, exit 4."""
    import shutil

    from nngraph.learn.dataset import read_labels, unknown_splits
    root = tmp_path / "z"
    shutil.copytree(zoo, root, ignore=shutil.ignore_patterns(".nngraph-cache"))
    with open(root / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    lines = ["model , split,rms ,act"]
    for i, r in enumerate(rows):
        split = {"test": " Test", "train": "TRAIN"}[r["split"]] if i != 3 else "ood"
        lines.append(f"{r['model']},{split},{r['rms']},{r['act']}")
    (root / "labels.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8-sig"))
    read = read_labels(root)
    assert [r["model"] for r in read] == [r["model"] for r in rows]
    assert [r["split"] for r in read] == [r["split"] if i != 3 else "ood" for i, r in enumerate(rows)]
    assert unknown_splits(read) == {"ood": 1}
    r = ngraph("train", root, "--target", "rms", "--epochs", "1", "-o", tmp_path / "x.safetensors", "--json")
    assert r.returncode == 0, r.stderr
    assert "not trained on: 1 in 'ood'" in r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["models"] == len(rows) - 1    # all but broken.onnx
    r = ngraph("evaluate", tmp_path / "x.safetensors", root, "--split", "OOD", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["n"] == 1, r.stderr      # split names match in any case
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "labels.csv").write_text("model,split,rms\nm0.onnx,train,1\nm1.onnx\n")
    assert unknown_splits(read_labels(tmp_path / "short")) == {"": 1}        # a short row: no split cell
    (root / "labels.csv").write_bytes(b"model,rms\n\xff\xfe.onnx,1\n")
    r = ngraph("train", root, "--target", "rms", "--epochs", "1", "-o", tmp_path / "y.safetensors")
    assert r.returncode == 4 and "not UTF-8" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_non_numeric_regression_target_names_its_models():
    from types import SimpleNamespace

    from nngraph.errors import InputError
    from nngraph.learn.train import TrainConfig, encode_labels
    entries = [SimpleNamespace(row={"model": f"m{i}.onnx", "y": v}) for i, v in enumerate(["0.5", "abc", "1e-3"])]
    with pytest.raises(InputError, match=r"not numeric for m1.onnx \('abc'\)"):
        encode_labels(entries, TrainConfig(target="y"))
    entries[1].row["y"] = "2"
    assert encode_labels(entries, TrainConfig(target="y"))[0].tolist() == pytest.approx([0.5, 2.0, 1e-3])
