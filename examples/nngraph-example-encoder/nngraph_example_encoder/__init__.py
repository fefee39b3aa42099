"""A third-party encoder for nngraph: mean message passing along and against the network's edges.

Install it (``pip install ./examples/nngraph-example-encoder``) and train with it by name:
``ngraph train DATASET --target test_acc --encoder mean-mp -o model.safetensors``. Its tests can
subclass ``nngraph.testing.EncoderConformance`` to prove it respects the graphs' symmetries.
"""
from __future__ import annotations

from nngraph.hookspecs import EncoderSpec, hookimpl


def make_encoder(hidden: int = 32, layers: int = 2, node_dim: int | None = None, edge_dim: int | None = None, **_):
    import torch
    from torch import nn
    from torch_geometric.utils import scatter

    from nngraph.learn.featurize import FeatureConfig

    node_dim = node_dim or FeatureConfig().node_dim
    edge_dim = edge_dim or FeatureConfig().edge_dim

    class MeanMP(nn.Module):
        def __init__(self):
            super().__init__()
            self.node, self.edge = nn.Linear(node_dim, hidden), nn.Linear(edge_dim, hidden)
            self.update = nn.ModuleList(nn.Linear(3 * hidden, hidden) for _ in range(layers))
            self.out_dim = hidden

        def forward(self, batch):
            h, e = torch.relu(self.node(batch.x)), self.edge(batch.edge_attr)
            src, dst = batch.edge_index
            for lin in self.update:
                fwd = scatter(h[src] * e, dst, dim=0, dim_size=h.shape[0], reduce="mean")
                bwd = scatter(h[dst] * e, src, dim=0, dim_size=h.shape[0], reduce="mean")
                h = torch.relu(lin(torch.cat([h, fwd, bwd], dim=-1))) + h
            index = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros(
                h.shape[0], dtype=torch.long, device=h.device)
            return h, scatter(h, index, dim=0, reduce="mean")

    return MeanMP()


@hookimpl
def nngraph_encoders():
    return [EncoderSpec("mean-mp", make_encoder, "mean message passing (example third-party plugin)")]
