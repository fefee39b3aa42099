"""COO, PyG and networkx views: edges where the weights say, batching offsets only edges."""
from __future__ import annotations

import numpy as np
import pytest

import netlib
from nngraph import to_coo, to_networkx, to_pyg


@pytest.fixture
def conv(rng):
    p = netlib.conv_params(rng)
    return p, netlib.conv_graph(p)


def test_coo_edges_carry_the_right_weights(conv):
    p, g = conv
    c = to_coo(g)
    assert c.edge_index.shape == (2, g.num_edges) and c.num_nodes == g.num_nodes
    off = g.set_offsets()
    # grouped conv c1: out channel o (group o // 4) reads input channels 2*(o//4) + j, taps = kernel
    sel = c.edge_block == 0
    src, tgt = c.edge_index[:, sel] - np.array([[off["x"]], [off["c1"]]])
    assert len(src) == 8 * 2
    for s, t, attr in zip(src, tgt, c.edge_attr[sel]):
        assert s // 2 == t // 4
        np.testing.assert_allclose(attr[:3], p["c1.w"][t, s - 2 * (t // 4)], rtol=1e-6)
    # flatten → dense: edge (channel ch → out o) carries the channel's L spatial weights
    fc = [i for i, b in enumerate(g.blocks) if b.name == "fc"][0]
    sel = c.edge_block == fc
    src, tgt = c.edge_index[:, sel] - np.array([[off["s"]], [off["out"]]])
    assert c.edge_attr.shape[1] == netlib.L
    for s, t, attr in zip(src, tgt, c.edge_attr[sel]):
        np.testing.assert_allclose(attr, p["fc.w"][s * netlib.L:(s + 1) * netlib.L, t], rtol=1e-6)
    # identity edges are one-to-one with weight 1
    r = [i for i, b in enumerate(g.blocks) if b.kind == "identity"][0]
    sel = c.edge_block == r
    assert np.array_equal(c.edge_index[0, sel] - off[g.blocks[r].source], c.edge_index[1, sel] - off["r"])
    assert np.all(c.edge_attr[sel, 0] == 1)
    assert c.node_fixed[off["x"]:off["x"] + 4].all() and not c.node_fixed[off["c1"]]


def test_pyg_batching(rng):
    pytest.importorskip("torch_geometric")
    import torch
    from torch_geometric.data import Batch

    graphs = [netlib.conv_graph(netlib.conv_params(rng)), netlib.attention_graph(netlib.attention_params(rng)),
              netlib.conv_graph(netlib.conv_params(rng))]
    datas = [to_pyg(g, max_taps=netlib.L) for g in graphs]
    batch = Batch.from_data_list(datas)
    offsets = np.cumsum([0] + [d.num_nodes for d in datas])
    assert batch.num_nodes == offsets[-1] and batch.num_graphs == 3
    expected = torch.cat([d.edge_index + int(o) for d, o in zip(datas, offsets)], dim=1)
    assert torch.equal(batch.edge_index, expected)
    for key in ("node_set", "node_role", "node_depth", "edge_kind", "edge_block", "edge_attr"):
        assert torch.equal(batch[key], torch.cat([d[key] for d in datas])), key
    assert torch.equal(batch.batch, torch.repeat_interleave(torch.arange(3), torch.tensor([d.num_nodes for d in datas])))
    assert batch.edge_index.max() < batch.num_nodes


def test_networkx(conv):
    _, g = conv
    nxg = to_networkx(g)
    assert nxg.number_of_nodes() == g.num_nodes and nxg.number_of_edges() == g.num_edges
    off = g.set_offsets()
    assert nxg.nodes[off["c1"]]["set"] == "c1" and nxg.nodes[off["c1"]]["activation"] == "relu"
    kinds = {d["kind"] for _, _, d in nxg.edges(data=True)}
    assert kinds == {"conv", "identity", "scale", "dense"}


def test_lean_dtypes_and_split_taps(conv):
    """int32 indices, int8 kinds; split taps hold exactly the padded layout's information."""
    _, g = conv
    from nngraph.graph.materialize import block_edges, to_coo
    pad, split = to_coo(g), to_coo(g, taps="split")   # (NeuralGraph.to_coo takes no taps= yet)
    assert pad.edge_index.dtype == np.int32 and pad.edge_kind.dtype == np.int8 and pad.edge_block.dtype == np.int32
    assert np.array_equal(pad.edge_index, split.edge_index) and split.edge_attr.shape == (g.num_edges, 1)
    tapped = np.array([g.blocks[b].taps > 1 for b in pad.edge_block])
    assert np.array_equal(split.edge_num_taps > 0, tapped)
    per_edge = np.split(split.edge_taps, np.cumsum(split.edge_num_taps)[:-1])
    for e in np.flatnonzero(tapped):                               # each edge's own taps, unpadded
        n = split.edge_num_taps[e]
        np.testing.assert_array_equal(per_edge[e], pad.edge_attr[e, :n])
        assert not pad.edge_attr[e, n:].any()
    assert all(len(per_edge[e]) == 0 for e in np.flatnonzero(~tapped)[:5])
    np.testing.assert_array_equal(split.edge_attr[~tapped, 0], pad.edge_attr[~tapped, 0])
    assert not pad.edge_attr[~tapped, 1:].any()                   # what split saves: padding
    assert split.nbytes < pad.nbytes
    src, tgt = pad.edge_index.astype(np.int64)                    # block_edges (int64) agrees
    for i, b in enumerate(g.blocks):
        s, t = block_edges(g, b)
        off = g.set_offsets()
        assert np.array_equal(src[pad.edge_block == i] - off[b.source], s)
        assert np.array_equal(tgt[pad.edge_block == i] - off[b.target], t)


def test_bytes_per_edge_of_a_transformer():
    """A LLaMA-layout graph (bf16 weights, one tap per edge): 17 bytes per edge (int32 pair,
    float32 weight, int8 kind, int32 block), where int64 indices and kinds took 36."""
    from pathlib import Path
    import nngraph
    g = nngraph.convert(Path(__file__).parent / "fixtures" / "safetensors" / "tinyllama" / "model.safetensors.index.json")
    c = to_coo(g)
    edge_bytes = sum(a.nbytes for a in (c.edge_index, c.edge_attr, c.edge_kind, c.edge_block))
    assert edge_bytes == 17 * g.num_edges
    lm = [i for i, b in enumerate(g.blocks) if b.name == "lm_head"][0]
    w = np.asarray(g.blocks[lm].weight.data, np.float32).reshape(-1)
    np.testing.assert_array_equal(c.edge_attr[c.edge_block == lm, 0], w)   # bf16 read as float32


def test_split_taps_batch(rng):
    pytest.importorskip("torch_geometric")
    import torch
    from torch_geometric.data import Batch
    graphs = [netlib.conv_graph(netlib.conv_params(rng)) for _ in range(2)]
    from nngraph.graph.materialize import to_pyg
    datas = [to_pyg(g, taps="split") for g in graphs]
    batch = Batch.from_data_list(datas)
    assert torch.equal(batch.edge_taps, torch.cat([d.edge_taps for d in datas]))
    assert int(batch.edge_num_taps.sum()) == len(batch.edge_taps)
