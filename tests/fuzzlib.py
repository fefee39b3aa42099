"""Malformed and hostile inputs for the ``ngraph`` CLI, and the properties every run must keep.

Used by ``tests/test_fuzz.py`` (a fixed-seed subset in CI) and ``benchmarks/fuzz.py`` (longer runs).
Families: byte-level mutations of ONNX / safetensors / ``.ngraph`` / ``.pt`` files, structural
edits of the safetensors and ``.ngraph`` JSON headers, protobuf-level ONNX edits (dims, data
types, attribute types, op types, opsets, external data that tries to leave the folder), hostile
pickles, and ``ngraph convert`` killed with SIGKILL mid-write.

Every case checks: exit code 0–4, at most one line on stderr and no traceback, no "internal
error", nothing written except the output path (no temporary files left, nothing in the cwd or
beside the input), a valid output when the exit code is 0, no code run by unpickling, and no hang.
"""
from __future__ import annotations

import json
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
MARKER = "PWNED-by-unpickling"
CASE_SECONDS = 60
EXIT_CODES: Counter = Counter()      # (family-less) tally of exit codes, for reports


# ------------------------------------------------------------------------------ seeds
def make_seeds(folder: Path) -> dict[str, Path]:
    """Small valid inputs of every format, written into ``folder``."""
    from nngraph import convert, save

    folder.mkdir(parents=True, exist_ok=True)
    seeds = {"onnx": folder / "mlp.onnx", "conv": folder / "convs.onnx",
             "safetensors": folder / "mlp.safetensors", "ngraph": folder / "mlp.ngraph"}
    shutil.copy(ROOT / "examples" / "mlp.onnx", seeds["onnx"])
    shutil.copy(ROOT / "tests" / "fixtures" / "torch" / "convs_torchscript.onnx", seeds["conv"])
    for name, rel in (("lstm", "torch/lstm_torchscript.onnx"), ("bert", "hf/bert_ortopt.onnx"),
                      ("resnet", "hf/resnet_torchscript.onnx"), ("qdq", "quant/resnet_qdq.onnx")):
        seeds[name] = folder / f"{name}.onnx"
        shutil.copy(ROOT / "tests" / "fixtures" / rel, seeds[name])
    shutil.copy(ROOT / "tests" / "fixtures" / "safetensors" / "chain" / "mlp.safetensors", seeds["safetensors"])
    save(convert(seeds["onnx"]), seeds["ngraph"])
    seeds["hf"] = folder / "gpt2"           # a safetensors checkpoint with a Hugging Face config.json
    shutil.copytree(ROOT / "tests" / "fixtures" / "safetensors" / "gpt2", seeds["hf"], dirs_exist_ok=True)
    seeds["npz"] = folder / "inputs.npz"
    np.savez(seeds["npz"], pixels=np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32))
    try:
        import torch
    except ImportError:
        return seeds
    g = torch.Generator().manual_seed(0)
    state = {"0.weight": torch.randn(8, 4, generator=g), "0.bias": torch.randn(8, generator=g),
             "2.weight": torch.randn(3, 8, generator=g), "2.bias": torch.randn(3, generator=g)}
    seeds["pt"] = folder / "mlp.pt"
    torch.save(state, seeds["pt"])
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    seeds["pt2"] = folder / "mlp.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(2, 4),)), str(seeds["pt2"]))
    return seeds


# ------------------------------------------------------------------------------ byte mutations
def mutate_bytes(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    b = bytearray(data)
    kind = rng.choice(["flip", "overwrite", "truncate", "insert", "zero", "duplicate"])
    n = len(b)
    if kind == "flip":
        for _ in range(int(rng.integers(1, 16))):
            i = int(rng.integers(0, n))
            b[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == "overwrite":
        i = int(rng.integers(0, n))
        span = rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        b[i:i + len(span)] = span
    elif kind == "truncate":
        b = b[:int(rng.integers(0, n))]
    elif kind == "insert":
        i = int(rng.integers(0, n))
        b[i:i] = rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == "zero":
        i, span = int(rng.integers(0, n)), int(rng.integers(1, 256))
        b[i:i + span] = bytes(len(b[i:i + span]))
    else:
        i, j = sorted(int(x) for x in rng.integers(0, n, size=2))
        b[j:j] = b[i:j][:4096]
    return str(kind), bytes(b)


# ------------------------------------------------------------------------------ header mutations
def _split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join_safetensors(header, body: bytes) -> bytes:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + body


_HOSTILE_VALUES = [None, -1, 2 ** 63, 2 ** 64 + 7, 1.5, "x", [], {}, [1, 2, 3], True, float("nan"), "F32", [0], "L0"]


def _random_path(doc, rng, max_depth=6):
    """A random (container, key) inside ``doc``."""
    node, parent, key = doc, None, None
    for _ in range(int(rng.integers(1, max_depth))):
        if isinstance(node, dict) and node:
            k = list(node)[int(rng.integers(0, len(node)))]
        elif isinstance(node, list) and node:
            k = int(rng.integers(0, len(node)))
        else:
            break
        parent, key, node = node, k, node[k]
    return parent, key


def mutate_json(doc, rng: np.random.Generator) -> str:
    parent, key = _random_path(doc, rng)
    if parent is None:
        return "none"
    kind = rng.choice(["delete", "retype", "deep", "huge"])
    if kind == "delete" and isinstance(parent, dict):
        del parent[key]
    elif kind == "deep":
        parent[key] = _deep(int(rng.integers(40, 3000)))
    elif kind == "huge":
        parent[key] = [2 ** 62, 2 ** 62] if rng.random() < 0.5 else 10 ** 30
    else:
        parent[key] = _HOSTILE_VALUES[int(rng.integers(0, len(_HOSTILE_VALUES)))]
    return str(kind)


def _deep(depth: int):
    v: object = 1
    for _ in range(min(depth, 900)):     # json.dumps itself recurses: stay under its limit
        v = [v]
    return v


def mutate_safetensors_header(data: bytes, rng: np.random.Generator, ngraph: bool) -> tuple[str, bytes]:
    header, body = _split_safetensors(data)
    if rng.random() < 0.1:              # raw hostile header text
        raw = [b"[" * 5000 + b"]" * 5000, b"[]", b"null", b"\"s\"", b"{\"a\":", b"\xff\xfe", b"{" * 100000][
            int(rng.integers(0, 7))]
        return "raw", _join_safetensors(raw, body)
    if ngraph and rng.random() < 0.7:   # the structure document inside __metadata__
        doc = json.loads(header["__metadata__"]["nngraph"])
        kind = mutate_json(doc, rng)
        header["__metadata__"]["nngraph"] = json.dumps(doc)
        return f"doc-{kind}", _join_safetensors(header, body)
    kind = mutate_json(header, rng)
    return f"table-{kind}", _join_safetensors(header, body)


# ------------------------------------------------------------------------------ ONNX protobuf edits
_OPS = ["Gemm", "MatMul", "Relu", "Conv", "Add", "Reshape", "Transpose", "Concat", "Gather", "Softmax",
        "LSTM", "If", "Loop", "ConstantOfShape", "Frobnicate", "BatchNormalization", "Attention", "Einsum"]


def mutate_onnx(model: onnx.ModelProto, folder: Path, rng: np.random.Generator) -> str:
    g = model.graph
    kind = str(rng.choice(["dims", "dtype", "raw", "attr_type", "attr_value", "op", "input", "opset",
                           "external", "duplicate", "cycle", "output"]))
    inits = list(g.initializer)
    t = inits[int(rng.integers(0, len(inits)))] if inits else None
    node = g.node[int(rng.integers(0, len(g.node)))] if len(g.node) else None
    if kind == "dims" and t is not None:
        dims = list(t.dims)
        choice = int(rng.integers(0, 4))
        if choice == 0 and dims:
            dims[int(rng.integers(0, len(dims)))] = int(rng.choice([0, 2 ** 40, 2 ** 62, 3]))
        elif choice == 1:
            dims.append(int(rng.integers(1, 5)))
        elif choice == 2:
            dims = dims[:-1]
        else:
            dims = [int(-rng.integers(1, 5))] + dims[1:]
        t.ClearField("dims")
        t.dims.extend(dims)
    elif kind == "dtype" and t is not None:
        t.data_type = int(rng.integers(0, 26))
    elif kind == "raw" and t is not None and t.HasField("raw_data"):
        t.raw_data = t.raw_data[:int(rng.integers(0, len(t.raw_data) + 1))] + bytes(int(rng.integers(0, 9)))
    elif kind in ("attr_type", "attr_value") and node is not None and node.attribute:
        a = node.attribute[int(rng.integers(0, len(node.attribute)))]
        if kind == "attr_type":
            a.type = int(rng.choice([v for v in AttributeProto.AttributeType.values() if v != a.type]))
        else:
            new = [helper.make_attribute(a.name, 1.5), helper.make_attribute(a.name, "str"),
                   helper.make_attribute(a.name, [1, 2, 3]), helper.make_attribute(a.name, -(2 ** 62)),
                   helper.make_attribute(a.name, [0.5, 2.5])][int(rng.integers(0, 5))]
            a.CopyFrom(new)
    elif kind == "op" and node is not None:
        node.op_type = str(rng.choice(_OPS))
        if rng.random() < 0.3:
            node.domain = str(rng.choice(["com.microsoft", "ai.onnx.ml", "x.y"]))
    elif kind == "input" and node is not None and node.input:
        i = int(rng.integers(0, len(node.input)))
        node.input[i] = str(rng.choice(["", "nonexistent", node.output[0] if node.output else "z"]))
    elif kind == "opset":
        model.opset_import[0].version = int(rng.choice([0, 1, 6, 999, -3]))
    elif kind == "external" and t is not None:
        _make_external(t, folder, rng)
    elif kind == "duplicate" and node is not None:
        g.node.append(node)
    elif kind == "cycle" and node is not None and len(g.node) > 1:
        g.node[0].input.append(g.node[-1].output[0])
    elif kind == "output" and len(g.output):
        g.output[0].name = str(rng.choice(["", "nothing", g.input[0].name if g.input else "x"]))
    return kind


def _make_external(t: TensorProto, folder: Path, rng: np.random.Generator) -> None:
    data = bytes(t.raw_data) if t.HasField("raw_data") else np.asarray(t.float_data, np.float32).tobytes()
    (folder / "weights.bin").write_bytes(bytes(16) + data)
    outside = folder.parent / f"outside-{folder.name}.bin"
    location = str(rng.choice(["weights.bin", "../" + outside.name, str(outside), "sub/../../x.bin",
                               "link.bin", "missing.bin", ""]))
    if location == "link.bin":
        outside.write_bytes(bytes(len(data) + 16))
        (folder / "link.bin").unlink(missing_ok=True)
        (folder / "link.bin").symlink_to(outside)
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    offset = str(rng.choice(["16", "0", "abc", "-8", str(2 ** 63), "1e3", ""]))
    length = str(rng.choice([str(len(data)), "", "x", "-1", str(2 ** 40)]))
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        if v or rng.random() < 0.5:
            t.external_data.add(key=k, value=v)


# ------------------------------------------------------------------------------ hostile pickles
class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_pickles(folder: Path, pt2: Path | None = None) -> list[Path]:
    """Files whose unpickling would create ``folder/MARKER``: a torch-style zip checkpoint, a
    legacy pickle named .pt, a Lightning-style .ckpt, and .pt2 archives whose sample inputs are
    such a pickle (a real exported program's, when ``pt2`` is given)."""
    marker = folder / MARKER
    payload = pickle.dumps({"w": _Payload(marker)}, protocol=2)
    out = []
    zpath = folder / "evil.pt"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")
        z.writestr("archive/byteorder", "little")
    out.append(zpath)
    legacy = folder / "legacy.pt"
    legacy.write_bytes(payload)
    out.append(legacy)
    ckpt = folder / "evil.ckpt"
    with zipfile.ZipFile(ckpt, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"state_dict": _Payload(marker)}, protocol=2))
    out.append(ckpt)
    template, pt2 = pt2, folder / "evil.pt2"
    with zipfile.ZipFile(pt2, "w") as z:
        z.writestr("m/archive_format", "pt2")
        z.writestr("m/archive_version", "0")
        z.writestr("m/models/model.json", "{}")
        z.writestr("m/data/sample_inputs/model.pt", payload)
    out.append(pt2)
    if template is not None:
        real = folder / "evil_real.pt2"
        with zipfile.ZipFile(template) as src, zipfile.ZipFile(real, "w") as dst:
            for name in src.namelist():
                dst.writestr(name, payload if "sample_inputs" in name else src.read(name))
        out.append(real)
    return out


# ------------------------------------------------------------------------------ running
class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def run_case(path: Path, command: str, work: Path, model: Path | None = None) -> list[str]:
    """Run one CLI command in-process on ``path``; the list of broken properties (empty: fine)."""
    from inproc import run_cli
    from nngraph import load

    out_dir, cwd = work / "out", work / "cwd"
    for d in (out_dir, cwd):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    inputs_before = sorted(p.name for p in path.parent.iterdir())
    output = out_dir / "result.ngraph"
    args = {"convert": ("convert", path, "-o", output), "info": ("info", path),
            "verify": ("verify", path, "--trials", "1"),
            "inputs": ("convert", model, "--inputs", path, "-o", output),
            "verify-inputs": ("verify", model, "--inputs", path, "--trials", "1")}[command]
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        r = run_cli(*args, cwd=cwd)
    except Hang:
        return [f"no answer in {CASE_SECONDS} s"]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    EXIT_CODES[r.returncode] += 1
    problems = []
    if not 0 <= r.returncode <= 4 or r.returncode == 1 and not command.startswith("verify"):
        problems.append(f"exit code {r.returncode}")     # 1: a failed check (verify's), else an internal error
    lines = r.stderr.strip().splitlines()
    if len(lines) > 1 or "Traceback" in r.stderr:
        problems.append(f"{len(lines)} lines on stderr: {r.stderr.strip()[:300]!r}")
    if "internal error" in r.stderr:
        problems.append(f"internal error: {r.stderr.strip()[:300]}")
    if sorted(p.name for p in out_dir.iterdir()) not in ([], ["result.ngraph"]):
        problems.append(f"wrote {sorted(p.name for p in out_dir.iterdir())} in the output folder")
    if list(cwd.iterdir()):
        problems.append(f"wrote {sorted(p.name for p in cwd.iterdir())} in the cwd")
    if sorted(p.name for p in path.parent.iterdir()) != inputs_before:
        problems.append("changed the input's folder")
    if (path.parent / MARKER).exists() or (cwd / MARKER).exists():
        problems.append("UNPICKLED: code ran while loading")
    if command in ("convert", "inputs") and r.returncode == 0:
        if not output.exists():
            problems.append("exit 0 without an output")
        else:
            try:
                load(output)
            except Exception as e:  # noqa: BLE001
                problems.append(f"output does not load: {e}")
    return [f"{command} {path.name}: {p}" for p in problems]


def generate(family: str, seeds: dict[str, Path], folder: Path, count: int, seed: int):
    """Yield (case name, input path, command) for ``count`` mutants of one family."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        case_dir = folder / f"{family}-{i}"
        shutil.rmtree(case_dir, ignore_errors=True)
        case_dir.mkdir(parents=True)
        if family in ("onnx-proto", "onnx-external"):
            pool = [seeds[k] for k in ("onnx", "conv", "lstm", "bert", "resnet", "qdq")]
            src = seeds["onnx"] if rng.random() < 0.5 else pool[int(rng.integers(0, len(pool)))]
            model = onnx.load(str(src))
            if family == "onnx-external":
                inits = [t for t in model.graph.initializer if t.HasField("raw_data")]
                _make_external(inits[int(rng.integers(0, len(inits)))], case_dir, rng)
                kinds = ["external"]
            else:
                kinds = [mutate_onnx(model, case_dir, rng) for _ in range(int(rng.integers(1, 3)))]
            path = case_dir / "model.onnx"
            path.write_bytes(model.SerializeToString())
            yield f"{family}-{i}:{'+'.join(kinds)}", path, "verify" if rng.random() < 0.25 else "convert"
            continue
        if family == "config-json":
            for f in seeds["hf"].iterdir():
                shutil.copy(f, case_dir / f.name)
            cfg = json.loads((seeds["hf"] / "config.json").read_text())
            kinds = [mutate_json(cfg, rng) for _ in range(int(rng.integers(1, 3)))]
            (case_dir / "config.json").write_text(json.dumps(cfg))
            yield f"{family}-{i}:{'+'.join(kinds)}", case_dir / "model.safetensors", "convert"
            continue
        if family == "pickle":
            paths = hostile_pickles(case_dir, seeds.get("pt2"))
            yield f"{family}-{i}", paths[i % len(paths)], "verify" if i % 2 else "convert"
            continue
        if family == "onnx-bytes" and rng.random() < 0.3:
            src = seeds[str(rng.choice(["conv", "lstm", "bert", "resnet", "qdq"]))]
        else:
            src = seeds[{"onnx-bytes": "onnx", "safetensors-bytes": "safetensors", "ngraph-bytes": "ngraph",
                             "pt-bytes": "pt", "safetensors-header": "safetensors", "ngraph-header": "ngraph",
                         "npz-bytes": "npz"}[family]]
        data = src.read_bytes()
        if family.endswith("-header"):
            kind, data = mutate_safetensors_header(data, rng, ngraph=family.startswith("ngraph"))
        else:
            kind, data = mutate_bytes(data, rng)
        path = case_dir / src.name
        path.write_bytes(data)
        command = ("info" if rng.random() < 0.5 else "convert") if src.suffix == ".ngraph" else "convert"
        if src.suffix == ".npz":
            command = "inputs" if rng.random() < 0.7 else "verify-inputs"
        if command == "convert" and src.suffix == ".ngraph":
            command = "load"
        yield f"{family}-{i}:{kind}", path, command


def run_family(family: str, seeds: dict[str, Path], folder: Path, count: int, seed: int) -> tuple[int, list[str]]:
    """Run ``count`` cases; (cases run, problems)."""
    from nngraph import load
    from nngraph.errors import NNGraphError

    problems, n = [], 0
    for name, path, command in generate(family, seeds, folder, count, seed):
        n += 1
        if command == "load":          # the Python API on an .ngraph: typed error or a valid graph
            try:
                load(path)
            except NNGraphError:
                pass
            except Exception as e:  # noqa: BLE001
                problems.append(f"{name}: load raised {type(e).__name__}: {str(e)[:200]}")
            continue
        problems += [f"{name}: {p}" for p in run_case(path, command, folder / "work", seeds["onnx"])]
    return n, problems


# ------------------------------------------------------------------------------ SIGKILL
def sigkill_convert(model: Path, folder: Path, delays: list[float]) -> list[str]:
    """Kill ``ngraph convert`` after each delay: the output must be absent or complete and valid."""
    from nngraph import load

    problems = []
    for i, delay in enumerate(delays):
        out_dir = folder / f"kill-{i}"
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        out = out_dir / "m.ngraph"
        p = subprocess.Popen([sys.executable, "-m", "nngraph.cli", "convert", str(model), "-o", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        if out.exists():
            try:
                load(out)
            except Exception as e:  # noqa: BLE001
                problems.append(f"killed after {delay:.2f} s: a partial output ({e})")
        stray = [q.name for q in out_dir.iterdir() if q.name != "m.ngraph" and not
                 (q.name.startswith(".m.ngraph.") and q.name.endswith(".tmp"))]
        if stray:
            problems.append(f"killed after {delay:.2f} s: unexpected files {stray}")
    return problems


FAMILIES = ["onnx-bytes", "onnx-proto", "onnx-external", "safetensors-bytes", "safetensors-header", "ngraph-bytes",
            "ngraph-header", "pt-bytes", "pickle", "npz-bytes", "config-json"]
