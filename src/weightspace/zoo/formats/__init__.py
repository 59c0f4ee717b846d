"""Readers for published model-zoo releases: ``weightspace zoo import --format NAME SOURCE``.

One module per release format. Each exposes ``import_release(source, out, **options) -> Zoo``,
which checks the whole release before writing anything and then assembles the zoo in a temporary
directory beside ``out`` and renames it into place (nothing half-written).

=================  ===========================================================================
``small-cnn-zoo``  Unterthiner et al. 2020, "Predicting Neural Network Accuracy from Weights"
                   (CIFAR10-GS, SVHN-GS, MNIST-GS, Fashion-MNIST-GS): :mod:`.small_cnn_zoo`.
``model-zoo``      Schürholt et al. 2022, "Model Zoos": per-model folders with a checkpoint per
                   epoch and ``result.json``: :mod:`.model_zoo`.
``inr``            SIREN INRs of images as used by DWSNets / NFN / Neural Graphs (one weights
                   file per image, label = class): :mod:`.inr`.
``wild-park``      Neural Graphs' "CNN Wild Park" (Kofinas et al. 2024): heterogeneous CNNs
                   with residual connections: :mod:`.wild_park`.
=================  ===========================================================================

:mod:`.examples` writes small synthetic releases in each layout (tests, benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from weightspace.errors import WeightspaceError
from weightspace.zoo.formats.common import ReleaseError

__all__ = ["FORMATS", "ReleaseError", "import_release"]

#: Format name → ``module:function`` of its importer (loaded on use).
FORMATS: dict[str, str] = {
    "small-cnn-zoo": "weightspace.zoo.formats.small_cnn_zoo:import_release",
    "model-zoo": "weightspace.zoo.formats.model_zoo:import_release",
    "inr": "weightspace.zoo.formats.inr:import_release",
    "wild-park": "weightspace.zoo.formats.wild_park:import_release",
}


def _importer(name: str) -> Callable[..., Any]:
    import importlib

    if name not in FORMATS:
        raise WeightspaceError(f"unknown zoo format {name!r}; known formats: {sorted(FORMATS)}")
    module, _, function = FORMATS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def import_release(name: str, source: Any, out: Any, **options: Any) -> Any:
    """Import the release at ``source`` in format ``name`` into a new zoo at ``out``."""
    return _importer(name)(source, out, **options)
