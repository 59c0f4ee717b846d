"""weightspace: symmetry-aware embeddings of neural-network weights.

``import weightspace`` is cheap: only the pure-Python spec types load eagerly. Everything that
needs torch, PyTorch Geometric, FAISS or pandas loads on first use through a module-level
``__getattr__`` (PEP 562), so ``weightspace --help`` and scripts that only read specs start fast.

Typical use::

    import weightspace as ws

    encoder = ws.Encoder.load("path/to/encoder")
    z = encoder.embed([torch_module, "model.safetensors", (spec, state_dict)])  # (n, dim)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from weightspace.errors import WeightspaceError
from weightspace.layout import Layout, layout_of
from weightspace.spec import ACTIVATIONS, NetworkSpec, Op, mlp_spec

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load lazily
    from weightspace.graph import NeuralGraph, batch_graphs, to_graph, to_state_dict
    from weightspace.index import ModelIndex
    from weightspace.ingest import from_module, load_checkpoint, save_checkpoint
    from weightspace.models import ModelInput, as_spec_and_state
    from weightspace.module import SpecModule, to_module
    from weightspace.nn import Encoder, EncoderConfig
    from weightspace.pretrained import from_pretrained
    from weightspace.symmetry import canonicalize, random_symmetry
    from weightspace.testing import assert_function_preserved, assert_invariant
    from weightspace.zoo import Zoo

#: public name → the module that defines it (imported on first attribute access)
_LAZY: dict[str, str] = {
    "NeuralGraph": "weightspace.graph",
    "batch_graphs": "weightspace.graph",
    "to_graph": "weightspace.graph",
    "to_state_dict": "weightspace.graph",
    "SpecModule": "weightspace.module",
    "to_module": "weightspace.module",
    "Encoder": "weightspace.nn",
    "EncoderConfig": "weightspace.nn",
    "Zoo": "weightspace.zoo",
    "ModelIndex": "weightspace.index",
    "from_module": "weightspace.ingest",
    "from_pretrained": "weightspace.pretrained",
    "load_checkpoint": "weightspace.ingest",
    "save_checkpoint": "weightspace.ingest",
    "ModelInput": "weightspace.models",
    "as_spec_and_state": "weightspace.models",
    "canonicalize": "weightspace.symmetry",
    "random_symmetry": "weightspace.symmetry",
    "assert_invariant": "weightspace.testing",
    "assert_function_preserved": "weightspace.testing",
}


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("weightspace")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _package_version()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'weightspace' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ACTIVATIONS",
    "Encoder",
    "EncoderConfig",
    "Layout",
    "ModelIndex",
    "ModelInput",
    "NetworkSpec",
    "NeuralGraph",
    "Op",
    "SpecModule",
    "WeightspaceError",
    "Zoo",
    "__version__",
    "as_spec_and_state",
    "assert_function_preserved",
    "assert_invariant",
    "batch_graphs",
    "canonicalize",
    "from_module",
    "from_pretrained",
    "layout_of",
    "load_checkpoint",
    "mlp_spec",
    "random_symmetry",
    "save_checkpoint",
    "to_graph",
    "to_module",
    "to_state_dict",
]
