"""weightspace: symmetry-aware embeddings of neural-network weights."""

from weightspace.errors import WeightspaceError
from weightspace.graph import NeuralGraph, batch_graphs, to_graph, to_state_dict
from weightspace.layout import Layout, layout_of
from weightspace.module import SpecModule, to_module
from weightspace.spec import ACTIVATIONS, NetworkSpec, Op, mlp_spec

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Layout",
    "NetworkSpec",
    "NeuralGraph",
    "Op",
    "SpecModule",
    "WeightspaceError",
    "__version__",
    "batch_graphs",
    "layout_of",
    "mlp_spec",
    "to_graph",
    "to_module",
    "to_state_dict",
]
