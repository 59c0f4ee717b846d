"""Baseline embedders sharing the encoder's interface: ``fit``, ``embed``, ``predict``.

==================  ===========================================================================
``flat-mlp``        flattened weights, standardised (random projection when huge); MLP regressor
``pca-mlp``         PCA of the standardised flat weights; MLP regressor
``statnn``          per-layer weight statistics (Unterthiner et al. 2020); gradient boosting
``weightwatcher``   WeightWatcher's per-layer spectral metrics; gradient boosting (slow)
``nfn-hnp``         NFN with HNP layers (Zhou et al. 2023); one fixed architecture only
``nfn-np``          NFN with NP layers; one fixed architecture only
==================  ===========================================================================

As :class:`~weightspace.evaluate.api.Method` s (the estimator contract ``bench`` loops over):
:class:`EmbedderMethod` wraps any of them, :class:`PerArchitecture` fits one copy per
architecture, :class:`Canonical` feeds them the exact canonical form (``statnn+canon``);
the reference rows :class:`MetadataLookup` (``metadata``) and :class:`Probing`
(``probing-gauss``, ``probing-task``) live in :mod:`weightspace.baselines.reference`, and
:func:`tuned_regressor` tunes every tree / MLP head by run-grouped cross-validation.

Example::

    from weightspace.baselines import get_embedder, list_embedders

    for name in list_embedders(available_only=True):
        model = get_embedder(name, random_state=0).fit(train, {"test_accuracy": acc})
        z = model.embed(test)            # (n, d)
        predicted = model.predict(test)  # (n,)
"""

from weightspace.baselines.base import (
    ACCURACY_TARGET,
    BaselineError,
    BaselineUnavailableError,
    Embedder,
    EmbedderInfo,
    ModelLike,
    NoTargetsError,
    NotFittedError,
    UnsupportedArchitectureError,
    as_spec_and_state_dicts,
    embedder_info,
    get_embedder,
    list_embedders,
    register_embedder,
)
from weightspace.baselines.features import FeatureEmbedder
from weightspace.baselines.flat import FlatMLPEmbedder, PCAMLPEmbedder, flat_weights
from weightspace.baselines.nfn import (
    NFNEmbedder,
    NFNHNPEmbedder,
    NFNNPEmbedder,
    nfn_incompatibility,
)
from weightspace.baselines.statnn import StatNNEmbedder, layer_statistics
from weightspace.baselines.weightwatcher import WeightWatcherEmbedder, weightwatcher_metrics

# The Method adapters, reference rows and head tuning import weightspace.evaluate, which may
# import baselines: load them on first use.
_LAZY = {
    "Canonical": "weightspace.baselines.methods",
    "EmbedderMethod": "weightspace.baselines.methods",
    "PerArchitecture": "weightspace.baselines.methods",
    "MetadataLookup": "weightspace.baselines.reference",
    "Probing": "weightspace.baselines.reference",
    "tuned_regressor": "weightspace.baselines.tuning",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'weightspace.baselines' has no attribute {name!r}")


__all__ = [
    "ACCURACY_TARGET",
    "BaselineError",
    "BaselineUnavailableError",
    "Canonical",
    "Embedder",
    "EmbedderInfo",
    "EmbedderMethod",
    "FeatureEmbedder",
    "FlatMLPEmbedder",
    "MetadataLookup",
    "ModelLike",
    "NFNEmbedder",
    "NFNHNPEmbedder",
    "NFNNPEmbedder",
    "NoTargetsError",
    "NotFittedError",
    "PCAMLPEmbedder",
    "PerArchitecture",
    "Probing",
    "StatNNEmbedder",
    "UnsupportedArchitectureError",
    "WeightWatcherEmbedder",
    "as_spec_and_state_dicts",
    "embedder_info",
    "flat_weights",
    "get_embedder",
    "layer_statistics",
    "list_embedders",
    "nfn_incompatibility",
    "register_embedder",
    "tuned_regressor",
    "weightwatcher_metrics",
]
