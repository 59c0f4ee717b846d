"""Synthesis: merge models (weight averaging, Git Re-Basin, ensembles, embeddings), decode
embeddings into weights and sample new models near good ones.

Evaluation helpers for ``bench`` live in :mod:`weightspace.synthesis.evaluate` (imported on
demand: it pulls in pandas and matplotlib).
"""

from weightspace.synthesis.common import SynthesisError
from weightspace.synthesis.decoder import (
    Decoder,
    DecoderConfig,
    DecoderExample,
    Synthesizer,
    fit_decoder,
    train_decoder,
)
from weightspace.synthesis.merge import (
    MERGE_METHODS,
    MergeMethod,
    MergeResult,
    ensemble,
    ensemble_spec,
    list_merge_methods,
    merge,
    merge_models,
    register_merge_method,
)
from weightspace.synthesis.rebasin import (
    align,
    interpolate,
    match_weights,
    rebasin_interpolate,
    weight_inner_product,
)

__all__ = [
    "MERGE_METHODS",
    "Decoder",
    "DecoderConfig",
    "DecoderExample",
    "Synthesizer",
    "fit_decoder",
    "train_decoder",
    "MergeMethod",
    "MergeResult",
    "SynthesisError",
    "align",
    "ensemble",
    "ensemble_spec",
    "interpolate",
    "list_merge_methods",
    "match_weights",
    "merge",
    "merge_models",
    "rebasin_interpolate",
    "register_merge_method",
    "weight_inner_product",
]
