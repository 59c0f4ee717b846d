"""What a benchmark run is: its options (:class:`BenchConfig`), its sections and its methods."""

from __future__ import annotations

from dataclasses import dataclass

from weightspace.errors import WeightspaceError
from weightspace.evaluate.methods import OURS, OURS_GBT

__all__ = [
    "DEFAULT_METHODS",
    "RECALL_KS",
    "RUNS",
    "SECTIONS",
    "BenchConfig",
    "BenchError",
]

#: Parts of the benchmark ``--only`` can select.
SECTIONS: tuple[str, ...] = ("runs", "held-out", "synthesis")
#: Name of the held-out-runs protocol in the results.
RUNS = "held-out runs"
DEFAULT_METHODS: tuple[str, ...] = (
    OURS,
    OURS_GBT,
    "metadata",
    "probing-gauss",
    "probing-task",
    "flat-mlp",
    "flat-mlp+canon",
    "pca-mlp",
    "pca-mlp+canon",
    "statnn",
    "statnn+canon",
    "weightwatcher",
    "nfn-hnp",
    "nfn-np",
)
#: The k of Recall@k in the retrieval tables.
RECALL_KS = tuple(range(1, 11))


class BenchError(WeightspaceError):
    """The benchmark cannot run on this zoo or with these options."""


@dataclass
class BenchConfig:
    """One benchmark run. Every field is recorded in ``results.json``."""

    zoo: str  # zoo directory
    out: str  # results directory (results.json, report.md, plots, trained encoders)
    encoder: str | None = None  # trained encoder directories, comma-separated (one per seed)
    seeds: int = 3  # repetitions (split, initialisation, queries); several encoders: one each
    methods: tuple[str, ...] = DEFAULT_METHODS  # methods to compare
    train_epochs: int = 12  # encoder training: epochs (the bound; early stopping may end sooner)
    held_out_epochs: int = 12  # encoder training for the held-out architecture / task splits
    train_time_limit: float = 0.0  # safety cap in seconds per encoder fit (0: none)
    held_out_time_limit: float = 0.0  # safety cap for held-out encoder fits (0: none)
    held_out: tuple[str, ...] = ("architectures", "tasks")  # extra prediction protocols
    held_out_seeds: int = 1  # seeds for the held-out architecture/task protocols
    probe_init: str = "auto"  # where trained encoders' probes start (train --probe-init)
    bootstrap: int = 200  # resamples of test runs for the ± of a single given encoder
    retrieval: tuple[str, ...] = ("S", "L", "F")  # retrieval protocols to run
    max_gallery: int = 300  # retrieval gallery: at most this many held-out checkpoints
    num_queries: int = 150  # retrieval queries per protocol
    weightwatcher_max_models: int = 600  # WeightWatcher is slow: subsample its training set
    nfn_epochs: int | None = None  # NFN epochs per architecture (None: NFN's reference default)
    tune: bool = True  # tune baseline heads by run-grouped CV on training runs
    device: str = "cpu"  # encoder device
    synthesis: bool = True  # merging / reconstruction / sampling section
    only: tuple[str, ...] = ()  # run only these sections (SECTIONS); () runs every one
    synthesis_tasks: tuple[str, ...] = ()  # tasks synthesis is measured on; (): every task
    synthesis_archs: tuple[str, ...] = ()  # "task=arch" choices; other tasks: chosen (see doc)
    synthesis_pairs: int = 50  # merge pairs of held-out models per task
    synthesis_min_accuracy: float | None = None  # None: halfway from chance to the group's best
    synthesis_samples: int = 100  # sampled models per task
    decoder_steps: int = 1500  # decoder optimisation steps per task (at most)
    decoder_time_limit: float = 0.0  # safety cap in seconds per task's decoder (0: none)

    @property
    def encoders(self) -> list[str]:
        """The given encoder directories (``encoder`` split at commas)."""
        return [e.strip() for e in (self.encoder or "").split(",") if e.strip()]
