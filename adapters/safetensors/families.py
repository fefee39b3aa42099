"""Hugging Face transformer families from ``config.json``: a table of tensor names per family,
heads from ``num_attention_heads``, and each family's block layout (post-norm BERT, pre-norm
GPT-2 / ViT / LLaMA / Mistral / Qwen2 / Gemma / StableLM / Phi / Phi-3 / GPT-NeoX). Every tensor
must find its place, else the conversion stops naming the ones left over.

Grouped-query attention (``num_key_value_heads`` G < H query heads, r = H / G): query head
``g·r + i`` reads key/value head ``g``. The symmetry that really is there: key/value heads
permute as blocks (taking their r query heads along); inside key/value head g one permutation
of the value dimensions (shared by its r query heads, hence by r column blocks of ``o_proj``);
query/key dimensions inside a head move together (none with rotary: positions are rigid), and
the r query heads of one key/value head may be exchanged. The IR expresses a group's blocks
moving with *one* parent, so the graph holds query *slots*: ``q{i}`` is the i-th query head of
every key/value head (G·d neurons, tied to K, diagonal q·k attention edges), ``ctx{i}`` its
attention output (tied to V), and ``o_proj`` is r blocks ``ctx{i} → o``. Exchanging query heads
inside one key/value head (r!^G elements, across slot sets) is the one factor left out; the value
dimensions (d!^G) are kept. Partial rotary (``partial_rotary_factor``) splits Q/K into rigid
``/rot`` and freely permuted ``/pass`` dimensions.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import numpy as np

from nngraph.errors import GraphError, UnsupportedModelError
from nngraph.graph.ir import NeuralGraph, Param
from nngraph.graph.origin import Origin


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
    kv_heads_key: str | None = None   # grouped-query attention: number of key/value heads
    qkv_per_head: bool = False    # fused qkv rows laid out per head, [H, 3, d] (GPT-NeoX), not [q; k; v]
    # parallel residual: attention and MLP both read the layer input and are summed into the stream
    parallel_key: str | None = None   # the config flag that turns it on (GPT-NeoX, StableLM) …
    parallel_default: bool = False    # … and its value when absent (Phi: always parallel, no flag)
    parallel_one_norm: bool = False   # parallel branches read one norm (StableLM, Phi); else two (GPT-NeoX)
    partial_rotary: bool = False      # reads config.json's rotated fraction; other families rotate whole heads
                                      # whatever it says (transformers' LLaMA/Qwen2/Gemma ignore it)
    lm_head: tuple[str, ...] = ("lm_head",)   # names of a causal LM's output projection (GPT-NeoX: embed_out)
    rotary_default: float = 1.0   # the rotated fraction of a head when config.json names none (GPT-NeoX: 0.25)


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
                    rotary=True, ignore=("rotary_emb.inv_freq",), kv_heads_key="num_key_value_heads"),
    "vit": Family(("vit.", ""), "encoder.layer.{i}.", "num_hidden_layers", "num_attention_heads", True,
                  {"q": "attention.attention.query", "k": "attention.attention.key",
                   "v": "attention.attention.value", "o": "attention.output.dense"},
                  ("layernorm_before", "layernorm_after"),
                  {"up": "intermediate.dense", "down": "output.dense"},
                  {"patch": "embeddings.patch_embeddings.projection", "cls": "embeddings.cls_token",
                   "position": "embeddings.position_embeddings"}, final_norm="layernorm"),
}
FAMILIES["mistral"] = FAMILIES["llama"]                  # same names; sliding window changes no weight
FAMILIES["qwen2"] = FAMILIES["llama"]                    # q/k/v biases are picked up where present
FAMILIES["phi3"] = Family(("model.", ""), "layers.{i}.", "num_hidden_layers", "num_attention_heads", True,
                          {"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj"},
                          ("input_layernorm", "post_attention_layernorm"),
                          {"gate_up": "mlp.gate_up_proj", "down": "mlp.down_proj"}, {"word": "embed_tokens"},
                          final_norm="norm", norm_kind="rms", activation="swish", rotary=True,
                          partial_rotary=True, ignore=("rotary_emb.inv_freq",), kv_heads_key="num_key_value_heads")
FAMILIES["gpt_neox"] = Family(("gpt_neox.", ""), "layers.{i}.", "num_hidden_layers", "num_attention_heads", True,
                              {"qkv": "attention.query_key_value", "o": "attention.dense"},
                              ("input_layernorm", "post_attention_layernorm"),
                              {"up": "mlp.dense_h_to_4h", "down": "mlp.dense_4h_to_h"}, {"word": "embed_in"},
                              final_norm="final_layer_norm", rotary=True, partial_rotary=True, qkv_per_head=True,
                              parallel_key="use_parallel_residual", parallel_default=True,
                              lm_head=("embed_out", "lm_head"),
                              rotary_default=0.25,
                              ignore=("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq"))
FAMILIES["gemma"] = replace(FAMILIES["llama"], activation="gelu")        # RMSNorm scales (1 + w): same symmetry
FAMILIES["stablelm"] = replace(FAMILIES["llama"], norm_kind="ln", parallel_key="use_parallel_residual",
                               parallel_one_norm=True, partial_rotary=True)
FAMILIES["phi"] = Family(("model.", ""), "layers.{i}.", "num_hidden_layers", "num_attention_heads", True,
                         {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                          "o": "self_attn.dense"}, ("input_layernorm", ""), {"up": "mlp.fc1", "down": "mlp.fc2"},
                         {"word": "embed_tokens"}, final_norm="final_layernorm", rotary=True, partial_rotary=True,
                         parallel_default=True, parallel_one_norm=True,
                         ignore=("rotary_emb.inv_freq",), kv_heads_key="num_key_value_heads")
#: ``architectures`` entries whose checkpoints end in a language-model head (``Family.lm_head``)
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


class _Builder:
    def __init__(self, tensors: Mapping[str, np.ndarray], prefix: str, fam: Family, path):
        self.t, self.prefix, self.fam, self.path = tensors, prefix, fam, path
        self.used: set[str] = set()
        self.g = NeuralGraph({"structure": "family"})
        self.depth = 0

    def has(self, name: str) -> bool:
        return self.prefix + name in self.t

    def param(self, name: str, origin_steps=(), absolute: bool = False) -> Param:
        key = name if absolute else self.prefix + name
        if key not in self.t:
            raise UnsupportedModelError(f"{self.path}: expected tensor {key!r} is missing")
        arr = self.t[key]
        self.used.add(key)
        if key not in self.g.sources:
            self.g.add_source(key, arr.shape, arr.dtype)
        o = Origin(key, tuple(origin_steps))
        return Param(o.apply(arr), o)

    def shape(self, name: str) -> tuple[int, ...]:
        key = self.prefix + name
        if key not in self.t:
            raise UnsupportedModelError(f"{self.path}: expected tensor {key!r} is missing")
        return tuple(self.t[key].shape)

    def linear(self, module: str, src: str, out_name: str, role="hidden", rows=None, act=None,
               heads=None, **kw) -> str:
        """A dense layer ``module`` (weight [out, in], or [in, out] when transposed) from ``src``.
        ``rows``: a contiguous range of its outputs; ``heads``: one query slot / dimension range
        of a head-structured output (see :func:`_head_steps`)."""
        steps, bsteps = [], []
        if self.fam.transposed:
            if rows is not None:
                steps.append(("slice", 1, rows[0], rows[1]))
            steps.append(("transpose", (1, 0)))
        elif rows is not None:
            steps.append(("slice", 0, rows[0], rows[1]))
        if rows is not None:
            bsteps.append(("slice", 0, rows[0], rows[1]))
        if heads is not None:
            w, b = _head_steps(*heads, self.shape(f"{module}.weight")[1])
            steps += w
            bsteps += b
        w = self.param(f"{module}.weight", steps)
        s = self.g.add_set(out_name, w.shape[0], role, depth=self.depth, activation=act, **kw)
        self.g.add_block(out_name, src, out_name, "dense", w)
        if self.has(f"{module}.bias"):
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

    def attention(self, i: int, src: str, heads: int, kv_heads: int, head_dim: int | None, rotary: float) -> str:
        """Layer ``i``'s attention from ``src``; ``rotary``: the fraction of each head rotary embeddings
        rotate (its dimensions stay in place), counted on the head width the tensors give."""
        fam, L, g = self.fam, self.fam.layer.format(i=i), self.g
        a = fam.attn
        if fam.transposed:                                         # GPT-2: fused [in, 3·out], heads = kv heads
            D = self.g.sets[src].size
            q = self.linear(L + a["qkv"], src, f"{L}q", "query", rows=(0, D))
            k = self.linear(L + a["qkv"], src, f"{L}k", "key", rows=(D, 2 * D))
            v = self.linear(L + a["qkv"], src, f"{L}v", "value", rows=(2 * D, 3 * D))
            return self._heads_mha(L, q, k, v, heads)
        H, G = heads, kv_heads
        if G < 1 or H % G:
            raise UnsupportedModelError(f"{self.path}: {H} query heads cannot share {G} key/value heads")
        qmod, kmod, vmod = (a["qkv"],) * 3 if "qkv" in a else (a["q"], a["k"], a["v"])
        rows_q = self.shape(f"{L}{qmod}.weight")[0] if "qkv" not in a else None
        d = head_dim or (rows_q // H if rows_q else None)
        if d is None:
            d = self.shape(f"{L}{qmod}.weight")[0] // (H + 2 * G)
        if d < 1:
            raise UnsupportedModelError(f"{self.path}: {L}: the attention projections cannot form {H} heads "
                                        f"(config.json {fam.heads_key}, head_dim)")
        off = {"q": 0, "k": H * d, "v": H * d + G * d} if "qkv" in a else {"q": 0, "k": 0, "v": 0}
        for m, n, key in ((qmod, H, "q"), (kmod, G, "k"), (vmod, G, "v")):
            total = self.shape(f"{L}{m}.weight")[0]
            if fam.qkv_per_head and total != 3 * H * d:
                raise UnsupportedModelError(f"{self.path}: {L}{m}.weight has {total} outputs, expected 3·{H}·{d} = "
                                            f"{3 * H * d} ([heads, q/k/v, head_dim]; config heads/head_dim)")
            if off[key] + n * d > total or ("qkv" not in a and total != n * d):
                raise UnsupportedModelError(f"{self.path}: {L}{m}.weight has {total} outputs, expected "
                                            f"{n} heads of {d} (config heads/key_value_heads/head_dim)")
        r = H // G
        rotary_dims = int(d * rotary)
        rotary_dims = min(d, rotary_dims + rotary_dims % 2)      # rotated in pairs: transformers rounds up

        def rows(key: str, slot: int, lo: int, hi: int) -> tuple:
            """The ``heads`` argument of :meth:`linear` for q (query slot ``slot``), k or v, dims lo:hi."""
            if fam.qkv_per_head:            # [H, 3, d]: q, k, v are slots 0, 1, 2 of every head
                return 0, H, 3, d, "qkv".index(key), lo, hi
            return off[key], G, r if key == "q" else 1, d, slot, lo, hi
        if r == 1 and rotary_dims in (0, d) and "qkv" not in a:   # multi-head attention as before
            q = self.linear(L + qmod, src, f"{L}q", "query")
            k = self.linear(L + kmod, src, f"{L}k", "key")
            v = self.linear(L + vmod, src, f"{L}v", "value")
            return self._heads_mha(L, q, k, v, heads)
        hs = g.add_set(f"{L}heads", G, "head", depth=self.depth)
        parts = [(lo, hi) for lo, hi in ((0, rotary_dims), (rotary_dims, d)) if hi > lo]
        for lo, hi in parts:
            tag = "" if len(parts) == 1 else ("/rot" if lo == 0 and rotary_dims else "/pass")
            qs = [self.linear(L + qmod, src, f"{L}q{j if r > 1 else ''}{tag}", "query",
                              heads=rows("q", j, lo, hi)) for j in range(r)]
            k = self.linear(L + kmod, src, f"{L}k{tag}", "key", heads=rows("k", 0, lo, hi))
            g.groups[g.sets[qs[0]].group].parent = hs.group
            for q in qs:
                g.tie(qs[0], q)
            g.tie(qs[0], k)
            if fam.rotary and lo == 0 and rotary_dims:
                g.groups[g.sets[k].group].rigid = True
            for j, q in enumerate(qs):
                g.add_block(f"{q}/qk", q, k, "attention")
                g.add_block(f"{q}/head", q, hs.name, "head")
        v = self.linear(L + vmod, src, f"{L}v", "value", heads=rows("v", 0, 0, d))
        g.groups[g.sets[v].group].parent = hs.group
        g.add_block(f"{L}v/head", v, hs.name, "head")
        self.depth += 1
        if r == 1:
            return self.linear(L + a["o"], v, f"{L}o")
        D = self.shape(f"{L}{a['o']}.weight")[0]
        o = g.add_set(f"{L}o", D, "hidden", depth=self.depth)
        for j in range(r):                 # o_proj's columns of query slot j read value head g's dims
            ctx = g.add_set(f"{L}ctx{j}", G * d, "value", depth=self.depth - 1, tie=v)
            g.add_block(f"{L}ctx{j}", v, ctx.name, "identity")
            w = self.param(f"{L}{a['o']}.weight", [("reshape", (D, G, r, d)), ("slice", 2, j, j + 1),
                                                  ("reshape", (D, G * d))])
            g.add_block(f"{L}o/{j}", ctx.name, o.name, "dense", w)
        if self.has(f"{L}{a['o']}.bias"):
            o.arrays["bias"] = self.param(f"{L}{a['o']}.bias")
        return o.name

    def _heads_mha(self, L: str, q: str, k: str, v: str, heads: int) -> str:
        """Multi-head attention: Q and K tied, Q/K and V heads as blocks of one heads group."""
        g = self.g
        if g.sets[k].size != g.sets[q].size:
            raise UnsupportedModelError(f"{self.path}: {L}: keys ({g.sets[k].size}) and queries "
                                        f"({g.sets[q].size}) differ in size")
        if heads < 1 or g.sets[q].size % heads:
            raise UnsupportedModelError(f"{self.path}: {L}: {g.sets[q].size} query neurons cannot form {heads} heads "
                                        f"(config.json {self.fam.heads_key})")
        hs = g.add_set(f"{L}heads", heads, "head", depth=self.depth)
        for name in (q, v):
            g.groups[g.sets[name].group].parent = hs.group
        g.tie(q, k)
        if self.fam.rotary:
            g.groups[g.sets[q].group].rigid = True
        g.add_block(f"{L}qk", q, k, "attention")
        g.add_block(f"{L}q/head", q, hs.name, "head")
        g.add_block(f"{L}v/head", v, hs.name, "head")
        self.depth += 1
        return self.linear(L + self.fam.attn["o"], v, f"{L}o")

    def ffn(self, i: int, src: str) -> str:
        fam, L = self.fam, self.fam.layer.format(i=i)
        self.depth += 1
        if "gate_up" in fam.ffn:                       # fused [gate; up] rows (Phi-3)
            n = self.shape(L + fam.ffn["gate_up"] + ".weight")[0] // 2
            gate = self.linear(L + fam.ffn["gate_up"], src, f"{L}gate", act=fam.activation, rows=(0, n))
            up = self.linear(L + fam.ffn["gate_up"], src, f"{L}up", rows=(n, 2 * n))
            h = self.add(gate, up, f"{L}gated", op="Mul")
        elif "gate" in fam.ffn:
            gate = self.linear(L + fam.ffn["gate"], src, f"{L}gate", act=fam.activation)
            up = self.linear(L + fam.ffn["up"], src, f"{L}up")
            h = self.add(gate, up, f"{L}gated", op="Mul")
        else:
            h = self.linear(L + fam.ffn["up"], src, f"{L}up", act=fam.activation)
        self.depth += 1
        return self.linear(L + fam.ffn["down"], h, f"{L}down")


def _head_steps(offset: int, G: int, r: int, d: int, slot: int, lo: int, hi: int, fan_in: int):
    """Origin steps (weight [rows, in], bias [rows]) selecting query slot ``slot`` and head
    dimensions ``lo:hi`` of G·r heads of d rows starting at row ``offset``: rows
    ``offset + (g·r + slot)·d + lo … hi`` for every g, as [G·(hi − lo), in]. GPT-NeoX's per-head
    fused qkv ``[H, 3, d]`` is the same layout with G = H and r = 3 slots: q, k, v."""
    n = G * r * d
    w = [("slice", 0, offset, offset + n)]
    b = [("slice", 0, offset, offset + n)]
    if r > 1 or (lo, hi) != (0, d):
        w += [("reshape", (G, r, d, fan_in)), ("slice", 1, slot, slot + 1), ("slice", 2, lo, hi),
              ("reshape", (G * (hi - lo), fan_in))]
        b += [("reshape", (G, r, d)), ("slice", 1, slot, slot + 1), ("slice", 2, lo, hi),
              ("reshape", (G * (hi - lo),))]
    return w, b


def _prefix(tensors, fam: Family, model_type: str) -> str:
    for p in fam.prefixes:
        if any(k.startswith(p) for k in tensors) and p:
            return p
    return ""


def convert_family(tensors: Mapping[str, np.ndarray], cfg: dict, path) -> NeuralGraph:
    """The neural graph of a Hugging Face checkpoint of a known family. A config.json whose sizes the tensors
    contradict (the graph then fails its own checks) is bad input, exit 4, not an internal error."""
    try:
        return _convert_family(tensors, cfg, path)
    except GraphError as e:
        raise UnsupportedModelError(f"{path}: config.json and the tensors do not fit together ({e})") from None


def _convert_family(tensors: Mapping[str, np.ndarray], cfg: dict, path) -> NeuralGraph:
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
    try:
        heads = int(cfg[fam.heads_key])
        kv_heads = int(cfg.get(fam.kv_heads_key) or heads) if fam.kv_heads_key else heads
        layers = int(cfg[fam.layers_key])
        head_dim = int(cfg["head_dim"]) if cfg.get("head_dim") else None
    except (KeyError, TypeError, ValueError) as e:
        raise UnsupportedModelError(f"{path}: config.json lacks a usable {e} for a {model_type} model") from None
    rotary = (_partial_rotary(cfg, path, fam.rotary_default) if fam.partial_rotary else 1.0) if fam.rotary else 0.0
    flag = cfg.get(fam.parallel_key) if fam.parallel_key else None
    parallel = fam.parallel_default if flag is None else bool(flag)     # attention and MLP both read the input
    for i in range(layers):
        L = fam.layer.format(i=i)
        if fam.norm_first:
            n1 = b.norm(L + fam.norms[0], stream, f"{L}norm1")
            o = b.attention(i, n1, heads, kv_heads, head_dim, rotary)
            r1 = b.add(o, stream, f"{L}residual1")
            if parallel and fam.parallel_one_norm:
                n2 = n1                                            # one norm feeds attention and MLP
            else:
                n2 = b.norm(L + fam.norms[1], stream if parallel else r1, f"{L}norm2")   # parallel: both read x
            stream = b.add(b.ffn(i, n2), r1, f"{L}residual2")
        else:
            o = b.attention(i, stream, heads, kv_heads, head_dim, rotary)
            n1 = b.norm(L + fam.norms[0], b.add(o, stream, f"{L}residual1"), f"{L}norm1")
            stream = b.norm(L + fam.norms[1], b.add(b.ffn(i, n1), n1, f"{L}residual2"), f"{L}norm2")
    if fam.final_norm and b.has(f"{fam.final_norm}.weight"):
        stream = b.norm(fam.final_norm, stream, "final_norm")
    head = next((h for h in fam.lm_head if f"{h}.weight" in tensors), fam.lm_head[0])
    if is_causal_lm(cfg) or f"{head}.weight" in tensors:
        # the residual stream is no output any more: only the logits (vocabulary order) are fixed
        b.depth += 1
        if f"{head}.weight" in tensors:                               # untied
            w = b.param(f"{head}.weight", absolute=True)
        elif "word" in emb and cfg.get("tie_word_embeddings", True):  # tied: the embedding table, shared
            key = b.prefix + emb["word"] + ".weight"
            w = Param(tensors[key], Origin(key), shared=True)
        else:
            raise UnsupportedModelError(f"{path}: a causal LM checkpoint without {head}.weight and with "
                                        f"untied word embeddings (tie_word_embeddings false)")
        logits = g.add_set("logits", w.shape[0], "output", depth=b.depth, fixed=True)
        g.add_block("lm_head", stream, logits.name, "dense", w)
        if f"{head}.bias" in tensors:
            logits.arrays["bias"] = b.param(f"{head}.bias", absolute=True)
    else:
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


def is_causal_lm(cfg: dict) -> bool:
    return any(str(a).endswith(CAUSAL_SUFFIXES) for a in cfg.get("architectures") or [])


def _partial_rotary(cfg: dict, path: Path, default: float = 1.0) -> float:
    """Fraction of each head's dimensions that rotary embeddings rotate, wherever transformers versions
    and families write it (top level, ``rope_parameters`` / ``rope_scaling``, GPT-NeoX's ``rotary_pct``).
    Families read these places in different orders, so where several disagree the largest is taken:
    keeping more dimensions in place never claims a symmetry that is not there."""
    found = []
    for where, key in ((cfg, "partial_rotary_factor"), (cfg.get("rope_parameters") or {}, "partial_rotary_factor"),
                       (cfg.get("rope_scaling") or {}, "partial_rotary_factor"), (cfg, "rotary_pct")):
        if isinstance(where, dict) and where.get(key) is not None:
            f = where[key]
            if type(f) not in (int, float) or not 0 <= f <= 1:
                raise UnsupportedModelError(f"{path}: config.json: {key} {f!r} is not a fraction between 0 and 1")
            found.append(float(f))
    return max(found) if found else default


def hf_run(path: Path, inputs):
    """Run the Hugging Face model the checkpoint and its config.json describe (needs transformers)."""
    try:
        import torch
        import transformers
    except ImportError:
        from nngraph.errors import PluginError
        raise PluginError("verifying a safetensors checkpoint needs torch and transformers installed") from None
    import json
    import os
    import tempfile
    import warnings

    with tempfile.TemporaryDirectory(prefix="nngraph-hf-") as tmp:   # from_pretrained maps legacy names
        if path.name.endswith(".index.json"):
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
            cfg = json.loads((path.parent / "config.json").read_text())
            auto = transformers.AutoModelForCausalLM if is_causal_lm(cfg) else transformers.AutoModel
            # computed in float32 whatever the stored dtype (bf16, fp16, fp8 upcast exactly), so
            # a permutation's different summation order stays at float32 rounding
            try:
                model, info = auto.from_pretrained(tmp, output_loading_info=True, dtype=torch.float32)
            except Exception as e:  # noqa: BLE001 - config and tensors disagree, or a config value transformers
                #                    refuses (its own validation errors derive from Exception alone)
                raise UnsupportedModelError(f"{path}: transformers cannot build the model from config.json and this "
                                            f"checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        model = model.eval()
    if info.get("unexpected_keys") or info.get("missing_keys"):
        raise UnsupportedModelError(f"{path}: checkpoint and model disagree: "
                                    f"{sorted(info.get('unexpected_keys') or info.get('missing_keys'))[:5]}")
    try:
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    except Exception as e:  # noqa: BLE001 - a config transformers builds but cannot run (odd rotary slices)
        raise UnsupportedModelError(f"{path}: transformers cannot run the model config.json describes "
                                    f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if hasattr(out, "logits"):
        return {"logits": out.logits.float().numpy()}
    return {"last_hidden_state": out.last_hidden_state.float().numpy()}


#: Largest image side and channel count example inputs are drawn for (a config may claim anything).
MAX_EXAMPLE_IMAGE, MAX_EXAMPLE_CHANNELS = 4096, 64


def hf_example_inputs(path: Path, seed: int = 0):
    from nngraph.errors import InputError
    from nngraph.graph.headers import read_config
    config = path.parent / "config.json"
    cfg = read_config(config.read_bytes(), str(config))       # schema-checked: sizes are positive integers
    rng = np.random.default_rng(seed)
    if cfg.get("model_type") == "vit":
        size, channels = cfg.get("image_size") or 224, cfg.get("num_channels") or 3
        if size > MAX_EXAMPLE_IMAGE or channels > MAX_EXAMPLE_CHANNELS:
            raise InputError(f"{config}: image_size {size} / num_channels {channels} is too large to draw example "
                             f"inputs for; pass --inputs")
        return {"pixel_values": rng.standard_normal((2, channels, size, size)).astype(np.float32)}
    if not cfg.get("vocab_size") or cfg["vocab_size"] > 2 ** 31:
        raise InputError(f"{config}: vocab_size {cfg.get('vocab_size')} gives no range to draw example token ids "
                         f"from; pass --inputs")
    return {"input_ids": rng.integers(0, cfg["vocab_size"], (2, 8)).astype(np.int64)}
