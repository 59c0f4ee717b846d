"""Train many small models of one architecture at once, and the plain loop they must agree with.

Two paths train the same runs to the same weights (up to float round-off):

* :func:`train_group` — vectorised. The ``M`` models' parameters live in one flat tensor
  ``θ ∈ R^{M×P}``; linear layers are batched matmuls (``torch.bmm``/``baddbmm`` over stacked
  weights ``(M, out, in)``), convs are batched im2col matmuls on channels-last activations (or,
  for small inputs, matmuls with the conv's dense matrix), BatchNorm keeps statistics per
  (model, channel), and SGD/Adam are a handful of elementwise ops on ``θ`` with per-model learning
  rates and weight decays as ``(M, 1)`` columns. There is no autograd: the backward pass of every
  layer type is written out (:meth:`StackedNetwork.loss_backward`) for the loss
  ``Σ_m mean_b CE_m``, so ``∂/∂θ_m`` is exactly the gradient model ``m`` alone would see. Large
  intermediates of a step live in reused buffers.
* :func:`train_reference` — one model, an ordinary ``nn.Module`` and ``torch.optim`` loop; the
  baseline of ``benchmarks/bench_zoo.py`` and the oracle of the equivalence test.

Everything random about a run is a counter-based function of the run's own seed, computed
vectorised on the training device by :mod:`weightspace.zoo.streams` (the same functions serve
both paths): the initialisation, its training subset, its label noise, the order of its batches
and its dropout masks. So a run gives the same checkpoints whichever group, shard, worker or path
trains it, on CPU or GPU.

The modules, by concept: :mod:`.group` (:func:`train_group`), :mod:`.reference`
(:func:`train_reference`), :mod:`.network` (:class:`StackedNetwork`: parameters, state dicts,
evaluation) with its :mod:`.forward` and :mod:`.backward` passes, :mod:`.conv` (im2col convs),
:mod:`.elementwise` (activation gradients, dropout rows), :mod:`.optimizer` (SGD/Adam on ``θ``)
and :mod:`.results` (:class:`CheckpointResult` and its metrics).
"""

from __future__ import annotations

from weightspace.zoo.streams import STREAMS_VERSION, RunStreams
from weightspace.zoo.trainer.conv import DENSE_CONV_MAX_EXPANSION as DENSE_CONV_MAX_EXPANSION
from weightspace.zoo.trainer.group import ProgressCallback as ProgressCallback
from weightspace.zoo.trainer.group import train_group
from weightspace.zoo.trainer.network import StackedNetwork
from weightspace.zoo.trainer.reference import evaluate_module, init_state_dict, train_reference
from weightspace.zoo.trainer.results import EVAL_CHUNK as EVAL_CHUNK
from weightspace.zoo.trainer.results import EVAL_ELEMENTS as EVAL_ELEMENTS
from weightspace.zoo.trainer.results import EVAL_MIN_CHUNK as EVAL_MIN_CHUNK
from weightspace.zoo.trainer.results import METRIC_NAMES as METRIC_NAMES
from weightspace.zoo.trainer.results import CheckpointResult

__all__ = [
    "STREAMS_VERSION",
    "CheckpointResult",
    "RunStreams",
    "StackedNetwork",
    "evaluate_module",
    "init_state_dict",
    "train_group",
    "train_reference",
]
