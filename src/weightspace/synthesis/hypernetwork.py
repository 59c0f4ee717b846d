r"""The decoder module: one hypernetwork per target architecture, and its files.

For each target :class:`~weightspace.spec.NetworkSpec` an MLP maps the standardised embedding
to the flat parameter vector of that spec,

.. math::
    \hat z = (z - \mu_z) / \sigma_z, \qquad
    \theta(z) = \theta_0 + s \odot \mathrm{MLP}(\hat z) \in \mathbb{R}^{P},

with :math:`\theta_0` a learned base network (initialised to a training model) and :math:`s`
the per-tensor standard deviation of the training models' weights. Training is in
:mod:`weightspace.synthesis.decoder_training`; the overview in :mod:`weightspace.synthesis.decoder`.

Files, in the encoder directory: ``decoder.safetensors`` (weights, embedding statistics) and
``decoder.json`` (format, config, target specs, tasks seen, the encoder's fingerprint, training
log).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.atomic import atomic_write_bytes
from weightspace.spec import NetworkSpec
from weightspace.synthesis.common import StateDict, SynthesisError
from weightspace.synthesis.functional import unflatten

__all__ = [
    "DECODER_CONFIG",
    "DECODER_FORMAT_VERSION",
    "DECODER_WEIGHTS",
    "Decoder",
    "DecoderConfig",
    "DecoderExample",
    "spec_key",
]


DECODER_FORMAT_VERSION = 1
DECODER_WEIGHTS = "decoder.safetensors"
DECODER_CONFIG = "decoder.json"
_FORMAT_NAME = "weightspace-decoder"


def spec_key(spec: NetworkSpec) -> str:
    """A short stable name for an architecture: SHA-256 of its JSON, 16 hex digits."""
    return hashlib.sha256(spec.to_json().encode()).hexdigest()[:16]


@dataclass
class DecoderConfig:
    """Architecture and training of a :class:`Decoder` (saved in ``decoder.json``)."""

    hidden: int = 256  # width of each hypernetwork's hidden layers
    layers: int = 2  # hidden layers of each hypernetwork
    steps: int = 3000  # optimisation steps
    batch_size: int = 16  # decoded models per step
    inputs_per_step: int = 128  # task inputs each decoded model is run on per step
    learning_rate: float = 2e-3  # peak AdamW learning rate (cosine decay to 5%)
    weight_decay: float = 1e-4  # AdamW weight decay
    loss: str = "kl"  # logit distillation: kl | mse (of class-centred logits)
    temperature: float = 2.0  # softmax temperature of the kl loss
    mix_fraction: float = 0.5  # share of each batch spent on interpolated pairs
    embedding_noise: float = 0.05  # Gaussian noise on standardised embeddings while training
    weight_loss: float = 0.0  # weight of the regression onto matched (canonical) weights
    eval_every: int = 100  # steps between validation checks (with validation models)
    time_limit: float = 0.0  # safety cap in seconds (0: none); stops training, schedule by steps
    seed: int = 0  # initialisation, batches, pairs, noise

    def __post_init__(self) -> None:
        if self.loss not in ("mse", "kl"):
            raise SynthesisError(f"decoder loss must be 'mse' or 'kl', got {self.loss!r}")
        if not 0.0 <= self.mix_fraction <= 1.0:
            raise SynthesisError(f"mix_fraction must be in [0, 1], got {self.mix_fraction}")
        if self.steps < 0 or self.batch_size < 1 or self.layers < 1 or self.eval_every < 1:
            raise SynthesisError(
                "decoder steps must be >= 0, batch_size, layers and eval_every >= 1"
            )
        if self.time_limit < 0:
            raise SynthesisError(f"time_limit must be >= 0 seconds, got {self.time_limit}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SynthesisError(
                f"decoder config has unknown fields {unknown}; it was written by a newer "
                "weightspace — upgrade weightspace"
            )
        return cls(**dict(data))


@dataclass
class DecoderExample:
    """One training model of the decoder.

    Attributes:
        spec: its architecture.
        state_dict: its weights (spec form).
        task: its task name (``weightspace.zoo.tasks``), which supplies the inputs.
        run: its training run (pairs for the interpolation loss come from different runs).
    """

    spec: NetworkSpec
    state_dict: Mapping[str, Tensor]
    task: str
    run: str = ""


class _HyperNetwork(nn.Module):
    """``z (B, d)`` → flat weights ``(B, P)``: ``base + scale * MLP(z)``."""

    def __init__(self, embedding_dim: int, hidden: int, layers: int, num_parameters: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = embedding_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.body = nn.Sequential(*blocks)
        self.out = nn.Linear(hidden, num_parameters)
        self.base = nn.Parameter(torch.zeros(num_parameters))
        self.register_buffer("scale", torch.ones(num_parameters))
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    def forward(self, z: Tensor) -> Tensor:
        return self.base + self.scale * self.out(self.body(z))


class Decoder(nn.Module):
    r"""Embeddings → weights, one hypernetwork per target architecture (see module docstring).

    Args:
        embedding_dim: width of the encoder's embeddings.
        specs: the target architectures.
        config: hyper-parameters.
        encoder_fingerprint: the encoder whose embeddings this decoder reads.

    Shapes:
        :meth:`forward`: ``z (B, embedding_dim)`` → ``(B, P)`` flat weights of ``spec``.
    """

    def __init__(
        self,
        embedding_dim: int,
        specs: Sequence[NetworkSpec],
        config: DecoderConfig | None = None,
        *,
        encoder_fingerprint: str = "",
    ) -> None:
        super().__init__()
        self.config = config or DecoderConfig()
        self.embedding_dim = int(embedding_dim)
        self.specs: list[NetworkSpec] = list(dict.fromkeys(specs))
        self.encoder_fingerprint = encoder_fingerprint
        self.tasks: dict[str, list[str]] = {}  # spec key -> tasks seen while training
        self.log: list[dict[str, float]] = []
        self.register_buffer("z_mean", torch.zeros(self.embedding_dim))
        self.register_buffer("z_std", torch.ones(self.embedding_dim))
        self.heads = nn.ModuleDict(
            {
                spec_key(spec): _HyperNetwork(
                    self.embedding_dim, self.config.hidden, self.config.layers, spec.num_parameters
                )
                for spec in self.specs
            }
        )

    # ------------------------------------------------------------------ queries
    def supports(self, spec: NetworkSpec) -> bool:
        return spec_key(spec) in self.heads

    def _head(self, spec: NetworkSpec) -> _HyperNetwork:
        key = spec_key(spec)
        if key not in self.heads:
            known = "; ".join(s.summary() for s in self.specs) or "none"
            raise SynthesisError(
                f"the decoder has no head for the architecture {spec.summary()}; it was trained "
                f"for: {known}. Train it on a zoo holding this architecture "
                "(`weightspace train-decoder`)"
            )
        return self.heads[key]  # type: ignore[return-value]

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the specs, config and weights."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for spec in self.specs:
            digest.update(spec.to_json().encode())
        for key, tensor in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    # ------------------------------------------------------------------ decoding
    def standardize(self, z: Tensor) -> Tensor:
        return (z.to(self.z_mean) - self.z_mean) / self.z_std

    def forward(self, z: Tensor, spec: NetworkSpec) -> Tensor:
        """Flat weights ``(B, P)`` of ``spec`` for raw embeddings ``z (B, d)``."""
        if z.dim() != 2 or z.shape[1] != self.embedding_dim:
            raise SynthesisError(
                f"expected embeddings of shape (B, {self.embedding_dim}), got {tuple(z.shape)}"
            )
        return self._head(spec)(self.standardize(z))

    @torch.no_grad()
    def decode(self, z: Tensor | np.ndarray, spec: NetworkSpec) -> list[StateDict]:
        """State dicts of ``spec`` (detached, contiguous) for embeddings ``z (B, d)``."""
        z = torch.as_tensor(np.asarray(z) if not isinstance(z, Tensor) else z)
        if z.dim() == 1:
            z = z.unsqueeze(0)
        was_training = self.training
        self.eval()
        flat = self(z, spec)
        self.train(was_training)
        return [{k: v.clone() for k, v in unflatten(spec, row).items()} for row in flat]

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``decoder.safetensors`` and ``decoder.json`` into ``directory`` (atomically)."""
        from safetensors.torch import save

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        blob = save(tensors, metadata={"format": _FORMAT_NAME})
        meta = {
            "format": _FORMAT_NAME,
            "format_version": DECODER_FORMAT_VERSION,
            "embedding_dim": self.embedding_dim,
            "config": self.config.to_dict(),
            "specs": [json.loads(s.to_json()) for s in self.specs],
            "tasks": self.tasks,
            "encoder_fingerprint": self.encoder_fingerprint,
            "fingerprint": self.fingerprint,
            "log": self.log,
        }
        atomic_write_bytes(path / DECODER_WEIGHTS, blob)
        atomic_write_bytes(path / DECODER_CONFIG, (json.dumps(meta, indent=2) + "\n").encode())
        return path

    @classmethod
    def exists(cls, directory: str | os.PathLike[str]) -> bool:
        path = Path(directory)
        return (path / DECODER_CONFIG).is_file() and (path / DECODER_WEIGHTS).is_file()

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Decoder:
        """Read a decoder saved by :meth:`save` (in eval mode).

        Raises:
            SynthesisError: the files are missing, corrupt or from a newer weightspace.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(directory)
        meta_path, weights_path = path / DECODER_CONFIG, path / DECODER_WEIGHTS
        if not cls.exists(path):
            raise SynthesisError(
                f"{path}: no decoder ({DECODER_CONFIG} and {DECODER_WEIGHTS}) in this encoder "
                "directory; train one with `weightspace train-decoder --encoder "
                f"{path} --zoo ZOO`"
            )
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != _FORMAT_NAME:
                raise SynthesisError(f"{meta_path}: not a weightspace decoder file")
            if int(meta.get("format_version", 0)) > DECODER_FORMAT_VERSION:
                raise SynthesisError(
                    f"{meta_path}: decoder format {meta['format_version']} is newer than this "
                    "weightspace supports; upgrade weightspace"
                )
            specs = [NetworkSpec.from_dict(s) for s in meta["specs"]]
            decoder = cls(
                int(meta["embedding_dim"]),
                specs,
                DecoderConfig.from_dict(meta["config"]),
                encoder_fingerprint=str(meta.get("encoder_fingerprint", "")),
            )
            tensors = load_file(str(weights_path))
            decoder.load_state_dict(tensors, strict=True)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise SynthesisError(
                f"{path}: the decoder files are corrupt or inconsistent ({exc})"
            ) from None
        except SafetensorError as exc:
            raise SynthesisError(
                f"{weights_path}: cannot read the decoder weights ({exc})"
            ) from None
        decoder.tasks = {k: list(v) for k, v in meta.get("tasks", {}).items()}
        decoder.log = list(meta.get("log", []))
        return decoder.eval()

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, specs={[s.summary() for s in self.specs]}"
