"""Closed vocabularies of the IR: neuron roles, edge-block kinds and activations.

They are closed so that a featurizer can one-hot them with stable ids across versions: new
entries are appended, never inserted. Each block kind fixes the *connection pattern* its
edges follow, which is what `to_coo` and `permute` need to know about it.
"""
from __future__ import annotations

#: What a neuron set is in the network.
ROLES: tuple[str, ...] = (
    "input",      # network input features / channels (fixed)
    "hidden",     # output of a dense/conv/recurrent layer
    "output",     # network output (fixed)
    "query",      # attention query dimensions (per head)
    "key",        # attention key dimensions (per head)
    "value",      # attention value dimensions (per head)
    "head",       # one node per attention head: carries the head structure
    "norm",       # output of a normalization layer
    "residual",   # a sum or product of other sets (residual add, gating)
    "gate",       # recurrent gate pre-activations
    "state",      # recurrent hidden / cell state
    "token",      # rows of an embedding table (vocabulary, positions)
    "scale",      # output of an elementwise per-channel affine map
)

#: Edge-block kinds and the connection pattern each follows.
#: Patterns: ``full``: every source to every target (within groups);
#: ``diagonal``: source i to target i (the two sets are tied); ``membership``: neuron i of
#: the source to node i // block_size of the target (a child set to its parent group);
#: ``index``: source neuron i to target neuron ``attrs["index"][i]`` (a fixed reordering such as
#: a channel shuffle, or a concatenation that must become one set; both sets are then fixed,
#: since no tie group can express the conjugated symmetry); ``opaque``: the parameters of an op
#: the converter could not follow, kept exactly, any shape, between two fixed sets and with no
#: edges (how they connect the neurons is unknown).
KINDS: dict[str, str] = {
    "dense": "full",          # Gemm / MatMul / Linear; also flatten→dense with spatial taps
    "conv": "full",           # Conv/ConvTranspose, kernel taps as the edge vector; grouped via attrs
    "embedding": "full",      # lookup table: token → dimension
    "recurrent": "full",      # hidden state → gates (LSTM/GRU/RNN recurrence)
    "identity": "diagonal",   # residual connection / pass-through, weight 1
    "scale": "diagonal",      # per-channel multiplier (LayerScale, folded norm scale)
    "norm": "diagonal",       # normalization: x_i → y_i (statistics shared across the set)
    "attention": "diagonal",  # q_i · k_i pairing inside one head
    "head": "membership",     # a q/k/v dimension → its head node
    "shuffle": "index",       # a fixed reordering/placement (channel shuffle, concat made one set)
    "opaque": "opaque",       # parameters of an op that could not be followed (both sets pinned)
}

ACTIVATIONS: tuple[str, ...] = (
    "relu", "leaky_relu", "prelu", "elu", "selu", "celu", "gelu", "sigmoid", "hard_sigmoid",
    "tanh", "softplus", "softsign", "softmax", "log_softmax", "swish", "hard_swish", "mish",
    "sin", "cos", "exp", "abs", "clip", "thresholded_relu", "other",
)


#: The kinds that have edges (every kind but ``opaque``): what edge features one-hot.
EDGE_KINDS: tuple[str, ...] = tuple(k for k, p in KINDS.items() if p != "opaque")

#: Stable integer ids for one-hot features and compact arrays (``to_coo``, ``featurize``).
ROLE_IDS: dict[str, int] = {r: i for i, r in enumerate(ROLES)}
KIND_IDS: dict[str, int] = {k: i for i, k in enumerate(KINDS)}
EDGE_KIND_IDS: dict[str, int] = {k: i for i, k in enumerate(EDGE_KINDS)}
ACTIVATION_IDS: dict[str, int] = {a: i + 1 for i, a in enumerate(ACTIVATIONS)}   # 0 = none


def kind_pattern(kind: str) -> str:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown edge-block kind {kind!r}; known: {', '.join(KINDS)}") from None
