"""Recurrent layers: ONNX LSTM, GRU and RNN.

Per direction, each gate is a set of ``hidden_size`` neurons (role ``gate``) fed by a dense
block from the input and a ``recurrent`` block from the hidden state (role ``state``); LSTMs add
a cell state. Gates and states are combined elementwise, so all of one direction's sets are
tied: one permutation of the hidden units. Biases (input and recurrent) and peepholes become
per-neuron arrays of their gate.
"""
from __future__ import annotations

import onnx

from ..context import LoweringContext
from ..registry import rule
from ..values import Act, Const

GATES = {"LSTM": ("i", "o", "f", "c"), "GRU": ("z", "r", "h"), "RNN": ("h",)}


def _input(ctx: LoweringContext, node: onnx.NodeProto, i: int) -> Const | None:
    if len(node.input) <= i or not node.input[i]:
        return None
    c = ctx.const(node.input[i])
    if c is None:
        v = ctx.values.get(node.input[i])
        if i in (1, 2, 3, 7) or (isinstance(v, Act) and i == 4):
            raise ctx.fail(node, f"input {i} ({node.input[i]!r}) must be a constant")
    return c


def _synthetic(ctx: LoweringContext, c: Const) -> bool:
    """Made from shapes and scalars only (a zero state sized by the batch), not a parameter."""
    if c.parts is not None and c.origin is None:
        return all(_synthetic(ctx, p) for _, _, p in c.parts[1])
    if c.synthetic or c.origin is None:
        return c.parts is None
    return c.origin.tensor in ctx.synthetic


def _filled_at_run_time(ctx: LoweringContext, name: str, depth: int = 0) -> bool:
    """A state made at run time as one repeated value (ConstantOfShape sized by the batch, then
    stacked): the same under every permutation, so nothing to pin."""
    node = ctx.producer(name)
    if node is None or depth > 8:
        return False
    if node.op_type == "ConstantOfShape":
        return True
    if node.op_type in ("Concat", "Unsqueeze", "Expand", "Cast", "Identity", "Reshape", "Tile"):
        data = node.input if node.op_type == "Concat" else node.input[:1]
        return all(_filled_at_run_time(ctx, i, depth + 1) for i in data)
    return False


def _filled(c: Const) -> bool:
    flat = c.data.reshape(-1)
    return flat.size == 0 or flat.min() == flat.max()


@rule(*GATES)
def lower_recurrent(ctx: LoweringContext, node: onnx.NodeProto, op: str | None = None,
                    weights: dict[str, Const] | None = None, quant: dict[str, Const | None] | None = None) -> None:
    """``op``/``weights`` let a variant reuse it (DynamicQuantizeLSTM: integer W and R in
    another layout, given here canonical [D, gates·H, ·]); ``quant``: their scales and zero
    points, per direction (data) or per gate unit (arrays of the gate sets)."""
    op = op or node.op_type
    gates = GATES[op]
    x = ctx.act(node.input[0])
    W, R, B = _input(ctx, node, 1), _input(ctx, node, 2), _input(ctx, node, 3)
    if weights:
        W, R = weights["W"], weights["R"]
    if x is None or W is None or R is None:
        raise ctx.fail(node, "needs an activation input and constant W and R")
    layout = int(ctx.attr(node, "layout", 0))
    if x.rank != 3 or x.axis != 2 or x.heads or x.inner != 1:
        raise ctx.fail(node, "input must be [seq, batch, features] (or [batch, seq, features]) with features last")
    D, GH, I = W.data.shape
    H = int(ctx.attr(node, "hidden_size", GH // len(gates)))
    if GH != H * len(gates) or I != ctx.size(x):
        raise ctx.fail(node, f"W of shape {W.data.shape} does not match {len(gates)} gates × {H} and {ctx.size(x)} inputs")
    h0, c0 = _input(ctx, node, 5), (_input(ctx, node, 6) if op == "LSTM" else None)
    # a zero state made at run time is not a parameter (slices of it keep the flag through origins)
    for state in (h0, c0):
        if state is not None and _synthetic(ctx, state) and _filled(state):
            ctx.buffer(state, "zero initial state")
    h0 = None if h0 is not None and _synthetic(ctx, h0) and _filled(h0) else h0
    c0 = None if c0 is not None and _synthetic(ctx, c0) and _filled(c0) else c0
    peep = _input(ctx, node, 7) if op == "LSTM" else None
    runtime = [(i, label) for i, label in ((5, "initial_h"), (6, "initial_c"))
               if len(node.input) > i and node.input[i] and ctx.const(node.input[i]) is None
               and (op == "LSTM" or i == 5) and not _filled_at_run_time(ctx, node.input[i])]
    states = []
    for d in range(D):
        Wd = W.slice(0, d, d + 1).reshape((GH, I))
        Rd = R.slice(0, d, d + 1).reshape((GH, H))
        Bd = B.slice(0, d, d + 1).reshape((2 * GH,)) if B is not None else None
        tag = f"/d{d}" if D > 1 else ""
        h = ctx.new_set(node, H, "state", inputs=[x], suffix=f"{tag}/h")
        cell = ctx.new_set(node, H, "state", inputs=[x], suffix=f"{tag}/c", tie=h.name) if op == "LSTM" else None
        if h0 is not None:
            h.arrays["initial"] = ctx.param(h0.slice(0, d, d + 1).reshape(h0.data.shape[1:]).transpose((1, 0)))
        if cell is not None and c0 is not None:
            cell.arrays["initial"] = ctx.param(c0.slice(0, d, d + 1).reshape(c0.data.shape[1:]).transpose((1, 0)))
        for g, gate in enumerate(gates):
            s = ctx.new_set(node, H, "gate", inputs=[x], suffix=f"{tag}/{gate}", tie=h.name, gate=gate)
            for src, o, n in ctx.segments(x):
                w = Wd.slice(0, g * H, (g + 1) * H)
                ctx.graph.add_block(f"{s.name}<{src}", src, s.name, "dense",
                                    ctx.param(w if len(x.sets) == 1 else w.slice(1, o, o + n)), op=op)
            ctx.graph.add_block(f"{s.name}<h", h.name, s.name, "recurrent", ctx.param(Rd.slice(0, g * H, (g + 1) * H)),
                                op=op)
            if Bd is not None:
                s.arrays["bias"] = ctx.param(Bd.slice(0, g * H, (g + 1) * H))
                s.arrays["recurrent_bias"] = ctx.param(Bd.slice(0, GH + g * H, GH + (g + 1) * H))
            for key, c in (quant or {}).items():
                if c is not None and c.data.size == D * GH:
                    s.arrays[key.lower()] = ctx.param(c.reshape((D, GH)).slice(0, d, d + 1).reshape((GH,))
                                                      .slice(0, g * H, (g + 1) * H))
            if peep is not None and gate in "iof":
                k = "iof".index(gate)
                s.arrays["peephole"] = ctx.param(peep.slice(0, d, d + 1).reshape((3 * H,)).slice(0, k * H, (k + 1) * H))
            target = cell.name if (cell is not None and gate in "ifc") else h.name
            ctx.graph.add_block(f"{target}<{s.name}", s.name, target, "identity")
        if cell is not None:
            ctx.graph.add_block(f"{h.name}<{cell.name}", cell.name, h.name, "identity")
        states.append((h.name, cell.name if cell else None))
    for i, label in runtime:     # a state fed at run time enters every step: its hidden units stay put
        v = ctx.values.get(node.input[i])
        fed = list(v.sets) if isinstance(v, Act) else []
        ctx.pin(node, [h for h, _ in states] + fed, f"{label} is a run-time input (the state is pinned; "
                f"weights are still recorded)")
    for key, c in (quant or {}).items():
        if c is not None and c.data.size != D * GH:
            if c.data.size != D:
                raise ctx.fail(node, f"{key} of shape {c.data.shape} is neither per direction nor per gate unit")
            ctx.buffer(c, "weight quantization scale / zero point (per direction)")
    hs = tuple(h for h, _ in states)
    # Y: [seq, dirs, batch, hidden] (layout 0) or [batch, seq, dirs, hidden] (layout 1)
    dir_axis = 2 if layout else 1
    ctx.set_output(node, Act(hs, 3, 4, seg_axis=dir_axis if D > 1 else None) if D > 1 else
                   Act(hs, 3, 4), 0)
    state_axis = 0 if not layout else 1
    ctx.set_output(node, Act(hs, 2, 3, seg_axis=state_axis if D > 1 else None), 1)
    if op == "LSTM":
        cs = tuple(c for _, c in states)
        ctx.set_output(node, Act(cs, 2, 3, seg_axis=state_axis if D > 1 else None), 2)
    for i in range(4, len(node.input)):
        if i == 4 and node.input[i]:
            v = ctx.values.get(node.input[i])
            if isinstance(v, Const):
                ctx.buffer(v, "sequence lengths")

