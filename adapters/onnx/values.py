"""What a value in an ONNX graph is to the engine.

Every value becomes one of

* :class:`Const` — a constant tensor (initializer, ``Constant`` node, or a folded constant
  subgraph) together with the :class:`~nngraph.graph.origin.Origin` that maps it back to its leaf;
* :class:`Act` — an activation whose ``axis`` carries the neurons of one or more sets;
* :class:`Stat` — a statistic over the neuron axis (a mean, a variance) that broadcasts back;
* :class:`Scores` — attention scores of one attention layer;
* :data:`AUX` — anything else: carries no neurons and no parameters (shapes, masks, indices).

Rules read these from :attr:`LoweringContext.values <nngraph.adapters.onnx.context.LoweringContext.values>`
and store their outputs as these.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from nngraph.graph.origin import Origin


@dataclass
class Const:
    """A constant. ``broadcast``: the shape it has at run time when an ``Expand`` only
    broadcast it (``data`` stays the parameter itself, so it keeps its origin)."""

    data: np.ndarray
    origin: Origin | None = None
    broadcast: tuple | None = None
    parts: tuple | None = None     # (axis, [(start, stop, Const)]): constants of different tensors concatenated
    synthetic: bool = False        # computed from scalars and shapes only (ConstantOfShape zeros …)
    runtime: bool = False          # combined with run-time data (a dynamic-quantization scale, a mask added
                                   # to a position bias): a parameter's place, not its value; never folded
    varies: tuple[int, ...] | None = ()   # with ``runtime``: axes (counted from the right, negative) along
                                          # which the run-time part varies; None: unknown (any axis)

    def varies_along(self, axis: int, rank: int) -> bool:
        """Whether the run-time part of this value differs along ``axis`` of a rank-``rank`` frame."""
        return self.runtime and (self.varies is None or axis - rank in self.varies)

    @property
    def value(self) -> np.ndarray:
        return self.data if self.broadcast is None else np.broadcast_to(self.data, self.broadcast)

    def _transpose(self, perm) -> "Const":
        parts = None
        if self.parts is not None:
            axis, bounds = self.parts
            parts = (list(perm).index(axis), [(lo, hi, p.transpose(perm)) for lo, hi, p in bounds])
        return Const(self.data.transpose(perm), self.origin.transpose(perm) if self.origin else None, parts=parts)

    def _reshape(self, shape) -> "Const":
        shape = tuple(int(s) for s in shape)
        parts = None
        if self.parts is not None:    # unit axes added or removed around stacked parts: keep them stacked
            axis, bounds = self.parts
            old = [d for d in self.data.shape]
            if [d for d in old if d != 1] == [d for d in shape if d != 1] and old[axis] != 1:
                k = sum(1 for d in old[:axis] if d != 1)
                new_axis = [i for i, d in enumerate(shape) if d != 1][k]
                parts = (new_axis, [(lo, hi, p.reshape(tuple(hi - lo if i == new_axis else d
                                                             for i, d in enumerate(shape))))
                                    for lo, hi, p in bounds])
        return Const(self.data.reshape(shape), self.origin.reshape(shape) if self.origin else None, parts=parts)

    def _take(self, axis: int, indices) -> "Const":
        return Const(np.take(self.data, indices, axis=axis), self.origin.take(axis, indices) if self.origin else None)

    def _slice(self, axis: int, start: int, stop: int) -> "Const":
        if self.parts is not None and axis % self.data.ndim == self.parts[0]:
            n = self.data.shape[axis]
            start, stop = (start + n if start < 0 else start), (stop + n if stop < 0 else stop)
            for lo, hi, part in self.parts[1]:
                if lo <= start and stop <= hi:
                    return part.slice(axis, start - lo, stop - lo)
        if self.parts is not None and axis % self.data.ndim != self.parts[0]:
            index = [slice(None)] * self.data.ndim
            index[axis] = slice(start, stop)
            return Const(self.data[tuple(index)], None,
                         parts=(self.parts[0], [(lo, hi, p.slice(axis, start, stop)) for lo, hi, p in self.parts[1]]))
        index = [slice(None)] * self.data.ndim
        index[axis] = slice(start, stop)
        return Const(self.data[tuple(index)], self.origin.slice(axis, start, stop) if self.origin else None)

    def transpose(self, perm) -> "Const":
        return self._moved(self._transpose(perm))

    def reshape(self, shape) -> "Const":
        return self._moved(self._reshape(shape))

    def take(self, axis: int, indices) -> "Const":
        return self._moved(self._take(axis, indices))

    def slice(self, axis: int, start: int, stop: int) -> "Const":
        return self._moved(self._slice(axis, start, stop))

    def _moved(self, out: "Const") -> "Const":
        """A transformed ``runtime`` constant stays one; where its run-time part varies is
        no longer known after a change of axes (unless it varies nowhere)."""
        if self.runtime:
            out.runtime, out.varies = True, (() if self.varies == () else None)
        return out

    @property
    def is_float(self) -> bool:
        return self.data.dtype.kind == "f" or self.data.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")


@dataclass
class Act:
    """An activation tensor whose ``axis`` carries neurons.

    ``sets`` are the neuron sets laid end to end along that axis (one, or several after a
    Concat). ``inner > 1`` means the axis holds ``neurons × inner`` values, neuron-major: a
    flattened ``[C, H, W]`` map, whose spatial positions a following dense layer sees as taps.
    ``heads = (head_axis, H)`` means the neurons were split as ``[H, size / H]`` with the head
    index on ``head_axis`` (multi-head attention); ``axis`` then carries the within-head index.
    ``seg_axis``: the sets are stacked along that axis (the directions of a bidirectional RNN),
    each spanning the whole neuron axis; merging it into the neuron axis concatenates them.

    Grouped-query attention (key/value heads shared by several query heads) uses two more:
    ``rep = (axis, r)``: an ``Expand`` copied each of the ``heads`` r times along ``axis``, the
    axis right after the heads axis (``repeat_kv``: merging the two gives head g·r + j = copy j
    of head g). ``slots = (r, G)``: ``sets`` are r sets of G heads each, interleaved — head
    g·r + j (of ``heads``' H = G·r) is head g of ``sets[j]``; with the heads merged back, the
    neuron axis runs over (g, j, dim). A repeated key or value is its one set r times; the
    queries it is paired with are split into r such sets (see
    :meth:`~nngraph.adapters.onnx.context.LoweringContext.split_slots`). Only the rules in
    :data:`~nngraph.adapters.onnx.context.GQA_AWARE` read such activations; any other op
    reading one is pinned.

    ``unit``: a reshape split the neuron axis as ``[1, n]`` (``[B, T, 1, d]``: the one key/value
    head of multi-query attention, or just a unit axis). It is not taken for heads — rules that
    refuse heads would then refuse it — until a rule that needs heads meets it
    (:meth:`one_head`: rotary tables and halves); the attention rules read a key or value with
    no heads against split queries as one head either way.
    """

    sets: tuple[str, ...]
    axis: int
    rank: int | None = None
    stage: str = "out"   # "linear": raw layer output, a bias may still attach; "out": anything later
    inner: int = 1
    heads: tuple[int, int] | None = None
    seg_axis: int | None = None   # sets laid along this axis instead of end to end (RNN directions)
    inners: tuple[int, ...] | None = None   # per-set taps when flattened maps of different sizes were concatenated
    part: tuple[int, int] | None = None     # only these within-head positions (rotary halves; the group is rigid)
    inner_minor: bool = False                # flattened channels-last (NHWC → [B, H·W·C]): position-major
    rep: tuple[int, int] | None = None       # (axis, r): heads copied r times along axis (before the merge)
    slots: tuple[int, int] | None = None     # (r, G): r sets of G heads interleaved (grouped-query attention)
    unit: int | None = None                  # a unit axis a reshape put right before the neuron axis: one head
    heads_outer: int | None = 1              # the heads axis holds heads_outer · H entries: 1 = heads only, B when
                                             # folded into the batch ([B·H, T, d]), None = unknown (then a symbolic
                                             # size there is not replaced by what tracking knows)

    @property
    def repeated(self) -> bool:
        """Whether this carries repeated or interleaved key/value heads (``rep`` or ``slots``)."""
        return self.rep is not None or self.slots is not None

    @property
    def set(self) -> str:
        if len(self.sets) != 1:
            raise ValueError("activation spans several neuron sets")
        return self.sets[0]

    def but(self, **changes) -> "Act":
        """A copy with ``changes``. ``unit`` is an axis index only the shape rules renumber: a
        change of axes that does not name it drops it."""
        if "unit" not in changes and self.unit is not None and changes.keys() & {"axis", "rank", "heads", "seg_axis"}:
            changes["unit"] = None
        return replace(self, **changes)

    def one_head(self) -> Act:
        """This activation with its ``unit`` axis taken as a heads axis of one head (the keys and
        values of multi-query attention, split ``[B, T, 1, d]``), for the rules that need heads
        (rotary tables and halves, ``repeat_kv``); unchanged without one."""
        return self if self.heads is not None or self.unit is None else self.but(heads=(self.unit, 1))


@dataclass
class Stat:
    """A statistic over the neuron axis (mean, variance, norm): broadcasts back over it."""

    rank: int | None = None
    axis: int | None = None
    heads_of: tuple[str, ...] | None = None   # one statistic per head of these sets (reduced over the head
                                              # dimensions only): it moves with their heads


@dataclass
class Scores:
    """Attention scores ``[…, H, Tq, Tk]`` of one attention layer: ``q``/``k`` name the sets
    whose dot products made them; ``head_axis`` carries the heads."""

    q: str
    k: str
    head_axis: int | None
    rank: int
    heads_set: str | None = None
    heads: int = 1
    shape: tuple | None = None     # static shape when known from the operands
    slots: int = 1                 # grouped-query: query head g·slots + j reads key/value head g
                                   # (``heads`` counts query heads; ``heads_set`` has heads / slots nodes)



def slot_index(blocks: int, slots: int, width: int, j: int) -> np.ndarray:
    """Positions, on a neuron axis of ``blocks·slots`` heads of ``width``, of slot ``j``'s heads
    (heads j, slots + j, 2·slots + j …): how ``Act.slots`` interleaves its sets."""
    return ((np.arange(blocks)[:, None] * slots + j) * width + np.arange(width)[None, :]).reshape(-1)


class Aux:
    """The type of :data:`AUX`: a value that carries no neurons and no parameters."""

    def __repr__(self) -> str:
        return "AUX"


#: The one value that stands for every value without neurons or parameters.
AUX = Aux()

#: What a rule may find in ``ctx.values``.
Value = Const | Act | Stat | Scores | Aux
