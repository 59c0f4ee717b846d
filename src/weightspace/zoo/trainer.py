"""Train many small models of one architecture at once, and the plain loop they must agree with.

Two paths train the same runs to the same weights (up to float round-off):

* :func:`train_group` — vectorised. The ``M`` models' parameters live in one flat tensor
  ``θ ∈ R^{M×P}``; MLP layers are batched matmuls (``torch.baddbmm`` over stacked weights
  ``(M, out, in)``), conv layers are one grouped convolution with ``groups = M`` over inputs laid
  out as ``(B, M·C, *spatial)``, BatchNorm is one ``F.batch_norm`` over the ``M·C`` channels, and
  SGD/Adam are a handful of elementwise ops on ``θ`` with per-model learning rates and weight
  decays as ``(M, 1)`` columns. The loss is ``Σ_m mean_b CE_m``, so ``∂/∂θ_m`` is exactly the
  gradient model ``m`` alone would see.
* :func:`train_reference` — one model, an ordinary ``nn.Module`` and ``torch.optim`` loop; the
  baseline of ``benchmarks/bench_zoo.py`` and the oracle of the equivalence test.

Everything random about a run comes from generators seeded by the run's own seed (see
:class:`RunStreams`): the initialisation, its training subset, its label noise, the order of its
batches and its dropout masks. So a run gives the same checkpoints whichever group, shard, worker
or path trains it, on CPU or GPU.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.zoo.architectures import (
    BN_EPS,
    ArchConfig,
    activation_function,
    build_model,
    get_arch,
    hidden_activation_modules,
    parametrised_layers,
)
from weightspace.zoo.sweep import RunSpec, TrainSettings, derive_seed
from weightspace.zoo.tasks import Task

__all__ = [
    "CheckpointResult",
    "RunStreams",
    "StackedNetwork",
    "evaluate_module",
    "init_state_dict",
    "train_group",
    "train_reference",
]

METRIC_NAMES = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
)
EVAL_CHUNK = 1024
ProgressCallback = Callable[[int], None]


@dataclass
class CheckpointResult:
    """One checkpoint: the raw ``nn.Module`` state dict and its metrics.

    ``finite`` is False when training diverged (NaN/Inf weights or buffers); such checkpoints are
    recorded as skipped, never stored.
    """

    run_id: str
    epoch: int
    state_dict: dict[str, Tensor]
    metrics: dict[str, float]
    finite: bool = True


class RunStreams:
    """The random streams of one run, each from its own seeded CPU generator.

    * ``subset``: the first ``max(1, round(f·N))`` entries of a random permutation of the
      ``N`` training indices (``f`` = ``train_fraction``).
    * ``labels``: the training labels with ``round(noise·|subset|)`` of the subset's labels
      replaced by uniformly random classes.
    * :meth:`next_batches`: successive random permutations of the subset, cut into batches.
    * :meth:`next_dropout_masks`: keep-masks ``u ≥ p``, ``u ~ U[0, 1)``, one per step, example
      and hidden unit (MLP) or channel (CNN); nothing is drawn when ``p = 0``.
    """

    def __init__(self, run: RunSpec, task: Task) -> None:
        self.run = run
        train_labels = task.labels["train"]
        n_train = int(train_labels.shape[0])
        data = torch.Generator().manual_seed(derive_seed(run.seed, "data"))
        size = max(1, round(run.hyper.train_fraction * n_train))
        self.subset = torch.randperm(n_train, generator=data)[:size]
        labels = train_labels.clone()
        noisy = round(run.hyper.label_noise * size)
        if noisy:
            where = self.subset[torch.randperm(size, generator=data)[:noisy]]
            labels[where] = torch.randint(task.num_classes, (noisy,), generator=data)
        self.labels = labels
        self._order = torch.Generator().manual_seed(derive_seed(run.seed, "order"))
        self._dropout = torch.Generator().manual_seed(derive_seed(run.seed, "dropout"))
        self._pending = torch.empty(0, dtype=torch.long)

    def next_batches(self, steps: int, batch_size: int) -> Tensor:
        """Indices into the training split for the next ``steps`` batches: ``(steps, B)``."""
        need = steps * batch_size
        parts = [self._pending]
        have = self._pending.numel()
        while have < need:
            parts.append(self.subset[torch.randperm(self.subset.numel(), generator=self._order)])
            have += self.subset.numel()
        stream = torch.cat(parts)
        self._pending = stream[need:]
        return stream[:need].view(steps, batch_size)

    def next_dropout_masks(self, steps: int, batch_size: int, units: int) -> Tensor | None:
        """Keep-masks ``(steps, B, units)`` (bool), or None when the run has no dropout."""
        p = self.run.hyper.dropout
        if p <= 0:
            return None
        return torch.rand(steps, batch_size, units, generator=self._dropout) >= p


def init_state_dict(model: nn.Module, seed: int, init_scale: float) -> dict[str, Tensor]:
    """The initial raw state dict of ``model`` for a run with ``seed``.

    Weights and biases of linear/conv layers are ``U(−s/√fan_in, s/√fan_in)`` with
    ``s = init_scale`` — PyTorch's default initialisation, scaled; BatchNorm starts at
    γ = 1, β = 0, μ = 0, σ² = 1. Draws follow the module's parameter order.
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, "init"))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
            fan_in = module.weight[0].numel()
            bound = init_scale / math.sqrt(fan_in)
            for param in ("weight", "bias"):
                if getattr(module, param, None) is not None:
                    key = f"{name}.{param}" if name else param
                    uniform = torch.rand(state[key].shape, generator=generator)
                    state[key] = (uniform * 2 - 1) * bound
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            state[f"{name}.weight"] = torch.ones_like(state[f"{name}.weight"])
            state[f"{name}.bias"] = torch.zeros_like(state[f"{name}.bias"])
            state[f"{name}.running_mean"] = torch.zeros_like(state[f"{name}.running_mean"])
            state[f"{name}.running_var"] = torch.ones_like(state[f"{name}.running_var"])
            state[f"{name}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    return state


def _hidden_units(arch: ArchConfig) -> int:
    """Dropout units per example over all hidden layers: ``depth × width``."""
    return arch.depth * arch.width


def _accumulate_metrics(
    logits: Tensor, labels: Tensor, weights: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Per-model summed loss and correct count. logits ``(M, N, K)``, labels ``(M|1, N)``."""
    models, n, classes = logits.shape
    labels = labels.expand(models, n)
    loss = F.cross_entropy(logits.reshape(-1, classes), labels.reshape(-1), reduction="none")
    loss = loss.view(models, n)
    correct = (logits.argmax(-1) == labels).to(logits.dtype)
    if weights is not None:
        loss, correct = loss * weights, correct * weights
    return loss.sum(1), correct.sum(1)


@dataclass(frozen=True)
class _DenseConv:
    """A conv layer as a dense ``(out_features, in_features)`` matrix gathered from its kernel.

    ``index[o, i]`` is the position of the kernel entry linking input feature ``i`` to output
    feature ``o`` in the flattened kernel, or ``O·C·k`` (an appended zero) when they are not
    connected; features are flattened channels-first, ``(C, *S)``.
    """

    index: Tensor  # (out_features · in_features,) long
    in_features: int
    out_features: int
    channels: int
    positions: int


#: Use dense convs when their multiply-adds are at most this many times the convs' own.
DENSE_CONV_MAX_EXPANSION = 4.0


def _dense_conv_plan(arch: ArchConfig, input_shape: Sequence[int]) -> list[_DenseConv] | None:
    """Dense-matrix forms of every conv of ``arch``, or None when that would cost too much.

    For the tiny inputs of the zoo (8×8 digits) a conv as one batched matmul over all models
    beats a grouped convolution with ``groups = M`` by far, even though the matrix holds the
    zeros the conv skips (and drops the padding's).
    """
    model = build_model(arch, input_shape, 2)
    shape = tuple(input_shape)
    plans: list[_DenseConv] = []
    dense_cost = conv_cost = 0
    for block in model.blocks:  # type: ignore[attr-defined]
        conv = block.conv
        in_features = math.prod(shape)
        numbered = torch.arange(1, conv.weight.numel() + 1, dtype=torch.float64)
        basis = torch.eye(in_features, dtype=torch.float64).view(in_features, *shape)
        forward = F.conv1d if conv.weight.dim() == 3 else F.conv2d
        out = forward(basis, numbered.view(conv.weight.shape), None, conv.stride, conv.padding)
        shape = tuple(out.shape[1:])
        ids = out.reshape(in_features, -1).t().round().long()  # (out_features, in_features)
        index = torch.where(ids > 0, ids - 1, conv.weight.numel())
        plans.append(
            _DenseConv(index.reshape(-1), in_features, ids.shape[0], shape[0], math.prod(shape[1:]))
        )
        dense_cost += ids.numel()
        conv_cost += math.prod(shape) * conv.weight[0].numel()
    if dense_cost > DENSE_CONV_MAX_EXPANSION * conv_cost:
        return None
    return plans


class StackedNetwork:
    """``M`` models of one architecture with parameters in one flat leaf ``θ: (M, P)``.

    Parameter views follow the ``nn.Module``'s state-dict keys and shapes, so
    :meth:`state_dict` of model ``m`` loads into :func:`build_model` unchanged.
    """

    def __init__(
        self,
        arch: ArchConfig,
        input_shape: Sequence[int],
        num_classes: int,
        initial_states: Sequence[dict[str, Tensor]],
        device: torch.device | str = "cpu",
    ) -> None:
        self.arch = arch
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.num_models = len(initial_states)
        self.device = torch.device(device)
        template = build_model(arch, input_shape, num_classes)
        self.keys = list(template.state_dict())
        self.param_shapes = {k: tuple(p.shape) for k, p in template.named_parameters()}
        self.offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for key, shape in self.param_shapes.items():
            self.offsets[key] = (offset, offset + math.prod(shape))
            offset += math.prod(shape)
        self.num_params = offset
        flat = torch.cat(
            [
                torch.stack([state[k].reshape(-1) for state in initial_states])
                for k in self.param_shapes
            ],
            dim=1,
        )
        self.flat = flat.to(self.device).requires_grad_(True)  # (M, P)
        self.buffers = {
            k: torch.stack([state[k] for state in initial_states]).to(self.device)
            for k in self.keys
            if k not in self.param_shapes and not k.endswith("num_batches_tracked")
        }  # running_mean / running_var: (M, C)
        self.steps_taken = 0
        self.layers = parametrised_layers(arch)
        self.activation = activation_function(arch.activation)
        plan = _dense_conv_plan(arch, self.input_shape) if arch.family != "mlp" else None
        self.dense_convs = (
            None
            if plan is None
            else [dataclasses.replace(p, index=p.index.to(self.device)) for p in plan]
        )

    def params(self) -> dict[str, Tensor]:
        """Views ``(M, *shape)`` of every parameter of all models, keyed like the state dict.

        One ``split`` of ``θ`` (rather than one slice per parameter) keeps the backward pass to a
        single concatenation of the gradients.
        """
        sizes = [stop - start for start, stop in self.offsets.values()]
        parts = self.flat.split(sizes, dim=1)
        return {
            key: part.view(self.num_models, *shape)
            for (key, shape), part in zip(self.param_shapes.items(), parts, strict=True)
        }

    def forward(
        self,
        x: Tensor,
        *,
        training: bool,
        keep_masks: Tensor | None = None,
        keep_scale: Tensor | None = None,
        bn_momentum: float = 0.1,
    ) -> Tensor:
        """Logits of every model.

        Args:
            x: per-model inputs ``(M, B, *input_shape)`` or shared inputs ``(B, *input_shape)``.
            training: BatchNorm uses (and updates) batch statistics when True.
            keep_masks: ``(M, B, depth·width)`` bool dropout keep-masks (training only).
            keep_scale: ``(M,)`` inverted-dropout scale ``1/(1−p_m)``.

        Returns:
            ``(M, B, num_classes)``.
        """
        params = self.params()
        if self.arch.family == "mlp":
            return self._forward_mlp(params, x, keep_masks, keep_scale)
        if self.dense_convs is not None:
            return self._forward_dense_cnn(params, x, training, keep_masks, keep_scale, bn_momentum)
        return self._forward_cnn(params, x, training, keep_masks, keep_scale, bn_momentum)

    def _dropout_multiplier(
        self, keep_masks: Tensor | None, keep_scale: Tensor | None, layer: int
    ) -> Tensor | None:
        if keep_masks is None or keep_scale is None:
            return None
        width = self.arch.width
        mask = keep_masks[:, :, layer * width : (layer + 1) * width]  # (M, B, W)
        return mask.to(keep_scale.dtype) * keep_scale.view(-1, 1, 1)

    def _forward_mlp(
        self,
        params: dict[str, Tensor],
        x: Tensor,
        keep_masks: Tensor | None,
        keep_scale: Tensor | None,
    ) -> Tensor:
        h = x
        for i, (prefix, _) in enumerate(self.layers):
            weight = params[f"{prefix}.weight"]  # (M, out, in)
            bias = params[f"{prefix}.bias"]  # (M, out)
            if h.dim() == 2:  # shared inputs (B, F): broadcast the matmul over models
                h = torch.matmul(h, weight.transpose(1, 2)) + bias.unsqueeze(1)
            else:
                h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))  # (M, B, out)
            if i < self.arch.depth:
                h = self.activation(h)
                multiplier = self._dropout_multiplier(keep_masks, keep_scale, i)
                if multiplier is not None:
                    h = h * multiplier
        return h

    def _forward_cnn(
        self,
        params: dict[str, Tensor],
        x: Tensor,
        training: bool,
        keep_masks: Tensor | None,
        keep_scale: Tensor | None,
        bn_momentum: float,
    ) -> Tensor:
        models, dims = self.num_models, self.arch.spatial_dims
        conv = F.conv1d if dims == 1 else F.conv2d
        if x.dim() == 2 + dims:  # shared (B, C, *S) → (B, M·C, *S)
            h = x.repeat(1, models, *([1] * dims))
        else:  # (M, B, C, *S) → (B, M·C, *S)
            h = x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])
        for i, (prefix, norm) in enumerate(self.layers[:-1]):
            weight = params[f"{prefix}.weight"]  # (M, C_out, C_in, *k)
            weight = weight.reshape(-1, *weight.shape[2:])  # (M·C_out, C_in, *k)
            bias = params[f"{prefix}.bias"].reshape(-1) if norm is None else None
            y = conv(h, weight, bias, stride=self.arch.stride(i), padding=1, groups=models)
            if norm is not None:
                y = F.batch_norm(
                    y,
                    self.buffers[f"{norm}.running_mean"].view(-1),
                    self.buffers[f"{norm}.running_var"].view(-1),
                    params[f"{norm}.weight"].reshape(-1),
                    params[f"{norm}.bias"].reshape(-1),
                    training,
                    bn_momentum,
                    BN_EPS,
                )
            if self.arch.has_skip(i):
                y = y + h
            h = self.activation(y)  # (B, M·C, *S)
            multiplier = self._dropout_multiplier(keep_masks, keep_scale, i)  # (M, B, C)
            if multiplier is not None:
                h = h * multiplier.transpose(0, 1).reshape(h.shape[0], -1, *([1] * dims))
        pooled = h.mean(dim=tuple(range(2, 2 + dims)))  # (B, M·C)
        pooled = pooled.view(pooled.shape[0], models, -1)  # (B, M, C)
        weight, bias = params["head.weight"], params["head.bias"]  # (M, K, C), (M, K)
        return torch.einsum("bmc,mkc->mbk", pooled, weight) + bias.unsqueeze(1)

    def _forward_dense_cnn(
        self,
        params: dict[str, Tensor],
        x: Tensor,
        training: bool,
        keep_masks: Tensor | None,
        keep_scale: Tensor | None,
        bn_momentum: float,
    ) -> Tensor:
        """CNN forward with every conv as a dense batched matmul (small inputs; see
        :func:`_dense_conv_plan`). Activations are ``(M, B, C·S)``, channels first."""
        assert self.dense_convs is not None
        models = self.num_models
        shared = x.dim() == 1 + len(self.input_shape)
        h = x.reshape(x.shape[0], -1) if shared else x.reshape(models, x.shape[1], -1)
        for i, ((prefix, norm), plan) in enumerate(
            zip(self.layers[:-1], self.dense_convs, strict=True)
        ):
            kernel = params[f"{prefix}.weight"].reshape(models, -1)  # (M, O·C·k)
            kernel = torch.cat([kernel, kernel.new_zeros(models, 1)], dim=1)
            dense = kernel.index_select(1, plan.index)
            dense = dense.view(models, plan.out_features, plan.in_features)
            if h.dim() == 2:  # shared inputs (B, F)
                y = torch.matmul(h, dense.transpose(1, 2))
            else:
                y = torch.bmm(h, dense.transpose(1, 2))  # (M, B, O·S)
            y = y.view(models, y.shape[1], plan.channels, plan.positions)  # (M, B, O, S)
            if norm is None:
                y = y + params[f"{prefix}.bias"].view(models, 1, -1, 1)
            else:
                y = self._batch_norm_dense(params, norm, y, training, bn_momentum)
            if self.arch.has_skip(i):
                y = y + h.view_as(y)
            h = self.activation(y)
            multiplier = self._dropout_multiplier(keep_masks, keep_scale, i)  # (M, B, C)
            if multiplier is not None:
                h = h * multiplier.unsqueeze(-1)
            h = h.reshape(models, h.shape[1], -1)
        pooled = h.view(models, h.shape[1], self.arch.width, -1).mean(-1)  # (M, B, C)
        weight, bias = params["head.weight"], params["head.bias"]  # (M, K, C), (M, K)
        return torch.baddbmm(bias.unsqueeze(1), pooled, weight.transpose(1, 2))

    def _batch_norm_dense(
        self,
        params: dict[str, Tensor],
        norm: str,
        y: Tensor,
        training: bool,
        bn_momentum: float,
    ) -> Tensor:
        """BatchNorm over ``y (M, B, C, S)``: statistics per (model, channel) over (B, S)."""
        running_mean = self.buffers[f"{norm}.running_mean"]  # (M, C)
        running_var = self.buffers[f"{norm}.running_var"]
        if training:
            mean = y.mean(dim=(1, 3))
            var = y.var(dim=(1, 3), unbiased=False)
            count = y.shape[1] * y.shape[3]
            with torch.no_grad():
                running_mean.lerp_(mean.detach(), bn_momentum)
                unbiased = var.detach() * (count / max(count - 1, 1))
                running_var.lerp_(unbiased, bn_momentum)
        else:
            mean, var = running_mean, running_var
        scale = torch.rsqrt(var + BN_EPS) * params[f"{norm}.weight"]  # (M, C)
        shift = params[f"{norm}.bias"] - mean * scale
        return y * scale[:, None, :, None] + shift[:, None, :, None]

    def state_dict(self, model: int) -> dict[str, Tensor]:
        """Raw ``nn.Module`` state dict of model ``model`` (CPU copies)."""
        state: dict[str, Tensor] = {}
        flat = self.flat.detach()
        for key in self.keys:
            if key in self.param_shapes:
                start, stop = self.offsets[key]
                value = flat[model, start:stop].view(self.param_shapes[key])
            elif key.endswith("num_batches_tracked"):
                value = torch.tensor(self.steps_taken, dtype=torch.long)
            else:
                value = self.buffers[key][model]
            state[key] = value.to("cpu", copy=True).contiguous()
        return state

    def finite(self) -> Tensor:
        """``(M,)`` bool: every parameter and buffer of the model is finite."""
        ok = torch.isfinite(self.flat.detach()).all(1)
        for value in self.buffers.values():
            ok &= torch.isfinite(value).all(1)
        return ok

    @torch.no_grad()
    def evaluate(
        self, x: Tensor, labels: Tensor, weights: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-model mean loss and accuracy ``(M,), (M,)`` on shared inputs ``x (N, …)``.

        ``labels`` is ``(N,)`` or per model ``(M, N)``; ``weights (M, N)`` restricts each model to
        its own examples (its training subset).
        """
        labels = labels.view(1, -1) if labels.dim() == 1 else labels
        loss_sum = torch.zeros(self.num_models, device=self.device)
        correct = torch.zeros(self.num_models, device=self.device)
        for start in range(0, x.shape[0], EVAL_CHUNK):
            stop = start + EVAL_CHUNK
            logits = self.forward(x[start:stop], training=False)
            w = None if weights is None else weights[:, start:stop]
            chunk_loss, chunk_correct = _accumulate_metrics(logits, labels[:, start:stop], w)
            loss_sum += chunk_loss
            correct += chunk_correct
        count = (
            torch.full_like(loss_sum, x.shape[0]) if weights is None else weights.sum(1)
        ).clamp_min(1)
        return loss_sum / count, correct / count


class _StackedOptimizer:
    """SGD (momentum, L2) and Adam (L2) on the flat ``θ (M, P)``, chosen per model.

    With ``g ← ∇θ + λ θ`` per model:

    * sgd:  ``b ← μ b + g``;  ``θ ← θ − η b``  (first step ``b = g``, as ``torch.optim.SGD``)
    * adam: ``m ← m + (1−β₁)(g − m)``; ``v ← β₂ v + (1−β₂) g²``;
      ``θ ← θ − η/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + ε)``  (as ``torch.optim.Adam``)

    The caller orders the models so that SGD runs come first: each optimiser then works on a
    contiguous block of rows, in place, without masks.
    """

    def __init__(self, flat: Tensor, runs: Sequence[RunSpec], settings: TrainSettings) -> None:
        is_adam = [r.hyper.optimizer == "adam" for r in runs]
        if is_adam != sorted(is_adam):
            raise ValueError("runs must be ordered with the sgd runs first")
        self.num_sgd = len(runs) - sum(is_adam)
        column = dict(device=flat.device, dtype=flat.dtype)
        self.lr = torch.tensor([r.hyper.learning_rate for r in runs], **column).view(-1, 1)
        self.wd = torch.tensor([r.hyper.weight_decay for r in runs], **column).view(-1, 1)
        self.settings = settings
        self.first_moment = torch.zeros_like(flat)  # sgd momentum buffer / adam m
        self.second_moment = torch.zeros_like(flat[self.num_sgd :])  # adam v
        self.step_count = 0

    @torch.no_grad()
    def step(self, flat: Tensor) -> None:
        assert flat.grad is not None
        self.step_count += 1
        k = self.num_sgd
        grad = flat.grad.addcmul_(self.wd, flat)  # g ← ∇θ + λ θ, in place
        if k > 0:
            buf = self.first_moment[:k]
            buf.mul_(self.settings.momentum).add_(grad[:k])
            flat[:k].addcmul_(self.lr[:k], buf, value=-1.0)
        if k < flat.shape[0]:
            beta1, beta2 = self.settings.betas
            g, m, v = grad[k:], self.first_moment[k:], self.second_moment
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            bias1 = 1 - beta1**self.step_count
            bias2_sqrt = math.sqrt(1 - beta2**self.step_count)
            denom = v.sqrt().div_(bias2_sqrt).add_(self.settings.eps)
            flat[k:].addcdiv_(m * (self.lr[k:] / bias1), denom, value=-1.0)


def _steps_per_epoch(task: Task, settings: TrainSettings) -> int:
    return max(1, int(task.labels["train"].shape[0]) // settings.batch_size)


def _metrics_dict(values: dict[str, Tensor], model: int) -> dict[str, float]:
    return {name: float(values[name][model]) for name in METRIC_NAMES}


def train_group(
    task: Task,
    arch: ArchConfig | str,
    runs: Sequence[RunSpec],
    settings: TrainSettings,
    *,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
) -> list[CheckpointResult]:
    """Train ``runs`` (all of ``arch`` on ``task``) together; checkpoints at ``settings``' epochs.

    Args:
        progress: called with the number of model-epochs finished after every epoch.

    Returns:
        One :class:`CheckpointResult` per run and checkpoint epoch, ordered by epoch then run.
    """
    arch = get_arch(arch)
    device = torch.device(device)
    models = len(runs)
    family = arch.family
    position = {run.run_id: i for i, run in enumerate(runs)}
    runs = sorted(runs, key=lambda r: (r.hyper.optimizer == "adam", position[r.run_id]))
    streams = [RunStreams(run, task) for run in runs]
    template = build_model(arch, task.input_shape(family), task.num_classes)
    initial = [init_state_dict(template, r.seed, r.hyper.init_scale) for r in runs]
    network = StackedNetwork(arch, task.input_shape(family), task.num_classes, initial, device)
    optimizer = _StackedOptimizer(network.flat, runs, settings)

    x_train = task.inputs("train", family).to(device)
    splits = {
        s: (task.inputs(s, family).to(device), task.labels[s].to(device)) for s in ("val", "test")
    }
    train_labels = torch.stack([s.labels for s in streams]).to(device)  # (M, N)
    train_weights = torch.zeros(models, x_train.shape[0], device=device)
    for m, stream in enumerate(streams):
        train_weights[m, stream.subset.to(device)] = 1.0
    keep_scale = torch.tensor([1.0 / (1.0 - r.hyper.dropout) for r in runs], device=device)
    any_dropout = any(r.hyper.dropout > 0 for r in runs)
    steps = _steps_per_epoch(task, settings)
    batch = settings.batch_size
    units = _hidden_units(arch)
    results: list[CheckpointResult] = []

    def checkpoint(epoch: int) -> None:
        values: dict[str, Tensor] = {}
        values["train_loss"], values["train_accuracy"] = network.evaluate(
            x_train, train_labels, train_weights
        )
        for split, (x, y) in splits.items():
            values[f"{split}_loss"], values[f"{split}_accuracy"] = network.evaluate(x, y)
        values = {k: v.cpu() for k, v in values.items()}
        finite = network.finite().cpu()
        for m, run in enumerate(runs):
            results.append(
                CheckpointResult(
                    run.run_id,
                    epoch,
                    network.state_dict(m),
                    _metrics_dict(values, m),
                    bool(finite[m]),
                )
            )

    if 0 in settings.checkpoint_epochs:
        checkpoint(0)
    for epoch in range(1, settings.epochs + 1):
        indices = torch.stack([s.next_batches(steps, batch) for s in streams]).to(device)
        masks = None
        if any_dropout:
            masks = torch.ones(models, steps, batch, units, dtype=torch.bool)
            for m, stream in enumerate(streams):
                drawn = stream.next_dropout_masks(steps, batch, units)
                if drawn is not None:
                    masks[m] = drawn
            masks = masks.to(device)
        for step in range(steps):
            idx = indices[:, step]  # (M, B)
            x = x_train[idx]  # (M, B, *input_shape)
            y = train_labels.gather(1, idx)  # (M, B)
            logits = network.forward(
                x,
                training=True,
                keep_masks=None if masks is None else masks[:, step],
                keep_scale=keep_scale,
                bn_momentum=settings.bn_momentum,
            )
            loss = F.cross_entropy(
                logits.reshape(-1, task.num_classes), y.reshape(-1), reduction="none"
            )
            loss = loss.view(models, batch).mean(1).sum()
            network.flat.grad = None
            loss.backward()
            optimizer.step(network.flat)
            network.steps_taken += 1
        if epoch in settings.checkpoint_epochs:
            checkpoint(epoch)
        if progress is not None:
            progress(models)
    results.sort(key=lambda r: (r.epoch, position[r.run_id]))
    return results


@torch.no_grad()
def evaluate_module(
    model: nn.Module, x: Tensor, labels: Tensor, weights: Tensor | None = None
) -> tuple[float, float]:
    """Mean loss and accuracy of one ``model`` on ``x``; ``weights (N,)`` selects examples."""
    was_training = model.training
    model.eval()
    loss_sum, correct = torch.zeros(()), torch.zeros(())
    for start in range(0, x.shape[0], EVAL_CHUNK):
        logits = model(x[start : start + EVAL_CHUNK]).unsqueeze(0)
        w = None if weights is None else weights[start : start + EVAL_CHUNK].unsqueeze(0)
        chunk_loss, chunk_correct = _accumulate_metrics(
            logits, labels[start : start + EVAL_CHUNK].unsqueeze(0), w
        )
        loss_sum += chunk_loss[0].cpu()
        correct += chunk_correct[0].cpu()
    count = max(float(x.shape[0] if weights is None else weights.sum()), 1.0)
    model.train(was_training)
    return float(loss_sum / count), float(correct / count)


def train_reference(
    task: Task,
    arch: ArchConfig | str,
    run: RunSpec,
    settings: TrainSettings,
    *,
    device: torch.device | str = "cpu",
) -> list[CheckpointResult]:
    """Train one run with a plain ``nn.Module`` + ``torch.optim`` loop (same streams and math).

    Dropout is applied by forward hooks on the hidden activations with the run's masks, so the
    module is exactly :func:`build_model`'s.
    """
    arch = get_arch(arch)
    device = torch.device(device)
    family = arch.family
    streams = RunStreams(run, task)
    model = build_model(arch, task.input_shape(family), task.num_classes)
    model.load_state_dict(init_state_dict(model, run.seed, run.hyper.init_scale))
    model.to(device)
    hp = run.hyper
    if hp.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(),
            lr=hp.learning_rate,
            momentum=settings.momentum,
            weight_decay=hp.weight_decay,
        )
    else:
        optimizer = torch.optim.Adam(
            model.parameters(),
            lr=hp.learning_rate,
            betas=settings.betas,
            eps=settings.eps,
            weight_decay=hp.weight_decay,
        )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.momentum, module.eps = settings.bn_momentum, BN_EPS

    current_mask: list[Tensor | None] = [None]
    keep_scale = torch.tensor(1.0 / (1.0 - hp.dropout), device=device)
    width = arch.width

    def make_hook(layer: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor | None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            mask = current_mask[0]
            if mask is None or not module.training:
                return None
            keep = mask[:, layer * width : (layer + 1) * width].to(output.dtype) * keep_scale
            return output * keep.view(*keep.shape, *([1] * (output.dim() - 2)))

        return hook

    if hp.dropout > 0:
        for layer, act in enumerate(hidden_activation_modules(model, arch)):
            act.register_forward_hook(make_hook(layer))

    x_train = task.inputs("train", family).to(device)
    labels = streams.labels.to(device)
    weights = torch.zeros(x_train.shape[0], device=device)
    weights[streams.subset.to(device)] = 1.0
    splits = {
        s: (task.inputs(s, family).to(device), task.labels[s].to(device)) for s in ("val", "test")
    }
    steps = _steps_per_epoch(task, settings)
    batch = settings.batch_size
    results: list[CheckpointResult] = []

    def checkpoint(epoch: int) -> None:
        metrics: dict[str, float] = {}
        metrics["train_loss"], metrics["train_accuracy"] = evaluate_module(
            model, x_train, labels, weights
        )
        for split, (x, y) in splits.items():
            metrics[f"{split}_loss"], metrics[f"{split}_accuracy"] = evaluate_module(model, x, y)
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        finite = all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
        results.append(CheckpointResult(run.run_id, epoch, state, metrics, bool(finite)))

    if 0 in settings.checkpoint_epochs:
        checkpoint(0)
    model.train()
    for epoch in range(1, settings.epochs + 1):
        indices = streams.next_batches(steps, batch).to(device)
        masks = streams.next_dropout_masks(steps, batch, _hidden_units(arch))
        for step in range(steps):
            idx = indices[step]
            current_mask[0] = None if masks is None else masks[step].to(device)
            loss = F.cross_entropy(model(x_train[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        current_mask[0] = None
        if epoch in settings.checkpoint_epochs:
            checkpoint(epoch)
            model.train()
    return results
