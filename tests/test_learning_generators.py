"""The learning benchmark's population generators (benchmarks/learning/make_*.py): a tiny population
is the same for the same seed, differs for another, and every network it writes converts with
coverage 1."""
from __future__ import annotations

import csv
import runpy
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import nngraph  # noqa: E402

HERE = Path(__file__).resolve().parents[1] / "benchmarks" / "learning"
# (script, fast options, label column)
GENERATORS = [("make_freq.py", ["--steps", "5"], "label"), ("make_tasks.py", ["--steps", "5"], "task"),
              ("make_inr.py", ["--steps", "5", "--size", "12"], "label"), ("make_hetero.py", ["--max-epochs", "1"], "test_acc")]


def generate(script: str, out: Path, seed: int, options: list[str]) -> list[dict]:
    argv, path = sys.argv, list(sys.path)
    sys.argv = [script, str(out), "--n", "8", "--seed", str(seed), *options]
    sys.path.insert(0, str(HERE))                  # the generators import make_freq's writer by module name
    try:
        runpy.run_path(str(HERE / script), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = argv, path
    with open(out / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def weights(path: Path) -> list:
    import onnx
    from onnx import numpy_helper
    return [numpy_helper.to_array(t).tolist() for t in onnx.load(str(path)).graph.initializer]


@pytest.mark.parametrize("script,options,label", GENERATORS, ids=[g[0] for g in GENERATORS])
def test_generator_is_deterministic_and_converts(tmp_path, script, options, label):
    a = generate(script, tmp_path / "a", 0, options)
    b = generate(script, tmp_path / "b", 0, options)
    c = generate(script, tmp_path / "c", 1, options)
    assert len(a) == 8 and {r["split"] for r in a} == {"train", "test"} and all(r[label] != "" for r in a)
    assert a == b
    assert [weights(tmp_path / "a" / r["model"]) for r in a] == [weights(tmp_path / "b" / r["model"]) for r in b]
    assert [weights(tmp_path / "a" / r["model"]) for r in a] != [weights(tmp_path / "c" / r["model"]) for r in c]
    for r in a:
        g = nngraph.convert(tmp_path / "a" / r["model"])
        assert g.coverage == 1.0, (r["model"], g.coverage)
        assert g.num_edges > 0


def run_table(capsys, *paths) -> str:
    """What ``table.py PATHS…`` prints."""
    argv = sys.argv
    sys.argv = ["table.py", *map(str, paths)]
    try:
        runpy.run_path(str(HERE / "table.py"), run_name="__main__")
    finally:
        sys.argv = argv
    return capsys.readouterr().out


def test_table_names_override_rows_and_keeps_them_out_of_the_goals(tmp_path, capsys):
    """Results of one population joined from several files: rows run with ``--set`` overrides are
    listed under their overrides, and the goal check reads only the default rows."""
    import json
    row = lambda m, t: {"method": m, "seeds": 3, "train": 0.5, "train_std": 0, "test": t, "test_std": 0,  # noqa: E731
                        "graphs_per_s": 1, "peak_rss_mib": 1}
    base = {"name": "zoo", "target": "test_acc", "task": "regression", "metric": "kendall_tau", "n_train": 8,
            "n_test": 2, "epochs": 1}
    (tmp_path / "a.json").write_text(json.dumps({**base, "overrides": {}, "rows": [row("ng-gnn", 0.3), row("stats+gbt", 0.2)]}))
    (tmp_path / "b.json").write_text(json.dumps({**base, "overrides": {"sum_scaler": "log"}, "rows": [row("ng-gnn", 0.9)]}))
    out = run_table(capsys, tmp_path / "a.json", tmp_path / "b.json")
    assert "| ng-gnn [sum_scaler=log] | 0.500 ± 0.000 | 0.900 ± 0.000 |" in out
    assert "(b) zoo: τ ≥ stats+gbt + 0.15 = 0.350 — ng-gnn 0.300: NOT met" in out
    assert "best of 1 configured run (chosen on this test split) ng-gnn [sum_scaler=log] 0.900: MET (+0.550)" in out


def test_table_checks_original_zoos_and_ignores_configured_baselines(tmp_path, capsys):
    """zoo_original gets its own goal line; a tagged baseline row is never reported as a configured
    encoder run; a table whose rows have different seed counts says so in its header."""
    import json
    row = lambda m, t, n=3: {"method": m, "seeds": n, "train": 0.5, "train_std": 0, "test": t, "test_std": 0,  # noqa: E731
                             "graphs_per_s": 1, "peak_rss_mib": 1}
    base = {"target": "test_acc", "task": "regression", "metric": "kendall_tau", "n_train": 8, "n_test": 2, "epochs": 1}
    (tmp_path / "a.json").write_text(json.dumps({**base, "name": "zoo_original", "overrides": {},
                                                 "rows": [row("ng-gnn", 0.6, 6), row("stats+gbt", 0.3), row("deepsets", 0.4)]}))
    (tmp_path / "b.json").write_text(json.dumps({**base, "name": "zoo_original", "overrides": {"probes": 8},
                                                 "rows": [row("stats+gbt", 0.99)]}))
    (tmp_path / "c.json").write_text(json.dumps({**base, "name": "zoo_s2", "overrides": {},
                                                 "rows": [row("ng-gnn", 0.5), row("stats+gbt", 0.4)]}))
    out = run_table(capsys, tmp_path / "a.json", tmp_path / "b.json")
    assert "(b) zoo_original: τ ≥ stats+gbt + 0.15 = 0.450 — ng-gnn 0.600: MET (+0.150); best encoder ng-gnn" in out
    assert "configured run" not in out and "zoo_s2" not in out
    out = run_table(capsys, tmp_path / "a.json", tmp_path / "c.json")           # the replicate zoo, when given
    assert "(b) zoo_s2: τ ≥ stats+gbt + 0.15 = 0.550 — ng-gnn 0.500: NOT met (-0.050)" in out
    assert "3 seeds (ng-gnn: 6)" in out


def test_table_pools_goal_b_over_the_zoo_recipes_populations(tmp_path, capsys):
    """Goal (b) over zoo and its replicates: τ averaged with each population's test networks as weights,
    for the default encoder and stats+gbt; nothing pooled from one population alone."""
    import json
    row = lambda m, t: {"method": m, "seeds": 3, "train": 0.5, "train_std": 0, "test": t, "test_std": 0,  # noqa: E731
                        "graphs_per_s": 1, "peak_rss_mib": 1}
    base = {"target": "test_acc", "task": "regression", "metric": "kendall_tau", "n_train": 8, "epochs": 1,
            "overrides": {}}
    (tmp_path / "a.json").write_text(json.dumps({**base, "name": "zoo", "n_test": 40,
                                                 "rows": [row("ng-gnn", 0.8), row("stats+gbt", 0.7)]}))
    (tmp_path / "b.json").write_text(json.dumps({**base, "name": "zoo_s3", "n_test": 120,
                                                 "rows": [row("ng-gnn", 0.6), row("stats+gbt", 0.4)]}))
    out = run_table(capsys, tmp_path / "a.json")
    assert "pooled" not in out
    out = run_table(capsys, tmp_path / "a.json", tmp_path / "b.json")
    # ng-gnn (40·0.8 + 120·0.6)/160 = 0.650; bar (40·0.7 + 120·0.4)/160 + 0.15 = 0.625
    assert "(b) pooled over zoo, zoo_s3 (160 test networks, τ weighted by them): τ ≥ stats+gbt + 0.15 = 0.625 " \
           "— ng-gnn 0.650: MET (+0.025)" in out
