"""The learning-benchmark helpers that feed models their inputs: probe features read every neuron's
output in featurize's node order (nngraph.learn.probes, the probes setting of
benchmarks/learning/defaults.py), and the reference NG-GNN gets the same weights nngraph reads
(benchmarks/learning/throughput.py)."""
from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    path = ROOT / "benchmarks" / "learning" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"learning_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod        # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def mlp_file(tmp_path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.zeros(1, 3),), tmp_path / "m.onnx", dynamo=False, input_names=["x"])
    return tmp_path / "m.onnx", m


def test_probe_values_are_each_neurons_output_in_node_order(mlp_file):
    """Probe features (nngraph.learn.probes, used by defaults.py) land in featurize's node order."""
    import nngraph
    from nngraph.learn.probes import attach_probes
    path, m = mlp_file
    g = attach_probes(nngraph.convert(path), path, 3)
    values = nngraph.featurize(g, nngraph.FeatureConfig(probes=3)).x[:, -3:].numpy()
    assert values.shape == (g.num_nodes, 3)
    adapter = nngraph.find_adapter(path)
    x = torch.tensor(np.concatenate([adapter.example_inputs(path, j)["x"] for j in range(3)]))
    offsets = g.set_offsets()
    expected = {"input": x, "hidden": torch.relu(m[0](x)), "output": m(x)}
    for name, s in g.sets.items():
        got = values[offsets[name]:offsets[name] + s.size].T
        np.testing.assert_allclose(got, expected[s.role].detach().numpy(), rtol=1e-5, atol=1e-5)


def test_reference_gets_the_same_weights(mlp_file):
    throughput = _script("throughput")
    path, m = mlp_file
    Ws, bs = throughput.mlp_weights(path)
    for W, b, lin in zip(Ws, bs, (m[0], m[2])):
        np.testing.assert_array_equal(W, lin.weight.detach().numpy().T)     # [in, out]
        np.testing.assert_array_equal(b, lin.bias.detach().numpy())
