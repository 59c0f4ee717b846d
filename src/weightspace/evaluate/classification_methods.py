"""The classification protocol's own methods: the INR's output on a coordinate grid
(``probing-coords``) and our encoder's class head (``weightspace-class-head``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from weightspace.evaluate.api import EMBED, MIXED_ARCHITECTURES, NEEDS_FORWARD, ModelSet
from weightspace.evaluate.classification_results import ClassificationError

__all__ = ["CLASS_HEAD", "CoordinateProbing", "EncoderClassHead"]

#: The row of our encoder's own class head (encoders trained with ``--objective class``).
CLASS_HEAD = "weightspace-class-head"


class CoordinateProbing:
    r"""The INR's own output on a fixed coordinate grid: for a model
    :math:`f_\theta: [-1, 1]^d \to \mathbb{R}^C`, :math:`z(\theta) = (f_\theta(p_j))_{j \le S^d}`
    with :math:`p_j` the pixel centres of an :math:`S^d` grid (:math:`S` = ``side``).

    For an image INR this is the reconstructed image: the *function* reference row (invariant to
    every function-preserving transform). The generic ``probing-*`` methods take a log-softmax
    over outputs, which is constant for a one-output INR, so they carry nothing here.

    Args:
        side: grid points per input dimension (8 for 8×8 digits).
    """

    capabilities = frozenset({EMBED, MIXED_ARCHITECTURES, NEEDS_FORWARD})

    def __init__(self, side: int = 8, name: str = "probing-coords") -> None:
        self.side = side
        self.name = name

    def fit(self, models: ModelSet, targets: np.ndarray | None = None) -> CoordinateProbing:
        self.fitted_ = True
        return self

    def _grid(self, dims: int) -> torch.Tensor:
        axis = torch.linspace(-1.0, 1.0, self.side)
        mesh = torch.meshgrid(*([axis] * dims), indexing="ij")
        return torch.stack([m.reshape(-1) for m in mesh], dim=1)  # (S^d, d)

    def embed(self, models: ModelSet) -> np.ndarray:
        """Outputs ``(N, S^d · C)`` on the grid; NaN rows where the forward fails."""
        from torch.func import functional_call, vmap

        from weightspace.graph import to_state_dict
        from weightspace.module import to_module

        groups: dict[str, list[int]] = {}
        for i, graph in enumerate(models.graphs):
            groups.setdefault(graph.spec.to_json(), []).append(i)
        rows: list[np.ndarray | None] = [None] * len(models)
        for members in groups.values():
            spec = models.graphs[members[0]].spec
            shape = tuple(int(s) for s in spec.input_shape)
            if len(shape) != 1:
                continue
            template = to_module(spec).float()
            grid = self._grid(shape[0])
            states = [to_state_dict(models.graphs[i]) for i in members]
            params = {k: torch.stack([s[k].float() for s in states]) for k in states[0]}
            with torch.no_grad():
                out = vmap(lambda p: functional_call(template, p, (grid,)))(params)  # noqa: B023
            for i, value in zip(members, out.flatten(1).double().numpy(), strict=True):
                rows[i] = value if np.isfinite(value).all() else None
        width = max((len(r) for r in rows if r is not None), default=0)
        out_array = np.full((len(models), width), np.nan)
        for i, row in enumerate(rows):
            if row is not None and len(row) == width:
                out_array[i] = row
        return out_array

    def predict_accuracy(self, models: ModelSet) -> np.ndarray:
        raise ClassificationError(f"{self.name} has no accuracy head")


class EncoderClassHead:
    r"""Our encoder's own class head (``train --objective class``): :math:`\hat y =
    \arg\max_c \operatorname{softmax}(h(z))_c`, no head fitted here. ``embed`` is the
    encoder's embedding :math:`z`; ``predict_class`` the head's class indices.

    Args:
        encoder: a callable returning the loaded :class:`~weightspace.nn.Encoder` (called once,
            by ``fit``).
        name: the row's name.
    """

    capabilities = frozenset({EMBED, MIXED_ARCHITECTURES})

    def __init__(self, encoder: Any, name: str = CLASS_HEAD) -> None:
        self.encoder = encoder
        self.name = name

    def fit(self, models: ModelSet, targets: np.ndarray | None = None) -> EncoderClassHead:
        encoder = self.encoder()
        if not encoder.config.classes:
            raise ClassificationError(
                f"{self.name}: the encoder has no class head; train it with --objective class"
            )
        self.encoder_ = encoder
        return self

    def _fitted(self) -> Any:
        if not hasattr(self, "encoder_"):
            raise ClassificationError(f"{self.name}: call fit before embed or predict_class")
        return self.encoder_

    def embed(self, models: ModelSet) -> np.ndarray:
        return np.asarray(self._fitted().embed(list(models.graphs)), dtype=np.float64)

    def predict_class(self, models: ModelSet) -> np.ndarray:
        """Class indices ``(N,)`` (the class names are ``"0"``, ``"1"``, ...)."""
        predicted = self._fitted().predict(list(models.graphs))["class"]
        return np.asarray([int(c) for c in predicted], dtype=np.int64)

    def predict_accuracy(self, models: ModelSet) -> np.ndarray:
        raise ClassificationError(f"{self.name} has no accuracy head")
