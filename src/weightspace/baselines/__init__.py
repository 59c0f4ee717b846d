"""Baseline embedders sharing the encoder's interface: ``fit``, ``embed``, ``predict``.

==================  ===========================================================================
``flat-mlp``        flattened weights, standardised (random projection when huge); MLP regressor
``pca-mlp``         PCA of the standardised flat weights; MLP regressor
``statnn``          per-layer weight statistics (Unterthiner et al. 2020); gradient boosting
``weightwatcher``   WeightWatcher's per-layer spectral metrics; gradient boosting (slow)
``nfn-hnp``         NFN with HNP layers (Zhou et al. 2023); one fixed architecture only
``nfn-np``          NFN with NP layers; one fixed architecture only
==================  ===========================================================================

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

__all__ = [
    "ACCURACY_TARGET",
    "BaselineError",
    "BaselineUnavailableError",
    "Embedder",
    "EmbedderInfo",
    "FeatureEmbedder",
    "FlatMLPEmbedder",
    "ModelLike",
    "NFNEmbedder",
    "NFNHNPEmbedder",
    "NFNNPEmbedder",
    "NoTargetsError",
    "NotFittedError",
    "PCAMLPEmbedder",
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
    "weightwatcher_metrics",
]
