"""Hugging Face transformer families from ``config.json``: a table of tensor names per family,
heads from ``num_attention_heads``, and each family's block layout (post-norm BERT, pre-norm
GPT-2 / ViT / LLaMA). Every tensor must find its place, else the conversion stops naming the
ones left over."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from nngraph.errors import UnsupportedModelError
from nngraph.ir import NeuralGraph, Param
from nngraph.origin import Origin


@dataclass(frozen=True)
class Family:
    prefixes: tuple[str, ...]
    layer: str
    layers_key: str
    heads_key: str
    norm_first: bool
    attn: dict                    # q, k, v, o module names (or qkv for a fused projection)
    norms: tuple[str, str]        # per layer: before/after attention (pre-norm) or after attn/after ffn (post)
    ffn: dict                     # up, down (and gate for gated units)
    embeddings: dict              # word / position / token type tables, or patch conv + cls
    embed_norm: str | None = None
    final_norm: str | None = None
    transposed: bool = False      # GPT-2's Conv1D stores [in, out]
    norm_kind: str = "ln"
    activation: str = "gelu"
    rotary: bool = False
    ignore: tuple[str, ...] = field(default_factory=tuple)


FAMILIES = {
    "bert": Family(("bert.", ""), "encoder.layer.{i}.", "num_hidden_layers", "num_attention_heads", False,
                   {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                    "o": "attention.output.dense"},
                   ("attention.output.LayerNorm", "output.LayerNorm"),
                   {"up": "intermediate.dense", "down": "output.dense"},
                   {"word": "embeddings.word_embeddings", "position": "embeddings.position_embeddings",
                    "segment": "embeddings.token_type_embeddings"},
                   embed_norm="embeddings.LayerNorm", ignore=("embeddings.position_ids",)),
    "gpt2": Family(("transformer.", ""), "h.{i}.", "n_layer", "n_head", True,
                   {"qkv": "attn.c_attn", "o": "attn.c_proj"}, ("ln_1", "ln_2"),
                   {"up": "mlp.c_fc", "down": "mlp.c_proj"}, {"word": "wte", "position": "wpe"},
                   final_norm="ln_f", transposed=True, ignore=("attn.bias", "attn.masked_bias")),
    "llama": Family(("model.", ""), "layers.{i}.", "num_hidden_layers", "num_attention_heads", True,
                    {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                     "o": "self_attn.o_proj"}, ("input_layernorm", "post_attention_layernorm"),
                    {"gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"},
                    {"word": "embed_tokens"}, final_norm="norm", norm_kind="rms", activation="swish",
                    rotary=True, ignore=("rotary_emb.inv_freq",)),
    "vit": Family(("vit.", ""), "encoder.layer.{i}.", "num_hidden_layers", "num_attention_heads", True,
                  {"q": "attention.attention.query", "k": "attention.attention.key",
                   "v": "attention.attention.value", "o": "attention.output.dense"},
                  ("layernorm_before", "layernorm_after"),
                  {"up": "intermediate.dense", "down": "output.dense"},
                  {"patch": "embeddings.patch_embeddings.projection", "cls": "embeddings.cls_token",
                   "position": "embeddings.position_embeddings"}, final_norm="layernorm"),
}


class _Builder:
    def __init__(self, tensors: Mapping[str, np.ndarray], prefix: str, fam: Family, path):
        self.t, self.prefix, self.fam, self.path = tensors, prefix, fam, path
        self.used: set[str] = set()
        self.g = NeuralGraph({"structure": "family"})
        self.depth = 0

    def has(self, name: str) -> bool:
        return self.prefix + name in self.t

    def param(self, name: str, origin_steps=()) -> Param:
        key = self.prefix + name
        if key not in self.t:
            raise UnsupportedModelError(f"{self.path}: expected tensor {key!r} is missing")
        arr = self.t[key]
        self.used.add(key)
        if key not in self.g.sources:
            self.g.add_source(key, arr.shape, arr.dtype)
        o = Origin(key, tuple(origin_steps))
        return Param(o.apply(arr), o)

    def linear(self, module: str, src: str, out_name: str, role="hidden", rows=None, act=None, **kw) -> str:
        """A dense layer ``module`` (weight [out, in], or [in, out] when transposed) from ``src``."""
        steps = []
        if self.fam.transposed:
            if rows is not None:
                steps.append(("slice", 1, rows[0], rows[1]))
            steps.append(("transpose", (1, 0)))
        elif rows is not None:
            steps.append(("slice", 0, rows[0], rows[1]))
        w = self.param(f"{module}.weight", steps)
        s = self.g.add_set(out_name, w.shape[0], role, depth=self.depth, activation=act, **kw)
        self.g.add_block(out_name, src, out_name, "dense", w)
        if self.has(f"{module}.bias"):
            bsteps = [("slice", 0, rows[0], rows[1])] if rows is not None else []
            s.arrays["bias"] = self.param(f"{module}.bias", bsteps)
        return out_name

    def norm(self, module: str, src: str, out_name: str) -> str:
        s = self.g.add_set(out_name, self.g.sets[src].size, "norm", depth=self.depth, tie=src)
        self.g.add_block(out_name, src, out_name, "norm")
        kind = self.fam.norm_kind
        s.arrays[f"{kind}_scale"] = self.param(f"{module}.weight")
        if self.has(f"{module}.bias"):
            s.arrays[f"{kind}_shift"] = self.param(f"{module}.bias")
        return out_name

    def add(self, a: str, b: str, out_name: str, op="Add") -> str:
        self.g.add_set(out_name, self.g.sets[a].size, "residual", depth=self.depth, tie=a, op=op)
        self.g.tie(out_name, b)
        self.g.add_block(f"{out_name}/a", a, out_name, "identity")
        self.g.add_block(f"{out_name}/b", b, out_name, "identity")
        return out_name

    def table(self, module: str, label: str, role_out: str = "hidden") -> str:
        w = self.param(f"{module}.weight", [("transpose", (1, 0))])
        tokens = self.g.add_set(f"{label}/rows", w.shape[1], "token", fixed=True)
        s = self.g.add_set(label, w.shape[0], role_out, depth=0)
        self.g.add_block(label, tokens.name, s.name, "embedding", w)
        return label

    def attention(self, i: int, src: str, heads: int) -> str:
        fam, L = self.fam, self.fam.layer.format(i=i)
        a = fam.attn
        if "qkv" in a:
            D = self.g.sets[src].size
            q = self.linear(L + a["qkv"], src, f"{L}q", "query", rows=(0, D))
            k = self.linear(L + a["qkv"], src, f"{L}k", "key", rows=(D, 2 * D))
            v = self.linear(L + a["qkv"], src, f"{L}v", "value", rows=(2 * D, 3 * D))
        else:
            q = self.linear(L + a["q"], src, f"{L}q", "query")
            k = self.linear(L + a["k"], src, f"{L}k", "key")
            v = self.linear(L + a["v"], src, f"{L}v", "value")
        g = self.g
        if g.sets[k].size != g.sets[q].size:
            raise UnsupportedModelError(f"{self.path}: grouped-query attention (fewer key/value heads) is not "
                                        f"supported yet")
        hs = g.add_set(f"{L}heads", heads, "head", depth=self.depth)
        for name in (q, v):
            g.groups[g.sets[name].group].parent = hs.group
        g.tie(q, k)
        if fam.rotary:
            g.groups[g.sets[q].group].rigid = True
        g.add_block(f"{L}qk", q, k, "attention")
        g.add_block(f"{L}q/head", q, hs.name, "head")
        g.add_block(f"{L}v/head", v, hs.name, "head")
        self.depth += 1
        return self.linear(L + a["o"], v, f"{L}o")

    def ffn(self, i: int, src: str) -> str:
        fam, L = self.fam, self.fam.layer.format(i=i)
        self.depth += 1
        if "gate" in fam.ffn:
            gate = self.linear(L + fam.ffn["gate"], src, f"{L}gate", act=fam.activation)
            up = self.linear(L + fam.ffn["up"], src, f"{L}up")
            h = self.add(gate, up, f"{L}gated", op="Mul")
        else:
            h = self.linear(L + fam.ffn["up"], src, f"{L}up", act=fam.activation)
        self.depth += 1
        return self.linear(L + fam.ffn["down"], h, f"{L}down")


def _prefix(tensors, fam: Family, model_type: str) -> str:
    for p in fam.prefixes:
        if any(k.startswith(p) for k in tensors) and p:
            return p
    return ""


def convert_family(tensors: Mapping[str, np.ndarray], cfg: dict, path) -> NeuralGraph:
    model_type = cfg.get("model_type")
    fam = FAMILIES.get(model_type)
    if fam is None:
        raise UnsupportedModelError(f"{path}: model_type {model_type!r} from config.json is not supported "
                                    f"(known: {', '.join(FAMILIES)}); remove config.json to read it as a layer chain")
    b = _Builder(tensors, _prefix(tensors, fam, model_type), fam, path)
    g = b.g
    emb = fam.embeddings
    if "patch" in emb:                                            # ViT: patch conv, class token, positions
        w = b.param(f"{emb['patch']}.weight")
        inp = g.add_set("pixels", w.shape[1], "input", fixed=True)
        s = g.add_set("patches", w.shape[0], depth=0)
        g.add_block("patches", inp.name, s.name, "conv", w, groups=1)
        if b.has(f"{emb['patch']}.bias"):
            s.arrays["bias"] = b.param(f"{emb['patch']}.bias")
        t = g.add_set("embeddings", s.size, "scale", depth=0, tie=s.name)
        g.add_block("embeddings", s.name, t.name, "identity")
        cls = b.param(emb["cls"], [("reshape", (s.size, 1))]) if b.has(emb["cls"]) else None
        if cls is not None:
            t.arrays["concat0"] = cls
        P = tensors[b.prefix + emb["position"]].shape[1]
        t.arrays["pos"] = b.param(emb["position"], [("reshape", (P, s.size)), ("transpose", (1, 0))])
        stream = t.name
    else:
        parts = [b.table(emb[k], k) for k in ("word", "position", "segment") if k in emb and b.has(f"{emb[k]}.weight")]
        stream = parts[0]
        if len(parts) > 1:
            g.add_set("embeddings", g.sets[parts[0]].size, "residual", depth=0, tie=parts[0], op="Add")
            for j, p in enumerate(parts):
                g.tie("embeddings", p)
                g.add_block(f"embeddings/{j}", p, "embeddings", "identity")
            stream = "embeddings"
    if fam.embed_norm:
        stream = b.norm(fam.embed_norm, stream, "embeddings/norm")
    heads = int(cfg[fam.heads_key])
    for i in range(int(cfg[fam.layers_key])):
        L = fam.layer.format(i=i)
        if fam.norm_first:
            n1 = b.norm(L + fam.norms[0], stream, f"{L}norm1")
            o = b.attention(i, n1, heads)
            r1 = b.add(o, stream, f"{L}residual1")
            n2 = b.norm(L + fam.norms[1], r1, f"{L}norm2")
            stream = b.add(b.ffn(i, n2), r1, f"{L}residual2")
        else:
            o = b.attention(i, stream, heads)
            n1 = b.norm(L + fam.norms[0], b.add(o, stream, f"{L}residual1"), f"{L}norm1")
            stream = b.norm(L + fam.norms[1], b.add(b.ffn(i, n1), n1, f"{L}residual2"), f"{L}norm2")
    if fam.final_norm and b.has(f"{fam.final_norm}.weight"):
        stream = b.norm(fam.final_norm, stream, "final_norm")
    g.sets[stream].role = "output"
    g.fix(stream)
    for extra in ("pooler.dense",):
        if b.has(f"{extra}.weight"):
            b.depth += 1
            pooled = b.linear(extra, stream, "pooler", act="tanh")
            g.sets[pooled].role = "output"
            g.fix(pooled)
    leftover = [k for k in tensors if k not in b.used and not any(k.endswith(s) for s in fam.ignore)]
    if leftover:
        raise UnsupportedModelError(f"{path}: {len(leftover)} tensor(s) have no place in a {model_type} model",
                                    {"unplaced": leftover})
    g.meta.update({"model_type": model_type, "prefix": b.prefix, "config": cfg})
    return g.validate()


def hf_run(path: Path, inputs):
    """Run the Hugging Face model the checkpoint and its config.json describe (needs transformers)."""
    try:
        import torch
        import transformers
    except ImportError:
        from nngraph.errors import PluginError
        raise PluginError("verifying a safetensors checkpoint needs torch and transformers installed") from None
    import os
    import tempfile
    import warnings

    with tempfile.TemporaryDirectory(prefix="nngraph-hf-") as tmp:   # from_pretrained maps legacy names
        if path.name.endswith(".index.json"):
            import json
            os.symlink(path.resolve(), Path(tmp) / "model.safetensors.index.json")
            for shard in set(json.loads(path.read_text())["weight_map"].values()):
                os.symlink((path.parent / shard).resolve(), Path(tmp) / shard)
        else:
            os.symlink(path.resolve(), Path(tmp) / "model.safetensors")
        os.symlink((path.parent / "config.json").resolve(), Path(tmp) / "config.json")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transformers.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()
            model, info = transformers.AutoModel.from_pretrained(tmp, output_loading_info=True)
        model = model.eval()
    if info.get("unexpected_keys") or info.get("missing_keys"):
        raise UnsupportedModelError(f"{path}: checkpoint and model disagree: "
                                    f"{(info.get('unexpected_keys') or info.get('missing_keys'))[:5]}")
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    return {"last_hidden_state": out.last_hidden_state.numpy()}


def hf_example_inputs(path: Path, seed: int = 0):
    import json
    cfg = json.loads((path.parent / "config.json").read_text())
    rng = np.random.default_rng(seed)
    if cfg.get("model_type") == "vit":
        size = int(cfg.get("image_size", 224))
        return {"pixel_values": rng.standard_normal((2, int(cfg.get("num_channels", 3)), size, size)).astype(np.float32)}
    return {"input_ids": rng.integers(0, int(cfg["vocab_size"]), (2, 8)).astype(np.int64)}
