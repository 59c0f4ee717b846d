"""weightspace: symmetry-aware embeddings of neural-network weights."""

from weightspace.errors import WeightspaceError
from weightspace.graph import NeuralGraph, batch_graphs, to_graph, to_state_dict
from weightspace.layout import Layout, layout_of
from weightspace.module import SpecModule, to_module
from weightspace.spec import ACTIVATIONS, NetworkSpec, Op, mlp_spec

__version__ = "0.1.0"

_LAZY = {
    "Encoder": "weightspace.nn",
    "Zoo": "weightspace.zoo",
    "ModelIndex": "weightspace.index",
    "from_module": "weightspace.ingest",
    "load_checkpoint": "weightspace.ingest",
    "save_checkpoint": "weightspace.ingest",
    "canonicalize": "weightspace.symmetry",
    "random_symmetry": "weightspace.symmetry",
    "assert_invariant": "weightspace.testing",
    "assert_function_preserved": "weightspace.testing",
}


def __getattr__(name: str):  # heavy subpackages load on first use, not on `import weightspace`
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'weightspace' has no attribute {name!r}")


__all__ = [
    "ACTIVATIONS",
    "Encoder",
    "ModelIndex",
    "Zoo",
    "assert_function_preserved",
    "assert_invariant",
    "canonicalize",
    "from_module",
    "load_checkpoint",
    "random_symmetry",
    "save_checkpoint",
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
