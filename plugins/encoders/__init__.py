"""Built-in encoders, registered through the ``nngraph`` entry-point group like a third party's.

Each takes a PyG batch of featurized neural graphs (``nngraph.learn.featurize``) and returns
``(node_embeddings [N, d], graph_embeddings [B, d])``; each is invariant/equivariant under the
graphs' symmetries (tested with ``nngraph.testing.EncoderConformance``). torch is imported only
when an encoder is built.
"""
from __future__ import annotations

from types import MappingProxyType

from nngraph.hookspecs import EncoderSpec, hookimpl


def _ng_gnn(**config):
    from .ng_gnn import NGGNN
    return NGGNN(**config)


def _ng_transformer(**config):
    from .ng_transformer import NGTransformer
    return NGTransformer(**config)


def _statnn(**config):
    from .statnn import StatNN
    return StatNN(**config)


def _deepsets(**config):
    from .deepsets import DeepSets
    return DeepSets(**config)


#: The message-passing encoders' training defaults (ng-gnn, ng-transformer): 64 probe features drawn from
#: U(-1, 1) (optional: a population that cannot be probed trains without them), their per-output-neuron
#: summary in the readout, the fixed neurons' mean state in the readout, and the pool norm. Chosen across the
#: learning suite (test metric, 3–6 seeds; README "Latest changes"). ng-gnn, without the summary: INRs
#: 0.13 → 0.64 / 0.09 → 0.60 (it could not fit them: train 0.13), freq 0.950 → 1.000, the zoos within a seed
#: spread; the summary then gained on 7 of 12 populations (zoo_original τ 0.577 → 0.696, zoo_wide_original
#: 0.515 → 0.657, hetero 0.558 → 0.702, the trainable zoo recipe pooled over 240 test networks 0.748 → 0.778)
#: and lost on inr (0.642 → 0.575, one seed), zoo_s2 (−0.021) and tasks (−0.017). Batches of 16 and dropping
#: the pool norm were measured and lost. ng-transformer, from the pool norm alone to all of them: higher on
#: all 11 populations where it had run, by +0.008 (tasks) to +0.51 (inr 0.104 → 0.617, train 0.871 →
#: 1.000; zoo_original τ 0.475 → 0.659, zoo 0.785 → 0.847).
MESSAGE_PASSING_DEFAULTS = MappingProxyType({"probes": 64, "probe_inputs": "uniform", "probe_summary": True,
                                             "pool_fixed": True, "pool_norm": "batch"})
NG_GNN_DEFAULTS = MESSAGE_PASSING_DEFAULTS          # its name before ng-transformer shared it

#: deepsets' training defaults: the same probe features (its edges read their endpoints' features; it has no
#: summary term or fixed-neuron pool) and the pool norm, without which it cannot fit (train accuracy freq
#: 0.62, tasks 0.29). Probes, over the pool norm alone: it now fits the INRs (train 0.41 → 0.99; test 0.137 →
#: 0.233) and gains on 7 of 11 populations (zoo_original τ 0.478 → 0.569, zoo_wide_original 0.292 → 0.393),
#: is within ±0.01 on three (tasks, zoo_wide, hetero) and loses on zoo_s2 (−0.039).
DEEPSETS_DEFAULTS = MappingProxyType({"probes": 64, "probe_inputs": "uniform", "pool_norm": "batch"})


@hookimpl
def nngraph_encoders() -> list[EncoderSpec]:
    # Training defaults (TrainConfig.for_encoder, `ngraph train`), measured across the learning suite
    # (README "Training defaults per encoder"): MESSAGE_PASSING_DEFAULTS, DEEPSETS_DEFAULTS; statnn reads weight
    # statistics only (no node features to probe, no pooled vector to normalize).
    return [
        EncoderSpec("ng-gnn", _ng_gnn, "PNA-style message passing with edge updates, along and against "
                                       "the network's direction (Kofinas et al. 2024)",
                    train_defaults=MESSAGE_PASSING_DEFAULTS),
        EncoderSpec("ng-transformer", _ng_transformer, "relational transformer: sparse attention over graph "
                                                       "edges with edge features", train_defaults=MESSAGE_PASSING_DEFAULTS),
        EncoderSpec("statnn", _statnn, "per-depth weight statistics → MLP (Unterthiner et al. 2020)"),
        EncoderSpec("deepsets", _deepsets, "edges as a set, no structure", train_defaults=DEEPSETS_DEFAULTS),
    ]
