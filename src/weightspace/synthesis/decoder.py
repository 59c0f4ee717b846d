r"""The decoder: an embedding ``z`` (and a target architecture) → the weights of a network.

One hypernetwork per target :class:`~weightspace.spec.NetworkSpec` maps the standardised
embedding to that spec's flat parameter vector, :math:`\theta(z) = \theta_0 + s \odot
\mathrm{MLP}(\hat z)`. It is trained *functionally* on a frozen encoder's embeddings: decoded
networks must reproduce the original models' logits on the task's inputs, and a decoded
interpolation of two models the output ensemble of its endpoints. Files, in the encoder
directory: ``decoder.safetensors`` and ``decoder.json``.

Where the parts live (this module re-exports them):

- :mod:`weightspace.synthesis.hypernetwork`: :class:`DecoderConfig`, :class:`DecoderExample`,
  :class:`Decoder` (the module, its math and its files), :func:`spec_key`;
- :mod:`weightspace.synthesis.functional`: flat parameter vectors, :func:`functional_logits`,
  :func:`distillation_loss`, :func:`warmup_cosine`;
- :mod:`weightspace.synthesis.decoder_training`: :func:`fit_decoder` (the losses);
- :mod:`weightspace.synthesis.synthesizer`: :class:`Synthesizer`, :func:`zoo_examples`,
  :func:`train_decoder`.
"""

from weightspace.synthesis.decoder_training import _task_inputs as _task_inputs
from weightspace.synthesis.decoder_training import fit_decoder
from weightspace.synthesis.functional import (
    distillation_loss,
    flatten,
    functional_logits,
    unflatten,
    warmup_cosine,
)
from weightspace.synthesis.hypernetwork import (
    DECODER_CONFIG,
    DECODER_FORMAT_VERSION,
    DECODER_WEIGHTS,
    Decoder,
    DecoderConfig,
    DecoderExample,
    spec_key,
)
from weightspace.synthesis.synthesizer import Synthesizer, train_decoder, zoo_examples

__all__ = [
    "DECODER_CONFIG",
    "DECODER_FORMAT_VERSION",
    "DECODER_WEIGHTS",
    "Decoder",
    "DecoderConfig",
    "DecoderExample",
    "Synthesizer",
    "distillation_loss",
    "fit_decoder",
    "flatten",
    "functional_logits",
    "spec_key",
    "train_decoder",
    "unflatten",
    "warmup_cosine",
    "zoo_examples",
]
