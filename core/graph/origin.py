"""Where a graph array came from, and the exact transform that maps it back.

An :class:`Origin` names one source tensor (an ONNX initializer, a ``state_dict`` key …) and a
chain of index-only steps — slices, transposes, reshapes — from that tensor to the canonical
array the graph stores. Index-only steps are exactly invertible, so ``to_params`` rebuilds every
source tensor bit for bit; they are also views, so the graph holds no copy of the weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Step = tuple  # ("slice", axis, start, stop) | ("transpose", perm) | ("reshape", shape) | ("take", axis, indices)


def _slice(axis: int, start: int, stop: int) -> Step:
    return ("slice", int(axis), int(start), int(stop))


@dataclass(frozen=True)
class Origin:
    tensor: str
    steps: tuple[Step, ...] = ()

    # -- building -------------------------------------------------------------------------
    def slice(self, axis: int, start: int, stop: int) -> "Origin":
        return Origin(self.tensor, self.steps + (_slice(axis, start, stop),))

    def transpose(self, perm) -> "Origin":
        perm = tuple(int(p) for p in perm)
        if perm == tuple(range(len(perm))):
            return self
        return Origin(self.tensor, self.steps + (("transpose", perm),))

    def take(self, axis: int, indices) -> "Origin":
        """Distinct indices along an axis, in a new order (blocks of a weight reordered)."""
        return Origin(self.tensor, self.steps + (("take", int(axis), tuple(int(i) for i in indices)),))

    def reshape(self, shape) -> "Origin":
        return Origin(self.tensor, self.steps + (("reshape", tuple(int(s) for s in shape)),))

    # -- applying -------------------------------------------------------------------------
    def apply(self, source: np.ndarray) -> np.ndarray:
        """The canonical array: a view of ``source`` wherever numpy can make one."""
        out = source
        for step in self.steps:
            out = _forward(out, step)
        return out

    def scatter(self, value: np.ndarray, out: np.ndarray, accumulate: bool = False) -> None:
        """Write ``value`` (the canonical array) back into the full source tensor ``out``."""
        _scatter(out, self.steps, np.asarray(value), accumulate)

    def shape(self, leaf_shape) -> tuple[int, ...] | None:
        """The canonical array's shape, computed without touching data (None if it does not fit)."""
        shape = list(leaf_shape)
        for step in self.steps:
            if step[0] == "slice":
                _, ax, a, b = step
                if not -len(shape) <= ax < len(shape):
                    return None
                n = shape[ax]
                a, b = max(0, a + n if a < 0 else min(a, n)), max(0, b + n if b < 0 else min(b, n))
                shape[ax] = max(0, b - a)
            elif step[0] == "transpose":
                if sorted(step[1]) != list(range(len(shape))):
                    return None
                shape = [shape[p] for p in step[1]]
            elif step[0] == "take":
                _, ax, idx = step
                if not -len(shape) <= ax < len(shape) or any(not 0 <= i < shape[ax] for i in idx):
                    return None
                shape[ax] = len(idx)
            else:
                new = list(step[1])
                total = int(np.prod(shape, dtype=np.int64))
                if -1 in new:
                    known = int(np.prod([d for d in new if d != -1], dtype=np.int64))
                    new[new.index(-1)] = total // max(known, 1)
                if int(np.prod(new, dtype=np.int64)) != total:
                    return None
                shape = new
        return tuple(shape)

    def trace(self, leaf_shape) -> tuple[list, dict | None]:
        """For each axis of the canonical array, the source axis it indexes (None for unit
        axes and for axes a reshape merged or split), and the box ``{source axis: (start,
        stop)}`` of source elements it covers (None if a slice cuts a merged axis)."""
        shape = list(leaf_shape)
        axes: list = list(range(len(shape)))
        box: dict | None = {a: (0, d) for a, d in enumerate(shape)}
        mixed = [False] * len(shape)
        for step in self.steps:
            if step[0] == "slice":
                _, ax, a, b = step
                src, n = axes[ax], shape[ax]
                a, b = max(0, a + n if a < 0 else min(a, n)), max(0, b + n if b < 0 else min(b, n))
                if mixed[ax] and (a, b) != (0, n):
                    box = None
                elif src is not None and box is not None:
                    lo = box[src][0]
                    box[src] = (lo + a, lo + b)
                shape[ax] = b - a
            elif step[0] == "transpose":
                axes = [axes[p] for p in step[1]]
                shape = [shape[p] for p in step[1]]
                mixed = [mixed[p] for p in step[1]]
            elif step[0] == "take":
                _, ax, idx = step
                src = axes[ax]
                if mixed[ax] or src is None:
                    box = None
                elif box is not None:          # the box covers the taken range (reordering aside)
                    lo = box[src][0]
                    if sorted(idx) != list(range(min(idx), max(idx) + 1)):
                        box = None
                    else:
                        box[src] = (lo + min(idx), lo + max(idx) + 1)
                shape[ax] = len(idx)
            else:
                new = list(step[1])
                if -1 in new:
                    known = int(np.prod([d for d in new if d != -1]))
                    new[new.index(-1)] = int(np.prod(shape)) // max(known, 1)
                old = [(d, a, m) for d, a, m in zip(shape, axes, mixed) if d != 1]
                fresh = [d for d in new if d != 1]
                same = 0                      # leading non-unit axes that survive unchanged
                while same < min(len(old), len(fresh)) and old[same][0] == fresh[same] and (
                        same < len(old) - 1 or len(fresh) == len(old)):
                    same += 1
                kept = iter(old[:same])
                new_axes, new_mixed, k = [], [], 0
                for d in new:
                    if d == 1:
                        new_axes.append(None)
                        new_mixed.append(False)
                    elif k < same:
                        _, a, m = next(kept)
                        new_axes.append(a)
                        new_mixed.append(m)
                        k += 1
                    else:
                        new_axes.append(None)
                        new_mixed.append(True)
                axes, mixed, shape = new_axes, new_mixed, new
        return axes, box

    # -- (de)serialization ------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "steps": [list(s[:1]) + [list(x) if isinstance(x, tuple) else x
                                                                for x in s[1:]] for s in self.steps]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Origin":
        steps = []
        for s in doc.get("steps", []):
            op = s[0]
            if op == "slice":
                steps.append(_slice(*s[1:4]))
            elif op in ("transpose", "reshape"):
                steps.append((op, tuple(int(x) for x in s[1])))
            elif op == "take":
                steps.append((op, int(s[1]), tuple(int(x) for x in s[2])))
            else:
                raise ValueError(f"unknown origin step {op!r}")
        return cls(str(doc["tensor"]), tuple(steps))


def _forward(arr: np.ndarray, step: Step) -> np.ndarray:
    op = step[0]
    if op == "slice":
        _, axis, start, stop = step
        index = [slice(None)] * arr.ndim
        index[axis] = slice(start, stop)
        return arr[tuple(index)]
    if op == "transpose":
        return arr.transpose(step[1])
    if op == "reshape":
        return arr.reshape(step[1])
    if op == "take":
        return np.take(arr, step[2], axis=step[1])
    raise ValueError(f"unknown origin step {op!r}")


def _scatter(target: np.ndarray, steps: tuple[Step, ...], value: np.ndarray, accumulate: bool) -> None:
    if not steps:
        if target.shape != value.shape:
            raise ValueError(f"origin shape mismatch: {value.shape} written into {target.shape}")
        if accumulate:
            target += value
        else:
            target[...] = value
        return
    step, rest = steps[0], steps[1:]
    if step[0] == "take":               # fancy indexing copies: edit the selection, then put it back
        _, axis, idx = step
        index = (slice(None),) * axis + (list(idx),)
        tmp = target[index].copy()
        _scatter(tmp, rest, value, accumulate)
        target[index] = tmp
        return
    if step[0] == "reshape":
        try:
            view = target.reshape(step[1], copy=False)
        except ValueError:  # not expressible as a view: edit a copy, then write it back
            tmp = target.reshape(step[1]).copy()
            _scatter(tmp, rest, value, accumulate)
            target[...] = tmp.reshape(target.shape)
            return
        _scatter(view, rest, value, accumulate)
        return
    _scatter(_forward(target, step), rest, value, accumulate)
