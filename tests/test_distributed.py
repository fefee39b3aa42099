"""``ngraph train`` under torchrun: 2 CPU processes on gloo give the 1-process result, rank 0 alone writes,
a zoo converted in shards on separate "machines" trains to the same weights, and a bad environment is a
one-line error."""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")
pytest.importorskip("scipy")
onnx = pytest.importorskip("onnx")

from inproc import run_cli  # noqa: E402

# --pool-norm none: "auto" is the batch norm in one process and none under torchrun (each rank would
# standardize by its part of a batch), so runs compared across process counts pin it
ARGS = ("--target", "rms", "--encoder", "ng-gnn", "--hidden", "8", "--layers", "1", "--epochs", "3",
        "--batch-size", "4", "--pool-norm", "none", "--device", "cpu", "--threads", "1", "--json")
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def mlp_onnx(path: Path, rng, width: int, act: str, scale: float) -> float:
    """A 5 → width → 3 MLP written with onnx.helper (no exporter: milliseconds); returns its first layer's RMS."""
    from onnx import TensorProto, helper, numpy_helper
    w1 = (scale * rng.standard_normal((width, 5))).astype(np.float32)
    w2 = rng.standard_normal((3, width)).astype(np.float32)
    b1 = rng.standard_normal(width).astype(np.float32)
    b2 = np.zeros(3, np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu" if act == "relu" else "Tanh", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return float(np.sqrt((w1 ** 2).mean()))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """17 MLPs: 11 train (uneven shards of 6 and 5), 3 val, 3 test, and one broken file in the train split."""
    root = tmp_path_factory.mktemp("dzoo") / "zoo"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(17):
        split = "train" if i < 11 else "val" if i < 14 else "test"
        rms = mlp_onnx(root / f"m{i}.onnx", rng, int(rng.integers(3, 7)), "relu" if i % 2 else "tanh",
                       float(rng.uniform(0.5, 2.0)))
        rows.append({"model": f"m{i}.onnx", "split": split, "rms": rms})
    rows.insert(4, {"model": "broken.onnx", "split": "train", "rms": 0.0})
    (root / "broken.onnx").write_bytes(b"not a model")
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def single(zoo, tmp_path_factory):
    """The same training in one process: (JSON lines, checkpoint)."""
    ckpt = tmp_path_factory.mktemp("single") / "c.safetensors"
    r = run_cli("train", zoo, *ARGS, "-o", ckpt)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()], ckpt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    return dict(env, OMP_NUM_THREADS="1", **extra)


def torchrun(*args, port: int) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 -m nngraph.cli ARGS`` on this machine."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "nngraph.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=300)


def load_state(path):
    from safetensors.torch import load_file
    return load_file(str(path))


def assert_same_training(lines_a, lines_b, ckpt_a, ckpt_b):
    """Same epochs, losses and metrics, and the same weights to float rounding of the reductions. Measured
    over the 36,399 weights: no |Δ| above 1e-4 (the largest 6e-5, where Adam divides a near-zero gradient by
    its own size), mean 2e-8; an unweighted uneven shard or per-rank input scales put 8 % / 5 % of them
    above 1e-4 (mean 8e-5 / 5e-5). Kendall's τ is compared loosely: a 1e-7 change can reorder a near tie."""
    assert [d["epoch"] for d in lines_a[:-1]] == [d["epoch"] for d in lines_b[:-1]] == [1, 2, 3]
    for a, b in zip(lines_a[:-1], lines_b[:-1]):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=2e-4, abs=0.1 if "kendall" in k else 1e-5), (k, a, b)
    sa, sb = load_state(ckpt_a), load_state(ckpt_b)
    assert sa.keys() == sb.keys()
    diff = torch.cat([(sa[k] - sb[k]).abs().flatten() for k in sa])
    far = float((diff > 1e-4).float().mean())
    assert far < 0.005 and diff.mean() < 5e-6, (far, float(diff.mean()), float(diff.max()))


def test_two_processes_equal_one(zoo, single, tmp_path):
    """Global batches are drawn as in one process and split by shard, each rank's loss weighted by its share
    of the batch: the 2-rank run trains to the 1-rank weights and reports the same history. Any unsynchronised
    gradient, per-rank input scaling or target normalisation, mis-weighted uneven shard, or per-rank metric
    breaks the equality."""
    two = tmp_path / "two" / "c.safetensors"
    two.parent.mkdir()
    r2 = torchrun("train", zoo, *ARGS, "-o", two, port=free_port())
    assert r2.returncode == 0, r2.stderr[-3000:]
    lines = [json.loads(line) for line in r2.stdout.splitlines()]     # rank 0 alone prints: 3 epochs + summary
    assert len(lines) == 4 and lines[-1]["processes"] == 2 and lines[-1]["skipped"] == 1
    assert "broken.onnx" in r2.stderr and r2.stderr.count("skipped broken.onnx") == 1
    assert sorted(p.name for p in two.parent.iterdir()) == ["c.png", "c.safetensors"]   # one writer, no leftovers
    assert_same_training(single[0], lines, single[1], two)
    r = run_cli("evaluate", two, zoo, "--split", "test", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 3


def test_shards_on_separate_machines(zoo, single, tmp_path):
    """Two "machines" (processes with torchrun's variables and their own folders) each hold labels.csv and
    only their shard's files, converted beforehand with ``ngraph prepare --shard``: they train as one process."""
    for node in (0, 1):
        folder = tmp_path / f"node{node}" / "zoo"
        folder.mkdir(parents=True)
        r = run_cli("prepare", zoo, "--shard", f"{node}/2", "--list")
        assert r.returncode == 0, r.stderr
        names = r.stdout.split()
        assert 8 <= len(names) <= 10 and "labels.csv" not in names, names  # 18 rows: 12 train, 3 val, 3 test
        for name in ["labels.csv", *names]:
            shutil.copy2(zoo / name, folder / name)
        r = run_cli("prepare", folder, "--shard", f"{node}/2", "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["models"] == len(names) - (1 if "broken.onnx" in names else 0) and doc["shard"] == f"{node}/2", doc
        assert len(list((folder / ".nngraph-cache").glob("*.ngraph"))) == doc["models"]
    # the other shard's files are absent: preparing it here reports them, it does not convert anything
    r = run_cli("prepare", tmp_path / "node0" / "zoo", "--shard", "1/2", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["models"] == 0, r.stdout + r.stderr
    # what torchrun --nnodes 2 --nproc-per-node 1 gives each machine's process (without its agents: half the start-up)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "nngraph.cli", "train", "zoo", *ARGS,
                               "-o", str(tmp_path / f"out{node}.safetensors")], cwd=tmp_path / f"node{node}",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=clean_env(RANK=str(node), WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port)) for node in (0, 1)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert (tmp_path / "out0.safetensors").is_file() and not (tmp_path / "out1.safetensors").exists()
    assert results[1][0] == "", results[1][0]                           # rank 1 prints nothing
    assert_same_training(single[0], [json.loads(line) for line in results[0][0].splitlines()], single[1],
                         tmp_path / "out0.safetensors")


def test_bad_environment(zoo, tmp_path, monkeypatch):
    """torchrun variables partly set: usage error (2); backend missing from the torch build: exit 3. One line."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = run_cli("train", zoo, *ARGS, "-o", tmp_path / "c.safetensors")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "LOCAL_RANK" in r.stderr and "MASTER_ADDR" in r.stderr
    for k, v in {"LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.distributed, "is_gloo_available", lambda: False)
    r = run_cli("train", zoo, *ARGS, "-o", tmp_path / "c.safetensors")
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "gloo" in r.stderr, r.stderr
    monkeypatch.setenv("RANK", "2")
    r = run_cli("train", zoo, *ARGS, "-o", tmp_path / "c.safetensors")
    assert r.returncode == 2 and "RANK=2" in r.stderr, r.stderr
    assert not list(tmp_path.iterdir())


def test_prepare_shards_partition_the_rows(zoo):
    """Every row is in exactly one shard; within each split the shards differ by at most one row."""
    with open(zoo / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    shards = []
    for i in range(3):
        r = run_cli("prepare", zoo, "--shard", f"{i}/3", "--list")
        assert r.returncode == 0, r.stderr
        shards.append(r.stdout.split())
    assert sorted(n for s in shards for n in s) == sorted(row["model"] for row in rows)
    for split in ("train", "val", "test"):
        counts = [sum(1 for n in s if next(r for r in rows if r["model"] == n)["split"] == split) for s in shards]
        assert max(counts) - min(counts) <= 1
    for bad in ("3/3", "x/2", "1", "-1/2"):
        r = run_cli("prepare", zoo, "--shard", bad, "--list")
        assert r.returncode == 2, (bad, r.stderr)


@pytest.mark.parametrize("encoder", ["ng-transformer", "statnn"])
def test_one_rank_group_in_process(zoo, tmp_path, monkeypatch, encoder):
    """The distributed path with one rank (torchrun --nproc-per-node 1) in this process equals plain training
    for encoders that leave parameters unused in a step (ng-transformer's last edge update: DDP must be told)
    and for those that do not."""
    args = [a if a != "ng-gnn" else encoder for a in ARGS]
    r = run_cli("train", zoo, *args, "-o", tmp_path / "plain.safetensors")
    assert r.returncode == 0, r.stderr
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(k, v)
    r1 = run_cli("train", zoo, *args, "-o", tmp_path / "ddp.safetensors")
    assert r1.returncode == 0, r1.stderr
    assert json.loads(r1.stdout.splitlines()[-1])["processes"] == 1
    assert_same_training([json.loads(line) for line in r.stdout.splitlines()],
                         [json.loads(line) for line in r1.stdout.splitlines()],
                         tmp_path / "plain.safetensors", tmp_path / "ddp.safetensors")
