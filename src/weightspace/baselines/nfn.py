r"""Neural functional networks (Zhou et al. 2023, the ``nfn`` package) as baselines, at the
reference settings of the paper's accuracy-prediction experiment (``experiments/predict_gen.py``
of AllanYangZhou/nfn, on the Small CNN Zoo).

``nfn-hnp`` stacks :class:`nfn.layers.HNPLinear` layers, equivariant to permutations of *hidden*
neurons only (the exact symmetry of an MLP or CNN). ``nfn-np`` stacks :class:`nfn.layers.NPLinear`
layers, equivariant to permutations of *every* neuron, with learned input/output position
embeddings (``io_embed=True``, the reference ``NP-PosEmb`` mode) that break the symmetry the
network does not have. Then, as in the reference ``InvariantNFN`` + ``MlpHead``: HNP pooling (for
both modes), an MLP head with two hidden layers and a sigmoid output,

.. math::
    z = \mathrm{ReLU}\big(W_2\,\mathrm{ReLU}(W_1\,\mathrm{Pool}(E_K \circ \sigma \circ \dots
        \circ \sigma \circ E_1(\theta)) + b_1) + b_2\big),
    \qquad \widehat{\mathrm{acc}} = \mathrm{sigmoid}(h^\top z + c),

trained with binary cross-entropy against the test accuracy (in :math:`[0, 1]`). :math:`z` is the
embedding. The reference settings: equivariant channels ``16, 16, 5``, head width 1000, Adam at
learning rate 1e-3 without warm-up, batch 8, 50 epochs, and the weights of the epoch with the best
validation Kendall :math:`\tau` kept. Here the validation models are 20 % of the training *runs*
(``fit(..., groups=run_ids)``; without groups, 20 % of the models as in the reference).

Two deviations. Training stops after ``patience`` (10) epochs without a better validation
:math:`\tau` (the reference runs all 50 and keeps the best): on the ``small`` zoo the best epoch
came at 2–42 and fits ran 28 of the 50 epochs on average, and a fit still costs about 40
CPU-seconds per (task, architecture) group and variant at one thread. And, for exact
invariance, every layer's weights and biases are divided by one standard deviation over the
training models (both modes), where the reference normalises NP inputs element-wise, which is
not invariant to hidden-neuron permutations.

NFNs need *one fixed architecture*: every model of ``fit`` and ``embed`` must share its spec, its
layers must read their inputs directly (no flattened conv maps, no residual adds) and there must
be at least two layers. Conv1d kernels ``(out, in, k)`` are treated as Conv2d kernels
``(out, in, k, 1)``. Anything else raises :class:`UnsupportedArchitectureError` naming the reason.
Fitted without targets the network keeps its random initialisation, which is still an invariant
(random-feature) embedding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.baselines.base import (
    BaselineError,
    Embedder,
    ModelLike,
    UnsupportedArchitectureError,
    as_spec_and_state_dicts,
    register_embedder,
)
from weightspace.baselines.nfn_network import NFNNetwork, nfn_incompatibility, to_nfn_tensors
from weightspace.spec import NetworkSpec

__all__ = [
    "NFNEmbedder",
    "NFNHNPEmbedder",
    "NFNNPEmbedder",
    "nfn_incompatibility",
    "validation_split",
]


def validation_split(
    n: int, groups: Sequence[object] | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(train, val)`` of ``n`` models: ``fraction`` of the *groups* (runs) go to
    validation, drawn by ``seed``; without groups every model is its own group. With fewer than
    3 groups there is nothing to hold out and ``val`` is empty."""
    labels = np.arange(n).astype(str) if groups is None else np.asarray(groups).astype(str)
    if labels.shape[0] != n:
        raise BaselineError(f"groups has {labels.shape[0]} entries for {n} models")
    unique = np.unique(labels)
    if unique.size < 3 or fraction <= 0:
        return np.arange(n), np.arange(0)
    from weightspace.evaluate.splits import split_runs

    val = split_runs(list(unique), fraction, 0.0, seed)["val"]
    is_val = np.isin(labels, val)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


class NFNEmbedder(Embedder):
    """An NFN (HNP or NP) trained on test accuracy (see the module docstring).

    Args:
        mode: ``"hnp"`` or ``"np"`` (NP with learned input/output position embeddings).
        hidden_channels: channels of every equivariant layer but the last (reference 16).
        num_layers: equivariant layers (reference 3).
        embedding_dim: width of the MLP head's two hidden layers, the embedding (reference 1000).
        epochs: at most this many passes over the training models (reference 50).
        batch_size: models per step (reference 8).
        learning_rate: of Adam (reference 1e-3).
        weight_decay: of Adam (reference 0).
        random_state: seed of the initialisation, the validation split and the batch order.
        out_channels: channels of the last equivariant layer (reference 5).
        val_fraction: share of the training runs held out to choose the epoch (0: none; the
            last epoch is kept).
        patience: stop after this many epochs without a better validation :math:`\\tau`
            (0: never stop early).
    """

    _fitted_attribute = "network_"

    def __init__(
        self,
        mode: str = "hnp",
        hidden_channels: int = 16,
        num_layers: int = 3,
        embedding_dim: int = 1000,
        epochs: int = 50,
        batch_size: int = 8,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        random_state: int = 0,
        out_channels: int = 5,
        val_fraction: float = 0.2,
        patience: int = 10,
    ) -> None:
        self.mode = mode
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers
        self.embedding_dim = embedding_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.out_channels = out_channels
        self.val_fraction = val_fraction
        self.patience = patience

    # ------------------------------------------------------------------ inputs
    def _tensors(
        self, models: Sequence[ModelLike], spec: NetworkSpec | None
    ) -> tuple[NetworkSpec, list[Tensor], list[Tensor]]:
        pairs = as_spec_and_state_dicts(models)
        reference = spec or pairs[0][0]
        for i, (other, _) in enumerate(pairs):
            if other != reference:
                raise UnsupportedArchitectureError(
                    f"nfn-{self.mode} needs one fixed architecture, but model {i} is "
                    f"{other.summary()} while the {'fitted' if spec else 'first'} one is "
                    f"{reference.summary()}; evaluate NFNs on single-architecture zoos only"
                )
        reason = nfn_incompatibility(reference)
        if reason is not None:
            raise UnsupportedArchitectureError(
                f"nfn-{self.mode} cannot represent {reference.summary()}: {reason}"
            )
        weights, biases = to_nfn_tensors(reference, [sd for _, sd in pairs])
        return reference, weights, biases

    def _features(self, weights: list[Tensor], biases: list[Tensor], index: Tensor) -> object:
        from nfn.common import WeightSpaceFeatures

        return WeightSpaceFeatures(
            [w[index] / s for w, s in zip(weights, self.weight_scales_, strict=True)],
            [b[index] / s for b, s in zip(biases, self.bias_scales_, strict=True)],
        )

    def _check_hyperparameters(self) -> None:
        if self.mode not in ("hnp", "np"):
            raise BaselineError(f"mode must be 'hnp' or 'np', got {self.mode!r}")
        if self.num_layers < 1 or self.epochs < 1 or self.batch_size < 1:
            raise BaselineError("num_layers, epochs and batch_size must be >= 1")
        if not 0 <= self.val_fraction < 1 or self.patience < 0:
            raise BaselineError("val_fraction must be in [0, 1) and patience >= 0")

    # ------------------------------------------------------------------ contract
    def fit(
        self,
        models: Sequence[ModelLike],
        targets: Mapping[str, np.ndarray] | None = None,
        groups: Sequence[object] | None = None,
    ) -> NFNEmbedder:
        """Build the network for the models' architecture; with targets, train it.

        Args:
            models: graphs or ``(spec, state_dict)`` pairs of one architecture.
            targets: ``{"test_accuracy": (n,) values in [0, 1]}``, or ``None`` (random features).
            groups: one run id per model; the validation models are whole runs.

        Returns:
            self, with ``losses_`` (mean training loss per epoch), ``val_taus_`` (validation
            Kendall tau per epoch, when there is a validation split; NaN where undefined) and
            ``best_epoch_`` (the epoch whose weights were kept).
        """
        from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat

        self._check_hyperparameters()
        spec, weights, biases = self._tensors(models, None)
        n = weights[0].shape[0]
        y = self._accuracy_target(targets, n)
        if y is not None and (y.min() < 0 or y.max() > 1):
            raise BaselineError(
                f"nfn-{self.mode} predicts accuracies through a sigmoid, but the targets span "
                f"[{y.min():.3g}, {y.max():.3g}]; pass accuracies in [0, 1]"
            )
        self.weight_scales_ = [float(w.std()) or 1.0 for w in weights]
        self.bias_scales_ = [float(b.std()) or 1.0 for b in biases]
        nfn_spec = network_spec_from_wsfeat(WeightSpaceFeatures(weights, biases))
        channels = [self.hidden_channels] * (self.num_layers - 1) + [self.out_channels]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            network = NFNNetwork(nfn_spec, self.mode, channels, self.embedding_dim)
        self.regressor_: nn.Module | None = None
        self.losses_: list[float] = []
        self.val_taus_: list[float] = []
        self.best_epoch_ = 0
        if y is not None:
            self._train(network, weights, biases, torch.tensor(y, dtype=torch.float32), groups)
            self.regressor_ = network.head
        network.eval()
        self.spec_ = spec
        self.n_models_ = n
        self.embedding_dim_ = self.embedding_dim
        self.network_ = network
        return self

    def _train(
        self,
        network: NFNNetwork,
        weights: list[Tensor],
        biases: list[Tensor],
        target: Tensor,
        groups: Sequence[object] | None,
    ) -> None:
        """Adam on binary cross-entropy, batch by batch; keep the epoch of best validation tau
        (of lowest validation loss where tau is undefined: one validation model, or all alike)."""
        from weightspace.evaluate.metrics import kendall_tau

        train, val = validation_split(len(target), groups, self.val_fraction, self.random_state)
        train_index = torch.from_numpy(train)
        generator = torch.Generator().manual_seed(self.random_state)
        optimizer = torch.optim.Adam(
            network.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        val_index = torch.from_numpy(val)
        rank = val.size > 1 and bool(np.ptp(target[val].numpy()) > 0)
        best_score, bad = -math.inf, 0
        best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        for epoch in range(self.epochs):
            network.train()
            total = 0.0
            order = train_index[torch.randperm(len(train_index), generator=generator)]
            for batch in order.split(self.batch_size):
                _, logits = network(self._features(weights, biases, batch))
                loss = nn.functional.binary_cross_entropy_with_logits(logits, target[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.detach().item() * len(batch)
            self.losses_.append(total / max(1, len(train_index)))
            if val.size == 0:
                self.best_epoch_ = epoch + 1
                continue
            logits = self._logits(network, weights, biases, val_index)
            tau = kendall_tau(target[val].numpy(), logits.numpy()) if rank else math.nan
            self.val_taus_.append(tau)
            if rank:  # a constant prediction has no tau: the worst score
                score = tau if math.isfinite(tau) else -math.inf
            else:
                bce = nn.functional.binary_cross_entropy_with_logits(logits, target[val_index])
                score = -float(bce)
            if score > best_score or self.best_epoch_ == 0:
                best_score, bad, self.best_epoch_ = score, 0, epoch + 1
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            else:
                bad += 1
                if self.patience and bad >= self.patience:
                    break
        if val.size:
            network.load_state_dict(best_state)

    @torch.no_grad()
    def _logits(
        self, network: NFNNetwork, weights: list[Tensor], biases: list[Tensor], index: Tensor
    ) -> Tensor:
        network.eval()
        return torch.cat(
            [network(self._features(weights, biases, part))[1] for part in index.split(256)]
        )

    @torch.no_grad()
    def _run(self, models: Sequence[ModelLike]) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        _, weights, biases = self._tensors(models, self.spec_)
        zs, logits = [], []
        for index in torch.arange(weights[0].shape[0]).split(256):
            z, logit = self.network_(self._features(weights, biases, index))
            zs.append(z)
            logits.append(logit)
        return torch.cat(zs).double().numpy(), torch.cat(logits).double().numpy()

    def embed(self, models: Sequence[ModelLike]) -> np.ndarray:
        """Embeddings ``(n, embedding_dim)`` (float64)."""
        return self._run(models)[0]

    def predict(self, models: Sequence[ModelLike]) -> np.ndarray:
        """Predicted test accuracy ``(n,)``, in ``(0, 1)``."""
        self._check_can_predict()
        from scipy.special import expit

        return expit(self._run(models)[1])


@register_embedder(
    "nfn-hnp",
    description="NFN with HNP layers (hidden-neuron permutation equivariant); fixed architecture",
    requires=("nfn", "einops"),
    fixed_architecture=True,
)
class NFNHNPEmbedder(NFNEmbedder):
    """:class:`NFNEmbedder` with ``mode="hnp"``."""

    def __init__(
        self,
        hidden_channels: int = 16,
        num_layers: int = 3,
        embedding_dim: int = 1000,
        epochs: int = 50,
        batch_size: int = 8,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        random_state: int = 0,
        out_channels: int = 5,
        val_fraction: float = 0.2,
        patience: int = 10,
    ) -> None:
        super().__init__(
            "hnp",
            hidden_channels,
            num_layers,
            embedding_dim,
            epochs,
            batch_size,
            learning_rate,
            weight_decay,
            random_state,
            out_channels,
            val_fraction,
            patience,
        )


@register_embedder(
    "nfn-np",
    description="NFN with NP layers and input/output position embeddings; fixed architecture",
    requires=("nfn", "einops"),
    fixed_architecture=True,
)
class NFNNPEmbedder(NFNEmbedder):
    """:class:`NFNEmbedder` with ``mode="np"`` (learned input/output position embeddings)."""

    def __init__(
        self,
        hidden_channels: int = 16,
        num_layers: int = 3,
        embedding_dim: int = 1000,
        epochs: int = 50,
        batch_size: int = 8,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        random_state: int = 0,
        out_channels: int = 5,
        val_fraction: float = 0.2,
        patience: int = 10,
    ) -> None:
        super().__init__(
            "np",
            hidden_channels,
            num_layers,
            embedding_dim,
            epochs,
            batch_size,
            learning_rate,
            weight_decay,
            random_state,
            out_channels,
            val_fraction,
            patience,
        )
