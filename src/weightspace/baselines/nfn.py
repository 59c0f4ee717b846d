r"""Neural functional networks (Zhou et al. 2023, the ``nfn`` package) as baselines.

``nfn-np`` stacks :class:`nfn.layers.NPLinear` layers, equivariant to permutations of *every*
neuron (inputs and outputs included); ``nfn-hnp`` stacks :class:`nfn.layers.HNPLinear`, equivariant
to permutations of *hidden* neurons only (the exact symmetry of an MLP). Then an invariant pooling
(``NPPool`` / ``HNPPool``), a linear layer with ReLU giving the embedding :math:`z`, and a linear
head predicting standardised test accuracy, trained with mean squared error:

.. math::
    z = \mathrm{ReLU}\big(A\,\mathrm{Pool}(E_K \circ \sigma \circ \dots \circ E_1(\theta)) + a\big),
    \qquad \widehat{\mathrm{acc}} = \bar y + s_y\,(h^\top z + c)

Each layer's weights and biases are divided by their standard deviation over the training models
first. Fitted without targets the network keeps its random initialisation, which is still an
invariant (random-feature) embedding.

NFNs need *one fixed architecture*: every model of ``fit`` and ``embed`` must share its spec, its
layers must read their inputs directly (no flattened conv maps, no residual adds) and there must
be at least two layers. Conv1d kernels ``(out, in, k)`` are treated as Conv2d kernels
``(out, in, k, 1)``. Anything else raises :class:`UnsupportedArchitectureError` naming the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.baselines.base import (
    Embedder,
    ModelLike,
    UnsupportedArchitectureError,
    as_spec_and_state_dicts,
    register_embedder,
)
from weightspace.layout import layout_of
from weightspace.spec import NetworkSpec

__all__ = ["NFNEmbedder", "NFNHNPEmbedder", "NFNNPEmbedder", "nfn_incompatibility"]


def nfn_incompatibility(spec: NetworkSpec) -> str | None:
    """Why ``spec`` cannot be fed to an NFN, or ``None`` if it can."""
    layout = layout_of(spec)
    if layout.residuals:
        return "it has residual connections, which NFN layers do not model"
    if len(spec.layers) < 2:
        return "it has a single layer; NFN layers need at least two"
    for link in layout.links:
        if link.spatial != 1:
            return (
                f"layer {link.name!r} reads a flattened feature map ({link.spatial} positions per "
                "channel), which NFN layers do not model; use global pooling before the head"
            )
    return None


def _to_nfn_tensors(
    spec: NetworkSpec, state_dicts: Sequence[Mapping[str, Tensor]]
) -> tuple[list[Tensor], list[Tensor]]:
    """Stack state dicts into nfn's ``(weights, biases)`` lists, layer by layer.

    Built from ``spec.layers`` rather than with ``nfn.common.state_dict_to_tensors``, which
    assumes the dict's keys alternate weight, bias. Shapes: weights ``(B, 1, out, in)`` or
    ``(B, 1, out, in, h, w)``, biases ``(B, 1, out)`` (zeros for a bias-free layer).
    """
    weights, biases = [], []
    for op in spec.layers:
        w = torch.stack([sd[f"{op.name}.weight"].detach().float().cpu() for sd in state_dicts])
        if w.dim() == 4:  # conv1d (B, out, in, k) → (B, out, in, k, 1)
            w = w.unsqueeze(-1)
        key = f"{op.name}.bias"
        if op.attrs.get("bias", True):
            b = torch.stack([sd[key].detach().float().cpu() for sd in state_dicts])
        else:
            b = torch.zeros(len(state_dicts), op.out_size)
        weights.append(w.unsqueeze(1))
        biases.append(b.unsqueeze(1))
    return weights, biases


class _NFNNetwork(nn.Module):
    def __init__(
        self, nfn_spec: object, mode: str, hidden_channels: int, num_layers: int, dim: int
    ) -> None:
        from nfn.layers import HNPLinear, HNPPool, NPLinear, NPPool, TupleOp

        super().__init__()
        layer_cls, pool_cls = (HNPLinear, HNPPool) if mode == "hnp" else (NPLinear, NPPool)
        layers: list[nn.Module] = []
        channels = 1
        for _ in range(num_layers):
            layers += [layer_cls(nfn_spec, channels, hidden_channels), TupleOp(nn.ReLU())]
            channels = hidden_channels
        self.equivariant = nn.Sequential(*layers)
        self.pool = pool_cls(nfn_spec)
        pooled = pool_cls.get_num_outs(nfn_spec) * hidden_channels
        self.embedding = nn.Sequential(nn.Flatten(), nn.Linear(pooled, dim), nn.ReLU())
        self.head = nn.Linear(dim, 1)

    def forward(self, features: object) -> tuple[Tensor, Tensor]:
        z = self.embedding(self.pool(self.equivariant(features)))  # (B, dim)
        return z, self.head(z).squeeze(-1)  # (B, dim), (B,)


class NFNEmbedder(Embedder):
    """An NFN (HNP or NP) trained with MSE on test accuracy (see the module docstring).

    Args:
        mode: ``"hnp"`` or ``"np"``.
        hidden_channels: channels of the equivariant layers.
        num_layers: equivariant layers.
        embedding_dim: size of the embedding :math:`z`.
        epochs: passes over the training models (the budget: seconds to minutes on CPU).
        batch_size: models per step.
        learning_rate: of Adam.
        weight_decay: of Adam.
        random_state: seed of the initialisation and the batch order.
    """

    _fitted_attribute = "network_"

    def __init__(
        self,
        mode: str = "hnp",
        hidden_channels: int = 16,
        num_layers: int = 2,
        embedding_dim: int = 64,
        epochs: int = 50,
        batch_size: int = 32,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        random_state: int = 0,
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
        weights, biases = _to_nfn_tensors(reference, [sd for _, sd in pairs])
        return reference, weights, biases

    def _features(self, weights: list[Tensor], biases: list[Tensor], index: Tensor) -> object:
        from nfn.common import WeightSpaceFeatures

        return WeightSpaceFeatures(
            [w[index] / s for w, s in zip(weights, self.weight_scales_, strict=True)],
            [b[index] / s for b, s in zip(biases, self.bias_scales_, strict=True)],
        )

    # ------------------------------------------------------------------ contract
    def fit(
        self, models: Sequence[ModelLike], targets: Mapping[str, np.ndarray] | None = None
    ) -> NFNEmbedder:
        """Build the network for the zoo's architecture; with targets, train it. Returns self."""
        from nfn.common import network_spec_from_wsfeat

        if self.mode not in ("hnp", "np"):
            raise ValueError(f"mode must be 'hnp' or 'np', got {self.mode!r}")
        spec, weights, biases = self._tensors(models, None)
        y = self._accuracy_target(targets, weights[0].shape[0])
        n = weights[0].shape[0]
        self.weight_scales_ = [float(w.std()) or 1.0 for w in weights]
        self.bias_scales_ = [float(b.std()) or 1.0 for b in biases]
        from nfn.common import WeightSpaceFeatures

        nfn_spec = network_spec_from_wsfeat(WeightSpaceFeatures(weights, biases))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            network = _NFNNetwork(
                nfn_spec, self.mode, self.hidden_channels, self.num_layers, self.embedding_dim
            )
        self.regressor_: nn.Module | None = None
        self.target_mean_, self.target_std_ = 0.0, 1.0
        if y is not None:
            self.target_mean_ = float(y.mean())
            self.target_std_ = float(y.std()) or 1.0
            target = torch.as_tensor(
                (y - self.target_mean_) / self.target_std_, dtype=torch.float32
            )
            generator = torch.Generator().manual_seed(self.random_state)
            optimizer = torch.optim.Adam(
                network.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
            )
            network.train()
            self.losses_ = []
            for _ in range(self.epochs):
                order = torch.randperm(n, generator=generator)
                total = 0.0
                for start in range(0, n, self.batch_size):
                    index = order[start : start + self.batch_size]
                    _, prediction = network(self._features(weights, biases, index))
                    loss = torch.nn.functional.mse_loss(prediction, target[index])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total += loss.detach().item() * len(index)
                self.losses_.append(total / n)
            self.regressor_ = network.head
        network.eval()
        self.spec_ = spec
        self.n_models_ = n
        self.embedding_dim_ = self.embedding_dim
        self.network_ = network
        return self

    @torch.no_grad()
    def _run(self, models: Sequence[ModelLike]) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        _, weights, biases = self._tensors(models, self.spec_)
        n = weights[0].shape[0]
        zs, predictions = [], []
        for start in range(0, n, 256):
            index = torch.arange(start, min(n, start + 256))
            z, prediction = self.network_(self._features(weights, biases, index))
            zs.append(z)
            predictions.append(prediction)
        return torch.cat(zs).double().numpy(), torch.cat(predictions).double().numpy()

    def embed(self, models: Sequence[ModelLike]) -> np.ndarray:
        """Embeddings ``(n, embedding_dim)`` (float64)."""
        return self._run(models)[0]

    def predict(self, models: Sequence[ModelLike]) -> np.ndarray:
        """Predicted test accuracy ``(n,)``."""
        self._check_can_predict()
        return self._run(models)[1] * self.target_std_ + self.target_mean_


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
        num_layers: int = 2,
        embedding_dim: int = 64,
        epochs: int = 50,
        batch_size: int = 32,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        random_state: int = 0,
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
        )


@register_embedder(
    "nfn-np",
    description="NFN with NP layers (all-neuron permutation equivariant); fixed architecture",
    requires=("nfn", "einops"),
    fixed_architecture=True,
)
class NFNNPEmbedder(NFNEmbedder):
    """:class:`NFNEmbedder` with ``mode="np"``."""

    def __init__(
        self,
        hidden_channels: int = 16,
        num_layers: int = 2,
        embedding_dim: int = 64,
        epochs: int = 50,
        batch_size: int = 32,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        random_state: int = 0,
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
        )
