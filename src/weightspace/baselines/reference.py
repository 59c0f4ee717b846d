r"""Reference rows that any learned method must beat: ``metadata`` and ``probing``.

* :class:`MetadataLookup` (``metadata``) never reads a weight: it predicts the training mean
  accuracy of the model's (task, architecture, epoch) cell, backing off to coarser cells. Pooled
  Kendall :math:`\tau` over a sweep rewards exactly this knowledge, so a method that does not
  beat it has learned nothing the zoo's table does not already say.
* :class:`Probing` (``probing-gauss``, ``probing-task``) reads the function, not the weights:
  each model's log-softmax outputs on ``P`` fixed inputs, then the tuned tree head
  (:func:`weightspace.baselines.tuning.tuned_regressor`). It is invariant to every
  function-preserving transform by construction. Gaussian inputs keep it data-free; inputs
  from the task's training split show what a little data buys. A model that reads token ids
  (a spec whose input has ``layout: "tokens"``, e.g. the lora preset's transformer) gets token
  ids instead: uniform over its vocabulary with the same seed in place of Gaussians, and the
  task's own sequences for ``probing-task``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightspace.baselines.base import BaselineError, NotFittedError
from weightspace.baselines.methods import check_targets
from weightspace.evaluate.api import (
    EMBED,
    MIXED_ARCHITECTURES,
    NEEDS_FORWARD,
    NEEDS_METADATA,
    PREDICT,
    ModelSet,
)

__all__ = ["METADATA_LEVELS", "MetadataLookup", "Probing", "probe_outputs"]

#: The cells of :class:`MetadataLookup`, finest first; the last, ``()``, is the global mean.
METADATA_LEVELS: tuple[tuple[str, ...], ...] = (
    ("task", "arch", "epoch"),
    ("task", "arch"),
    ("task",),
    (),
)


def _check_fitted(method: Any, attribute: str) -> None:
    if not hasattr(method, attribute):
        raise NotFittedError(
            f"this {type(method).__name__} ({method.name}) is not fitted yet; call "
            "fit(models, targets) first"
        )


class MetadataLookup:
    r"""The training mean accuracy of each model's cell of the zoo table (``metadata``).

    .. math::
        \hat y(m) = \frac{1}{|C_\ell(m)|} \sum_{i \in C_\ell(m)} y_i, \qquad
        \ell = \min\{\ell : C_\ell(m) \ne \emptyset\}

    where :math:`C_\ell(m)` are the training models sharing :math:`m`'s values of the columns
    of level :math:`\ell` of :data:`METADATA_LEVELS`: (task, arch, epoch), then (task, arch),
    then task, then all training models. Levels whose columns the zoo lacks are skipped (a zoo
    without epochs backs off from (task, arch)), so it always predicts. A missing value (NaN) in a
    key never matches.

    Capabilities: :data:`PREDICT`, :data:`MIXED_ARCHITECTURES`, :data:`NEEDS_METADATA`; no
    :data:`EMBED`: retrieval queries are bare weights (a re-uploaded checkpoint has no zoo row),
    so a one-hot of a model's own row would answer a question the protocol never lets it see.

    Attributes (after ``fit``):
        levels_: the levels used (tuples of column names), finest first.
        means_: per level, a mapping from key tuple to the training mean.
        last_levels_: for the last ``predict_accuracy`` call, the index into ``levels_`` each
            model was answered from.
    """

    name = "metadata"
    capabilities = frozenset({PREDICT, MIXED_ARCHITECTURES, NEEDS_METADATA})

    def __repr__(self) -> str:
        return "MetadataLookup()"

    @staticmethod
    def _keys(table: pd.DataFrame, columns: tuple[str, ...]) -> list[tuple[Any, ...] | None]:
        if not columns:
            return [()] * len(table)
        frame = table[list(columns)]
        missing = frame.isna().any(axis=1).to_numpy()
        values = frame.astype(str).itertuples(index=False, name=None)
        return [None if gap else key for key, gap in zip(values, missing, strict=True)]

    def fit(self, models: ModelSet, targets: np.ndarray | None) -> MetadataLookup:
        """Record the training mean per cell at every level; returns ``self``."""
        y = check_targets(models, targets, self.name)
        if y is None:
            raise BaselineError(
                "metadata predicts from the training models' accuracies; fit it with targets"
            )
        if len(y) == 0:
            raise BaselineError("metadata: got no training models")
        table = models.table
        self.levels_ = [
            level for level in METADATA_LEVELS if all(c in table.columns for c in level)
        ]
        self.means_: list[dict[tuple[Any, ...], float]] = []
        for level in self.levels_:
            sums: dict[tuple[Any, ...], list[float]] = {}
            for key, value in zip(self._keys(table, level), y, strict=True):
                if key is not None:
                    sums.setdefault(key, []).append(float(value))
            self.means_.append({key: float(np.mean(v)) for key, v in sums.items()})
        return self

    def embed(self, models: ModelSet) -> np.ndarray:
        raise BaselineError("metadata has no embedding (it reads only the zoo table)")

    def predict_accuracy(self, models: ModelSet) -> np.ndarray:
        """The mean of the finest cell with training models, per model ``(N,)``."""
        _check_fitted(self, "means_")
        out = np.full(len(models), np.nan)
        chosen = np.full(len(models), -1)
        for index, (level, means) in enumerate(zip(self.levels_, self.means_, strict=True)):
            missing = [c for c in level if c not in models.table.columns]
            if missing:
                continue
            keys = self._keys(models.table, level)
            for i in np.flatnonzero(chosen < 0):
                value = means.get(keys[i]) if keys[i] is not None else None
                if value is not None:
                    out[i], chosen[i] = value, index
        self.last_levels_ = chosen
        return out


# ------------------------------------------------------------------------------------ probing
def _gaussian_inputs(spec: Any, probes: int, seed: int) -> Tensor:
    """``probes`` standard normal inputs ``(P, *input_shape)``; the same numbers (reshaped) for
    every architecture with as many input values. For a token model: ``(P, T)`` int64 token ids
    uniform over its vocabulary, the same for every model of that vocabulary and length."""
    shape = tuple(int(s) for s in spec.input_shape)
    numel = int(np.prod(shape))
    generator = torch.Generator().manual_seed(seed)
    if spec.is_tokens:
        vocabulary = int(spec.ops[0].attrs["vocab_size"])
        return torch.randint(0, vocabulary, (probes, *shape), generator=generator)
    return torch.randn(probes, numel, generator=generator).reshape(probes, *shape)


def _task_inputs(task: str, spec: Any, probes: int, seed: int) -> Tensor:
    """The first ``probes`` rows of a seeded permutation of the task's training split, shaped
    for ``spec`` (the same rows for every architecture of the task)."""
    from weightspace.zoo.tasks import get_task

    shape = tuple(int(s) for s in spec.input_shape)
    features = get_task(task).features["train"]  # raises UnknownNameError for other tasks
    if features[0].numel() != int(np.prod(shape)):
        raise BaselineError(
            f"task {task!r} has {features[0].numel()} input features but the architecture "
            f"takes inputs of shape {shape}"
        )
    if features.shape[0] < probes:
        raise BaselineError(
            f"task {task!r} has {features.shape[0]} training examples, fewer than {probes} probes"
        )
    order = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(seed))
    x = features[order[:probes]].reshape(probes, *shape)
    return x.round().long() if spec.is_tokens else x.float()  # token ids are stored as floats


def _token_outputs(graphs: Sequence[Any], inputs: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`probe_outputs` for token models, one model at a time through
    :func:`~weightspace.module.to_module`: the probe forward stacks weights of linear and conv
    layers only, and feeds its probes as floats, which an embedding cannot index with."""
    from weightspace.graph import to_state_dict
    from weightspace.module import to_module

    x = inputs.long()
    rows, ok = [], []
    with torch.no_grad():
        for graph in graphs:
            out = to_module(graph.spec, to_state_dict(graph))(x).float()  # (P, C)
            out = out if out.shape[-1] == 1 else out.log_softmax(-1)
            finite = bool(torch.isfinite(out).all())
            rows.append(out if finite else torch.zeros_like(out))
            ok.append(finite)
    return torch.stack(rows), torch.tensor(ok, dtype=torch.bool)


def probe_outputs(
    graphs: Sequence[Any], inputs: Tensor, *, chunk: int = 1024
) -> tuple[Tensor, Tensor]:
    """Log-softmax outputs of models of *one* architecture on the same inputs, through the
    encoder's own probe forward (:func:`weightspace.nn.probes.probe_forward`: one
    ``torch.func.vmap`` of ``functional_call`` per chunk of models), so the probing row and the
    encoder's probe branch run models identically.

    Args:
        graphs: neural graphs that share one spec.
        inputs: ``(P, *input_shape)``.
        chunk: models per forward call (bounds memory).

    Returns:
        ``(M, P, C)`` float32 log-probabilities (raw outputs for one-output models; zeros where a
        model did not run) and an ``(M,)`` bool mask of models whose forward ran and whose
        outputs are all finite.

    Raises:
        BaselineError: a group's forward raised (the first line of the reason).
    """
    from weightspace.nn.probes import domain_key, probe_forward

    spec = graphs[0].spec
    if spec.is_tokens:
        return _token_outputs(graphs, inputs)
    probes = {domain_key(spec): inputs}
    classes = int(spec.num_outputs)
    parts, masks = [], []
    with torch.no_grad():
        for start in range(0, len(graphs), chunk):
            result = probe_forward(list(graphs[start : start + chunk]), probes, classes)
            raised = [r for r in result.reasons.values() if not r.startswith("non-finite")]
            if raised:
                raise BaselineError(raised[0])
            parts.append(result.log_probs.float())  # (m, P, C)
            masks.append(result.runnable.cpu())
    return torch.cat(parts), torch.cat(masks)


def _reason(exc: BaseException) -> str:
    message = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {message}".rstrip(": ")


class Probing:
    r"""Outputs on fixed inputs, then the tuned tree head (``probing-gauss``, ``probing-task``).

    For each model :math:`f_\theta` and fixed inputs :math:`x_1, \dots, x_P`:

    .. math::
        z(\theta) = \big(\log \operatorname{softmax} f_\theta(x_p)_c\big)_{p \le P,\ c \le C}
        \in \mathbb{R}^{P C}

    with classes zero-padded (or cut) to the most outputs seen in ``fit`` (:math:`C`; a task
    with fewer classes has constant padding, so only models of one output width compare). Inputs are
    standard normal of each model's input shape (``inputs="gaussian"``, data-free, the same
    values for every architecture with as many inputs) or ``P`` rows of the task's training
    split (``inputs="task"``, needs the ``task`` column and a built-in task). Models of one
    architecture (and task) run through the encoder's probe forward
    (:func:`weightspace.nn.probes.probe_forward`, one ``vmap`` of ``functional_call``). The head is
    :func:`~weightspace.baselines.tuning.tuned_regressor` (``"gbt"``) with run-grouped
    cross-validation when ``tune`` and the ``run_id`` column is known, otherwise a default
    histogram GBT.

    A model whose forward raises or gives non-finite outputs is listed in ``failed``
    (checkpoint id, or ``model <i>`` without one → reason); its embedding row and prediction are
    NaN and it is left out of the head's training set — never silently zeroed.

    Args:
        inputs: ``"gaussian"`` or ``"task"``.
        probes: ``P``.
        seed: seed of the inputs and the head.
        tune: tune the head by run-grouped cross-validation.
    """

    def __init__(
        self, inputs: str = "gaussian", probes: int = 64, seed: int = 0, tune: bool = True
    ) -> None:
        if inputs not in ("gaussian", "task"):
            raise BaselineError(f"probing inputs must be 'gaussian' or 'task', got {inputs!r}")
        self.inputs = inputs
        self.probes = probes
        self.seed = seed
        self.tune = tune
        self.name = "probing-gauss" if inputs == "gaussian" else "probing-task"
        capabilities = {EMBED, PREDICT, MIXED_ARCHITECTURES, NEEDS_FORWARD}
        if inputs == "task":
            capabilities.add(NEEDS_METADATA)
        self.capabilities = frozenset(capabilities)
        self.failed: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Probing(inputs={self.inputs!r}, probes={self.probes}, seed={self.seed})"

    def _names(self, models: ModelSet) -> list[str]:
        ids = models.column("checkpoint_id")
        if ids is None:
            return [f"model {i}" for i in range(len(models))]
        return [str(i) for i in ids]

    def _outputs(self, models: ModelSet) -> tuple[list[Tensor | None], list[str]]:
        """Per model its ``(P, C_model)`` log-probabilities (None where it failed), and the
        model names; failures are recorded in ``failed``."""
        tasks = models.column("task")
        if self.inputs == "task" and tasks is None:
            raise BaselineError(
                "probing-task draws its inputs from each model's task, but the zoo has no "
                "'task' column; use probing-gauss"
            )
        names = self._names(models)
        cells: dict[tuple[str, str], list[int]] = {}
        for i, graph in enumerate(models.graphs):
            task = str(tasks[i]) if self.inputs == "task" else ""
            cells.setdefault((task, graph.spec.to_json()), []).append(i)
        outputs: list[Tensor | None] = [None] * len(models)
        for (task, _), members in sorted(cells.items()):
            graphs = [models.graphs[i] for i in members]
            spec = graphs[0].spec
            try:
                if self.inputs == "task":
                    x = _task_inputs(task, spec, self.probes, self.seed)
                else:
                    x = _gaussian_inputs(spec, self.probes, self.seed)
            except Exception as exc:  # noqa: BLE001 - no inputs: every model of the cell fails
                for i in members:
                    self.failed[names[i]] = _reason(exc)
                continue
            try:
                rows = self._rows(graphs, x)
            except Exception:  # noqa: BLE001 - find the culprits one forward at a time
                rows = []
                for i, graph in zip(members, graphs, strict=True):
                    try:
                        rows.extend(self._rows([graph], x))
                    except Exception as exc:  # noqa: BLE001 - reported per model
                        self.failed[names[i]] = _reason(exc)
                        rows.append(None)
            for i, row in zip(members, rows, strict=True):
                if row is None:
                    self.failed.setdefault(names[i], "non-finite outputs")
                else:
                    outputs[i] = row
        return outputs, names

    @staticmethod
    def _rows(graphs: list[Any], x: Tensor) -> list[Tensor | None]:
        """Per model its ``(P, C)`` outputs, or None where they are not all finite."""
        outputs, finite = probe_outputs(graphs, x)
        return [row if ok else None for row, ok in zip(outputs, finite.tolist(), strict=True)]

    def _features(self, outputs: list[Tensor | None], width: int) -> np.ndarray:
        out = np.full((len(outputs), self.probes * width), np.nan)
        for i, row in enumerate(outputs):
            if row is None:
                continue
            classes = min(int(row.shape[-1]), width)
            padded = np.zeros((self.probes, width))
            padded[:, :classes] = row[:, :classes].double().numpy()
            out[i] = padded.reshape(-1)
        return out

    def fit(self, models: ModelSet, targets: np.ndarray | None) -> Probing:
        """Probe the training models and (with targets) fit the head; returns ``self``."""
        y = check_targets(models, targets, self.name)
        self.failed = {}
        outputs, _ = self._outputs(models)
        known = [row for row in outputs if row is not None]
        if not known:
            raise BaselineError(f"{self.name}: no model's forward gave finite outputs")
        self.num_classes_ = max(int(row.shape[-1]) for row in known)
        features = self._features(outputs, self.num_classes_)
        ok = np.isfinite(features).all(axis=1)
        self.regressor_ = None
        if y is not None:
            from weightspace.baselines.tuning import make_head, tuned_regressor

            runs = models.column("run_id")
            if self.tune and runs is not None:
                self.regressor_ = tuned_regressor(
                    "gbt", features[ok], y[ok], np.asarray(runs)[ok], self.seed
                )
            else:
                self.regressor_ = make_head("gbt", self.seed).fit(features[ok], y[ok])
        self.embedding_dim_ = int(features.shape[1])
        return self

    def embed(self, models: ModelSet) -> np.ndarray:
        """Flattened log-softmax outputs ``(N, P * C)``; NaN rows for failed models."""
        _check_fitted(self, "embedding_dim_")
        outputs, _ = self._outputs(models)
        return self._features(outputs, self.num_classes_)

    def predict_accuracy(self, models: ModelSet) -> np.ndarray:
        """The head's prediction ``(N,)``; NaN for failed models."""
        _check_fitted(self, "embedding_dim_")
        if self.regressor_ is None:
            raise BaselineError(f"{self.name} was fitted without targets; it cannot predict")
        features = self.embed(models)
        ok = np.isfinite(features).all(axis=1)
        out = np.full(len(models), np.nan)
        if ok.any():
            out[ok] = self.regressor_.predict(features[ok])
        return out
