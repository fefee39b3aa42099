"""Probe features: neuron outputs on fixed inputs as node features (nngraph.learn.probes)."""
from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")

import nngraph  # noqa: E402
from conftest import ngraph  # noqa: E402
from nngraph.errors import InputError  # noqa: E402
from nngraph.learn.probes import PROBE, attach_probes  # noqa: E402
from nngraph.testing import node_permutation  # noqa: E402


def mlp(path, seed: int, hidden: int = 6):
    """x[1, 4] → Gemm → Relu → Gemm → y[1, 2]; returns the weights."""
    rng = np.random.default_rng(seed)
    w1, b1 = rng.standard_normal((hidden, 4)).astype(np.float32), rng.standard_normal(hidden).astype(np.float32)
    w2, b2 = rng.standard_normal((2, hidden)).astype(np.float32), rng.standard_normal(2).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return w1, b1, w2, b2


def test_probe_values_are_the_neurons_outputs(tmp_path):
    path = tmp_path / "m.onnx"
    w1, b1, w2, b2 = mlp(path, 0)
    g = attach_probes(nngraph.convert(path), path, 3)
    adapter = nngraph.find_adapter(path)
    for j in range(3):
        x = adapter.example_inputs(path, j)["x"]                # the j-th probe input
        hidden = np.maximum(x @ w1.T + b1, 0)[0]
        y = (np.maximum(x @ w1.T + b1, 0) @ w2.T + b2)[0]
        inputs = next(s for s in g.sets.values() if s.role == "input")
        outputs = next(s for s in g.sets.values() if s.role == "output")
        hidden_set = next(s for s in g.sets.values() if s.role == "hidden" and s.size == 6)
        np.testing.assert_allclose(inputs.arrays[PROBE].data[:, j], x[0], rtol=1e-5)
        np.testing.assert_allclose(outputs.arrays[PROBE].data[:, j], y, rtol=1e-4, atol=1e-5)
        assert np.allclose(hidden_set.arrays[PROBE].data[:, j], hidden, atol=1e-5) or \
            np.allclose(hidden_set.arrays[PROBE].data[:, j], (x @ w1.T + b1)[0], atol=1e-5)


def test_probe_features_move_with_their_neurons(tmp_path):
    path = tmp_path / "m.onnx"
    mlp(path, 1)
    g = attach_probes(nngraph.convert(path), path, 4)
    cfg = nngraph.FeatureConfig(probes=4)
    sym = next(s for s in (g.random_symmetry(i) for i in range(50)) if not s.is_identity())
    a, b = nngraph.featurize(g, cfg), nngraph.featurize(g.permute(sym), cfg)
    assert a.x.shape[1] == cfg.node_dim == nngraph.FeatureConfig().node_dim + 4
    assert a.x[:, -4:].abs().sum() > 0
    torch.testing.assert_close(b.x, a.x[node_permutation(g, sym)])


def test_train_with_probes_needs_model_files_to_predict(tmp_path):
    rows = []
    for i in range(12):
        mlp(tmp_path / f"m{i}.onnx", i, hidden=4 + i % 3)
        rows.append({"model": f"m{i}.onnx", "split": "test" if i >= 9 else "train", "y": i % 2})
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ckpt = tmp_path / "c.safetensors"
    r = ngraph("train", tmp_path, "--target", "y", "--task", "classification", "--probes", "2", "--epochs", "2",
               "--probe-inputs", "uniform", "--hidden", "8", "-o", ckpt, "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    from nngraph.learn.checkpoint import load_checkpoint
    model, meta, _ = load_checkpoint(ckpt, "cpu")
    assert meta["features"]["probes"] == 2 and meta["features"]["probe_inputs"] == "uniform"
    probe_scale = model.encoder.input_node_scale[-2:]
    assert torch.all(probe_scale != 1)                     # input scaling covers the probe columns
    r = ngraph("predict", ckpt, tmp_path / "m0.onnx", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 1, r.stderr
    from nngraph.learn.train import predict
    with pytest.raises(InputError, match="probe features"):
        predict(ckpt, [nngraph.convert(tmp_path / "m0.onnx")], "cpu")


def test_uniform_probe_inputs_stay_in_the_unit_box_and_are_recorded(tmp_path):
    """``probe_inputs="uniform"``: float inputs redrawn from U(-1, 1) (coordinate networks live there),
    the same for every network with the input signature; the values are the neurons' outputs on them,
    and a graph probed with one distribution is probed again when asked for the other."""
    from nngraph.learn.probes import PROBE_INPUTS_KEY, has_probes, probe_feeds
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    w1, b1, w2, b2 = mlp(a, 0)
    mlp(b, 1)
    adapter = nngraph.find_adapter(a)
    feeds = [probe_feeds(adapter, a, j, "uniform")["x"] for j in range(8)]
    assert all(f.dtype == np.float32 and f.shape == (1, 4) and np.abs(f).max() <= 1 for f in feeds)
    assert np.abs(np.concatenate([adapter.example_inputs(a, j)["x"] for j in range(8)])).max() > 1
    np.testing.assert_array_equal(feeds[3], probe_feeds(adapter, b, 3, "uniform")["x"])
    g = attach_probes(nngraph.convert(a), a, 3)
    normal = next(s for s in g.sets.values() if s.role == "output").arrays[PROBE].data.copy()
    assert has_probes(g, 3) and not has_probes(g, 3, "uniform")
    attach_probes(g, a, 3, inputs="uniform")
    assert g.meta[PROBE_INPUTS_KEY] == "uniform" and has_probes(g, 3, "uniform")
    out = next(s for s in g.sets.values() if s.role == "output").arrays[PROBE].data
    want = np.stack([(np.maximum(feeds[j] @ w1.T + b1, 0) @ w2.T + b2)[0] for j in range(3)], axis=1)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(out, normal)
    with pytest.raises(ValueError, match="probe_inputs"):
        nngraph.FeatureConfig(probes=2, probe_inputs="gaussian")
    r = ngraph("train", tmp_path, "--target", "y", "--probes", "2", "--probe-inputs", "gaussian",
               "-o", tmp_path / "c.safetensors")
    assert r.returncode == 2


def test_probe_inputs_from_a_file_are_its_samples(tmp_path):
    """``probe_inputs="X.npz"``: probe j is sample j of the array named after the model input (any name
    when the model has one float input), so outputs on real data become features; the file is never
    unpickled, and a missing array, too few samples or a wrong shape are one-line input errors."""
    from nngraph.learn.probes import load_probe_file
    path = tmp_path / "m.onnx"
    w1, b1, w2, b2 = mlp(path, 2)
    samples = np.random.default_rng(0).uniform(-3, 3, (5, 4)).astype(np.float32)
    np.savez(tmp_path / "p.npz", data=samples)                  # one float input: the name need not match
    g = attach_probes(nngraph.convert(path), path, 5, inputs=str(tmp_path / "p.npz"))
    out = next(s for s in g.sets.values() if s.role == "output").arrays[PROBE].data
    want = (np.maximum(samples @ w1.T + b1, 0) @ w2.T + b2).T
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="has 5 probe samples"):
        attach_probes(nngraph.convert(path), path, 6, inputs=str(tmp_path / "p.npz"))
    np.savez(tmp_path / "s.npz", x=np.zeros((2, 3), np.float32))
    with pytest.raises(InputError, match="has shape"):
        attach_probes(nngraph.convert(path), path, 1, inputs=str(tmp_path / "s.npz"))
    np.savez(tmp_path / "two.npz", a=samples, b=samples)
    with pytest.raises(InputError, match="no array named 'x'"):
        attach_probes(nngraph.convert(path), path, 1, inputs=str(tmp_path / "two.npz"))
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="not a readable .npz"):
        load_probe_file(str(tmp_path / "obj.npz"))
    r = ngraph("train", tmp_path, "--target", "y", "--probes", "2", "--probe-inputs", str(tmp_path / "none.npz"),
               "-o", tmp_path / "c.safetensors")
    assert r.returncode == 2 and not (tmp_path / "c.safetensors").exists()



def _mlp_population(root, n: int = 10):
    rows = []
    for i in range(n):
        mlp(root / f"m{i}.onnx", i, hidden=4 + i % 3)
        rows.append({"model": f"m{i}.onnx", "split": "test" if i >= n - 2 else "train", "y": i % 2})
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _unrunnable(path):
    """An MLP whose activation is a custom-domain op: it converts (the op's neurons pinned) but no runtime
    here can run it, so it cannot be probed."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
             helper.make_node("Mystery", ["h"], ["r"], domain="com.acme"),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (6, 4)), ("w2", (2, 6)))]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.acme", 1)]),
              path)


def test_default_probes_are_dropped_where_a_population_cannot_be_probed(tmp_path):
    """ng-gnn's probe features are a training default, not a request: a population that can be probed
    trains with them; one holding a network no runtime here can run trains without them, with a note
    naming it, instead of being refused; asked for explicitly, they must work (exit 4 naming the file)."""
    from nngraph.learn.checkpoint import load_checkpoint
    from nngraph.learn.train import TrainConfig
    cfg = TrainConfig.for_encoder("y", "ng-gnn")
    assert cfg.features.probes > 0 and cfg.probes_optional
    assert not TrainConfig.for_encoder("y", "ng-gnn", probes=cfg.features.probes).probes_optional
    assert TrainConfig.for_encoder("y", "ng-gnn", probes=0).features.probes == 0
    assert not TrainConfig.for_encoder("y", "ng-gnn", probes=0).features.probe_summary   # follows the probes
    assert TrainConfig.for_encoder("y", "ng-gnn", probe_summary=False).probes_optional
    assert not TrainConfig.for_encoder("y", "ng-gnn", probe_summary=True).probes_optional
    assert TrainConfig.for_encoder("y", "statnn").features.probes == 0
    tr = TrainConfig.for_encoder("y", "ng-transformer")      # the other message-passing encoder: the same
    assert (tr.features.probes, tr.features.probe_summary, tr.pool_fixed, tr.probes_optional) == (
        cfg.features.probes, True, True, True)
    ds = TrainConfig.for_encoder("y", "deepsets")             # probes, but no summary or fixed pool to read them
    assert (ds.features.probes, ds.features.probe_summary, ds.pool_fixed, ds.probes_optional) == (
        cfg.features.probes, False, False, True)
    _mlp_population(tmp_path)
    common = ("--target", "y", "--task", "classification", "--epochs", "1", "--hidden", "8", "--device", "cpu",
              "--json")
    r = ngraph("train", tmp_path, *common, "-o", tmp_path / "a.safetensors")
    assert r.returncode == 0 and "note" not in r.stderr, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["setup"] == {      # the summary says which defaults applied
        "probes": cfg.features.probes, "probe_inputs": "uniform", "probe_summary": True, "pool_norm": "batch",
        "pool_fixed": True}
    assert load_checkpoint(tmp_path / "a.safetensors", "cpu")[1]["features"]["probes"] == cfg.features.probes
    _unrunnable(tmp_path / "m3.onnx")                    # a training network
    r = ngraph("train", tmp_path, *common, "-o", tmp_path / "b.safetensors")
    assert r.returncode == 0, r.stderr
    assert "note: training without probe features" in r.stderr and "m3.onnx" in r.stderr
    setup = json.loads(r.stdout.splitlines()[-1])["setup"]
    assert (setup["probes"], setup["probe_summary"], setup["pool_fixed"]) == (0, False, True)
    features = load_checkpoint(tmp_path / "b.safetensors", "cpu")[1]["features"]
    assert features["probes"] == 0 and not features["probe_summary"]
    r = ngraph("predict", tmp_path / "b.safetensors", tmp_path / "m3.onnx", "--json")
    assert r.returncode == 0, r.stderr
    r = ngraph("train", tmp_path, *common, "--probes", "2", "-o", tmp_path / "c.safetensors")
    assert r.returncode == 4 and "m3.onnx" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "c.safetensors").exists()


def test_probes_asked_for_fail_on_every_rank_when_one_rank_cannot_probe(tmp_path):
    """Under torchrun every rank hears of a probing failure before raising (one rank raising alone would
    leave the others waiting in the next collective); the rank that failed names its file."""
    from types import SimpleNamespace

    import pytest
    import torch

    from nngraph.errors import InputError
    from nngraph.learn.train import TrainConfig, attach_training_probes

    class Group:                     # all_sum over this rank and one other, whose flag is ``other``
        def __init__(self, other):
            self.other, self.calls = other, 0

        def all_sum(self, t):
            self.calls += 1
            return t + self.other

    mlp(tmp_path / "m.onnx", 0)
    _unrunnable(tmp_path / "bad.onnx")
    good = [SimpleNamespace(graph=nngraph.convert(tmp_path / "m.onnx"), path=tmp_path / "m.onnx")]
    bad = [SimpleNamespace(graph=nngraph.convert(tmp_path / "bad.onnx"), path=tmp_path / "bad.onnx")]
    asked = TrainConfig.for_encoder("y", probes=2)
    group = Group(torch.tensor([1.0]))
    with pytest.raises(InputError, match="another rank"):
        attach_training_probes(asked, good, group)
    assert group.calls == 1
    group = Group(torch.tensor([0.0]))
    with pytest.raises(InputError, match="bad.onnx"):
        attach_training_probes(asked, bad, group)
    assert group.calls == 1                                  # it took part before raising
    assert attach_training_probes(asked, good, Group(torch.tensor([0.0]))).features.probes == 2
    notes = []                                               # default probes: dropped on every rank instead
    cfg = attach_training_probes(TrainConfig.for_encoder("y"), good, Group(torch.tensor([1.0])), notes.append)
    assert cfg.features.probes == 0 and "another rank" in notes[0]


def test_attach_all_reports_progress_per_network(tmp_path):
    """Probing runs every model once per probe: ``advance`` ticks once per entry (a progress bar for large
    zoos), shard placeholders (``None``) included so a bar reaches its total."""
    from nngraph.learn.probes import attach_all
    mlp(tmp_path / "m.onnx", 0)
    ticks = []
    attach_all([nngraph.convert(tmp_path / "m.onnx"), None], [tmp_path / "m.onnx", None], 2,
               advance=lambda: ticks.append(1))
    assert len(ticks) == 2


def test_default_probes_skip_networks_that_training_streams(tmp_path, monkeypatch):
    """Default probes run only on networks below the streaming size (probing runs a model k times);
    explicit probes run on any."""
    from types import SimpleNamespace
    from nngraph.learn import train as train_module
    from nngraph.learn.train import TrainConfig, attach_training_probes
    mlp(tmp_path / "m.onnx", 0)
    entries = [SimpleNamespace(graph=nngraph.convert(tmp_path / "m.onnx"), path=tmp_path / "m.onnx")]
    monkeypatch.setattr(train_module, "STREAM_EDGES", entries[0].graph.num_edges)
    notes = []
    cfg = attach_training_probes(TrainConfig.for_encoder("y"), entries, note=notes.append)
    assert cfg.features.probes == 0 and len(notes) == 1 and "m.onnx has" in notes[0] and "--probes N" in notes[0]
    assert "probe" not in next(iter(entries[0].graph.sets.values())).arrays
    cfg = attach_training_probes(TrainConfig.for_encoder("y", probes=3), entries, note=notes.append)
    assert cfg.features.probes == 3 and len(notes) == 1
    assert next(iter(entries[0].graph.sets.values())).arrays["probe"].data.shape[1] == 3


def test_probing_reuses_a_small_models_session_until_the_file_changes(tmp_path):
    from nngraph.adapters.onnx.runtime import reused_session
    path = tmp_path / "m.onnx"
    mlp(path, 0)
    first = reused_session(path)
    assert reused_session(path) is first and reused_session(tmp_path / "." / "m.onnx") is first
    mlp(tmp_path / "n.onnx", 1)
    (tmp_path / "n.onnx").replace(path)                    # another model under the same name
    assert reused_session(path) is not first
    big = tmp_path / "ext.onnx"                             # weights in a side file: never kept
    onnx.save(onnx.load(str(path)), str(big), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    assert reused_session(big) is not reused_session(big)
