"""Conformance tests a third-party plugin subclasses to prove it behaves like a built-in:
``AdapterConformance`` for adapters, ``EncoderConformance`` for graph encoders.

    # test_my_adapter.py
    from nngraph.testing import AdapterConformance

    class TestMyAdapter(AdapterConformance):
        adapter = "myformat"
        def model_paths(self):
            return [Path(__file__).parent / "data" / "tiny.my"]

pytest collects the inherited ``test_*`` methods. Requires pytest.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .api import find_adapter
from .graph.fileformat import load, save
from .graph.symmetry import permute
from .verify import verify


class AdapterConformance:
    """Parameter accounting, exact round trip, save/load, and symmetry (function preserved)."""

    adapter: str = ""
    #: Minimum coverage each model must reach (1.0: every parameter has a place in the graph).
    min_coverage: float = 1.0
    trials: int = 2

    def model_paths(self) -> list[Path]:
        raise NotImplementedError("return the model files to test")

    def _spec(self):
        return find_adapter(".", self.adapter)

    def test_sniff(self):
        spec = self._spec()
        for path in self.model_paths():
            assert spec.sniff(Path(path)), f"{spec.name} does not recognize {path}"

    def test_accounting(self):
        spec = self._spec()
        for path in self.model_paths():
            g = spec.convert(Path(path)).validate()
            assert g.num_parameters > 0, f"{path}: no parameters found"
            assert g.coverage >= self.min_coverage, f"{path}: coverage {g.coverage} < {self.min_coverage}"
            placed = g.mapped_parameters + sum(g.sources[n].size for n in g.unmapped if n in g.sources)
            assert placed == g.num_parameters, f"{path}: parameters neither mapped nor listed as unmapped"

    def test_roundtrip(self):
        spec = self._spec()
        for path in self.model_paths():
            g = spec.convert(Path(path))
            params = g.to_params()
            assert set(params) == set(g.sources) - {n for n, u in g.unmapped.items() if u.data is None}
            if spec.read_params is not None:
                original = spec.read_params(Path(path))
                for name, value in params.items():
                    if name in original:
                        assert original[name].dtype == value.dtype, name
                        assert np.array_equal(original[name], value), f"{path}: {name} does not round-trip"

    def test_save_load(self):
        spec = self._spec()
        for path in self.model_paths():
            g = spec.convert(Path(path))
            with tempfile.TemporaryDirectory() as tmp:
                save(g, Path(tmp) / "g.ngraph")
                h = load(Path(tmp) / "g.ngraph").validate()
                a, b = g.to_params(), h.to_params()
                assert a.keys() == b.keys()
                assert all(np.array_equal(a[k], b[k]) for k in a)
                sym = g.random_symmetry(0)
                pa, pb = permute(g, sym).to_params(), permute(h, sym).to_params()
                assert all(np.array_equal(pa[k], pb[k]) for k in pa)

    def test_symmetry(self):
        spec = self._spec()
        if spec.export is None or spec.run is None:
            import pytest
            pytest.skip(f"adapter {spec.name!r} cannot write or run models")
        for path in self.model_paths():
            report = verify(Path(path), format=spec.name, trials=self.trials)
            assert report.ok, f"{path}: {report.problems}"
            assert any(report.groups_moved), f"{path}: no symmetry moved anything"


def example_graphs(seed: int = 0) -> list:
    """Small graphs with every kind of symmetry: a dense chain with a residual tie, a grouped
    conv, and an attention layer with heads. Random weights; for encoder tests."""
    from .graph.ir import NeuralGraph, Param

    rng = np.random.default_rng(seed)
    out = []
    for width in (5, 7):
        g = NeuralGraph({"producer": "nngraph.testing"})
        g.add_set("x", 4, "input", fixed=True)
        h1 = g.add_set("h1", width, depth=1, activation="relu")
        h1.arrays["bias"] = Param(rng.standard_normal(width).astype(np.float32))
        g.add_block("h1", "x", "h1", "dense", Param(rng.standard_normal((width, 4)).astype(np.float32)))
        g.add_set("h2", width, depth=2, activation="tanh", tie="h1")
        g.add_block("h2", "h1", "h2", "scale", Param(rng.standard_normal(width).astype(np.float32)))
        g.add_set("r", width, "residual", depth=2, tie="h1")
        g.add_block("r/a", "h1", "r", "identity")
        g.add_block("r/b", "h2", "r", "identity")
        g.add_group("heads", 2)
        for name, role, tie in (("q", "query", None), ("k", "key", "q"), ("v", "value", None)):
            g.add_set(name, 6, role, depth=3, tie=tie, parent=None if tie else "heads")
            g.add_block(name, "r", name, "dense", Param(rng.standard_normal((6, width)).astype(np.float32)))
        g.add_set("heads", 2, "head", depth=3, tie="heads")
        g.add_block("qk", "q", "k", "attention")
        g.add_block("q/head", "q", "heads", "head")
        g.add_block("v/head", "v", "heads", "head")
        o = g.add_set("out", 3, "output", depth=4, fixed=True)
        o.arrays["bias"] = Param(rng.standard_normal(3).astype(np.float32))
        g.add_block("out", "v", "out", "dense", Param(rng.standard_normal((3, 6)).astype(np.float32)))
        out.append(g.validate())
    conv = NeuralGraph({"producer": "nngraph.testing"})
    conv.add_group("c/groups", 2)
    conv.add_set("img", 4, "input", fixed=True, parent="c/groups")
    conv.add_set("c", 6, depth=1, activation="relu", parent="c/groups")
    conv.add_block("c", "img", "c", "conv", Param(rng.standard_normal((6, 2, 3, 3)).astype(np.float32)), groups=2)
    conv.add_set("dw", 6, depth=2, tie="c")
    conv.add_block("dw", "c", "dw", "conv", Param(rng.standard_normal((6, 1, 3, 3)).astype(np.float32)), groups=6)
    conv.add_set("y", 2, "output", depth=3, fixed=True)
    conv.add_block("y", "dw", "y", "dense", Param(rng.standard_normal((2, 6, 4)).astype(np.float32)))
    out.append(conv.validate())
    return out


def with_random_probes(graphs: list, k: int = 3, seed: int = 0) -> list:
    """``graphs`` with ``k`` random probe values on every neuron (``learn.probes.PROBE``), as probing a
    runnable model would attach them: for encoder tests of probe features without model files."""
    from .graph.ir import Param
    from .learn.probes import PROBE
    rng = np.random.default_rng(seed)
    for g in graphs:
        for s in g.sets.values():
            s.arrays[PROBE] = Param(rng.standard_normal((s.size, k)).astype(np.float32))
    return graphs


def node_permutation(graph, symmetry) -> np.ndarray:
    """For the permuted graph's node i, the original node it came from."""
    offsets = graph.set_offsets()
    idx = []
    for s in graph.sets.values():
        idx.append(offsets[s.name] + symmetry.perm(s.group, s.size))
    return np.concatenate(idx)


class EncoderConformance:
    """An encoder maps a PyG batch of featurized neural graphs (``nngraph.learn.featurize``) to
    (node embeddings [N, d], graph embeddings [B, d]). It must be invariant (graph level) and equivariant (node level) under every
    symmetry of its input graphs, give the same answer batched and one by one, and run on CPU
    (and CUDA when present). Subclass and set ``encoder`` (the registered name) and ``config``."""

    encoder: str = ""
    config: dict = {}
    atol: float = 1e-4

    def graphs(self) -> list:
        return example_graphs()

    def _model(self, device="cpu"):
        import torch

        from .loader import registry
        torch.manual_seed(0)
        return registry().encoder(self.encoder).factory(**self.config).to(device).eval()

    def _data(self, graph):
        from .learn.featurize import featurize
        return featurize(graph)

    def _run(self, model, graphs, device="cpu"):
        import torch
        from torch_geometric.data import Batch
        batch = Batch.from_data_list([self._data(g) for g in graphs]).to(device)
        with torch.no_grad():
            return model(batch)

    def test_output_shapes(self):
        graphs = self.graphs()
        nodes, pooled = self._run(self._model(), graphs)
        assert nodes.shape[0] == sum(g.num_nodes for g in graphs)
        assert pooled.shape[0] == len(graphs) and pooled.ndim == 2

    def test_symmetry(self):
        model = self._model()
        for g in self.graphs():
            for seed in range(3):
                sym = g.random_symmetry(seed)
                n1, p1 = self._run(model, [g])
                n2, p2 = self._run(model, [g.permute(sym)])
                np.testing.assert_allclose(p2.cpu().numpy(), p1.cpu().numpy(), atol=self.atol, rtol=1e-4)
                np.testing.assert_allclose(n2.cpu().numpy(), n1.cpu().numpy()[node_permutation(g, sym)],
                                           atol=self.atol, rtol=1e-4)

    def test_batched_equals_one_by_one(self):
        import torch
        from torch_geometric.data import Batch

        model = self._model()
        graphs = self.graphs()
        _, pooled = self._run(model, graphs)
        for i, g in enumerate(graphs):
            with torch.no_grad():
                _, one = model(Batch.from_data_list([self._data(g)]))
            np.testing.assert_allclose(pooled[i].numpy(), one[0].numpy(), atol=self.atol, rtol=1e-4)

    def test_cuda(self):
        import pytest
        import torch
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        graphs = self.graphs()
        _, cpu = self._run(self._model(), graphs)
        _, gpu = self._run(self._model("cuda"), graphs, "cuda")
        np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=1e-3, rtol=1e-3)
