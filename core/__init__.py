"""nngraph: any neural network as a neural graph — neurons are nodes, parameters are edges.

    >>> import nngraph
    >>> g = nngraph.convert("model.onnx")          # any format a loaded adapter handles
    >>> nngraph.save(g, "model.ngraph"); g = nngraph.load("model.ngraph")
    >>> data = nngraph.to_pyg(g)                    # torch_geometric.data.Data
    >>> g2 = g.permute(g.random_symmetry(seed=0))   # same function, other neuron order
    >>> nngraph.align(g, g2).distance_after          # the permutation found back
    0.0
"""
from __future__ import annotations

__version__ = "0.1.0"

from .alignment.matching import Alignment, align, interpolate, weight_distance
from .api import convert, find_adapter, from_torch
from .errors import GraphError, InputError, NNGraphError, PluginError, UnsupportedModelError
from .learn.featurize import FeatureConfig, featurize
from .graph.fileformat import load, read_header, save
from .graph.ir import EdgeBlock, NeuralGraph, NeuronSet, Param, SourceTensor, TieGroup, Unmapped
from .graph.materialize import to_coo, to_networkx, to_pyg
from .graph.origin import Origin
from .graph.symmetry import Symmetry, SymmetryGroup, permute, random_symmetry

__all__ = [
    "__version__", "convert", "from_torch", "find_adapter", "load", "save", "read_header", "featurize", "FeatureConfig",
    "NeuralGraph", "NeuronSet", "EdgeBlock", "Param", "TieGroup", "SourceTensor", "Unmapped", "Origin",
    "Symmetry", "SymmetryGroup", "permute", "random_symmetry", "to_coo", "to_pyg", "to_networkx", "align", "Alignment", "interpolate", "weight_distance",
    "NNGraphError", "GraphError", "InputError", "PluginError", "UnsupportedModelError",
]
