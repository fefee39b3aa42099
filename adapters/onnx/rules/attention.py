"""Attention: per-head query/key/value sets whatever the spelling.

MatMul–Softmax–MatMul with head reshapes, the ONNX ``Attention`` op (opset 23) and
``com.microsoft`` Attention / MultiHeadAttention all end in one structure: Q and K of an
attention layer are tied (their dot product is invariant to one joint permutation of the
head dimensions), Q, K and V are split into heads by a shared heads group (heads permute as
blocks), one ``head`` node per head with membership edges from its q and v dimensions, and a
diagonal ``attention`` block pairing q_i with k_i.

Grouped-query and multi-query attention (G key/value heads, each shared by r = H / G query
heads: ``repeat_kv``'s Expand, or the ``Attention`` op's ``kv_num_heads``) are lowered as the
safetensors adapter does: the queries are split into r sets of G heads (slot j: query heads
g·r + j), each tied to the keys, so permuting the dimensions of key/value head g permutes those
of all its query heads alike; the G key/value heads permute as blocks (with their query heads),
one ``head`` node each; the attention output is r copies of the values (``value`` sets tied to
them), which the output projection reads slot by slot.

Multi-query attention (G = 1) is the same with r = H: every query head is its own slot, tied to
the one key head. Its keys and values are never split into heads (a reshape to ``[B, T, 1, d]``
adds a unit axis, not a heads axis), so it is recognised where it is used: queries split into H
heads meet keys (and their scores meet values) of one set of the queries' head width whose other
axes carry no heads — broadcast over the query heads by ``repeat_kv``, ``Tile``, or the product
itself. That reading needs nothing of those other axes: q_h · k is invariant to one permutation
of the d dimensions applied to k and to every query head h, whatever k's positions hold.
"""
from __future__ import annotations

import onnx

from ..context import LoweringContext
from ..registry import rule
from ..values import Act, Const, Scores
from .common import dense, tied_copy


def _heads_parent(ctx: LoweringContext, set_name: str, heads: int) -> str | None:
    return ctx.blocks_of(set_name, heads) if heads > 1 else None


def _head_set(ctx: LoweringContext, node: onnx.NodeProto, parent: str | None, depth_from: str) -> str | None:
    if parent is None:
        return None
    g = ctx.graph
    existing = next((s.name for s in g.sets.values() if s.group == parent and s.role == "head"), None)
    if existing:
        return existing
    h = ctx.new_set(node, g.groups[parent].size, "head", inputs=[Act((depth_from,), 0)], layer=False,
                    tie=parent, suffix="/heads")
    return h.name


def tie_qk(ctx: LoweringContext, node: onnx.NodeProto, q: str, k: str, heads: int) -> tuple[str | None, str | None]:
    """Tie q and k (and their heads); add the q·k pairing and the heads' nodes. Returns
    (heads parent group, heads node set)."""
    g = ctx.graph
    pq = _heads_parent(ctx, q, heads)
    pk = _heads_parent(ctx, k, heads)
    for name, role in ((q, "query"), (k, "key")):   # the projections feeding them (rotary copies in between)
        group = g.sets[name].group
        for s in g.sets.values():
            if s.group == group and s.role == "hidden":
                s.role = role
    if pq is not None and pq != pk:
        g.tie(pq, pk)
    g.tie(q, k)
    parent = g.groups[g.sets[q].group].parent if heads > 1 else None
    hs = _head_set(ctx, node, parent, q)
    g.add_block(ctx.unique(f"{node.name or node.output[0]}/qk"), q, k, "attention")
    if hs:
        g.add_block(ctx.unique(f"{q}/head"), q, hs, "head")
    return parent, hs


def attach_value(ctx: LoweringContext, v: str, heads: int, parent: str | None, hs: str | None) -> None:
    g = ctx.graph
    if g.sets[v].role == "hidden":
        g.sets[v].role = "value"
    if heads > 1:
        pv = ctx.blocks_of(v, heads)
        if parent is not None and pv != parent:
            g.tie(parent, pv)
        if hs and not any(b.source == v and b.target == hs for b in g.blocks):
            g.add_block(ctx.unique(f"{v}/head"), v, hs, "head")


def _repeated_set(ctx: LoweringContext, node: onnx.NodeProto, x: Act, what: str) -> str:
    """The one set a repeated key or value activation carries r times."""
    if x.slots is None or len(set(x.sets)) != 1 or x.inner != 1 or x.part:
        raise ctx.fail(node, f"{what} of grouped-query attention are not each key/value head repeated")
    return x.sets[0]


def query_slots(ctx: LoweringContext, node: onnx.NodeProto, q: Act, blocks: int, slots: int) -> list[str]:
    """The query sets of grouped-query attention: ``q`` split into ``slots`` sets of ``blocks``
    heads (see :meth:`~nngraph.adapters.onnx.context.LoweringContext.split_slots`), or the
    ones it was split into already."""
    if q.slots is not None:
        if q.slots != (slots, blocks) or len(set(q.sets)) != slots:
            raise ctx.fail(node, "queries are split into key/value slots differently")
        return list(q.sets)
    if len(q.sets) != 1 or q.inner != 1 or q.seg_axis is not None:
        raise ctx.fail(node, "grouped-query attention over concatenated or flattened queries")
    return ctx.split_slots(q.set, blocks, slots)


def tie_gqa(ctx: LoweringContext, node: onnx.NodeProto, qs: list[str], k: str, blocks: int
            ) -> tuple[str | None, str | None]:
    """Grouped-query attention: every query slot tied to the keys (one permutation of each key
    head's dimensions for all its query heads), the ``blocks`` key/value heads as blocks, a
    q·k pairing per slot and one heads node per key/value head. Returns (heads parent group,
    heads node set), as :func:`tie_qk`."""
    g = ctx.graph
    for name, role in [(q, "query") for q in qs] + [(k, "key")]:
        group = g.sets[name].group
        for s in g.sets.values():
            if s.group == group and s.role == "hidden":
                s.role = role
    for q in qs:
        pk, pq = _heads_parent(ctx, k, blocks), _heads_parent(ctx, q, blocks)
        if pq is not None and pq != pk:
            g.tie(pq, pk)
        g.tie(q, k)
    parent = g.groups[g.sets[k].group].parent if blocks > 1 else None
    hs = _head_set(ctx, node, parent, k)
    for q in qs:
        g.add_block(ctx.unique(f"{node.name or node.output[0]}/qk"), q, k, "attention")
        if hs:
            g.add_block(ctx.unique(f"{q}/head"), q, hs, "head")
    return parent, hs


def value_slots(ctx: LoweringContext, node: onnx.NodeProto, v: str, blocks: int, slots: int,
                parent: str | None, hs: str | None) -> tuple[str, ...]:
    """The attention output of grouped-query attention: query slot j's heads read the values,
    so the output is ``slots`` copies of them (``value`` sets tied to ``v``, identity blocks),
    interleaved like the queries."""
    attach_value(ctx, v, blocks, parent, hs)
    return tuple(tied_copy(ctx, node, v, "value", suffix=f"/slot{j}") for j in range(slots))


def single_head(q: Act, k: Act) -> bool:
    """Whether ``k`` is the one key (or value) head of multi-query attention for queries ``q``:
    ``q`` split into several heads (or into their slots already), ``k`` carries no heads (or
    one: :meth:`~nngraph.adapters.onnx.values.Act.one_head`) and nothing repeated, so every
    query head reads it (see the module docstring)."""
    return bool(q.heads) and q.heads[1] > 1 and (k.heads is None or k.heads[1] == 1) and not k.repeated and (
        q.slots is None or q.slots == (q.heads[1], 1))


def _single_set(ctx: LoweringContext, node: onnx.NodeProto, q: Act | Scores, x: Act, what: str) -> str:
    """The one set of a multi-query key or value ``x``: one whole set of the query heads' width,
    in a frame no wider than the queries' (so the heads axis stays where the queries have it)."""
    if len(x.sets) != 1 or x.inner != 1 or x.part or x.seg_axis is not None or x.inners is not None:
        raise ctx.fail(node, f"{what} of multi-query attention span several sets or are flattened")
    width = ctx.graph.sets[q.q if isinstance(q, Scores) else q.sets[0]].size // (
        1 if isinstance(q, Scores) or q.slots else q.heads[1])
    if ctx.graph.sets[x.set].size != width or x.rank is None or x.rank > q.rank:
        raise ctx.fail(node, f"{what} of one head do not match the {width}-wide query heads")
    if isinstance(q, Act) and ctx.graph.sets[x.set].group == ctx.graph.sets[q.sets[0]].group:
        raise ctx.fail(node, f"{what} of multi-query attention are tied to the queries")
    return x.set


def _gqa_scores(ctx: LoweringContext, node: onnx.NodeProto, a: Act, b: Act) -> None:
    """query · keyᵀ with repeated keys: the queries are split into the keys' slots. Keys of one
    head that are not repeated (multi-query attention broadcast over the query heads): r = H
    slots of one head each."""
    if b.slots is None:
        if not single_head(a, b):
            raise ctx.fail(node, "queries split into key/value slots meet keys that are not repeated")
        k = _single_set(ctx, node, a, b, "keys")
        r, G = a.heads[1], 1
    else:
        k = _repeated_set(ctx, node, b, "keys")
        r, G = b.slots
    qs = query_slots(ctx, node, a, G, r)
    _, hs = tie_gqa(ctx, node, qs, k, G)
    sa, sb = ctx.shape(node.input[0]), ctx.shape(node.input[1])
    shape = tuple(sa[:-1]) + (sb[-1],) if sa and sb and len(sa) == len(sb) else None
    ctx.set_output(node, Scores(qs[0], k, a.heads[0] if a.heads else None, max(a.rank, b.rank), hs, r * G,
                                shape, slots=r))


def lower_matmul_acts(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    a, b = ctx.values.get(node.input[0]), ctx.values.get(node.input[1])
    if isinstance(a, Act) and isinstance(b, Act):
        if a.rank is None or b.rank is None or a.axis != a.rank - 1 or b.axis != b.rank - 2:
            raise ctx.fail(node, "product of two activations that is not query · keyᵀ")
        if a.rep is not None or b.rep is not None:
            raise ctx.fail(node, "query · keyᵀ of key/value heads repeated but not merged into heads")
        if single_head(a, b):               # multi-query: one key head for every query head
            return _gqa_scores(ctx, node, a, b)
        if a.slots is not None or b.slots is not None:
            if a.heads != b.heads:
                raise ctx.fail(node, "query and key are split into heads differently")
            return _gqa_scores(ctx, node, a, b)
        if len(a.sets) != 1 or len(b.sets) != 1 or a.inner != 1 or b.inner != 1:
            raise ctx.fail(node, "query · keyᵀ over concatenated or flattened sets")
        if (a.heads is None) != (b.heads is None) or (a.heads and (a.heads[1] != b.heads[1] or a.heads[0] != b.heads[0])):
            raise ctx.fail(node, "query and key are split into heads differently")
        H = a.heads[1] if a.heads else 1
        _, hs = tie_qk(ctx, node, a.set, b.set, H)
        sa, sb = ctx.shape(node.input[0]), ctx.shape(node.input[1])
        shape = tuple(sa[:-1]) + (sb[-1],) if sa and sb and len(sa) == len(sb) else None
        ctx.set_output(node, Scores(a.set, b.set, a.heads[0] if a.heads else None, max(a.rank, b.rank), hs, H,
                                    shape))
        return
    if isinstance(a, Scores) and isinstance(b, Act):
        if b.rank is None or b.axis != b.rank - 1 or b.rep is not None:
            raise ctx.fail(node, "attention weights times something other than values")
        H = b.heads[1] if b.heads else 1
        g = ctx.graph
        if a.slots > 1 and a.slots == a.heads and (b.heads is None or b.heads[1] == 1) and b.slots is None:
            return _mqa_values(ctx, node, a, b)     # multi-query: the one value head for every query head
        if (b.heads is None) != (a.head_axis is None) or (b.heads and b.heads[0] != a.head_axis):
            raise ctx.fail(node, "values are split into heads differently from the scores")
        if a.slots > 1 or b.slots is not None:
            if b.slots is None or b.slots[0] != a.slots or H != a.heads:
                raise ctx.fail(node, "values are not repeated like the keys of grouped-query attention")
            r, G = b.slots
            v = _repeated_set(ctx, node, b, "values")
            parent = g.groups[g.sets[a.q].group].parent if G > 1 else None
            out = value_slots(ctx, node, v, G, r, parent, a.heads_set)
            vs = ctx.shape(node.input[1])
            if a.shape is not None and vs is not None and all(isinstance(d, int) for d in (*a.shape, *vs)):
                ctx.shapes[node.output[0]] = tuple(a.shape[:-1]) + (vs[-1],)
            ctx.set_output(node, b.but(sets=out, stage="out"))
            return
        if len(b.sets) != 1:
            raise ctx.fail(node, "attention weights times something other than values")
        parent = g.groups[g.sets[a.q].group].parent if H > 1 else None
        attach_value(ctx, b.set, H, parent, a.heads_set)
        vs = ctx.shape(node.input[1])
        if a.shape is not None and vs is not None and all(isinstance(d, int) for d in (*a.shape, *vs)):
            ctx.shapes[node.output[0]] = tuple(a.shape[:-1]) + (vs[-1],)   # static, whatever inference said
        ctx.set_output(node, b.but(stage="out"))
        return
    raise ctx.fail(node, "product of two non-constant values that is not an attention pattern")


def _mqa_values(ctx: LoweringContext, node: onnx.NodeProto, a: Scores, b: Act) -> None:
    """Scores of multi-query attention times the values of its one head: each query head's
    output is a copy of the value set (H ``value`` sets tied to it), heads on the scores' axis."""
    if a.head_axis is None:
        raise ctx.fail(node, "multi-query scores whose heads axis was not tracked")
    v = _single_set(ctx, node, a, b, "values")
    out = value_slots(ctx, node, v, 1, a.slots, None, None)
    vs = ctx.shape(node.input[1])
    if a.shape is not None and vs is not None and all(isinstance(d, int) for d in (*a.shape, *vs)):
        ctx.shapes[node.output[0]] = tuple(a.shape[:-1]) + (vs[-1],)
    ctx.set_output(node, b.but(sets=out, axis=a.rank - 1, rank=a.rank, heads=(a.head_axis, a.heads),
                               slots=(a.slots, 1), stage="out"))


def _one_set(ctx: LoweringContext, node: onnx.NodeProto, x: Act) -> None:
    if len(x.sets) != 1 or x.inner != 1:
        raise ctx.fail(node, "attention input spans several sets")


@rule("Attention", since=23)
def lower_attention(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """ONNX Attention (opset 23): Q, K, V already projected; 3-D [B, T, H·d] or 4-D [B, H, T, d]."""
    q, k, v = (ctx.act(node.input[i]) for i in range(3))
    if q is None or k is None or v is None:
        raise ctx.fail(node, "query, key and value must be activations")
    if any(x.rep is not None for x in (q, k, v)):
        raise ctx.fail(node, "key/value heads repeated but not merged into heads")
    if k.slots is not None or v.slots is not None or q.slots is not None or (
            q.rank == 4 and q.heads and k.heads and k.heads[1] != q.heads[1]) or (
            q.rank == 4 and single_head(q, k) and single_head(q, v)) or (
            q.rank != 4 and int(ctx.attr(node, "kv_num_heads", 0) or 0) not in (0, int(ctx.attr(node, "q_num_heads", 1)))):
        return _attention_gqa(ctx, node, q, k, v)
    for x in (q, k, v):
        _one_set(ctx, node, x)
    if q.rank == 4:
        if not (q.heads and k.heads and v.heads):
            raise ctx.fail(node, "4-D inputs whose heads were not tracked")
        H = q.heads[1]
        if k.heads[1] != H or v.heads[1] != H:
            raise ctx.fail(node, "grouped-query attention (fewer key/value heads) is not supported")
    else:
        H = int(ctx.attr(node, "q_num_heads", 1))
        if int(ctx.attr(node, "kv_num_heads", H)) != H:
            raise ctx.fail(node, "grouped-query attention (kv_num_heads != q_num_heads) is not supported")
    parent, hs = tie_qk(ctx, node, q.set, k.set, H)
    attach_value(ctx, v.set, H, parent, hs)
    for i in range(3, len(node.input)):
        c = ctx.const(node.input[i]) if node.input[i] else None
        ctx.buffer(c, "attention mask")
    ctx.set_output(node, v.but(stage="out"))


def _attention_gqa(ctx: LoweringContext, node: onnx.NodeProto, q: Act, k: Act, v: Act) -> None:
    """ONNX Attention with fewer key/value heads than query heads: repeated before the op (4-D,
    ``repeat_kv``'s Expand), or by the op itself (4-D key/value with G heads, or 3-D with
    ``kv_num_heads``), which repeats each key/value head r times in place (head h reads h // r).
    4-D keys and values of one head carry no heads axis (multi-query: r = H, G = 1)."""
    for x in (k, v):
        if x.slots is None and (len(x.sets) != 1 or x.inner != 1):
            raise ctx.fail(node, "attention input spans several sets")
    if q.rank == 4 and single_head(q, k) and single_head(q, v):   # one key/value head, [B, 1 or H, T, d]
        r, G = q.heads[1], 1
        ks, vs_ = _single_set(ctx, node, q, k, "keys"), _single_set(ctx, node, q, v, "values")
        heads, axis = q.heads, q.axis
    elif q.rank == 4:
        if not (q.heads and k.heads and v.heads) or k.heads[1] != v.heads[1] or k.heads[0] != v.heads[0]:
            raise ctx.fail(node, "4-D inputs whose heads were not tracked")
        H = q.heads[1]
        if k.slots is not None:
            if k.heads[1] != H or k.slots != v.slots:
                raise ctx.fail(node, "keys and values are repeated differently")
            r, G = k.slots
            ks, vs_ = _repeated_set(ctx, node, k, "keys"), _repeated_set(ctx, node, v, "values")
        else:
            if v.slots is not None:
                raise ctx.fail(node, "keys and values are repeated differently")
            G = k.heads[1]
            if H % G:
                raise ctx.fail(node, f"{H} query heads cannot share {G} key/value heads")
            r, ks, vs_ = H // G, k.set, v.set
        heads, axis = q.heads, v.axis
    else:
        H = int(ctx.attr(node, "q_num_heads", 1))
        G = int(ctx.attr(node, "kv_num_heads", H))
        if k.slots is not None or v.slots is not None or G < 1 or H % G:
            raise ctx.fail(node, f"{H} query heads cannot share {G} key/value heads")
        r, ks, vs_ = H // G, k.set, v.set
        heads, axis = None, q.axis
    qs = query_slots(ctx, node, q, G, r)
    parent, hs = tie_gqa(ctx, node, qs, ks, G)
    out = value_slots(ctx, node, vs_, G, r, parent, hs)
    for i in range(3, len(node.input)):
        c = ctx.const(node.input[i]) if node.input[i] else None
        ctx.buffer(c, "attention mask")
    ctx.set_output(node, Act(out, axis, q.rank, heads=heads, slots=(r, G)))


def _ms_qkv(ctx: LoweringContext, node: onnx.NodeProto, x: Act, w: Const, bias: Const | None, sizes: list[int]):
    sets, offset = [], 0
    for i, n in enumerate(sizes):
        part = w.slice(1, offset, offset + n).transpose((1, 0))
        b = bias.slice(0, offset, offset + n) if bias is not None else None
        act = dense(ctx, node, x, part, bias=b, suffix=f"/{'qkv'[i]}")
        sets.append(act.set)
        offset += n
    return sets


@rule("Attention", domain="com.microsoft")
def lower_ms_attention(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """com.microsoft Attention: fused QKV projection [hidden, 3·hidden] and attention."""
    x, w = ctx.act(node.input[0]), ctx.const(node.input[1])
    bias = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if x is None or w is None:
        raise ctx.fail(node, "needs an activation input and constant weights")
    H = int(ctx.attr(node, "num_heads"))
    sizes = list(ctx.attr(node, "qkv_hidden_sizes") or []) or [w.data.shape[1] // 3] * 3
    q, k, v = _ms_qkv(ctx, node, x, w, bias, sizes)
    parent, hs = tie_qk(ctx, node, q, k, H)
    attach_value(ctx, v, H, parent, hs)
    for i in range(3, len(node.input)):
        c = ctx.const(node.input[i]) if node.input[i] else None
        ctx.buffer(c, "attention mask / bias")
    ctx.set_output(node, Act((v,), x.axis, x.rank))


@rule("MultiHeadAttention", domain="com.microsoft")
def lower_ms_mha(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """com.microsoft MultiHeadAttention: projected Q, K, V (+ optional packed bias)."""
    q, k, v = (ctx.act(node.input[i]) if len(node.input) > i else None for i in range(3))
    if q is None or k is None or v is None:
        raise ctx.fail(node, "only separate projected query, key and value inputs are supported")
    H = int(ctx.attr(node, "num_heads"))
    bias = ctx.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    sets = [q.set, k.set, v.set]
    if bias is not None:
        offset = 0
        for i, s in enumerate(sets):
            n = ctx.graph.sets[s].size
            t = tied_copy(ctx, node, s, "scale", suffix=f"/{'qkv'[i]}bias", op="Add")
            ctx.graph.sets[t].arrays["shift"] = ctx.param(bias.slice(0, offset, offset + n))
            sets[i] = t
            offset += n
    parent, hs = tie_qk(ctx, node, sets[0], sets[1], H)
    attach_value(ctx, sets[2], H, parent, hs)
    ctx.set_output(node, Act((sets[2],), q.axis, q.rank))

