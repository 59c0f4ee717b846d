"""Our encoder inside ``bench``: trained on a split's training runs (or loaded) on first use."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from weightspace.bench.config import BenchConfig
from weightspace.evaluate.api import ModelSet
from weightspace.evaluate.methods import MethodConfig
from weightspace.evaluate.results import Results

__all__ = ["LazyEncoder", "embedding_map", "load_encoder", "method_config", "train_encoder"]


class LazyEncoder:
    """Our encoder for one split, trained (or loaded) on first use, so a method list without
    our methods trains nothing."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self.value: Any = None

    def __call__(self) -> Any:
        if self.value is None:
            self.value = self._make()
        return self.value


def train_encoder(
    config: BenchConfig,
    out: Path,
    seed: int,
    splits: Mapping[str, Sequence[str]],
    *,
    epochs: int,
    time_limit: float,
    results: Results,
    log: Callable[[str], None],
) -> Any:
    """Train our encoder on ``splits`` for ``epochs`` (``time_limit``: a safety cap only),
    saved to ``out``; its time and epochs go into ``results``."""
    import time

    from weightspace.train import TrainConfig, train

    token_zoo = _reads_token_ids(config.zoo)
    cfg = TrainConfig(
        zoo=config.zoo,
        out=str(out),
        seed=seed,
        epochs=epochs,
        time_limit=time_limit,
        device=config.device,
        probe_init=config.probe_init,
        # The probe branch and the function head feed float inputs, which an embedding cannot
        # index with: until they draw token ids, a token zoo trains the graph branch alone.
        **({"branches": "graph", "function_weight": 0.0} if token_zoo else {}),
    )
    if token_zoo:
        results.notes.append(
            "The zoo's models read token ids: our encoder was trained with its graph branch "
            "only and no function head (neither feeds token ids yet)."
        )
    cfg.splits = {k: list(map(str, v)) for k, v in splits.items()}
    start = time.perf_counter()
    trained = train(cfg, progress=False)
    seconds = time.perf_counter() - start
    results.time("encoder_training_s", seconds)
    results.time("encoder_epochs", trained.epochs_run)
    log(f"  encoder trained in {seconds:.0f}s ({trained.epochs_run} epochs)")
    return trained.encoder


def _reads_token_ids(zoo_path: str) -> bool:
    """Whether any architecture of the zoo at ``zoo_path`` takes token ids as input."""
    from weightspace.zoo import Zoo

    zoo = Zoo.open(zoo_path)
    table = zoo.table
    firsts = table.drop_duplicates("arch")["checkpoint_id"] if "arch" in table else table.index[:0]
    return any(zoo.spec(str(c)).is_tokens for c in firsts)


def load_encoder(directory: Path) -> Any:
    """A saved encoder."""
    from weightspace.nn import Encoder

    return Encoder.load(directory)


def method_config(config: BenchConfig, encoder: Callable[[], Any]) -> MethodConfig:
    """What building the methods of ``config`` needs, with this split's encoder."""
    return MethodConfig(
        encoder=encoder,
        nfn_epochs=config.nfn_epochs,
        weightwatcher_max_models=config.weightwatcher_max_models,
        tune=config.tune,
    )


def embedding_map(encoder: Any, models: ModelSet, results: Results) -> None:
    """A 2-D PCA of the embeddings of (at most 2,000 of) ``models``, for the report's plot."""
    from sklearn.decomposition import PCA

    models = models.subset(np.arange(min(len(models), 2000)))
    z = np.asarray(encoder.embed(list(models.graphs)), dtype=float)
    if len(z) < 3:
        return
    xy = PCA(n_components=2, random_state=0).fit_transform(z)
    tasks = models.column("task")
    accuracy = models.column("test_accuracy")
    results.embedding_map = {
        "x": xy[:, 0].tolist(),
        "y": xy[:, 1].tolist(),
        "task": [] if tasks is None else [str(t) for t in tasks],
        "test_accuracy": [] if accuracy is None else [float(a) for a in accuracy],
    }
