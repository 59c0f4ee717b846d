r"""The decoder: an embedding ``z`` (and a target architecture) → the weights of a network.

One hypernetwork per target :class:`~weightspace.spec.NetworkSpec`: an MLP from the
standardised embedding to the flat parameter vector of that spec,

.. math::
    \hat z = (z - \mu_z) / \sigma_z, \qquad
    \theta(z) = \theta_0 + s \odot \mathrm{MLP}(\hat z) \in \mathbb{R}^{P},

with :math:`\theta_0` a learned base network (initialised to a training model) and :math:`s`
the per-tensor standard deviation of the training models' weights.

Training (the encoder is frozen; embeddings are computed once) is *functional*: decoded networks
are run on the task's training inputs :math:`x` and must reproduce the original model's logits,

.. math::
    \mathcal{L}_{\mathrm{rec}} = \mathbb{E}_{m,x}\,
        \lVert P\,(f_{\theta(z_m)}(x) - f_{\theta_m}(x)) \rVert^2 / C
    \quad\text{(or } \mathrm{KL}(\mathrm{softmax}(f_{\theta_m}/T) \,\Vert\,
        \mathrm{softmax}(f_{\theta(z_m)}/T))\text{)},

with :math:`P = I - \tfrac{1}{C}\mathbf{1}\mathbf{1}^\top` centring the logits over classes;
the loss does not care in which order the decoded network stores its hidden neurons. An
*interpolation* term teaches the decoder what points between two models of one task mean: for
pairs ``(a, b)`` and :math:`\alpha \sim U(0, 1)`,

.. math::
    \mathcal{L}_{\mathrm{mix}} = \mathbb{E}\,\lVert f_{\theta((1-\alpha) z_a + \alpha z_b)}(x)
        - \big((1-\alpha) f_{\theta_a}(x) + \alpha f_{\theta_b}(x)\big) \rVert^2 / C,

i.e. a decoded interpolation should compute the output ensemble of its endpoints. An optional
weight term regresses :math:`\theta(z_m)` onto the model's weights permuted to match a reference
model (weight matching, :mod:`weightspace.synthesis.rebasin`), a canonical form up to the
matching's accuracy. Decoded networks are evaluated in batch with ``torch.func.vmap`` over
``torch.func.functional_call`` of :func:`weightspace.module.to_module`.

Files, in the encoder directory: ``decoder.safetensors`` (weights, embedding statistics) and
``decoder.json`` (format, config, target specs, tasks seen, the encoder's fingerprint, training
log).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.atomic import atomic_write_bytes
from weightspace.module import to_module
from weightspace.spec import NetworkSpec
from weightspace.synthesis.common import StateDict, SynthesisError

if TYPE_CHECKING:
    from weightspace.nn.encoder import Encoder, ModelLike

__all__ = [
    "DECODER_FORMAT_VERSION",
    "Decoder",
    "DecoderConfig",
    "DecoderExample",
    "Synthesizer",
    "distillation_loss",
    "fit_decoder",
    "functional_logits",
    "spec_key",
    "train_decoder",
    "warmup_cosine",
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


# ---------------------------------------------------------------------------------------------
# functional evaluation of many decoded networks
# ---------------------------------------------------------------------------------------------
def unflatten(spec: NetworkSpec, flat: Tensor) -> StateDict:
    """A flat parameter vector ``(P,)`` (or ``(B, P)``) → state dict of ``spec`` (views)."""
    out: StateDict = {}
    offset = 0
    lead = tuple(flat.shape[:-1])
    for key, shape in spec.param_shapes().items():
        n = math.prod(shape)
        out[key] = flat[..., offset : offset + n].reshape(*lead, *shape)
        offset += n
    if offset != flat.shape[-1]:
        raise SynthesisError(
            f"flat vector has {flat.shape[-1]} entries but the spec needs {offset}"
        )
    return out


def flatten(spec: NetworkSpec, state_dict: Mapping[str, Tensor]) -> Tensor:
    """State dict of ``spec`` → flat ``(P,)`` vector in :meth:`NetworkSpec.param_shapes` order."""
    return torch.cat([state_dict[k].reshape(-1) for k in spec.param_shapes()])


@functools.lru_cache(maxsize=32)
def _template(spec: NetworkSpec, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A module of ``spec`` whose own parameters are never used (functional_call replaces them)."""
    return to_module(spec).to(dtype=dtype, device=device)


def functional_logits(spec: NetworkSpec, flat: Tensor, x: Tensor) -> Tensor:
    """Run ``B`` networks of ``spec`` given as flat vectors on shared inputs.

    Shapes:
        ``flat (B, P)``, ``x (N, *input_shape)`` → ``(B, N, num_outputs)``; differentiable
        with respect to ``flat``.
    """
    from torch.func import functional_call, vmap

    module = _template(spec, flat.dtype, flat.device)
    params = unflatten(spec, flat)

    def run(p: dict[str, Tensor]) -> Tensor:
        return functional_call(module, p, (x,))

    return vmap(run)(params)


# ---------------------------------------------------------------------------------------------
# the module
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
@dataclass
class _Group:
    """Training models of one (architecture, task): embeddings, targets, inputs."""

    spec: NetworkSpec
    task: str
    z: Tensor  # (M, d) raw embeddings
    logits: Tensor  # (M, N, C) original models' logits on the task's train inputs
    inputs: Tensor  # (N, *input_shape)
    runs: list[str]
    matched: Tensor | None = None  # (M, P) weights matched to a reference (weight loss)
    indices: list[int] = field(default_factory=list)  # positions in the example list


def _task_inputs(task: str, spec: NetworkSpec, split: str = "train") -> Tensor:
    from weightspace.zoo.tasks import get_task

    features = get_task(task).features
    x = features[split] if split in features else features["train"]
    try:
        return x.reshape(x.shape[0], *spec.input_shape)
    except RuntimeError:
        raise SynthesisError(
            f"task {task!r} has {x.shape[1]} features per example but the architecture "
            f"{spec.summary()} takes inputs of shape {list(spec.input_shape)}"
        ) from None


def distillation_loss(predicted: Tensor, target: Tensor, loss: str, temperature: float) -> Tensor:
    """Mean logit-distillation loss; shapes ``(B, N, C)``.

    The MSE compares logits centred over classes (:math:`f - \bar f`): a softmax classifier is
    unchanged by adding one number to all of an example's logits, so the decoder is not asked to
    reproduce that number.
    """
    if loss == "kl":
        log_p = F.log_softmax(predicted / temperature, dim=-1)
        log_q = F.log_softmax(target / temperature, dim=-1)
        return (log_q.exp() * (log_q - log_p)).sum(-1).mean() * temperature**2
    difference = predicted - target
    return (difference - difference.mean(-1, keepdim=True)).pow(2).mean()


def _embed_examples(
    encoder: Encoder | None,
    examples: Sequence[DecoderExample],
    embeddings: Tensor | np.ndarray | None,
) -> Tensor:
    """Embeddings ``(n, d)`` of ``examples``: the given table, or one pass of the encoder."""
    if embeddings is None:
        if encoder is None:
            raise SynthesisError("without an encoder, the examples' embeddings must be given")
        return torch.as_tensor(
            encoder.embed([(e.spec, e.state_dict) for e in examples]), dtype=torch.float32
        )
    z = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    dim = encoder.dim if encoder is not None else (z.shape[-1] if z.dim() == 2 else -1)
    if z.shape != (len(examples), dim):
        raise SynthesisError(
            f"expected an embedding table of shape ({len(examples)}, {dim}), got {tuple(z.shape)}"
        )
    return z


def _build_groups(
    encoder: Encoder | None,
    examples: Sequence[DecoderExample],
    weight_loss: bool,
    embeddings: Tensor | np.ndarray | None = None,
) -> list[_Group]:
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, example in enumerate(examples):
        by_key.setdefault((spec_key(example.spec), example.task), []).append(i)
    z_all = _embed_examples(encoder, examples, embeddings)
    groups = []
    for (_, task), indices in by_key.items():
        spec = examples[indices[0]].spec
        x = _task_inputs(task, spec)
        with torch.no_grad():
            logits = torch.stack(
                [to_module(spec, _float(examples[i].state_dict))(x) for i in indices]
            )
        matched = None
        if weight_loss:
            from weightspace.synthesis.rebasin import align

            reference = _float(examples[indices[0]].state_dict)
            matched = torch.stack(
                [
                    flatten(spec, align(spec, reference, _float(examples[i].state_dict)))
                    for i in indices
                ]
            )
        groups.append(
            _Group(
                spec,
                task,
                z_all[indices],
                logits,
                x,
                [examples[i].run or str(i) for i in indices],
                matched,
                indices,
            )
        )
    return groups


def warmup_cosine(done: float, peak: float, total: int) -> float:
    r"""The learning rate at share ``done`` of training: a linear warm-up over the first 5 %
    (from one step's worth), then a cosine decay from ``peak`` to 5 % of it,

    .. math::
        \eta(t) = \eta_{\max}\,\big(0.05 + 0.95 \cdot \tfrac{1}{2}(1 + \cos \pi t')\big),
        \qquad t' = (t - 0.05) / 0.95.
    """
    warm = 0.05
    if done < warm:
        return peak * max(done, 1.0 / max(total, 1)) / warm
    t = (done - warm) / (1 - warm)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def _float(state: Mapping[str, Tensor]) -> StateDict:
    return {k: v.detach().float() for k, v in state.items()}


def fit_decoder(
    encoder: Encoder | None,
    examples: Sequence[DecoderExample],
    config: DecoderConfig | None = None,
    *,
    embeddings: Tensor | np.ndarray | None = None,
    validation: Sequence[DecoderExample] | None = None,
    validation_embeddings: Tensor | np.ndarray | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> Decoder:
    """Train a decoder for ``encoder`` on ``examples`` (the encoder stays frozen).

    Args:
        encoder: the trained encoder; its embeddings of the examples are computed once.
            ``None`` fits the decoder on any fixed codes given as ``embeddings`` (and
            ``validation_embeddings``), e.g. to compare codes other than the encoder's
            (``benchmarks/bench_decoder_codes.py``); such a decoder has no encoder
            fingerprint.
        examples: training models (spec, weights, task, run).
        config: hyper-parameters (defaults: :class:`DecoderConfig`).
        device: where the decoder trains (embeddings are computed on the encoder's device).
        embeddings: the examples' embeddings ``(n, d)``, when already computed (a cached
            table); otherwise the encoder embeds them once.
        validation: held-out models of the training architectures (and tasks): every
            ``config.eval_every`` steps the decoder reconstructs them, and the weights with the
            highest agreement (share of equal predictions on the task's validation inputs)
            are kept: early stopping, and no collapse late in training.
        validation_embeddings: their embeddings, when already computed.
        progress: called every 100 steps with ``(step, {"loss": ..., ...})``.

    Returns:
        The fitted :class:`Decoder` (eval mode, on the CPU) with ``log`` filled.
    """
    config = config or DecoderConfig()
    if not examples:
        raise SynthesisError("no models to train the decoder on")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    groups = _build_groups(encoder, examples, config.weight_loss > 0, embeddings)
    z_all = torch.cat([g.z for g in groups])
    decoder = Decoder(
        int(z_all.shape[1]),
        [g.spec for g in groups],
        config,
        encoder_fingerprint=encoder.fingerprint if encoder is not None else "",
    )
    decoder.z_mean.copy_(z_all.mean(0))
    decoder.z_std.copy_(
        z_all.std(0).clamp_min(1e-6) if len(z_all) > 1 else torch.ones_like(z_all[0])
    )
    for g in groups:
        key = spec_key(g.spec)
        decoder.tasks.setdefault(key, [])
        if g.task not in decoder.tasks[key]:
            decoder.tasks[key].append(g.task)
    # per-tensor scales and the base network, from the training models of each architecture;
    # medians, so that a few diverged models (huge weights) do not set them
    for key, head in decoder.heads.items():
        members = [g for g in groups if spec_key(g.spec) == key]
        spec = members[0].spec
        flats = torch.stack(
            [flatten(spec, _float(examples[i].state_dict)) for g in members for i in g.indices]
        )
        scale = torch.empty(spec.num_parameters)
        offset = 0
        for shape in spec.param_shapes().values():
            n = math.prod(shape)
            block = flats[:, offset : offset + n]
            spread = block.std(1) if n > 1 else block.abs().reshape(-1)  # per model
            scale[offset : offset + n] = spread.median().clamp_min(1e-3)
            offset += n
        head.scale.copy_(scale)  # type: ignore[union-attr]
        typical = int(flats.norm(dim=1).argsort()[(len(flats) - 1) // 2])  # median norm
        matched = [g.matched for g in members if g.matched is not None]
        base = torch.cat(matched)[typical] if len(matched) == len(members) else flats[typical]
        head.base.data.copy_(base)  # type: ignore[union-attr]

    device = torch.device(device)
    decoder = decoder.to(device)
    for g in groups:
        g.z, g.logits, g.inputs = g.z.to(device), g.logits.to(device), g.inputs.to(device)
        if g.matched is not None:
            g.matched = g.matched.to(device)
    checks = _validation_checks(encoder, decoder, validation, validation_embeddings, device)
    optimizer = torch.optim.AdamW(
        decoder.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    total = max(config.steps, 1)
    steps = config.steps
    best: tuple[float, int, dict[str, Tensor]] | None = None

    def progress_at(step: int) -> float:
        """Share of the step budget done: the schedule follows steps, never the clock."""
        return min(step / total, 1.0)

    def over_time() -> bool:
        """The optional safety cap: stop (schedule unchanged) once it is exceeded."""
        return config.time_limit > 0 and time.perf_counter() - started >= config.time_limit

    sizes = np.array([len(g.runs) for g in groups], dtype=float)
    started = time.perf_counter()
    decoder.train()
    running: dict[str, float] = {}
    step = 0
    while step < steps:
        for pg in optimizer.param_groups:
            pg["lr"] = warmup_cosine(progress_at(step), config.learning_rate, total)
        g = groups[int(rng.choice(len(groups), p=sizes / sizes.sum()))]
        m = len(g.runs)
        b = config.batch_size
        n_mix = int(round(b * config.mix_fraction)) if m > 1 else 0
        rec = torch.from_numpy(rng.integers(0, m, size=b - n_mix)).to(device)
        xi = torch.randperm(g.inputs.shape[0], generator=generator)[: config.inputs_per_step]
        xi = xi.to(device)
        x = g.inputs[xi]
        z_std = decoder.z_std
        z = g.z[rec]
        target = g.logits[rec][:, xi]
        parts_z, parts_t = [z], [target]
        if n_mix:
            a = torch.from_numpy(rng.integers(0, m, size=n_mix)).to(device)
            shift = torch.from_numpy(rng.integers(1, m, size=n_mix)).to(device)
            bb = (a + shift) % m  # a different model of the group
            alpha = torch.rand(n_mix, 1, generator=generator).to(device)
            parts_z.append(torch.lerp(g.z[a], g.z[bb], alpha))
            la, lb = g.logits[a][:, xi], g.logits[bb][:, xi]
            parts_t.append(torch.lerp(la, lb, alpha.unsqueeze(-1)))
        z = torch.cat(parts_z)
        target = torch.cat(parts_t)
        if config.embedding_noise > 0:
            noise = torch.randn(z.shape, generator=generator).to(device)
            z = z + config.embedding_noise * z_std * noise
        flat = decoder(z, g.spec)  # (B, P)
        predicted = functional_logits(g.spec, flat, x)  # (B, N, C)
        loss_fn = distillation_loss(predicted, target, config.loss, config.temperature)
        loss = loss_fn
        terms = {"distill": float(loss_fn.detach())}
        if config.weight_loss > 0 and g.matched is not None:
            head = decoder._head(g.spec)
            w_loss = ((flat[: len(rec)] - g.matched[rec]) / head.scale).pow(2).mean()
            loss = loss + config.weight_loss * w_loss
            terms["weights"] = float(w_loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        optimizer.step()
        for k, v in terms.items():
            running[k] = 0.9 * running.get(k, v) + 0.1 * v
        step += 1
        capped = step < steps and over_time()
        last = step >= steps or capped
        if checks and (step % config.eval_every == 0 or last):
            score = _validation_agreement(decoder, checks)
            running["val_agreement"] = score
            if best is None or score > best[0]:
                best = (
                    score,
                    step,
                    {k: v.detach().clone() for k, v in decoder.state_dict().items()},
                )
            decoder.train()
        if step % 100 == 0 or last:
            row = {"step": float(step), "seconds": time.perf_counter() - started, **running}
            if capped:
                row["stopped_by_time_limit"] = 1.0
            decoder.log.append(row)
            if progress is not None:
                progress(step, row)
        if last:
            break
    if best is not None:
        decoder.load_state_dict(best[2])
        decoder.log.append({"best_step": float(best[1]), "val_agreement": best[0]})
    return decoder.cpu().eval()


@dataclass
class _Check:
    """Validation models of one (architecture, task): embeddings and original predictions."""

    spec: NetworkSpec
    z: Tensor  # (M, d)
    inputs: Tensor  # (N, *input_shape)
    labels: Tensor  # (M, N) the originals' predictions


def _validation_checks(
    encoder: Encoder | None,
    decoder: Decoder,
    validation: Sequence[DecoderExample] | None,
    embeddings: Tensor | np.ndarray | None,
    device: torch.device,
) -> list[_Check]:
    if not validation:
        return []
    z_all = _embed_examples(encoder, validation, embeddings)
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, example in enumerate(validation):
        if decoder.supports(example.spec):
            by_key.setdefault((spec_key(example.spec), example.task), []).append(i)
    checks = []
    for (_, task), indices in by_key.items():
        spec = validation[indices[0]].spec
        x = _task_inputs(task, spec, "val")
        with torch.no_grad():
            labels = torch.stack(
                [to_module(spec, _float(validation[i].state_dict))(x).argmax(-1) for i in indices]
            )
        checks.append(_Check(spec, z_all[indices].to(device), x.to(device), labels.to(device)))
    return checks


@torch.no_grad()
def _validation_agreement(decoder: Decoder, checks: Sequence[_Check]) -> float:
    """Mean share of validation inputs on which reconstructions predict what originals do."""
    decoder.eval()
    scores = []
    for check in checks:
        predicted = functional_logits(check.spec, decoder(check.z, check.spec), check.inputs)
        scores.append((predicted.argmax(-1) == check.labels).float().mean(1))
    return float(torch.cat(scores).mean())


# ---------------------------------------------------------------------------------------------
# encoder + decoder
# ---------------------------------------------------------------------------------------------
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
