"""The lowering context: the one object a rule programs against.

A rule is a function ``lower(ctx, node)`` registered for an op (see :mod:`.registry`). The engine
calls it once per node, in topological order, after every input of the node has a value. A rule

1. reads its inputs: :meth:`LoweringContext.act` (an activation, whose ``axis`` carries neurons),
   :meth:`~LoweringContext.const` (a constant with its origin), or ``ctx.values[name]`` for the
   other kinds (:mod:`.values`), and the node's attributes with :meth:`~LoweringContext.attr`;
2. builds structure: new neuron sets with :meth:`~LoweringContext.new_set` (or
   :func:`~nngraph.adapters.onnx.rules.common.tied_copy`), edge blocks with
   ``ctx.graph.add_block(name, source, target, kind, ctx.param(weight))`` — :meth:`~LoweringContext.param`
   turns a constant into a parameter with its exact origin — and per-neuron arrays as
   ``set.arrays[key] = ctx.param(vector)``; constants read as data (masks, scalars) are declared
   with :meth:`~LoweringContext.buffer`;
3. records each output with :meth:`~LoweringContext.set_output` (outputs it leaves unset become
   :data:`~nngraph.adapters.onnx.values.AUX`);
4. or refuses: ``raise ctx.fail(node, why)`` when it meets a structure it cannot prove. The engine
   then lowers the model again from the start with this node *pinned* (its neurons fixed, its
   parameters kept as opaque blocks), so a rule never needs to undo what it built before failing.
   Any other exception a rule raises is treated the same way. :meth:`~LoweringContext.pin` fixes
   part of a node (a run-time recurrent state) while the rule lowers the rest.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx

from nngraph.errors import GraphError, NNGraphError, UnsupportedModelError
from nngraph.graph.ir import EdgeBlock, NeuralGraph, NeuronSet, Param
from nngraph.graph.origin import Origin

from .graphs import all_graphs, node_label, outer_names, subgraphs
from .reader import OnnxModel
from .registry import RuleTable
from .values import AUX, Act, Const, Scores, Stat, Value, slot_index

#: Ops that combine their inputs element by element (with broadcasting).
ELEMENTWISE = frozenset(("Add", "Sub", "Mul", "Div", "Where", "And", "Or", "Xor", "Not", "Cast", "Identity", "Equal",
                         "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Neg", "Abs", "Sqrt", "Exp", "Log"))


class Unfollowed(Exception):
    """Raised out of :meth:`LoweringContext.walk` when a rule fails on ``node``: the engine
    lowers again from the start with the node pinned (a failed rule may have half-built
    structure, so nothing of that attempt is kept)."""

    def __init__(self, node: onnx.NodeProto, reason: str):
        super().__init__(reason)
        self.node, self.reason = node, reason


#: Ops whose rules follow activations with repeated key/value heads (``Act.rep`` / ``Act.slots``,
#: grouped-query attention). Any other op that reads one is pinned: its rule would take the
#: interleaved sets for sets laid end to end.
GQA_AWARE = frozenset(("Reshape", "Transpose", "Unsqueeze", "Squeeze", "Expand", "MatMul", "Gemm", "Attention",
                       "Mul", "Div", "Identity", "Cast", "CastLike", "Dropout", "Shape", "Size"))

#: Ops whose first input's axis 1 carries channels.
CHANNEL_FIRST = ("Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "GlobalMaxPool", "LRN")


def _is_weight(c: Const) -> bool:
    """A constant an unfollowed op is taken to read as a parameter: a float tensor, or an 8-bit
    (or narrower) integer one — a quantized weight — of more than one element."""
    return c.data.size > 1 and (c.is_float or (c.data.dtype.kind in "iu" and c.data.dtype.itemsize == 1))


def _leaf_consts(c: Const) -> list[Const]:
    """The pieces of a constant that map to source tensors (one, or the parts of a Concat)."""
    if c.origin is not None:
        return [c]
    if c.parts is not None:
        return [q for _, _, p in c.parts[1] for q in _leaf_consts(p)]
    return []


@dataclass
class LoweringContext:
    """What a rule sees while one model is lowered: the model, the graph being built, and a
    value for every ONNX value lowered so far. One context lives for one lowering attempt (a
    pin restarts with a fresh one), so rules may keep nothing between calls but what they put
    here or in ``graph``.

    Fields a rule reads: ``model`` (the :class:`~nngraph.adapters.onnx.reader.OnnxModel`),
    ``graph`` (the :class:`~nngraph.graph.ir.NeuralGraph` under construction: ``graph.sets``,
    ``graph.groups``, ``graph.add_block``, ``graph.tie``, ``graph.fix``), ``values`` (ONNX value
    name → :data:`~nngraph.adapters.onnx.values.Value`), ``consumers`` (value name → the nodes
    that read it), ``shapes`` / ``types`` (inferred static shapes, dims an int, a symbol or
    None, and numpy kind letters). The others are the engine's bookkeeping.
    """

    model: OnnxModel
    graph: NeuralGraph
    values: dict[str, Value] = field(default_factory=dict)
    leaves: dict[str, np.ndarray] = field(default_factory=dict)       # source tensors by name
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    shapes: dict[str, tuple] = field(default_factory=dict)            # inferred: int, symbol (str) or None
    types: dict[str, str] = field(default_factory=dict)               # inferred numpy dtype kind ("f", "i" …)
    absorbed: set[str] = field(default_factory=set)                   # leaves folded into derived leaves
    buffers: dict[str, str] = field(default_factory=dict)             # leaves read as non-parameters
    synthetic: set[str] = field(default_factory=set)                  # derived leaves made from no parameter
    rules: RuleTable | None = None
    fold: Callable[..., list] | None = None                           # (ctx, node, inputs) → output values
    pinned: dict[int, str] = field(default_factory=dict)              # id(node) → why it cannot be followed
    pins: list[dict] = field(default_factory=list)                     # what was pinned, for the report
    strict: bool = False                                               # refuse instead of pinning
    ahead: set[int] = field(default_factory=set)                       # id(node) of nodes a rule lowered with
                                                                       # an earlier one (lower_ahead): skipped
    _names: set[str] = field(default_factory=set)
    _producers: dict | None = None
    signals: set[str] = field(default_factory=set)                    # inputs with no feature axis (raw audio)

    # ------------------------------------------------------------------ lowering
    def walk(self, nodes: Iterable[onnx.NodeProto]) -> None:
        """Lower ``nodes`` in order: fold all-constant nodes, lower pinned ones opaquely, give
        the rest to their rule. The driver walks the main graph; a rule for a control-flow op
        walks its bodies into the same graph (``If`` walks both branches after
        :meth:`add_initializers`). Raises :class:`Unfollowed` when a rule fails."""
        opsets = self.model.opsets
        for node in nodes:
            ins = [self.values.get(i) if i else None for i in node.input]
            if any(i and i not in self.values for i in node.input):
                missing = [i for i in node.input if i and i not in self.values]
                raise UnsupportedModelError(f"{self.model.path}: node {node.name or node.op_type!r} reads undefined "
                                            f"value(s) {missing} (graph not topologically sorted?)")
            domain = "" if node.domain == "ai.onnx" else node.domain
            neural = any(isinstance(v, (Act, Stat, Scores)) for v in ins)
            has_graph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
            if not neural and not has_graph and not domain and all(
                    v is None or (isinstance(v, Const) and not v.runtime) for v in ins):
                try:
                    folded = self.fold(self, node, ins)
                except NNGraphError as e:
                    # constants that cannot be computed here (they depend on sizes only known at run
                    # time): run-time data; a parameter read by them is kept as an opaque one
                    if self.strict:
                        raise
                    self.pins.append({"node": node_label(node), "op": node.op_type, "parameters": 0, "sets": [],
                                      "reason": f"constant subgraph not computed: {self._reason(e)}"})
                    folded = [AUX] * len(node.output)
                for name, value in zip(node.output, folded):
                    if name:
                        self.values[name] = value
                continue
            if id(node) in self.ahead:
                continue
            if id(node) in self.pinned:
                self.lower_opaque(node, self.pinned[id(node)])
                continue
            rule = self.rules.lookup(domain, node.op_type, opsets.get(domain))
            if rule is not None and (domain or node.op_type not in GQA_AWARE) and any(
                    isinstance(v, Act) and v.repeated for v in ins):
                raise Unfollowed(node, "reads repeated key/value heads (grouped-query attention) in a way "
                                       "that is not followed")
            if rule is None:
                if neural or has_graph or any(isinstance(v, Const) and v.is_float and v.data.size > 1 for v in ins):
                    self.lower_opaque(node, f"no lowering rule for {domain + '::' if domain else ''}{node.op_type}")
                for o in node.output:
                    self.values.setdefault(o, AUX)
                continue
            try:
                rule.lower(self, node)
            except Unfollowed:
                raise
            except Exception as e:  # noqa: BLE001 - any rule failure means: this node cannot be followed
                raise Unfollowed(node, self._reason(e)) from e
            for o in node.output:
                self.values.setdefault(o, AUX)

    def _reason(self, e: Exception) -> str:
        """The one-line *why* of a rule failure, without the file and node its message repeats."""
        why = getattr(e, "why", None) or str(e)
        prefix = f"{self.model.path}: "
        if why.startswith(prefix):
            why = why[len(prefix):]
        why = re.sub(r"^node '[^']*' \([^)]*\): ", "", why)
        if not isinstance(e, UnsupportedModelError):
            why = f"{type(e).__name__}: {why}"
        return why.split("\n")[0]

    # ------------------------------------------------------------------ pinning
    def pin(self, node: onnx.NodeProto, sets: Iterable[str], reason: str) -> None:
        """Fix ``sets`` (and all tied to them) because part of ``node`` cannot be followed,
        while the rule lowers the rest of it; recorded as a pin, refused under ``strict``.
        Use it when most of a node is understood (an LSTM whose initial state is fed at run
        time: the weights are recorded, the hidden units stay put); to give up on the whole
        node, ``raise ctx.fail(node, why)`` instead."""
        label = node_label(node)
        if self.strict:
            raise UnsupportedModelError(f"{self.model.path}: node {label!r} ({node.op_type}): {reason} "
                                        f"(pinned; --strict refuses)")
        sets = list(dict.fromkeys(sets))
        for name in sets:
            self.graph.fix(name)
        self.pins.append({"node": label, "op": node.op_type, "reason": reason, "sets": sets, "parameters": 0})

    def lower_opaque(self, node: onnx.NodeProto, reason: str) -> None:
        """Lower a node that cannot be followed: pin what it reads, keep its parameters as
        ``opaque`` blocks, and give each float output of known size a fresh fixed set.
        :meth:`walk` calls it for nodes without a rule and for pinned nodes; a rule rarely
        needs it (``raise ctx.fail(...)`` gets the same result, with nothing half-built)."""
        label = node_label(node)
        op = f"{node.domain + '::' if node.domain not in ('', 'ai.onnx') else ''}{node.op_type}"
        if self.strict:
            raise UnsupportedModelError(f"{self.model.path}: node {label!r} ({op}): {reason} "
                                        f"(pinned; --strict refuses)")
        names = list(node.input) + outer_names(node)
        reads = [self.values.get(n) for n in dict.fromkeys(n for n in names if n)]
        touched: list[str] = []
        for v in reads:
            if isinstance(v, Act):
                touched += v.sets
            elif isinstance(v, Scores):
                touched += [s for s in (v.q, v.k, v.heads_set) if s]
        for name in dict.fromkeys(touched):
            self.graph.fix(name)
        params = [c for v in reads if isinstance(v, Const) for c in _leaf_consts(v) if _is_weight(c)]
        for sub in subgraphs(node):     # initializers of bodies the engine does not enter
            for t in sub.initializer:
                arr = self.model.tensor(t)
                if t.name not in self.leaves:
                    self.leaves[t.name] = arr
                    if _is_weight(Const(arr)):
                        params.append(Const(arr, Origin(t.name)))
        acts = [v for v in reads if isinstance(v, Act)]
        made: list[str] = []
        for k, out in enumerate(node.output):
            if not out:
                continue
            act = self._pinned_output(node, out, acts, suffix="" if k == 0 else f":{k}")
            if act is not None:
                self.values[out] = act
                made.append(act.sets[0])
            else:
                self.values[out] = AUX
        if params:
            target = made[0] if made else self.new_set(node, 1, "hidden", inputs=acts, fixed=True, suffix="/opaque",
                                                       op=node.op_type).name
            source = acts[0].sets[0] if acts and acts[0].sets else target
            for i, c in enumerate(params):
                self.graph.add_block(self.unique(f"{label}/opaque{i}"), source, target, "opaque", self.param(c, True),
                                     op=node.op_type)
        self.pins.append({"node": label, "op": op, "reason": reason,
                          "sets": list(dict.fromkeys(touched + made)),
                          "parameters": int(sum(c.data.size for c in params))})

    def _pinned_output(self, node: onnx.NodeProto, name: str, acts: list[Act], suffix: str) -> Act | None:
        """A fresh fixed set for output ``name`` of a pinned node, on the axis the op (channel
        first) or its readers say; None when its size is unknown or it is not a float."""
        shape = self.shape(name)
        if self.types.get(name, "f") != "f" or not shape:
            return None
        rank = len(shape)
        same = [a for a in acts if a.rank == rank and a.axis is not None and a.axis < rank and a.seg_axis is None]
        if node.op_type in CHANNEL_FIRST and rank >= 3:
            axis = 1                                  # what the op itself says
        else:                                         # what reads it says, else where its input had neurons
            axis = self.feature_axis(name, rank, decisive=True)
            if axis is None:
                axis = same[0].axis if same else self.feature_axis(name, rank)
        size = shape[axis] if axis is not None and -rank <= axis < rank else None
        if not isinstance(size, int) or size <= 0:
            return None
        s = self.new_set(node, size, "hidden", inputs=acts, fixed=True, suffix=suffix, op=node.op_type)
        return Act((s.name,), axis % rank, rank)

    def add_initializers(self, graph: onnx.GraphProto) -> None:
        """Make ``graph``'s initializers constants with their own origins (leaves). The driver
        calls it for the main graph; a rule walking a nested body calls it for the body first."""
        for t in graph.initializer:
            arr = self.model.tensor(t)
            self.leaves[t.name] = arr
            self.values[t.name] = Const(arr, Origin(t.name))

    # ------------------------------------------------------------------ reading values
    def const(self, name: str) -> Const | None:
        """The constant value ``name`` (an initializer, a ``Constant``, a folded subgraph), or
        None when it is anything else or absent (``""``: an omitted optional input)."""
        v = self.values.get(name) if name else None
        return v if isinstance(v, Const) else None

    def act(self, name: str) -> Act | None:
        """The activation ``name`` (a value whose axis carries neurons), or None."""
        v = self.values.get(name) if name else None
        return v if isinstance(v, Act) else None

    def attr(self, node: onnx.NodeProto, name: str, default=None):
        """Attribute ``name`` of ``node`` as a Python value (ints, floats, bytes, lists, a
        ``GraphProto``), or ``default`` when the node does not set it."""
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def shape(self, name: str) -> tuple | None:
        """The inferred shape of ``name``: a tuple of ints, symbolic names (equal names are
        equal sizes) and None for unknown dims; None when inference found no shape. A rule
        that computes a shape better than inference did may store it in ``ctx.shapes``."""
        return self.shapes.get(name)

    def producer(self, name: str) -> onnx.NodeProto | None:
        """The node that computes ``name`` (None for inputs and initializers): for rules that
        look back at how a run-time value was made (a state filled by ``ConstantOfShape``)."""
        if self._producers is None:
            self._producers = {o: n for g in all_graphs(self.model.graph) for n in g.node for o in n.output}
        return self._producers.get(name)

    def varying_shape(self, name: str, depth: int = 0) -> tuple | None:
        """The shape of a run-time value with the axes along which it cannot vary set to 1:
        those an ``Expand`` only broadcast (copies of one value), through elementwise ops (a
        mask made with And/Where/Cast varies where one of its operands does). Rules use it
        to tell whether run-time data combined with an activation varies along its neurons."""
        shape = self.shape(name)
        node = self.producer(name)
        c = self.const(name)
        if c is not None:
            own = tuple(c.data.shape) if c.data.size > 1 and c.value.min() != c.value.max() else ()
            if not c.runtime:
                return own
            # a parameter combined with run-time data: it varies where the parameter does and along
            # ``varies`` (the run-time part's axes; None: any), which its data's shape does not show
            if c.varies is None or shape is None or len(own) > len(shape) \
                    or any(-v > len(shape) for v in c.varies):
                return shape
            own = (1,) * (len(shape) - len(own)) + own
            return tuple(shape[k] if own[k] != 1 or k - len(shape) in c.varies else 1 for k in range(len(shape)))
        if shape is None or node is None or depth > 16:
            return shape
        if node.op_type == "Expand" or node.op_type in ELEMENTWISE:
            ins = node.input[:1] if node.op_type == "Expand" else [i for i in node.input if i]
            parts = [self.varying_shape(i, depth + 1) for i in ins]
            if any(p is None or len(p) > len(shape) for p in parts):
                return shape
            out = [1] * len(shape)
            for p in parts:
                for k, d in enumerate(p, start=len(shape) - len(p)):
                    if d != 1:
                        out[k] = shape[k] if shape[k] != 1 else d
            return tuple(out)
        if node.op_type == "Slice" and len(node.input) > 3 and node.input[3]:   # a table cut to the sequence:
            inner = self.varying_shape(node.input[0], depth + 1)                 # axes it does not cut stay
            axes = self.const(node.input[3])
            if inner is not None and len(inner) == len(shape) and axes is not None:
                cut = {int(a) % len(shape) for a in np.asarray(axes.data).reshape(-1)}
                return tuple(shape[k] if k in cut and d != 1 else d for k, d in enumerate(inner))
        return shape

    def feature_axis(self, name: str, rank: int, decisive: bool = False) -> int | None:
        """Which axis of value ``name`` (of rank ``rank``) carries its features, judged by what
        reads it: axis 1 when a channel-first op reads it (through a layout Transpose, as
        Keras/TensorFlow exports do: NHWC → the last axis), the last axis when a
        MatMul/Gemm/Einsum reads it, else 1 for images and the last for sequences (``decisive``:
        None instead of that guess). None also when the value only becomes the channel axis of
        a channel-first op by an ``Unsqueeze`` (raw audio [B, T] → [B, 1, T]): then it has one
        feature, which the Unsqueeze rule creates. Used for graph inputs and for the outputs
        of pinned nodes, whose layout no rule tracked."""
        frontier, perm = [name], list(range(rank))
        for _ in range(8):
            uses = [n for v in frontier for n in self.consumers.get(v, [])]
            if not uses:
                break
            n = uses[0]
            if n.op_type == "Transpose":
                p = next((list(a.ints) for a in n.attribute if a.name == "perm"), list(range(rank))[::-1])
                if sorted(p) != list(range(len(perm))):
                    break                          # not this value's rank: shapes disagree, stop guessing
                perm = [perm[i] for i in p]
                frontier = [n.output[0]]
                continue
            if n.op_type in CHANNEL_FIRST:
                return perm[1]
            if n.op_type in ("MatMul", "Gemm", "Einsum", "LayerNormalization"):
                return perm[-1]
            if n.op_type in ("Identity", "Cast", "Dropout", "Relu", "Mul", "Add", "Sub", "Div"):
                frontier = [n.output[0]]
                continue
            if n.op_type == "Unsqueeze" and _unsqueezed_channel(self, n):
                return None
            break
        if decisive:
            return None
        return perm[1] if rank >= 4 or rank == 2 else perm[-1] if rank == 3 else 0

    @property
    def batch_is_placeholder(self) -> bool:
        """Whether shape inference ran with :data:`~nngraph.adapters.onnx.shapes.BATCH` standing
        in for the model's symbolic batch dims (so a batch dim equal to it may be a stand-in)."""
        inits = {t.name for t in self.model.graph.initializer}
        return any(len(i.type.tensor_type.shape.dim) >= 2 and not i.type.tensor_type.shape.dim[0].HasField("dim_value")
                   for i in self.model.graph.input if i.name not in inits)

    def taps(self, x: Act) -> list[int]:
        """Values per neuron on the neuron axis, set by set (1 unless flattened): a dense
        layer after a flatten sees each spatial position as a tap of its input neuron."""
        return list(x.inners) if x.inners is not None else [x.inner] * len(x.sets)

    def size(self, x: Act) -> int:
        """How many neurons ``x`` carries on its neuron axis (all its sets; for stacked
        recurrent directions, one direction's)."""
        if x.seg_axis is not None:
            return self.graph.sets[x.sets[0]].size
        return sum(self.graph.sets[s].size for s in x.sets)

    def segments(self, x: Act) -> list[tuple[str, int, int]]:
        """(set, offset, size) of each set along the neuron axis: how a rule slices a weight
        or a per-neuron vector set by set after a Concat. Refuses stacked directions."""
        if x.seg_axis is not None:
            raise UnsupportedModelError(f"{self.model.path}: an op reads the stacked directions of a "
                                        f"bidirectional recurrent layer without merging them first")
        out, offset = [], 0
        for s in x.sets:
            n = self.graph.sets[s].size
            out.append((s, offset, n))
            offset += n
        return out

    def fail(self, node: onnx.NodeProto, why: str) -> UnsupportedModelError:
        """The error a rule raises when it cannot follow ``node``: the engine pins the node
        (``why`` becomes the pin's reason), or refuses the model under ``strict``. Use as
        ``raise ctx.fail(node, "why")``: ``why`` should say what the node does that cannot be
        followed, in words a user can act on."""
        e = UnsupportedModelError(f"{self.model.path}: node {node_label(node)!r} ({node.op_type}): {why}")
        e.why = why
        return e

    # ------------------------------------------------------------------ building
    def unique(self, base: str) -> str:
        """A set or block name not used before in this graph: ``base``, else ``base#2`` …"""
        name, i = base or "v", 1
        while name in self._names:
            i += 1
            name = f"{base}#{i}"
        self._names.add(name)
        return name

    def param(self, c: Const, checked: bool = False) -> Param:
        """Use a constant as a parameter: registers its leaf as a source tensor of the model.
        ``checked``: the caller made sure that the run-time data a ``runtime`` constant was
        combined with does not vary along the axes its neurons are on. Every weight, bias or
        per-neuron array a rule stores must come from here, so it keeps its exact origin."""
        if c.origin is None:
            raise UnsupportedModelError(f"{self.model.path}: a parameter is computed from non-constant data")
        if c.runtime and c.varies != () and not checked:
            raise UnsupportedModelError(f"{self.model.path}: a parameter is combined with run-time data "
                                        f"({c.origin.tensor!r})")
        leaf = self.leaves[c.origin.tensor]
        if c.origin.tensor not in self.graph.sources:
            self.graph.add_source(c.origin.tensor, leaf.shape, leaf.dtype)
        return Param(c.data, c.origin)

    def buffer(self, c: Const | None, why: str) -> None:
        """Record that a constant is read as data, not as a parameter (a mask, a scalar, a
        fixed table): it is listed as a buffer instead of being reported as unmapped."""
        if c is not None and c.origin is not None:
            self.buffers.setdefault(c.origin.tensor, why)

    def new_set(self, node: onnx.NodeProto, size: int, role: str = "hidden", *, inputs: Iterable[Act] = (),
                layer: bool = True, tie: str | None = None, suffix: str = "", parent: str | None = None,
                base: str | None = None, **attrs) -> NeuronSet:
        """A new neuron set of ``size`` made by ``node``, named after the node (or ``base``)
        plus ``suffix``. ``inputs``: the activations it is computed from; its depth is one
        more than theirs (``layer=False``: the same, for per-neuron maps such as norms).
        ``tie``: a set it shares its permutation with; ``parent``: a group it is permuted
        in blocks of; ``fixed=True``: never permuted; other keywords become set attributes."""
        depth = max((self.graph.sets[s].depth for a in inputs for s in a.sets), default=0) + (1 if layer else 0)
        name = self.unique((base if base is not None else node.name or node.output[0]) + suffix)
        return self.graph.add_set(name, size, role, depth=depth, tie=tie, parent=parent, **attrs)

    def set_output(self, node: onnx.NodeProto, value: Value, index: int = 0) -> None:
        """Record ``value`` for output ``index`` of ``node`` (skipped when that output is
        omitted). Outputs a rule leaves unset become :data:`~nngraph.adapters.onnx.values.AUX`."""
        if index < len(node.output) and node.output[index]:
            self.values[node.output[index]] = value

    def lower_ahead(self, node: onnx.NodeProto, values: list) -> None:
        """Lower ``node`` now, from a rule lowering an earlier node that reads what ``node`` reads (the other
        Slices of a chunk, the rest of a head-local rotation): its outputs get ``values`` and the walk skips it."""
        self.ahead.add(id(node))
        for name, value in zip(node.output, values):
            if name:
                self.values[name] = value

    def blocks_of(self, set_name: str, k: int) -> str:
        """The tie group of ``k`` blocks that ``set_name``'s group is partitioned into (created or
        spliced into its chain of parents as needed): the set's neurons then permute within
        ``k`` blocks and the blocks as wholes. Grouped convs and attention heads use it."""
        try:
            return self.graph.partition(set_name, k, new_name=self.unique)
        except GraphError as e:
            raise UnsupportedModelError(f"{self.model.path}: {e}") from None

    def keep_head_dims(self, x) -> None:
        """Head dimensions of ``x`` keep their places (rotary tables, slices inside heads): rigid up to the
        partition into ``x``'s heads, including any finer partition of the same neurons in between (the
        same projection also split into smaller heads elsewhere), so only whole heads move."""
        H = x.heads[1]
        for s in x.sets:
            if H == 1:                  # one head: no dimension may move, whatever partition comes later
                self.graph.fix(s)
                continue
            top = self.blocks_of(s, H)
            g = self.graph.groups[self.graph.sets[s].group]
            while g is not None and g.name != top:
                g.rigid = True
                g = self.graph.groups.get(g.parent) if g.parent else None

    def split_set(self, set_name: str, sizes: list[int]) -> list[str]:
        """Split ``set_name`` into consecutive parts of ``sizes`` (a fused QKV projection, a
        channel split, a residual added to part of the channels) and return the parts' names.

        Every set tied to it is split alike and each part becomes its own tie group: the parts
        still move together with their counterparts, but independently of each other. Incoming
        and outgoing dense/conv blocks are sliced (rows or columns), diagonal blocks inside the
        group split part by part, per-neuron arrays sliced — all exact origins. Head or
        channel-group structure, and blocks that both start and end in the group, are refused."""
        g = self.graph
        if len(sizes) == 1:
            return [set_name]
        gname = g.sets[set_name].group
        group = g.groups[gname]
        members = [t for t in g.sets.values() if t.group == gname]
        inside = {t.name for t in members}
        why = None
        if group.parent or any(x.parent == gname for x in g.groups.values()):
            why = "it is split into heads or channel groups"
        why = why or self._uncuttable_block(inside, single_tap=False)
        if why:
            raise UnsupportedModelError(f"{self.model.path}: cannot split neuron set {set_name!r} ({why})")
        bounds = np.cumsum([0, *sizes])
        cuts = [(str(i), int(hi - lo), lambda p, axis, lo=lo, hi=hi: _slice_param(p, axis, lo, hi))
                for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]
        parts = self._replace_group(members, cuts)
        for key, v in list(self.values.items()):   # values that carried the sets now carry their parts
            if isinstance(v, Act) and inside & set(v.sets):
                sets = tuple(p for x in v.sets for p in parts.get(x, [x]))
                inners = None if v.inners is None else tuple(
                    t for x, t in zip(v.sets, v.inners) for _ in parts.get(x, [x]))
                self.values[key] = v.but(sets=sets, inners=inners)
        return parts[set_name]

    def _uncuttable_block(self, inside: set[str], single_tap: bool) -> str | None:
        """Why a block touching the sets ``inside`` cannot be cut along them (None: every one can):
        diagonal blocks within them and ungrouped dense blocks that enter or leave them are cut row
        by row; ``single_tap`` also refuses kernels (slots take rows with exact ``take`` origins)."""
        for b in self.graph.blocks:
            if b.source not in inside and b.target not in inside:
                continue
            if b.pattern == "diagonal" and b.source in inside and b.target in inside:
                continue
            if (b.pattern == "full" and b.groups == 1 and (b.taps == 1 or not single_tap)
                    and (b.source in inside) != (b.target in inside)):
                continue
            return f"block {b.name!r} ({b.kind}) cannot be cut along it"
        return None

    def split_slots(self, set_name: str, blocks: int, slots: int) -> list[str]:
        """Split ``set_name`` — ``blocks·slots`` heads of d neurons — into ``slots`` interleaved
        parts of ``blocks`` heads: part j holds heads j, slots + j, 2·slots + j … (grouped-query
        attention: query head g·slots + j reads key/value head g, so part j is tied to the keys).

        Every set tied to it is split alike (part j of each member tied to part j of the
        first); incoming and outgoing dense blocks, diagonal blocks inside the group and
        per-neuron arrays are taken row by row (exact ``take`` origins); values carrying the set
        become ``slots = (slots, blocks)`` activations. An ``H``-blocks heads partition the set
        had (from its head split) is dropped: the caller partitions the parts into ``blocks``.
        Refused (before anything changes) when the group has structure the parts cannot carry:
        other channel groups, blocks between heads, values that concatenate or flatten it."""
        g = self.graph
        gname = g.sets[set_name].group
        group = g.groups[gname]
        n = group.size
        H = blocks * slots
        members = [t for t in g.sets.values() if t.group == gname]
        inside = {t.name for t in members}
        why = None
        if n % H:
            why = f"{n} neurons are not {H} heads"
        parent = g.groups.get(group.parent) if group.parent else None
        if not self._own_heads(gname, H):
            why = "its heads are tied to other structure"
        if any(x.parent == gname for x in g.groups.values()):
            why = "it is split into channel groups"
        why = why or self._uncuttable_block(inside, single_tap=True)

        def plain(v: Act) -> bool:        # a value that can carry the slots instead
            return len(v.sets) == 1 and v.inner == 1 and v.inners is None and v.seg_axis is None \
                and not v.repeated and (v.heads is None or v.heads[1] == H)
        dead = set()
        for key, v in self.values.items():
            if why:
                break
            if isinstance(v, Scores) and inside & {v.q, v.k}:
                why = "it is already paired in attention"
            elif isinstance(v, Act) and inside & set(v.sets) and not plain(v):
                if not self._dead(key):
                    why = "a value concatenates, flattens or regroups it"
                dead.add(key)       # read by nothing still to come (a fused projection before its split)
        if why:
            raise UnsupportedModelError(f"{self.model.path}: cannot split neuron set {set_name!r} into "
                                        f"{slots} query slots per key/value head ({why})")
        cuts = [(f"slot{j}", n // slots, lambda p, axis, ix=slot_index(blocks, slots, n // H, j): _take_param(p, axis, ix))
                for j in range(slots)]
        parts = self._replace_group(members, cuts)
        if parent is not None:
            del g.groups[parent.name]
        for key, v in list(self.values.items()):
            if key in dead:
                self.values[key] = AUX
            elif isinstance(v, Act) and inside & set(v.sets):
                self.values[key] = v.but(sets=tuple(parts[v.sets[0]]), slots=(slots, blocks))
        return parts[set_name]

    def split_heads(self, set_name: str, heads: int, sizes: list[int], reading: str,
                    readers: tuple = ()) -> list[str]:
        """Split ``set_name`` — ``heads`` heads whose dimensions are themselves laid out as consecutive
        pieces of ``sizes`` (a fused QKV projection viewed as ``[B, T, H, 3·d]`` and split along the last
        axis: GPT-NeoX/Pythia) — into one set per piece, piece c holding dimensions c of every head.
        After the split the pieces are what separate q, k and v projections would have been: the
        attention rules tie them (and their heads) as usual. Rows are taken with exact ``take`` origins.
        Refused (before anything changes) when the group has structure the pieces cannot carry: tied
        sets, channel groups, blocks between its neurons, or a value still to be read (other than
        ``reading``, the value being split) that carries the whole set, or a node other than the one
        splitting it (or ``readers``, the nodes that cut it together) still to read ``reading``."""
        g = self.graph
        gname = g.sets[set_name].group
        group = g.groups[gname]
        members = [t for t in g.sets.values() if t.group == gname]
        width = sum(sizes)
        why = None
        if group.size != heads * width or len(members) != 1:
            why = f"{group.size} neurons are not {heads} heads of {width}" if len(members) == 1 else "it is tied"
        parent = g.groups.get(group.parent) if group.parent else None
        if not self._own_heads(gname, heads) or (parent is not None and group.rigid):
            why = why or "its heads are tied to other structure"
        if any(x.parent == gname for x in g.groups.values()):
            why = why or "it is split into channel groups"
        why = why or self._uncuttable_block({set_name}, single_tap=True)
        dead = [k for k, v in self.values.items() if isinstance(v, Act) and set_name in v.sets and k != reading]
        if not why and not all(self._dead(k) for k in dead):
            why = "a value carrying the whole projection is read later"
        pending = [n for n in self.consumers.get(reading, []) if not all(o in self.values for o in n.output if o)
                   and not any(n is r for r in readers)]     # besides the splitting node, or the readers given
        if not why and (len(pending) > (0 if readers else 1) or any(o.name == reading for sub in all_graphs(self.model.graph)
                                                for o in sub.output)):
            why = "the head-split view is read by another node too, or is a graph output"
        if why:
            raise UnsupportedModelError(f"{self.model.path}: cannot split the heads of {set_name!r} into pieces "
                                        f"of {sizes} ({why})")
        offsets = np.cumsum([0, *sizes])
        cuts = [(f"piece{c}", heads * size,
                 lambda p, axis, ix=(np.arange(heads)[:, None] * width + offsets[c] + np.arange(size)[None, :])
                 .reshape(-1): _take_param(p, axis, ix))
                for c, size in enumerate(sizes)]
        parts = self._replace_group(members, cuts)[set_name]
        if parent is not None:
            del g.groups[parent.name]
        for k in [*dead, reading]:       # ``reading`` too: only the node splitting it reads it, and it names
            self.values[k] = AUX         # a set that no longer exists
        return parts

    def _own_heads(self, gname: str, heads: int) -> bool:
        """Whether group ``gname``'s parent, if any, is its own partition into ``heads`` heads and nothing
        else's (no parent above it, not fixed, no set or other group in it): what a split of the group
        (:meth:`split_slots`, :meth:`split_heads`) may drop and rebuild for the parts."""
        g = self.graph
        parent = g.groups.get(g.groups[gname].parent) if g.groups[gname].parent else None
        return parent is None or (parent.size == heads and parent.parent is None and not parent.fixed
                                  and not any(t.group == parent.name for t in g.sets.values())
                                  and not any(x.parent == parent.name for x in g.groups.values() if x.name != gname))

    def _dead(self, name: str) -> bool:
        """Whether value ``name`` is read by no node still to be lowered (every reader has its
        outputs already) and is no graph output."""
        return all(all(o in self.values for o in n.output if o) for n in self.consumers.get(name, [])) \
            and not any(o.name == name for sub in all_graphs(self.model.graph) for o in sub.output)

    def _replace_group(self, members: list, cuts: list) -> dict[str, list[str]]:
        """Replace the tie group of ``members`` by one group per cut ``(suffix, size, take)``:
        part i of every member is tied to part i of the first; per-neuron arrays, blocks inside the
        group and blocks in and out are cut with ``take(param, axis)`` (exact origins). Returns each
        member's part names. Shared by :meth:`split_set` (ranges) and :meth:`split_slots` (strides)."""
        g = self.graph
        gname = members[0].group
        group = g.groups[gname]
        inside = {m.name for m in members}
        parts: dict[str, list[str]] = {}
        for m in members:
            names = []
            for i, (suffix, size, take) in enumerate(cuts):
                first = parts[members[0].name][i] if m is not members[0] else None
                t = g.add_set(self.unique(f"{m.name}[{suffix}]"), size, m.role, depth=m.depth,
                              activation=m.activation, fixed=group.fixed, tie=first, **m.attrs)
                g.groups[t.group].rigid = group.rigid
                for key, p in m.arrays.items():
                    t.arrays[key] = take(p, 0)
                names.append(t.name)
            parts[m.name] = names
        kept = []
        for b in g.blocks:
            if b.source not in inside and b.target not in inside:
                kept.append(b)
                continue
            for i, (suffix, _, take) in enumerate(cuts):
                src = parts[b.source][i] if b.source in inside else b.source
                tgt = parts[b.target][i] if b.target in inside else b.target
                axis = 1 if (b.pattern == "full" and b.target not in inside) else 0
                w = take(b.weight, axis) if b.weight is not None else None
                kept.append(EdgeBlock(f"{b.name}[{suffix}]", src, tgt, b.kind, w, dict(b.attrs)))
        g.blocks = kept
        for m in members:
            del g.sets[m.name]
        del g.groups[gname]
        return parts


def _take_param(p: Param, axis: int, index: np.ndarray) -> Param:
    return Param(np.take(p.data, index, axis=axis), p.origin.take(axis, index) if p.origin else None)


def _slice_param(p: Param, axis: int, start: int, stop: int) -> Param:
    index = [slice(None)] * p.data.ndim
    index[axis] = slice(start, stop)
    return Param(p.data[tuple(index)], p.origin.slice(axis, start, stop) if p.origin else None)


def _unsqueezed_channel(ctx: LoweringContext, node: onnx.NodeProto) -> bool:
    """An Unsqueeze that adds axis 1 for a channel-first op to read as its (single) channel."""
    axes = ctx.attr(node, "axes")
    if axes is None and len(node.input) > 1:
        c = ctx.const(node.input[1])
        src = ctx.producer(node.input[1])
        if c is None and src is not None and src.op_type == "Constant" and src.attribute[0].name == "value":
            c = Const(onnx.numpy_helper.to_array(src.attribute[0].t))
        axes = None if c is None else [int(a) for a in np.asarray(c.data).reshape(-1)]
    return list(axes or []) == [1] and any(n.op_type in CHANNEL_FIRST for n in ctx.consumers.get(node.output[0], []))

