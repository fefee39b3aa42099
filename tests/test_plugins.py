"""Plugins: a third party's package is discovered through its entry point; broken ones are
reported and skipped; the environment variables block and select plugins."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ngraph
from nngraph.errors import PluginError
from nngraph.loader import registry


def _toy_model(path, rng):
    params = {"W0": rng.standard_normal((5, 3)), "b0": rng.standard_normal(5),
              "W1": rng.standard_normal((2, 5)), "b1": rng.standard_normal(2)}
    with open(path, "wb") as f:
        np.savez(f, **params)
    return path


def test_builtin_adapters_load_as_plugins():
    reg = registry(reload=True)
    onnx = reg.plugin("onnx")
    assert onnx is not None and onnx.status == "active" and onnx.package == "nngraph"
    assert "onnx" in reg.adapters and reg.onnx_rules


def test_third_party_plugin_discovered_and_used(install_plugin, tmp_path, rng):
    env = install_plugin("toy-nngraph", {"toy": "toy_nngraph"})
    reg = registry()
    assert reg.plugin("toy").status == "active" and reg.plugin("toy").package == "toy-nngraph"
    model = _toy_model(tmp_path / "m.npzmlp", rng)

    r = ngraph("plugins", "--json", env=env)
    assert r.returncode == 0, r.stderr
    toy = {p["name"]: p for p in json.loads(r.stdout)}["toy"]
    assert toy["status"] == "active" and toy["provides"] == {"adapters": ["npzmlp"], "encoders": ["toy-sum"]}

    r = ngraph("convert", model, "--json", env=env)        # format sniffed from the plugin
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["format"] == "npzmlp" and doc["coverage"] == 1.0 and doc["nodes"] == 10

    r = ngraph("verify", model, "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["ok"] is True


def test_broken_plugins_are_reported_and_skipped(install_plugin, mlp_onnx, tmp_path):
    env = install_plugin("bad-nngraph", {"broken": "broken_nngraph", "weird": "unknownhook_nngraph",
                                         "clash": "clash_nngraph", "absent": "no_such_module_nngraph"})
    status = {p.name: (p.status, p.error) for p in registry().plugins}
    assert status["broken"][0] == "failed" and "broken on purpose" in status["broken"][1]
    assert status["weird"][0] == "failed" and "nngraph_no_such_hook" in status["weird"][1]
    assert status["clash"][0] == "failed" and "onnx" in status["clash"][1]
    assert status["absent"][0] == "failed" and "No module named" in status["absent"][1]
    assert status["onnx"] == ("active", None)

    r = ngraph("plugins", "--json", env=env)
    assert r.returncode == 0
    assert {p["name"]: p["status"] for p in json.loads(r.stdout)}["broken"] == "failed"
    r = ngraph("convert", mlp_onnx, "-o", tmp_path / "m.ngraph", env=env)   # the CLI still works
    assert r.returncode == 0, r.stderr
    r = ngraph("convert", mlp_onnx, "--format", "broken", env=env)
    assert r.returncode == 3 and "broken on purpose" in r.stderr


def test_disable_and_select_plugins(install_plugin, monkeypatch, tmp_path, rng):
    env = install_plugin("toy-nngraph", {"toy": "toy_nngraph"})
    monkeypatch.setenv("NNGRAPH_DISABLE_PLUGINS", "toy")
    reg = registry(reload=True)
    assert reg.plugin("toy").status == "blocked" and reg.plugin("onnx").status == "active"
    with pytest.raises(PluginError, match="blocked"):
        reg.adapter("toy")

    monkeypatch.setenv("NNGRAPH_DISABLE_PLUGINS", "*")
    monkeypatch.setenv("NNGRAPH_LOAD_PLUGINS", "toy")
    reg = registry(reload=True)
    assert reg.plugin("toy").status == "active" and reg.plugin("onnx").status == "blocked"

    monkeypatch.delenv("NNGRAPH_DISABLE_PLUGINS")
    monkeypatch.setenv("NNGRAPH_LOAD_PLUGINS", "onnx")
    reg = registry(reload=True)
    assert reg.plugin("toy").status == "blocked" and reg.plugin("onnx").status == "active"

    r = ngraph("convert", _toy_model(tmp_path / "m.npzmlp", rng), env=dict(env, NNGRAPH_DISABLE_PLUGINS="toy"))
    assert r.returncode == 4 and "not a model format" in r.stderr
