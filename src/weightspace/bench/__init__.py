"""``weightspace bench``: every method on every protocol, side by side, over several seeds.

A plain loop over methods × protocols (:mod:`weightspace.evaluate.comparison`). Every method
(:mod:`weightspace.evaluate.methods`) follows one contract (:mod:`weightspace.evaluate.api`); its
*capabilities* decide what it takes part in: a method without ``EMBED`` skips retrieval, one
without ``MIXED_ARCHITECTURES`` is fitted once per architecture and skips retrieval (its
embedding spaces differ between architectures), one that ``NEEDS_METADATA`` skips retrieval
(derived queries carry no zoo rows). A zoo that cannot support a protocol or a metric (one
architecture, one task, no epochs) gets it skipped with its reason in the report.

By section, for each seed:

1. **Held-out runs** (:mod:`~weightspace.bench.runs`). A by-run split (or, with a given encoder
   trained on this zoo, the split in its ``splits.json``); our encoder is trained on its
   training runs for ``train_epochs`` epochs (or loaded), every other method is fitted on the
   same runs (train + validation). Accuracy prediction is scored on the held-out runs
   (:mod:`weightspace.evaluate.prediction`): every method on the checkpoints all methods cover,
   and on its own coverage. Then **retrieval** on a gallery of held-out checkpoints (whole runs,
   capped at ``max_gallery``): S (symmetry, an invariance check), L (lineage), F (function).
2. **Held-out architectures** and **held-out tasks** (:mod:`~weightspace.bench.held_out`):
   every method refitted on the training side; a protocol the zoo cannot support (one
   architecture, one task) is skipped with its reason.
3. **Synthesis** (:mod:`~weightspace.bench.synthesis`) with the seed-0 encoder.

The spread: with one given encoder the split is fixed, so ± is a bootstrap over the test runs
(``bootstrap`` resamples); otherwise (one encoder per seed, trained or given) ± is the std over
seeds. ``results.json`` (:class:`~weightspace.evaluate.results.Results`) is written after every
section (:mod:`~weightspace.bench.runner`); ``only`` (``--only synthesis``) reruns some
:data:`SECTIONS` and keeps the rest.
"""

from weightspace.bench.config import (
    DEFAULT_METHODS,
    RECALL_KS,
    RUNS,
    SECTIONS,
    BenchConfig,
    BenchError,
)
from weightspace.bench.runner import run_bench
from weightspace.evaluate.methods import OURS

__all__ = [
    "DEFAULT_METHODS",
    "OURS",
    "RECALL_KS",
    "RUNS",
    "SECTIONS",
    "BenchConfig",
    "BenchError",
    "run_bench",
]
