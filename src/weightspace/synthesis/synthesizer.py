"""An encoder with its decoder (:class:`Synthesizer`), and training a decoder on a zoo."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from weightspace.spec import NetworkSpec
from weightspace.synthesis.common import StateDict, SynthesisError
from weightspace.synthesis.decoder_training import fit_decoder
from weightspace.synthesis.hypernetwork import Decoder, DecoderConfig, DecoderExample

if TYPE_CHECKING:
    from weightspace.nn.encoder import Encoder, ModelLike

__all__ = ["Synthesizer", "train_decoder", "zoo_examples"]


class Synthesizer:
    """An encoder and its decoder: embed models, decode embeddings.

    Args:
        encoder: the trained encoder.
        decoder: a decoder trained on that encoder's embeddings.
    """

    def __init__(self, encoder: Encoder, decoder: Decoder) -> None:
        if decoder.encoder_fingerprint and decoder.encoder_fingerprint != encoder.fingerprint:
            raise SynthesisError(
                "the decoder was trained on another encoder's embeddings (fingerprints differ); "
                "retrain it with `weightspace train-decoder`"
            )
        if decoder.embedding_dim != encoder.dim:
            raise SynthesisError(
                f"decoder reads {decoder.embedding_dim}-d embeddings but the encoder writes "
                f"{encoder.dim}-d ones"
            )
        self.encoder = encoder
        self.decoder = decoder

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Synthesizer:
        """Load ``Encoder`` and ``Decoder`` from one encoder directory."""
        from weightspace.nn.encoder import Encoder

        return cls(Encoder.load(directory), Decoder.load(directory))

    def embed(self, models: Iterable[ModelLike]) -> Tensor:
        """Embeddings ``(n, d)`` as a float32 tensor."""
        return torch.as_tensor(self.encoder.embed(list(models)), dtype=torch.float32)

    def decode(self, z: Tensor | np.ndarray, spec: NetworkSpec) -> list[StateDict]:
        """State dicts of ``spec`` for embeddings ``z (B, d)``."""
        return self.decoder.decode(z, spec)

    def embed_checkpoints(
        self, zoo: Any, ids: Sequence[str], table: Mapping[str, Any] | None = None
    ) -> Tensor:
        """Embeddings ``(n, d)`` of zoo checkpoints, read from ``table`` (checkpoint id →
        embedding, a cached table) where it has them; the encoder embeds the rest."""
        table = table if table is not None else {}
        missing = [c for c in ids if c not in table]
        fresh: dict[str, Any] = {}
        if missing:
            z = self.embed([(zoo.spec(c), zoo.state_dict(c)) for c in missing])
            fresh = dict(zip(missing, z, strict=True))
        return torch.stack(
            [torch.as_tensor(table[c] if c in table else fresh[c]).float() for c in ids]
        )

    def reconstruct(self, spec: NetworkSpec, state_dict: Mapping[str, Tensor]) -> StateDict:
        """Encode then decode one model."""
        return self.decode(self.embed([(spec, state_dict)]), spec)[0]


def zoo_examples(
    zoo: Any,
    *,
    runs: Iterable[str] | None = None,
    epochs: str | Sequence[int] = "final",
    tasks: Iterable[str] | None = None,
    min_accuracy: float | None = None,
) -> list[DecoderExample]:
    """Decoder training examples from a :class:`weightspace.zoo.Zoo`.

    Args:
        runs: keep only these run ids (e.g. the encoder's training split).
        epochs: ``"final"`` (each run's last checkpoint), ``"all"``, or a list of epochs.
        tasks: keep only these tasks.
        min_accuracy: keep only checkpoints with at least this test accuracy.
    """
    table = zoo.table
    if runs is not None:
        table = table[table["run_id"].isin(set(runs))]
    if tasks is not None:
        table = table[table["task"].isin(set(tasks))]
    if isinstance(epochs, str) and epochs == "final":
        last = table.groupby("run_id")["epoch"].transform("max")
        table = table[table["epoch"] == last]
    elif not isinstance(epochs, str):
        table = table[table["epoch"].isin(set(epochs))]
    if min_accuracy is not None:
        table = table[table["test_accuracy"] >= min_accuracy]
    return [
        DecoderExample(zoo.spec(cid), zoo.state_dict(cid), str(task), str(run))
        for cid, task, run in zip(
            table["checkpoint_id"], table["task"], table["run_id"], strict=True
        )
    ]


def train_decoder(
    encoder_dir: str | os.PathLike[str],
    zoo_dir: str | os.PathLike[str],
    config: DecoderConfig | None = None,
    *,
    split: str | None = "train",
    validation_split: str | None = "val",
    epochs: str | Sequence[int] = "final",
    tasks: Iterable[str] | None = None,
    min_accuracy: float | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> Decoder:
    """Fit a decoder for the encoder in ``encoder_dir`` on a zoo and save it there.

    Args:
        split: use only the encoder's runs of this split (``splits.json`` beside the encoder,
            written by ``weightspace train``); ``None`` uses every run.
        validation_split: early-stop on the final checkpoints of this split's runs (same
            ``tasks`` and ``min_accuracy`` filters; see :func:`fit_decoder`); ``None``, or no
            ``splits.json``, trains for ``config.steps`` without validation.
    """
    from weightspace.nn.encoder import Encoder
    from weightspace.zoo import Zoo

    encoder = Encoder.load(encoder_dir)
    zoo = Zoo.open(zoo_dir)
    runs = None
    validation = None
    split_file = Path(encoder_dir) / "splits.json"
    if split_file.is_file() and (split is not None or validation_split is not None):
        splits = json.loads(split_file.read_text())
        splits = splits.get("runs", splits)
        for name in (split, validation_split):
            if name is not None and name not in splits:
                raise SynthesisError(f"{split_file}: has no {name!r} split ({sorted(splits)})")
        runs = splits[split] if split is not None else None
        if validation_split is not None and validation_split != split:
            validation = zoo_examples(
                zoo, runs=splits[validation_split], tasks=tasks, min_accuracy=min_accuracy
            )
    examples = zoo_examples(zoo, runs=runs, epochs=epochs, tasks=tasks, min_accuracy=min_accuracy)
    if not examples:
        raise SynthesisError(
            f"{zoo_dir}: no checkpoints left to train the decoder on after filtering "
            f"(split={split!r}, tasks={tasks}, min_accuracy={min_accuracy})"
        )
    decoder = fit_decoder(
        encoder, examples, config, validation=validation or None, device=device, progress=progress
    )
    decoder.save(encoder_dir)
    return decoder
