"""Built-in task heads: graph regression, graph classification, embedding (contrastive), node-level.

``factory(in_dim, out_dim, **config)`` returns a module applied to an encoder's output:
graph heads take graph embeddings [B, d], the node head node embeddings [N, d].
"""
from __future__ import annotations

from nngraph.hookspecs import HeadSpec, hookimpl


def _mlp_head(in_dim: int, out_dim: int, hidden: int = 64, dropout: float = 0.0):
    from torch import nn
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


def _embedding_head(in_dim: int, out_dim: int = 32, hidden: int = 64):
    from torch import nn

    class Embedding(nn.Module):
        """Projection to a unit sphere; trained contrastively with random symmetries of the same
        network as positives (an InfoNCE loss over the batch)."""

        def __init__(self):
            super().__init__()
            self.proj = _mlp_head(in_dim, out_dim, hidden)

        def forward(self, g):
            return nn.functional.normalize(self.proj(g), dim=-1)

    return Embedding()


@hookimpl
def nngraph_heads() -> list[HeadSpec]:
    return [
        HeadSpec("regression", _mlp_head, task="graph-regression", description="MLP → one value per target"),
        HeadSpec("classification", _mlp_head, task="graph-classification", description="MLP → class logits"),
        HeadSpec("embedding", _embedding_head, task="embedding", description="unit-norm embedding (contrastive)"),
        HeadSpec("node", _mlp_head, task="node", description="MLP per node"),
    ]
