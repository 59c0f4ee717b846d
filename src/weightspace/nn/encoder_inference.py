"""Batched inference of :class:`~weightspace.nn.encoder.Encoder`: embeddings and head
predictions for collections of models, in input order (a mixin of the encoder)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from weightspace.nn.batch import DENSE_MIN_MODELS, GraphBank, inference_chunks
from weightspace.nn.encoder_config import EncoderError

if TYPE_CHECKING:
    from weightspace.nn.encoder import ModelLike

__all__ = ["EncoderInference"]


class EncoderInference:
    """:meth:`embed`, :meth:`predict` and :meth:`predict_accuracy` of
    :class:`~weightspace.nn.encoder.Encoder` (a mixin: it calls the encoder's forward, heads and
    graph branch)."""

    def _run(
        self,
        models: Iterable[ModelLike] | GraphBank,
        batch_size: int,
        device: torch.device | str | None,
        with_heads: bool,
        compile: bool = False,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if not isinstance(models, GraphBank):  # large models take the memory-lean path
            from weightspace.nn.large_graph import run_splitting_large

            return run_splitting_large(self, models, batch_size, device, with_heads, compile)
        bank = models
        if device is not None:
            self.to(device)
        was_training = self.training
        self.eval()
        # Architectures with many models run the dense fast path in batches of their own; the
        # rest share mixed batches: one probe call per padded bucket and the graph branch by
        # dense sub-batches where they pay, not one batch per architecture. Compiled runs keep
        # one batch per architecture (static shapes). Results go back in input order.
        chunks = inference_chunks(
            bank.spec_index,
            batch_size,
            bank.node_counts,
            dense_min=1 if compile else DENSE_MIN_MODELS,
        )
        # Compiled graphs have static shapes: pad every one-architecture batch to the largest
        # one (repeating its first model; the extra rows are dropped) so each architecture
        # compiles once. Mixed batches run eagerly (forward compiles only the dense path).
        uniform = [bool((bank.spec_index[i] == bank.spec_index[i[0]]).all()) for i in chunks]
        static = max(len(index) for index in chunks) if compile else 0
        embeddings: list[Tensor] = []
        outputs: dict[str, list[Tensor]] = {}
        fallbacks: list[np.ndarray] = []
        probing = "probe" in self.config.branches
        try:
            with torch.inference_mode():
                for number, index in enumerate(chunks):
                    count = len(index)
                    if count < static and uniform[number]:
                        index = torch.cat([index, index[:1].expand(static - count)])
                    batch = bank.select(index).to(self.device, self.dtype)
                    if uniform[number] or "graph" not in self.config.branches:
                        z = self(batch, compile=compile)[:count]
                    else:  # graph branch by dense sub-batches, probes on the whole batch
                        z = self._fused(self._graph_forward_grouped(bank, index), batch)
                    embeddings.append(z.cpu())
                    if probing:
                        fallbacks.append(self.last_fallback[:count])
                    if with_heads:
                        for key, value in self.heads(z).items():
                            outputs.setdefault(key, []).append(value.cpu())
        finally:
            self.train(was_training)
        order = torch.cat(chunks).argsort()
        self.last_fallback = np.concatenate(fallbacks)[order.numpy()] if probing else None
        return torch.cat(embeddings)[order], {k: torch.cat(v)[order] for k, v in outputs.items()}

    def embed(
        self,
        models: Iterable[ModelLike] | GraphBank,
        *,
        batch_size: int = 512,
        device: torch.device | str | None = None,
        compile: bool = False,
    ) -> np.ndarray:
        """Embeddings ``(n, dim)`` of the models, in input order (float32 or the encoder's
        float64). With the probe branch, :attr:`last_fallback` afterwards holds ``(n,)`` bools:
        the models that could not be run on the probes (embedded by the graph branch alone).

        Each model may be a checkpoint path (its spec stored in the file, see
        ``weightspace convert``), an ``nn.Module`` (traced with :func:`weightspace.from_module`;
        give ``(module, example_input)`` when its first layer is a convolution feeding a
        flatten), a ``(NetworkSpec, state_dict)`` pair, a :class:`~weightspace.NeuralGraph` or a
        :class:`~weightspace.SpecModule`: :func:`weightspace.models.as_spec_and_state`.

        ``compile=True`` runs batches through ``torch.compile`` (see :meth:`forward`): the first
        batch of each architecture pays the compilation (seconds to a minute), later ones run
        faster, so it pays off for large collections or repeated calls in one process."""
        z, _ = self._run(models, batch_size, device, with_heads=False, compile=compile)
        return z.numpy()

    def predict(
        self,
        models: Iterable[ModelLike] | GraphBank,
        *,
        batch_size: int = 512,
        device: torch.device | str | None = None,
        compile: bool = False,
    ) -> dict[str, np.ndarray]:
        """Predicted properties: one array per regression target (``test_accuracy``,
        ``generalization_gap``), plus ``task`` (class names) and ``task_probabilities``
        ``(n, num_tasks)`` when the encoder has a task head, and ``class`` / ``class_probabilities``
        when it has a class head. ``compile``: as in :meth:`embed`."""
        _, out = self._run(models, batch_size, device, with_heads=True, compile=compile)
        mean = torch.tensor(self.config.target_mean, dtype=out["properties"].dtype)
        std = torch.tensor(self.config.target_std, dtype=out["properties"].dtype)
        values = out["properties"] * std + mean
        result = {name: values[:, i].numpy() for i, name in enumerate(self.config.targets)}
        if "task_logits" in out:
            probabilities = out["task_logits"].softmax(-1)
            result["task_probabilities"] = probabilities.numpy()
            names = np.asarray(self.config.tasks, dtype=object)
            result["task"] = names[probabilities.argmax(-1).numpy()]
        if "class_logits" in out:
            probabilities = out["class_logits"].softmax(-1)
            result["class_probabilities"] = probabilities.numpy()
            names = np.asarray(self.config.classes, dtype=object)
            result["class"] = names[probabilities.argmax(-1).numpy()]
        return result

    def predict_accuracy(
        self, models: Iterable[ModelLike] | GraphBank, **kwargs: Any
    ) -> np.ndarray:
        """Predicted test accuracy ``(n,)``."""
        if "test_accuracy" not in self.config.targets:
            raise EncoderError(
                "this encoder has no test_accuracy head; train it with --objective "
                "supervised or both on a zoo with test accuracies"
            )
        return self.predict(models, **kwargs)["test_accuracy"]
