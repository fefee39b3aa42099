"""The IR on hand-built networks: validation, exact round trip, symmetries that keep the function."""
from __future__ import annotations

import numpy as np
import pytest

import netlib
from nngraph import GraphError, NeuralGraph, Origin, Param, Symmetry


@pytest.fixture(params=["conv", "attention"])
def net(request, rng):
    kind = request.param
    p = getattr(netlib, f"{kind}_params")(rng)
    g = getattr(netlib, f"{kind}_graph")(p)
    forward = getattr(netlib, f"{kind}_forward")
    x = rng.standard_normal((4, netlib.L) if kind == "conv" else (netlib.T, netlib.D))
    return p, g, forward, x


def test_validate_and_exact_roundtrip(net):
    p, g, _, _ = net
    g.validate()
    assert g.coverage == 1.0
    rebuilt = g.to_params()
    assert rebuilt.keys() == p.keys()
    for k in p:
        assert rebuilt[k].dtype == p[k].dtype and np.array_equal(rebuilt[k], p[k]), k


def test_params_are_views_of_the_source(net):
    p, g, _, _ = net
    for _, param in g.params():
        assert np.shares_memory(param.data, p[param.origin.tensor])


@pytest.mark.parametrize("seed", range(5))
def test_random_symmetry_preserves_function(net, seed):
    p, g, forward, x = net
    sym = g.random_symmetry(seed)
    sym.check(g)
    assert not sym.is_identity()
    permuted = g.permute(sym).to_params()
    assert any(not np.array_equal(permuted[k], p[k]) for k in p), "symmetry moved nothing"
    np.testing.assert_allclose(forward(permuted, x), forward(p, x), rtol=1e-10, atol=1e-10)


def test_half_applied_symmetry_changes_function(net):
    """Control: the function check above can fail — leave one weight block unpermuted and it does."""
    p, g, forward, x = net
    sym = g.random_symmetry(1)
    pg = g.permute(sym)
    moved = lambda name: not np.array_equal(sym.perm(g.sets[name].group, g.sets[name].size),  # noqa: E731
                                            np.arange(g.sets[name].size))
    i = next(i for i, b in enumerate(g.blocks) if b.weight is not None and moved(b.source))
    pg.blocks[i].weight = g.blocks[i].weight
    assert not np.allclose(forward(pg.to_params(), x), forward(p, x))


def test_symmetry_respects_fixed_and_parent_blocks(net):
    _, g, _, _ = net
    groups = {s.name: s for s in g.symmetry_groups()}
    for seed in range(10):
        sym = g.random_symmetry(seed)
        for name, grp in groups.items():
            perm = sym.perm(name, grp.size)
            if grp.fixed:
                assert np.array_equal(perm, np.arange(grp.size)), name
            if grp.parent:
                parent = sym.perm(grp.parent, groups[grp.parent].size)
                bs = grp.size // len(parent)
                assert np.array_equal(perm.reshape(len(parent), bs) // bs, np.repeat(parent[:, None], bs, 1))


def test_inverse_symmetry_restores_graph(net):
    p, g, _, _ = net
    sym = g.random_symmetry(3)
    back = g.permute(sym).permute(sym.inverse()).to_params()
    assert all(np.array_equal(back[k], p[k]) for k in p)


def test_check_rejects_non_symmetries(net):
    _, g, _, _ = net
    fixed = next(s for s in g.symmetry_groups() if s.fixed)
    with pytest.raises(GraphError, match="fixed"):
        Symmetry({fixed.name: np.arange(fixed.size)[::-1].copy()}).check(g)
    free = next(s for s in g.symmetry_groups() if not s.fixed)
    with pytest.raises(GraphError, match="not a permutation"):
        Symmetry({free.name: np.zeros(free.size, dtype=int)}).check(g)
    with pytest.raises(GraphError, match="unknown"):
        Symmetry({"nope": np.arange(2)}).check(g)


def test_attention_heads_move_as_blocks(rng):
    p = netlib.attention_params(rng)
    g = netlib.attention_graph(p)
    swaps = [tuple(g.random_symmetry(s).perm("heads", netlib.H)) for s in range(40)]
    assert (1, 0) in swaps and (0, 1) in swaps
    # a permutation mixing dimensions across heads is rejected
    q_group = g.sets["q"].group
    mixed = np.arange(netlib.H * netlib.DH)
    mixed[[0, netlib.DH]] = mixed[[netlib.DH, 0]]
    with pytest.raises(GraphError, match="blocks"):
        Symmetry({q_group: mixed}).check(g)


def test_validate_names_problems(rng):
    p = netlib.conv_params(rng)
    g = netlib.conv_graph(p)
    g.blocks[0].target = "missing"
    with pytest.raises(GraphError, match="missing set"):
        g.validate()

    g = netlib.conv_graph(p)
    g.sets["s"].group = g.sets["out"].group   # untie the scale's diagonal
    with pytest.raises(GraphError):
        g.validate()

    g = netlib.conv_graph(p)
    del g.sets["c1"].arrays["bias"]           # a source element mapped nowhere
    with pytest.raises(GraphError, match="mapped nowhere"):
        g.validate()

    g = netlib.conv_graph(p)
    g.sets["dw"].arrays["bias"] = Param(p["c1.b"], Origin("c1.b"))   # mapped twice
    with pytest.raises(GraphError, match="more than once"):
        g.validate()

    g = netlib.conv_graph(p)
    g.blocks[0].weight = Param(np.zeros((8, 3, 3)), g.blocks[0].weight.origin)
    with pytest.raises(GraphError, match="weight"):
        g.validate()


def test_tie_merges_groups_and_checks_sizes():
    g = NeuralGraph()
    g.add_set("a", 4)
    g.add_set("b", 4)
    g.add_set("c", 5)
    g.tie("a", "b")
    assert g.sets["a"].group == g.sets["b"].group
    with pytest.raises(GraphError, match="cannot tie"):
        g.tie("a", "c")


def test_origin_scatter_through_non_view_reshape():
    src = np.arange(24.0).reshape(4, 6)
    o = Origin("t").transpose((1, 0)).reshape((2, 3, 4))   # reshape of a transposed view copies
    canon = o.apply(src)
    out = np.zeros_like(src)
    o.scatter(canon, out)
    assert np.array_equal(out, src)
    o2 = Origin("t").slice(1, 2, 5).transpose((1, 0))
    out = np.zeros_like(src)
    o2.scatter(o2.apply(src), out)
    assert np.array_equal(out[:, 2:5], src[:, 2:5]) and not out[:, :2].any()
    assert Origin.from_json(o.to_json()) == o
