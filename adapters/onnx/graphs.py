"""Walking ONNX graphs: nested subgraphs, the names a node reads from outside them, node labels.

The bottom layer of the adapter: the reader, the writer, the lowering context and the driver
all walk ``If`` / ``Loop`` / ``Scan`` bodies the same way, through these helpers.
"""
from __future__ import annotations

from collections.abc import Iterator

import onnx


def node_label(node: onnx.NodeProto) -> str:
    """How messages and pin reports name a node: its name, else its first output."""
    return node.name or (node.output[0] if node.output else node.op_type)


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """Every graph nested in ``node``'s attributes (and in theirs)."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield from all_graphs(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            for sub in a.graphs:
                yield from all_graphs(sub)


def all_graphs(g: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """A graph and every subgraph nested in its nodes (If / Loop / Scan bodies)."""
    yield g
    for node in g.node:
        yield from subgraphs(node)


def outer_names(node: onnx.NodeProto) -> list[str]:
    """Values a node's subgraphs read from the enclosing scope (their own values excluded):
    what a pinned ``Loop`` or ``If`` really depends on besides its inputs."""
    names: list[str] = []
    for sub in subgraphs(node):
        own = {i.name for i in sub.input} | {t.name for t in sub.initializer} | {o for n in sub.node for o in n.output}
        names += [i for n in sub.node for i in n.input if i and i not in own]
    return names
