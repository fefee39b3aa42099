"""Conformance tests a third-party plugin subclasses to prove it behaves like a built-in.

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
from .fileformat import load, save
from .symmetry import permute
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
