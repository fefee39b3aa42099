"""Scale benchmark: Hugging Face-layout LLaMA checkpoints with random weights at several sizes.

Each size is written as the Hub ships TinyLlama-1.1B (bf16, shards + ``model.safetensors.index.json``,
grouped-query attention with 4 key/value heads, untied ``lm_head``, config.json), then measured,
each step in a fresh process so peaks do not mix:

* convert: ``nngraph.convert`` + ``save`` of the ``.ngraph`` (time, peak RSS);
* materialize: ``to_coo`` bytes per edge (its arrays, and the tracemalloc peak while building them);
* featurize: ``featurize`` bytes per edge (its edge tensors, and the tracemalloc peak while building
  them; only up to ``--featurize-max-edges``);
* encode: a freshly initialised encoder (``--encoder``, ``--hidden``, ``--layers``; random weights: time
  and memory do not depend on their values) embeds the graph with its streamed forward
  (``nngraph.learn.stream``) — time, CPU time, peak RSS of the process (graph loaded memory-mapped) —
  and, with ``--in-memory``, with the in-memory forward (featurize + forward) for comparison. With
  ``--checkpoint PATH`` (an ``ngraph train`` checkpoint) the graph is embedded as ``ngraph embed``
  does it instead (``nngraph.learn.train.embed``: checkpoint loaded, its feature configuration and
  input scales, streamed above ``STREAM_EDGES``); the time includes loading the checkpoint.
  ``--workers N`` splits each streamed pass among N threads (ng-gnn);
* align: weight matching of the model against a randomly permuted copy of itself held in memory
  (time, peak RSS during the alignment — the peak is reset once the copy is built, see
  ``step_align`` —, RSS at its start, whether the permutation is recovered exactly), and optionally
  against an independent second checkpoint (``--pairs``, both memory-mapped);
* the growth exponent of each measure in the parameter count (least squares on log-log).

    python benchmarks/scale.py                      # sizes tiny,small,medium (a few minutes on 2 cores)
    python benchmarks/scale.py --sizes tinyllama --no-coo --no-align   # TinyLlama-1.1B's configuration (≈2.2 GB written)
    python benchmarks/scale.py --sizes small --json --keep /tmp/ckpts
    python benchmarks/scale.py --sizes nano,micro --no-align --in-memory   # where streaming starts to pay
    python benchmarks/scale.py --sizes tiny --no-align --no-coo --checkpoint acc.safetensors   # a trained encoder
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: TinyLlama-1.1B's configuration and smaller ones of the same shape (head dim 64, 4 kv heads,
#: intermediate ≈ 2.75 × hidden, vocabulary 32000).
SIZES = {
    "nano": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000),
    "micro": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4, vocab_size=4000),
    "tiny": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=2, num_attention_heads=4),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8),
    "medium": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16),
    "align2048": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=4, num_attention_heads=32),
    "tinyllama": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32),
}
DEFAULT_SIZES = ("tiny", "small", "medium")


def llama_config(size: str, vocab: int = 32000) -> dict:
    c = dict(SIZES[size])
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "vocab_size": vocab, "num_key_value_heads": 4, "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
            "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16", **c}


def llama_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a LlamaForCausalLM checkpoint."""
    D, inter, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, G = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = D // H
    out = {"model.embed_tokens.weight": (V, D)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (D,), p + "self_attn.q_proj.weight": (H * d, D),
                    p + "self_attn.k_proj.weight": (G * d, D), p + "self_attn.v_proj.weight": (G * d, D),
                    p + "self_attn.o_proj.weight": (D, H * d), p + "post_attention_layernorm.weight": (D,),
                    p + "mlp.gate_proj.weight": (inter, D), p + "mlp.up_proj.weight": (inter, D),
                    p + "mlp.down_proj.weight": (D, inter)})
    out["model.norm.weight"] = (D,)
    out["lm_head.weight"] = (V, D)
    return out


def write_checkpoint(folder: Path, cfg: dict, shards: int = 3, seed: int = 0) -> Path:
    """Random bf16 weights (norm scales near 1) in ``shards`` files + index; one tensor in memory
    at a time. Returns the index path."""
    import ml_dtypes

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    shapes = llama_shapes(cfg)
    names = list(shapes)
    sizes = np.array([int(np.prod(shapes[n])) * 2 for n in names])
    cuts = np.searchsorted(np.cumsum(sizes), np.linspace(0, sizes.sum(), shards + 1)[1:-1])
    groups = np.split(np.arange(len(names)), cuts)
    rng = np.random.default_rng(seed)
    weight_map = {}
    for k, idx in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for i in idx:
            header[names[i]] = {"dtype": "BF16", "shape": list(shapes[names[i]]),
                                "data_offsets": [offset, offset + int(sizes[i])]}
            offset += int(sizes[i])
            weight_map[names[i]] = fname
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for i in idx:
                shape = shapes[names[i]]
                if len(shape) == 1:
                    x = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
                else:
                    x = rng.standard_normal(shape, dtype=np.float32) * np.float32(1 / np.sqrt(shape[1]))
                f.write(x.astype(ml_dtypes.bfloat16).tobytes())
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": int(sizes.sum())}, "weight_map": weight_map}))
    return index


# ----------------------------------------------------------------------------- child steps
def _peak_mib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_convert(path: str, out: str) -> dict:
    import nngraph
    t, c = time.perf_counter(), time.process_time()
    g = nngraph.convert(path)
    nngraph.save(g, out)
    return {"convert_s": time.perf_counter() - t, "convert_cpu_s": time.process_time() - c,
            "convert_peak_mib": _peak_mib(), "params": g.num_parameters,
            "nodes": g.num_nodes, "edges": g.num_edges, "file_mib": Path(out).stat().st_size / 2 ** 20}


def step_coo(path: str) -> dict:
    import tracemalloc

    import nngraph
    from nngraph.graph.materialize import to_coo
    g = nngraph.load(path)
    out = {}
    for taps in ("pad",):
        tracemalloc.start()
        c = to_coo(g, taps=taps)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        edges = sum(a.nbytes for a in (c.edge_index, c.edge_attr, c.edge_kind, c.edge_block))
        out.update({"coo_bytes_per_edge": edges / g.num_edges, "coo_peak_bytes_per_edge": peak / g.num_edges})
        del c
    return out


def step_featurize(path: str) -> dict:
    import tracemalloc

    import torch_geometric.data  # noqa: F401  (imported before tracing: module code is not featurize's memory)

    import nngraph
    from nngraph.learn.featurize import featurize
    g = nngraph.load(path)
    tracemalloc.start()
    d = featurize(g)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    edges = sum(t.numel() * t.element_size() for t in (d.edge_index, d.edge_attr, d.edge_kind, d.edge_depth))
    return {"featurize_bytes_per_edge": edges / g.num_edges, "featurize_peak_bytes_per_edge": peak / g.num_edges}


def step_encode(path: str, encoder: str, hidden: str, layers: str, mode: str, threads: str, chunk: str,
                checkpoint: str = "-", workers: str = "1") -> dict:
    """Encode with a freshly initialised encoder, streamed or in memory, or (``checkpoint``) with a
    trained one through ``train.embed``; peak RSS is the process's."""
    import torch

    import nngraph
    from nngraph.learn.stream import encode_streamed
    from nngraph.loader import registry
    torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    g = nngraph.load(path)
    chunk_edges = int(chunk) or None
    if checkpoint != "-":
        from nngraph.learn.train import embed
        base = _peak_mib()
        t, c = time.perf_counter(), time.process_time()
        emb = torch.from_numpy(embed(checkpoint, [g], "cpu", stream=None if mode == "stream" else False,
                                     progress=True, workers=int(workers)))
        elapsed = time.perf_counter() - t
        key = "encode" if mode == "stream" else "memory_encode"
        return {f"{key}_s": elapsed, f"{key}_cpu_s": time.process_time() - c, f"{key}_peak_mib": _peak_mib(),
                f"{key}_loaded_mib": base, f"{key}_medges_per_s": g.num_edges / elapsed / 1e6,
                f"{key}_finite": bool(torch.isfinite(emb).all()), f"{key}_checkpoint": checkpoint}
    cfg = {"hidden": int(hidden)} | ({"layers": int(layers)} if encoder == "ng-gnn" else {})
    enc = registry().encoder(encoder).factory(**cfg).eval()
    base = _peak_mib()
    t, c = time.perf_counter(), time.process_time()
    if mode == "stream":
        _, emb = encode_streamed(enc, g, chunk_edges=chunk_edges, progress=True, workers=int(workers))
    else:
        from torch_geometric.data import Batch

        from nngraph.learn.featurize import featurize
        with torch.no_grad():
            _, emb = enc(Batch.from_data_list([featurize(g)]))
    elapsed = time.perf_counter() - t
    key = "encode" if mode == "stream" else "memory_encode"
    return {f"{key}_s": elapsed, f"{key}_cpu_s": time.process_time() - c, f"{key}_peak_mib": _peak_mib(),
            f"{key}_loaded_mib": base, f"{key}_medges_per_s": g.num_edges / elapsed / 1e6,
            f"{key}_finite": bool(torch.isfinite(emb).all())}


def _reset_peak() -> bool:
    """Set the process's peak RSS to its current RSS (Linux ≥ 4.0: ``/proc/self/clear_refs``), so a
    later peak is the next step's alone; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return float("nan")


def step_align(path: str, other: str | None, seed: int) -> dict:
    """Weight matching of A (memory-mapped) against B: a permuted copy of A held in memory, or
    ``other`` memory-mapped. Building the copy reads all of A; those pages are released and the peak
    reset before aligning, so ``align_peak_mib`` is the alignment's (B's copy included, as it is
    resident), ``align_setup_peak_mib`` the copy's."""
    import nngraph
    from nngraph.graph.fileformat import release_pages
    a = nngraph.load(path)
    if other is None:
        sym = a.random_symmetry(seed)
        b = a.permute(sym)
        for _, p in a.params():
            release_pages(p.data)
    else:
        b = nngraph.load(other)
    setup = _peak_mib()
    reset = _reset_peak()
    start = _rss_mib()
    t, c = time.perf_counter(), time.process_time()
    res = nngraph.align(a, b, "weight")
    elapsed = time.perf_counter() - t
    out = {"align_s": elapsed, "align_cpu_s": time.process_time() - c, "align_peak_mib": _peak_mib(),
           "align_start_mib": start, "align_setup_peak_mib": setup, "align_peak_reset": reset,
           "align_iterations": res.iterations,
           "distance_before": res.distance_before, "distance_after": res.distance_after}
    if other is None:           # B = A permuted by sym: the alignment must be its inverse exactly
        out["recovered"] = bool(res.distance_after == 0.0)
    return out


def _child(step: str, *args) -> dict:
    cmd = [sys.executable, __file__, "--step", step, *map(str, args)]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if step == "encode" else subprocess.PIPE, text=True)
    if r.returncode:
        why = f"killed by signal {-r.returncode}" if r.returncode < 0 else f"exit {r.returncode}"
        raise RuntimeError(f"{step} failed ({why}): {(r.stderr or '').strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def growth_exponent(x, y) -> float | None:
    """Slope of log y against log x (least squares); None with fewer than two points."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = (x > 0) & (y > 0)
    if ok.sum() < 2:
        return None
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def run(sizes, keep: Path | None, align: bool, pairs: bool, seed: int, progress=print, coo: bool = True,
        encode: dict | None = None, featurize_max_edges: float = 20e6) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="nngraph-scale-") as tmp:
        root = keep or Path(tmp)
        for size in sizes:
            folder = root / size
            cfg = llama_config(size)
            t = time.perf_counter()
            index = write_checkpoint(folder / "a", cfg, seed=seed)
            row = {"size": size, "hidden": cfg["hidden_size"], "layers": cfg["num_hidden_layers"],
                   "write_s": time.perf_counter() - t}
            row.update(_child("convert", index, folder / "a.ngraph"))
            if coo:
                row.update(_child("coo", folder / "a.ngraph"))
            if row["edges"] <= featurize_max_edges:
                row.update(_child("featurize", folder / "a.ngraph"))
            if encode:
                args = (encode["encoder"], encode["hidden"], encode["layers"])
                extra = (encode.get("checkpoint") or "-", encode.get("workers", 1))
                row.update(_child("encode", folder / "a.ngraph", *args, "stream", encode["threads"], encode["chunk"],
                                  *extra))
                if encode["in_memory"]:
                    row.update(_child("encode", folder / "a.ngraph", *args, "memory", encode["threads"], 0, *extra))
            if align:
                row.update(_child("align", folder / "a.ngraph", "-", seed + 1))
            if pairs:
                index_b = write_checkpoint(folder / "b", cfg, seed=seed + 1)
                _child("convert", index_b, folder / "b.ngraph")
                pair = _child("align", folder / "a.ngraph", folder / "b.ngraph", seed)
                row.update({f"pair_{k}": v for k, v in pair.items()})
            if keep is None:
                import shutil
                shutil.rmtree(folder, ignore_errors=True)
            rows.append(row)
            progress(json.dumps(row))
    fits = {}
    p = [r["params"] for r in rows]
    for key in ("convert_s", "convert_peak_mib", "coo_peak_bytes_per_edge", "featurize_peak_bytes_per_edge",
                "encode_s", "encode_cpu_s", "encode_peak_mib", "memory_encode_s", "memory_encode_peak_mib",
                "align_s", "align_cpu_s", "align_peak_mib", "pair_align_s"):
        if all(key in r for r in rows):
            fits[key] = growth_exponent(p, [r[key] for r in rows])
    last = rows[-1] if rows else {}
    proj = {k: last[k] * (7e9 / last["params"]) ** fits[k] for k in ("encode_s", "encode_peak_mib")
            if fits.get(k) is not None and k in last}
    return {"rows": rows, "growth_exponent": fits, "projection_7b": proj}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(DEFAULT_SIZES), help=f"comma list of {', '.join(SIZES)}")
    ap.add_argument("--no-align", action="store_true", help="skip alignment")
    ap.add_argument("--no-coo", action="store_true", help="skip to_coo (it needs ≈ 18 bytes per edge of memory)")
    ap.add_argument("--pairs", action="store_true", help="also align two independent checkpoints per size")
    ap.add_argument("--keep", type=Path, help="write checkpoints here and keep them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-encode", action="store_true", help="skip streamed encoding")
    ap.add_argument("--in-memory", action="store_true", help="also encode in memory (featurize + forward)")
    ap.add_argument("--encoder", default="ng-gnn", help="encoder for the encode step (freshly initialised)")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the encode step (1: on a shared machine two OpenMP threads waiting "
                         "for each other made the same run 10–40× slower)")
    ap.add_argument("--chunk", type=int, default=0,
                    help="edges per streamed chunk (0: the encoder's stream_chunk, else 2**18)")
    ap.add_argument("--checkpoint", type=Path,
                    help="embed with this trained checkpoint (`ngraph train`) as `ngraph embed` does, instead of "
                         "a freshly initialised --encoder")
    ap.add_argument("--workers", type=int, default=1,
                    help="threads splitting each streamed pass (ng-gnn; each with --threads torch threads)")
    ap.add_argument("--featurize-max-edges", type=float, default=20e6,
                    help="measure featurize only up to this many edges (it needs ≈ 100 bytes per edge)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.step:
        step, *rest = args.step
        if step == "convert":
            print(json.dumps(step_convert(*rest)))
        elif step == "coo":
            print(json.dumps(step_coo(*rest)))
        elif step == "featurize":
            print(json.dumps(step_featurize(*rest)))
        elif step == "encode":
            print(json.dumps(step_encode(*rest)))
        elif step == "align":
            print(json.dumps(step_align(rest[0], None if rest[1] == "-" else rest[1], int(rest[2]))))
        return
    if args.checkpoint is not None and not args.checkpoint.is_file():
        ap.error(f"--checkpoint {args.checkpoint}: no such file")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        ap.error(f"unknown sizes {unknown}; known: {', '.join(SIZES)}")
    result = run(sizes, args.keep, not args.no_align, args.pairs, args.seed,
                 progress=(lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr)), coo=not args.no_coo,
                 encode=None if args.no_encode else {
                     "encoder": args.encoder, "hidden": args.hidden, "layers": args.layers, "threads": args.threads,
                     "chunk": args.chunk, "in_memory": args.in_memory, "workers": args.workers,
                     "checkpoint": str(args.checkpoint) if args.checkpoint else None},
                 featurize_max_edges=args.featurize_max_edges)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print("| size | hidden × layers | params | edges | convert s | convert peak MiB | to_coo B/edge "
          "| to_coo peak B/edge | align s (CPU s), permuted copy | align peak MiB | recovered |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for r in result["rows"]:
        print(f"| {r['size']} | {r['hidden']} × {r['layers']} | {r['params'] / 1e6:.1f} M | {r['edges'] / 1e6:.1f} M "
              f"| {r['convert_s']:.2f} | {r['convert_peak_mib']:.0f} | {r.get('coo_bytes_per_edge', nan):.1f} "
              f"| {r.get('coo_peak_bytes_per_edge', nan):.1f} | {r.get('align_s', nan):.0f} ({r.get('align_cpu_s', nan):.0f}) "
              f"| {r.get('align_peak_mib', nan):.0f} | {r.get('recovered', '-')} |")
    if any("encode_s" in r or "featurize_bytes_per_edge" in r for r in result["rows"]):
        print()
        print("| size | edges | featurize B/edge (peak) | streamed encode s (CPU s) "
              "| encode peak MiB (loaded graph MiB) | M edges/s | in-memory encode s | in-memory peak MiB |")
        print("|---|---|---|---|---|---|---|---|")
        for r in result["rows"]:
            print(f"| {r['size']} | {r['edges'] / 1e6:.1f} M | {r.get('featurize_bytes_per_edge', nan):.0f} "
                  f"({r.get('featurize_peak_bytes_per_edge', nan):.0f}) | {r.get('encode_s', nan):.1f} "
                  f"({r.get('encode_cpu_s', nan):.1f}) | {r.get('encode_peak_mib', nan):.0f} "
                  f"({r.get('encode_loaded_mib', nan):.0f}) | {r.get('encode_medges_per_s', nan):.2f} "
                  f"| {r.get('memory_encode_s', nan):.1f} | {r.get('memory_encode_peak_mib', nan):.0f} |")
    print("growth exponents in parameters:", {k: (round(v, 2) if v is not None else None)
                                              for k, v in result["growth_exponent"].items()})
    for key, v in result.get("projection_7b", {}).items():
        print(f"projected at 7 B parameters from the last size and its exponent: {key} ≈ {v:.0f}")


if __name__ == "__main__":
    main()
