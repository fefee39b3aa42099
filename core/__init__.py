"""nngraph: any neural network as a neural graph — neurons are nodes, parameters are edges.

    >>> import nngraph
    >>> g = nngraph.convert("model.onnx")          # any format a loaded adapter handles
    >>> g.save("model.ngraph"); g = nngraph.load("model.ngraph")
    >>> data = g.to_pyg()                           # torch_geometric.data.Data
    >>> g2 = g.permute(g.random_symmetry(seed=0))   # same function, other neuron order
    >>> nngraph.align(g, g2).distance_after          # the permutation found back
    0.0
"""
from __future__ import annotations

__version__ = "0.1.0"

from .alignment import Alignment, align, interpolate, weight_distance
from .api import convert, find_adapter, from_torch
from .errors import GraphError, InputError, NNGraphError, PluginError, UnsupportedModelError
from .featurize import FeatureConfig, featurize
from .fileformat import load, read_header, save
from .ir import EdgeBlock, NeuralGraph, NeuronSet, Param, SourceTensor, TieGroup, Unmapped
from .origin import Origin
from .symmetry import Symmetry, SymmetryGroup

__all__ = [
    "__version__", "convert", "from_torch", "find_adapter", "load", "save", "read_header", "featurize", "FeatureConfig",
    "NeuralGraph", "NeuronSet", "EdgeBlock", "Param", "TieGroup", "SourceTensor", "Unmapped", "Origin",
    "Symmetry", "SymmetryGroup", "align", "Alignment", "interpolate", "weight_distance",
    "NNGraphError", "GraphError", "InputError", "PluginError", "UnsupportedModelError",
]
