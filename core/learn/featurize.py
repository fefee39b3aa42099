"""From a NeuralGraph to the tensors an encoder learns from.

Node features ``x``: one-hot role and activation, the per-neuron parameters in canonical slots
(bias, norm scale/shift, running mean/variance, anything else averaged), depth relative to the
graph's deepest set, a fixed-neuron flag, then the probe features (``probes`` columns) and, with
``probe_summary``, four columns of :func:`output_summary` on output neurons. Fixed neurons (network inputs and outputs) have an
identity no symmetry moves; ``node_pos`` gives it (their index in their set, offset per set) so an
encoder may learn a position embedding for them; it is -1 for permutable neurons.
Edge features ``edge_attr``: the weight or kernel taps resampled to ``taps`` values, then a
one-hot block kind. Weight scaling (``scale``): none (``FeatureConfig``'s default: scale carries information;
training defaults to ``fan_in``, ``TrainConfig``),
per block (each block divided by its RMS), per graph (by the RMS of all weights) or ``fan_in``
(each block's weights, and each neuron's bias, multiplied by √fan-in, the number of weights a
neuron of the block's target receives from it: standard inits draw weights of std ∝ 1/√fan-in, so
this removes what width alone does to weight scale and keeps everything else — init scale, weight
decay, training — see ``fan_in_scales``).

Raw weights are small (RMS ≈ 0.1 in a trained MLP) next to the one-hot columns, so the part of an
encoder's input embedding that depends on them is a few per cent of it and every network embeds to
nearly the same vector (measured: pooled embeddings differ across networks by 1e-3 of their scale,
and ng-gnn stays at chance). ``feature_scales`` measures, over a training population, the RMS of
each per-neuron parameter slot and of each edge kind's taps; training divides by them (one set of
constants for the whole dataset, stored in the checkpoint), which keeps the relative scale between
networks that ``scale="block"`` would erase.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..graph.ir import NeuralGraph
from ..graph.materialize import write_block_edges
from ..graph.vocab import ACTIVATION_IDS, ACTIVATIONS, EDGE_KIND_IDS, EDGE_KINDS, ROLE_IDS, ROLES
from .probes import PROBE, PROBE_INPUTS, is_probe_file

SLOTS = ("bias", "scale", "shift", "mean", "var", "other")
#: What :func:`output_summary` gives each output neuron, in column order.
SUMMARY_COLUMNS = ("mean_probability", "argmax_fraction", "mean_value", "std_value")
#: Edge-weight scalings (``FeatureConfig.scale``; the module docstring says what each does).
WEIGHT_SCALES = ("none", "block", "graph", "fan_in")


@dataclass(frozen=True)
class FeatureConfig:
    taps: int = 9                 # edge-vector length (kernels and flatten taps resampled to it)
    scale: str = "none"           # none | block | graph | fan_in
    max_positions: int = 4096     # fixed-neuron positions beyond this wrap around
    probes: int = 0               # probe-feature columns: neuron outputs on fixed inputs (learn.probes)
    probe_inputs: str = "normal"  # normal: the adapter's example inputs; uniform: floats from U(-1, 1);
                                  # PATH.npz: samples from a file (learn.probes.load_probe_file)
    probe_summary: bool = False   # output neurons also get what the network predicts on the probes
                                  # (output_summary; needs probes)

    def __post_init__(self):
        if self.probe_inputs not in PROBE_INPUTS and not is_probe_file(self.probe_inputs):
            raise ValueError(f"probe_inputs must be one of {', '.join(PROBE_INPUTS)} or an .npz file, "
                             f"got {self.probe_inputs!r}")
        if self.probe_summary and not self.probes:
            raise ValueError("FeatureConfig.probe_summary needs probes > 0 (it summarizes the output probe values)")
        if self.scale not in WEIGHT_SCALES:
            raise ValueError(f"FeatureConfig.scale must be one of {', '.join(WEIGHT_SCALES)}, got {self.scale!r}")

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def node_dim(self) -> int:
        return self.base_node_dim + self.probes + self.summary_dim

    @property
    def summary_dim(self) -> int:
        """Trailing columns of :func:`output_summary` (0 without ``probe_summary``)."""
        return len(SUMMARY_COLUMNS) if self.probe_summary else 0

    @property
    def base_node_dim(self) -> int:
        """Columns before the probe features: roles, activation, parameter slots (values, then flags),
        depth, fixed."""
        return param_columns().stop + len(SLOTS) + 2

    @property
    def edge_dim(self) -> int:
        return self.taps + len(EDGE_KINDS)


def _slot(key: str) -> str:
    for slot in ("bias", "scale", "shift", "mean", "var"):
        if key == slot or key.endswith(f"_{slot}") or key == f"recurrent_{slot}":
            return slot
    return "other"


def resample_taps(taps: np.ndarray, k: int, pad: bool = True) -> np.ndarray:
    """[E, t] → [E, k]: average long vectors into k bins; zero-pad short ones to k (``pad``) or
    leave them at t columns (streamed chunks: an encoder's linear map ignores zero columns)."""
    E, t = taps.shape
    if t == k or (t < k and not pad):
        return taps
    if t < k:
        out = np.zeros((E, k), np.float32)
        out[:, :t] = taps
        return out
    edges = np.linspace(0, t, k + 1).round().astype(int)
    sums = np.add.reduceat(taps, edges[:-1], axis=1)
    return (sums / np.maximum(np.diff(edges), 1)).astype(np.float32)


def fan_in_scales(graph: NeuralGraph) -> tuple[dict[int, float], dict[str, float]]:
    """``scale="fan_in"`` multipliers: ``(block index → √fan-in, set name → √fan-in)``. A block's fan-in
    is its weights per target neuron (weight entries / target-set size: in-channels × kernel taps for a
    convolution, in-features for a dense layer, kernel taps for a depthwise one) — the fan-in its layer
    was initialised with (PyTorch, Glorot and He inits all draw std ∝ 1/√fan-in, biases too);
    embedding blocks are left out (drawn at std 1, not ∝ 1/√vocabulary). A set's
    fan-in, for its biases, is the sum over the weighted blocks into it; sets without one are absent.
    Measured on the CNN zoo (widths 4–32): scaled conv-weight RMS fell from 1.0 (width 4) to 0.46–0.75
    (24–32) and dense from 0.95 to 0.36, so wide networks' inputs lay outside the training range."""
    blocks, sets = {}, {}
    for i, b in enumerate(graph.blocks):
        # embeddings are drawn at std 1 whatever the vocabulary (nn.Embedding): their fan-in would be
        # the vocabulary size, so they keep their scale (and add nothing to a set's bias fan-in)
        if b.weight is None or b.kind == "embedding" or graph.edge_count(b) == 0:
            continue
        fan = b.weight.data.size / max(graph.sets[b.target].size, 1)
        blocks[i] = float(np.sqrt(fan))
        sets[b.target] = sets.get(b.target, 0.0) + fan
    return blocks, {k: float(np.sqrt(v)) for k, v in sets.items()}


def output_summary(values: np.ndarray) -> np.ndarray:
    """What a network predicts on its probes, per neuron of one output set: ``values [n, k]`` (neuron
    ``i``'s output on probe ``j``) → ``[n, 4]`` (:data:`SUMMARY_COLUMNS`): its softmax probability across
    the set, averaged over probes; the fraction of probes on which it is the set's largest; the mean and
    the standard deviation of its values over probes.

    Why: these are comparisons *across* output neurons (which class wins, how often) that message
    passing and mean/max pooling do not learn from a few hundred networks. On the CNN zoos, gradient
    boosting on this summary alone (16 uniform probes) ranks test accuracy at τ 0.825 against 0.700 for
    the weight statistics: a collapsed network predicts one class whatever its input, and its accuracy is
    that class's share of the test set; the spread over probes tells a collapsed network from a working one."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return np.zeros((v.shape[0], len(SUMMARY_COLUMNS)), np.float32)
    e = np.exp(v - v.max(axis=0, keepdims=True))
    prob = e / e.sum(axis=0, keepdims=True)
    wins = np.zeros_like(v)
    wins[v.argmax(axis=0), np.arange(v.shape[1])] = 1.0
    return np.stack([prob.mean(1), wins.mean(1), v.mean(1), v.std(1)], axis=1).astype(np.float32)


def node_features(graph: NeuralGraph, config: FeatureConfig = FeatureConfig()):
    """``(x [N, node_dim] float32, node_pos [N] int64, node_depth [N] int64)`` (see the module
    docstring); shared by ``featurize`` and the streamed path (``nngraph.learn.stream``)."""
    sets = list(graph.sets.values())
    offsets = graph.set_offsets()
    N = graph.num_nodes
    max_depth = max((s.depth for s in sets), default=0) or 1
    fixed = {g.name for g in graph.symmetry_groups() if g.fixed}
    x = np.zeros((N, config.node_dim), np.float32)
    pos = np.full(N, -1, np.int64)
    depth = np.zeros(N, np.int64)
    base = param_columns(config).start
    fixed_seen = 0
    set_fan = fan_in_scales(graph)[1] if config.scale == "fan_in" else {}
    for s in sets:
        o, n = offsets[s.name], s.size
        rows = slice(o, o + n)
        x[rows, role_column(s.role)] = 1
        x[rows, activation_column(s.activation)] = 1
        for key, p in s.arrays.items():
            if key == PROBE:
                if config.probes:
                    values = np.asarray(p.data, np.float32)[:, :config.probes]
                    x[rows, config.base_node_dim:config.base_node_dim + config.probes] = values
                    if config.probe_summary and s.role == "output":
                        x[rows, summary_columns(config.summary_dim)] = output_summary(values)
                continue
            k = SLOTS.index(_slot(key))
            v = np.asarray(p.data, np.float32).reshape(n, -1).mean(axis=1)
            if k == 0 and s.name in set_fan:
                v = v * np.float32(set_fan[s.name])
            x[rows, base + k] += v
            x[rows, base + len(SLOTS) + k] = 1
        x[rows, config.base_node_dim - 2] = s.depth / max_depth
        depth[rows] = s.depth
        if s.group in fixed:
            x[rows, config.base_node_dim - 1] = 1
            pos[rows] = (fixed_seen + np.arange(n)) % config.max_positions
            fixed_seen += n
    return x, pos, depth


def graph_weight_rms(graph: NeuralGraph) -> float:
    """The divisor of ``scale="graph"``: root of the mean over weight blocks of each block's mean
    square, accumulated in float64 slices (no float64 copy of a whole block)."""
    ms = []
    for b in graph.blocks:
        if b.weight is None:
            continue
        flat = b.weight.data.reshape(-1)
        step = 1 << 22
        ms.append(sum(float(np.square(np.asarray(flat[j:j + step], np.float64)).sum())
                      for j in range(0, flat.size, step)) / max(flat.size, 1))
    return float(np.sqrt(np.mean(ms))) if ms else 1.0


def featurize(graph: NeuralGraph, config: FeatureConfig = FeatureConfig()):
    """A ``torch_geometric.data.Data`` with ``x``, ``edge_index``, ``edge_attr`` and the
    integer attributes ``node_pos``, ``node_depth``, ``edge_kind``, ``edge_depth``.

    Lean: every edge array is allocated once at its final size and each block written into its
    slice (no per-block lists, no concatenation); ``edge_kind`` and ``edge_depth`` are int32 and
    edge endpoints are written straight into ``edge_index`` (int64: what PyG's scatters index with).
    Peak ≈ the result plus one block's float32 taps."""
    import torch
    from torch_geometric.data import Data

    x, pos, depth = node_features(graph, config)
    offsets = graph.set_offsets()
    E = graph.num_edges
    edge_index = np.empty((2, E), np.int64)
    attr = np.zeros((E, config.edge_dim), np.float32)
    kinds = np.empty(E, np.int32)
    edge_depth = np.empty(E, np.int32)
    graph_rms = graph_weight_rms(graph) if config.scale == "graph" else 1.0
    block_fan = fan_in_scales(graph)[0] if config.scale == "fan_in" else {}
    e = 0
    for i, b in enumerate(graph.blocks):
        n = graph.edge_count(b)
        if n == 0:          # opaque blocks: parameters without known connectivity
            continue
        sl = slice(e, e + n)
        write_block_edges(graph, b, edge_index[0, sl], edge_index[1, sl], offsets[b.source], offsets[b.target])
        if b.weight is None:
            attr[sl, 0] = 1
        else:
            taps = b.weight.data.reshape(n, -1)
            if taps.shape[1] == 1 and config.scale != "block":     # scalar weights: cast in place, no temporary
                attr[sl, 0] = taps[:, 0]
                if config.scale == "graph":
                    attr[sl, 0] /= max(graph_rms, 1e-12)
                elif i in block_fan:
                    attr[sl, 0] *= np.float32(block_fan[i])
            else:
                taps = np.asarray(taps, np.float32)
                if config.scale == "block":
                    taps = taps / max(float(np.sqrt(np.mean(np.square(taps)))), 1e-12)
                elif config.scale == "graph":
                    taps = taps / max(graph_rms, 1e-12)
                elif i in block_fan:
                    taps = taps * np.float32(block_fan[i])
                attr[sl, :config.taps] = resample_taps(taps, config.taps)
        attr[sl, config.taps + EDGE_KIND_IDS[b.kind]] = 1
        kinds[sl] = EDGE_KIND_IDS[b.kind]
        edge_depth[sl] = graph.sets[b.target].depth
        e += n
    t = torch.from_numpy
    return Data(x=t(x), edge_index=t(edge_index), edge_attr=t(attr), edge_kind=t(kinds),
                edge_depth=t(edge_depth), node_pos=t(pos), node_depth=t(depth), num_nodes=graph.num_nodes)


def role_column(role: str) -> int:
    """The node-feature column of the one-hot ``role`` (``graph.vocab.ROLES``: the first columns)."""
    return ROLE_IDS[role]


def activation_column(activation: str | None) -> int:
    """The node-feature column of the one-hot ``activation``, after the roles; the first of them is
    "none" (no activation, or one outside ``graph.vocab.ACTIVATIONS``)."""
    return len(ROLES) + ACTIVATION_IDS.get(activation, 0)


def param_columns(config: FeatureConfig = FeatureConfig()) -> slice:
    """The node-feature columns holding per-neuron parameter values (one per slot of :data:`SLOTS`), after
    the role and activation one-hots; the next ``len(SLOTS)`` columns flag which slots a neuron has."""
    start = len(ROLES) + 1 + len(ACTIVATIONS)
    return slice(start, start + len(SLOTS))


def summary_columns(summary_dim: int) -> slice:
    """The node-feature columns of :func:`output_summary`: the last ``summary_dim`` ones
    (``FeatureConfig.summary_dim``, which an encoder is given; none when it is 0)."""
    return slice(-summary_dim, None) if summary_dim else slice(0, 0)


def scaled_columns(config: FeatureConfig = FeatureConfig()) -> list[int]:
    """Node columns that input scaling brings to RMS 1: parameter slots and probe features."""
    return [*range(param_columns(config).start, param_columns(config).stop),
            *range(config.base_node_dim, config.node_dim)]


def feature_scales(datas, config: FeatureConfig = FeatureConfig(), reduce=None):
    """Per-dataset input scales: ``(node_scale [node_dim], edge_scale [len(EDGE_KINDS)])``, multipliers
    that bring each parameter slot, each probe column and each edge kind's non-zero taps to RMS 1 over ``datas``
    (featurized graphs). Columns and kinds that never occur keep scale 1. ``reduce`` sums a tensor of
    partial sums over processes (distributed training: each rank passes its own graphs, all get the
    scales of the union)."""
    import torch
    node = torch.ones(config.node_dim)
    edge = torch.ones(len(EDGE_KINDS))
    if not datas and reduce is None:
        return node, edge
    cols = scaled_columns(config)
    # float64 sums, one graph (and one slice of edges) at a time: one diverged network's value of 3e19,
    # squared in float32, overflowed to inf and made that column's scale 0 for every network; non-finite
    # values (inf/nan weights) are left out of the sums for the same reason
    f64, step = torch.float64, 1 << 20
    xx, nz = torch.zeros(len(cols), dtype=f64), torch.zeros(len(cols), dtype=f64)
    sq, cnt = torch.zeros(len(EDGE_KINDS), dtype=f64), torch.zeros(len(EDGE_KINDS), dtype=f64)
    finite = lambda t: torch.nan_to_num(t.to(f64), nan=0.0, posinf=0.0, neginf=0.0)  # noqa: E731
    for d in datas:
        x = finite(d.x[:, cols])
        xx += (x * x).sum(0)
        nz += (x != 0).sum(0)
        for i in range(0, d.edge_attr.shape[0], step):
            taps, kind = finite(d.edge_attr[i:i + step, :config.taps]), d.edge_kind[i:i + step].long()
            sq.index_add_(0, kind, (taps * taps).sum(1))
            cnt.index_add_(0, kind, (taps != 0).sum(1).to(f64))
    if reduce is not None:
        xx, nz, sq, cnt = reduce(torch.cat([xx, nz, sq, cnt])).split([len(xx), len(nz), len(sq), len(cnt)])
    rms = torch.sqrt(xx / nz.clamp(min=1))
    node[cols] = torch.where((nz > 0) & (rms > 1e-12), 1 / rms.clamp(min=1e-12), torch.ones_like(rms)).float()
    rms = torch.sqrt(sq / cnt.clamp(min=1))
    edge = torch.where((cnt > 0) & (rms > 1e-12), 1 / rms.clamp(min=1e-12), edge.double()).float()
    return node, edge


def apply_scales(batch, node_scale, edge_scale, config: FeatureConfig = FeatureConfig()):
    """A shallow copy of ``batch`` with ``x`` and the edge taps multiplied by the scales."""
    import copy

    import torch
    out = copy.copy(batch)
    out.x = batch.x * node_scale
    attr, k = batch.edge_attr, config.taps
    out.edge_attr = torch.cat([attr[:, :k] * edge_scale[batch.edge_kind].unsqueeze(-1), attr[:, k:]], dim=-1)
    return out
