"""Train many small models of one architecture at once, and the plain loop they must agree with.

Two paths train the same runs to the same weights (up to float round-off):

* :func:`train_group` — vectorised. The ``M`` models' parameters live in one flat tensor
  ``θ ∈ R^{M×P}``; linear layers are batched matmuls (``torch.bmm``/``baddbmm`` over stacked
  weights ``(M, out, in)``), convs are batched im2col matmuls on channels-last activations (or,
  for small inputs, matmuls with the conv's dense matrix), BatchNorm keeps statistics per
  (model, channel), and SGD/Adam are a handful of elementwise ops on ``θ`` with per-model learning
  rates and weight decays as ``(M, 1)`` columns. There is no autograd: the backward pass of every
  layer type is written out (:meth:`StackedNetwork.loss_backward`) for the loss
  ``Σ_m mean_b CE_m``, so ``∂/∂θ_m`` is exactly the gradient model ``m`` alone would see. Large
  intermediates of a step live in reused buffers.
* :func:`train_reference` — one model, an ordinary ``nn.Module`` and ``torch.optim`` loop; the
  baseline of ``benchmarks/bench_zoo.py`` and the oracle of the equivalence test.

Everything random about a run is a counter-based function of the run's own seed, computed
vectorised on the training device by :mod:`weightspace.zoo.streams` (the same functions serve
both paths): the initialisation, its training subset, its label noise, the order of its batches
and its dropout masks. So a run gives the same checkpoints whichever group, shard, worker or path
trains it, on CPU or GPU.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.zoo.architectures import (
    BN_EPS,
    LEAKY_RELU_SLOPE,
    ArchConfig,
    activation_function,
    build_model,
    get_arch,
    hidden_activation_modules,
    parametrised_layers,
)
from weightspace.zoo.streams import STREAMS_VERSION, RunStreams, initial_parameters
from weightspace.zoo.sweep import RunSpec, TrainSettings
from weightspace.zoo.tasks import Task

__all__ = [
    "STREAMS_VERSION",
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
#: The vectorised evaluation takes ``clamp(EVAL_ELEMENTS // (M·A), EVAL_MIN_CHUNK, EVAL_CHUNK)``
#: examples at a time (``A``: largest intermediate per example and model), so that its
#: intermediates stay ~10 MB (cache- and allocator-friendly on CPU).
EVAL_ELEMENTS = 5 * 2**19
EVAL_MIN_CHUNK = 64
ProgressCallback = Callable[[int], None]


class _RowStateDict(Mapping[str, Tensor]):
    """The raw state dict of model ``model``: row ``model`` of per-key blocks ``(M, *shape)``
    shared by all models of a group (values are views, made on access)."""

    __slots__ = ("_blocks", "_model")

    def __init__(self, blocks: dict[str, Tensor], model: int) -> None:
        self._blocks = blocks
        self._model = model

    def __getitem__(self, key: str) -> Tensor:
        return self._blocks[key][self._model]

    def __iter__(self) -> Iterator[str]:
        return iter(self._blocks)

    def __len__(self) -> int:
        return len(self._blocks)

    def __repr__(self) -> str:
        return f"_RowStateDict(model={self._model}, keys={list(self._blocks)})"


@dataclass
class CheckpointResult:
    """One checkpoint: the raw ``nn.Module`` state dict and its metrics.

    ``finite`` is False when training diverged (NaN/Inf weights or buffers); such checkpoints are
    recorded as skipped, never stored.
    """

    run_id: str
    epoch: int
    state_dict: Mapping[str, Tensor]
    metrics: dict[str, float]
    finite: bool = True


def init_state_dict(model: nn.Module, seed: int, init_scale: float) -> dict[str, Tensor]:
    """The initial raw state dict of ``model`` for a run with ``seed``.

    Parameters come from :func:`~weightspace.zoo.streams.initial_parameters` (linear/conv
    weights and biases ``U(−s/√fan_in, s/√fan_in)`` with ``s = init_scale``, from the run's
    counter-based init stream; BatchNorm γ = 1, β = 0); buffers are BatchNorm's μ = 0, σ² = 1.
    """
    flat = initial_parameters(model, [seed], [init_scale])[0]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    offset = 0
    for key, param in model.named_parameters():
        state[key] = flat[offset : offset + param.numel()].view(param.shape).clone()
        offset += param.numel()
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
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
    models, n, _ = logits.shape
    labels = labels.expand(models, n)
    # one max reduction gives both the argmax (its first maximal index, as ``argmax``) and the
    # shift of the cross-entropy ``m + log Σ exp(ℓ − m) − ℓ_y`` (much faster on CPU than
    # ``argmax`` plus ``logsumexp`` over 10 classes)
    top, predicted = logits.max(-1)
    shifted = (logits - top.unsqueeze(-1)).exp_().sum(-1).log_()
    loss = shifted.add_(top).sub_(logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1))
    correct = (predicted == labels).to(logits.dtype)
    if weights is not None:
        loss, correct = loss * weights, correct * weights
    return loss.sum(1), correct.sum(1)


@dataclass(frozen=True)
class _ConvGeometry:
    """One conv layer (kernel ``kernel``, default 3, padding ``kernel // 2``) on channels-last
    activations ``(M, B, *S, C)``.

    A conv runs one of two ways, both batched matmuls over the models:

    * im2col (``dense is None``): patches ``(M, B·|S_out|, k·C_in)`` (entries ordered
      ``(*kernel offset, c)``; ``k = kernel^dims``) times the kernel permuted to ``(M, k·C_in, C_out)``.
      The first conv always runs this way, on patches of the data computed once.
    * dense (small inputs): the conv as a ``(|S_out|·C_out, |S_in|·C_in)`` matrix per model,
      gathered from the kernel by ``dense`` (index ``C_out·C_in·k`` is an appended zero). The
      kernel's gradient gathers the dense gradient's ``|S_out|`` entries of every kernel entry
      (``grad_index``, with ``grad_mask`` zero where the kernel meets the padding).
    """

    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]
    in_channels: int
    out_channels: int
    stride: int
    dense: Tensor | None = None  # (|S_out|·C_out·|S_in|·C_in,) long
    grad_index: Tensor | None = None  # (C_out·C_in·k·|S_out|,) long
    grad_mask: Tensor | None = None  # (C_out·C_in·k, |S_out|) float
    kernel: int = 3  # kernel side (odd); padding kernel // 2 keeps |S_out| = ceil(|S_in| / stride)

    @property
    def dims(self) -> int:
        return len(self.in_spatial)

    @property
    def kernel_size(self) -> int:
        return self.kernel**self.dims

    @property
    def pad(self) -> int:
        return self.kernel // 2

    @property
    def patch_size(self) -> int:
        return self.in_channels * self.kernel_size

    @property
    def out_positions(self) -> int:
        return math.prod(self.out_spatial)

    @property
    def in_features(self) -> int:
        return math.prod(self.in_spatial) * self.in_channels

    def to(self, device: torch.device) -> _ConvGeometry:
        if self.dense is None:
            return self
        assert self.grad_index is not None and self.grad_mask is not None
        return dataclasses.replace(
            self,
            dense=self.dense.to(device),
            grad_index=self.grad_index.to(device),
            grad_mask=self.grad_mask.to(device),
        )


#: Run a conv (after the first) as a dense matmul when that costs at most this many times the
#: conv's own multiply-adds, i.e. when ``|S_in| ≤ DENSE_CONV_MAX_EXPANSION · 3^dims``.
DENSE_CONV_MAX_EXPANSION = 4.0


def _dense_tables(geometry: _ConvGeometry) -> _ConvGeometry:
    """``geometry`` with the index tables of its dense form (see :class:`_ConvGeometry`)."""
    out_c, in_c, k = geometry.out_channels, geometry.in_channels, geometry.kernel_size
    s_in, s_out = math.prod(geometry.in_spatial), geometry.out_positions
    zero = out_c * in_c * k
    dense = torch.full((s_out, out_c, s_in, in_c), zero, dtype=torch.long)
    grad_index = torch.zeros(out_c, in_c, k, s_out, dtype=torch.long)
    grad_mask = torch.zeros(out_c, in_c, k, s_out)
    kernel = torch.arange(out_c).view(-1, 1) * (in_c * k) + torch.arange(in_c).view(1, -1) * k
    rows = torch.arange(out_c).view(-1, 1) * (s_in * in_c)
    cols = torch.arange(in_c).view(1, -1)
    outputs = itertools.product(*(range(n) for n in geometry.out_spatial))
    for row, position in enumerate(outputs):
        for j, offset in enumerate(itertools.product(range(geometry.kernel), repeat=geometry.dims)):
            source = [
                geometry.stride * p + o - geometry.pad
                for p, o in zip(position, offset, strict=True)
            ]
            if not all(0 <= q < n for q, n in zip(source, geometry.in_spatial, strict=True)):
                continue
            p = 0
            for q, n in zip(source, geometry.in_spatial, strict=True):
                p = p * n + q
            dense[row, :, p, :] = kernel + j
            grad_index[:, :, j, row] = row * out_c * s_in * in_c + rows + p * in_c + cols
            grad_mask[:, :, j, row] = 1.0
    return dataclasses.replace(
        geometry,
        dense=dense.view(-1),
        grad_index=grad_index.view(-1),
        grad_mask=grad_mask.view(out_c * in_c * k, s_out),
    )


def _conv_geometry(arch: ArchConfig, input_shape: Sequence[int]) -> list[_ConvGeometry]:
    channels, spatial = int(input_shape[0]), tuple(int(s) for s in input_shape[1:])
    plans = []
    for i in range(arch.depth):
        stride = arch.stride(i)
        out = tuple((n - 1) // stride + 1 for n in spatial)  # (n + 2·(k // 2) − k) // stride + 1
        kernel = getattr(arch, "kernel", 3)
        geometry = _ConvGeometry(spatial, out, channels, arch.width, stride, kernel=kernel)
        if i > 0 and math.prod(spatial) <= DENSE_CONV_MAX_EXPANSION * geometry.kernel_size:
            geometry = _dense_tables(geometry)
        plans.append(geometry)
        channels, spatial = arch.width, out
    return plans


def _patches(
    h: Tensor, geometry: _ConvGeometry, padded: Tensor | None = None, out: Tensor | None = None
) -> Tensor:
    """im2col of channels-last ``h (L, B, *S_in, C)`` → ``(L, B·|S_out|, k·C)`` (a copy).

    ``padded``: optional buffer ``(L, B, *(S_in + 2), C)`` whose border is zero, to pad ``h`` in;
    ``out``: optional buffer ``(L, B·|S_out|, k·C)`` for the result (on CPU a fresh multi-megabyte
    result costs more in page faults than the copy itself).
    """
    lead, batch, dims = h.shape[0], h.shape[1], geometry.dims
    if padded is None:
        pad = geometry.pad
        padded = F.pad(h, (0, 0) + (pad, pad) * dims)  # zero padding on every spatial side
    else:
        inner = tuple(slice(geometry.pad, n + geometry.pad) for n in geometry.in_spatial)
        padded[(slice(None), slice(None), *inner)] = h
    strides = padded.stride()
    spatial_strides = strides[2 : 2 + dims]
    view = padded.as_strided(
        (lead, batch, *geometry.out_spatial, *([geometry.kernel] * dims), geometry.in_channels),
        (
            strides[0],
            strides[1],
            *(geometry.stride * s for s in spatial_strides),
            *spatial_strides,
            strides[-1],
        ),
    )
    if out is not None:
        out.view(view.shape).copy_(view)
        return out
    return view.reshape(lead, batch * geometry.out_positions, geometry.patch_size)


def _fold_patches(grad_patches: Tensor, geometry: _ConvGeometry, padded: Tensor) -> Tensor:
    """col2im, the adjoint of :func:`_patches`: ``(M, B·|S_out|, k·C)`` → ``(M, B, *S_in, C)``,
    summed in the buffer ``padded (M, B, *(S_in + 2), C)``."""
    models, dims, stride = grad_patches.shape[0], geometry.dims, geometry.stride
    batch = grad_patches.shape[1] // geometry.out_positions
    kernel = [geometry.kernel] * dims
    g = grad_patches.view(models, batch, *geometry.out_spatial, *kernel, geometry.in_channels)
    padded.zero_()
    for offset in itertools.product(range(geometry.kernel), repeat=dims):
        where = tuple(
            slice(o, o + stride * (n - 1) + 1, stride)
            for o, n in zip(offset, geometry.out_spatial, strict=True)
        )
        padded[(slice(None), slice(None), *where)] += g[(..., *offset, slice(None))]
    inner = tuple(slice(geometry.pad, n + geometry.pad) for n in geometry.in_spatial)
    return padded[(slice(None), slice(None), *inner)]


def _kernel_matrix(kernel: Tensor) -> Tensor:
    """Conv kernel ``(M, O, C, *k)`` → ``(M, O, k·C)`` in the patch order ``(*offset, c)``."""
    return kernel.flatten(3).transpose(2, 3).reshape(kernel.shape[0], kernel.shape[1], -1)


_ActivationBackward = Callable[[Tensor, Tensor | None, Tensor, Tensor], Tensor]


def _activation_backward(name: str) -> _ActivationBackward:
    """``(grad_out, pre_activation, activation, out) ↦ grad_in`` written into ``out``, with the
    kernels autograd itself uses."""
    aten = torch.ops.aten
    functions: dict[str, _ActivationBackward] = {
        "relu": lambda g, z, a, out: aten.threshold_backward.grad_input(g, a, 0, grad_input=out),
        "leaky_relu": lambda g, z, a, out: aten.leaky_relu_backward.grad_input(
            g, z, LEAKY_RELU_SLOPE, False, grad_input=out
        ),
        "tanh": lambda g, z, a, out: aten.tanh_backward.grad_input(g, a, grad_input=out),
        "gelu": lambda g, z, a, out: aten.gelu_backward.grad_input(g, z, grad_input=out),
    }
    return functions[name]


#: Activations computed in place when their input is not needed by the backward pass.
_IN_PLACE_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu_,
    "tanh": torch.tanh_,
}


def _multiply_rows(x: Tensor, multiplier: Tensor, out: Tensor, rows: slice | None) -> Tensor:
    """``out ← x ⊙ multiplier`` where ``multiplier`` is 1 outside ``rows`` (of dim 0): there a
    plain copy. Returns ``out``."""
    if rows is None:
        return torch.mul(x, multiplier, out=out)
    start, stop = rows.start or 0, x.shape[0] if rows.stop is None else rows.stop
    if start > 0:
        out[:start].copy_(x[:start])
    if stop < x.shape[0]:
        out[stop:].copy_(x[stop:])
    torch.mul(x[start:stop], multiplier[start:stop], out=out[start:stop])
    return out


def _multiply_rows_(x: Tensor, multiplier: Tensor, rows: slice | None) -> Tensor:
    """``x ← x ⊙ multiplier`` in place, only on ``rows`` (of dim 0; elsewhere the multiplier is
    1). Returns ``x``."""
    if rows is None:
        return x.mul_(multiplier)
    x[rows].mul_(multiplier[rows])
    return x


@dataclass
class _Saved:
    """What the hand-written backward of one hidden layer needs from its forward."""

    inputs: Tensor  # (M, B, F), or a conv's patches (M, B·|S_out|, k·C)
    matrix: Tensor  # the weight as a matrix (M, out, F) (linear, im2col or dense conv)
    pre_activation: Tensor | None  # z (kept for leaky_relu / gelu)
    activation: Tensor  # a = act(z) (before dropout)
    multiplier: Tensor | None  # dropout multiplier, broadcastable to a
    normalised: Tensor | None = None  # BatchNorm x̂
    inv_std: Tensor | None = None  # BatchNorm 1/√(σ² + ε), (M, C)
    #: ReLU only: ``activation`` is ``relu(z) ⊙ multiplier`` (dropout applied in place). Its sign
    #: pattern still gives ReLU's mask wherever the multiplier is not 0 (where it is 0, so is the
    #: gradient), so the backward pass is ``threshold_backward(g, a) ⊙ multiplier``.
    dropped: bool = False


class StackedNetwork:
    """``M`` models of one architecture with parameters in one flat tensor ``θ: (M, P)``.

    Parameter views follow the ``nn.Module``'s state-dict keys and shapes, so
    :meth:`state_dict` of model ``m`` loads into :func:`build_model` unchanged.

    Training does not use autograd: :meth:`loss_backward` runs the forward pass, saves what the
    backward pass needs and writes ``∂(Σ_m mean_b CE_m)/∂θ`` into :attr:`grad` with hand-written
    gradients of every layer type (batched matmuls, im2col convs, BatchNorm, residual skips,
    activations, dropout, pooling, softmax cross-entropy). CNN inputs are given as the first
    conv's patches (see :meth:`prepare_inputs`), computed once per data set.
    """

    def __init__(
        self,
        arch: ArchConfig,
        input_shape: Sequence[int],
        num_classes: int,
        initial: Tensor | Sequence[dict[str, Tensor]],
        device: torch.device | str = "cpu",
    ) -> None:
        """``initial``: the models' initial raw state dicts, or their flat parameters ``(M, P)``
        (``named_parameters`` order, see :func:`~weightspace.zoo.streams.initial_parameters`)
        with BatchNorm buffers at their defaults (μ = 0, σ² = 1)."""
        self.arch = arch
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.num_models = len(initial)
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
        buffer_keys = [
            k
            for k in self.keys
            if k not in self.param_shapes and not k.endswith("num_batches_tracked")
        ]
        if isinstance(initial, Tensor):
            self.flat = initial.to(self.device, torch.float32).contiguous()  # (M, P)
            defaults = template.state_dict()
            self.buffers = {
                k: defaults[k].to(self.device).expand(self.num_models, -1).contiguous()
                for k in buffer_keys
            }
        else:
            flat = torch.cat(
                [
                    torch.stack([state[k].reshape(-1) for state in initial])
                    for k in self.param_shapes
                ],
                dim=1,
            )
            self.flat = flat.to(self.device)  # (M, P)
            self.buffers = {
                k: torch.stack([state[k] for state in initial]).to(self.device) for k in buffer_keys
            }  # running_mean / running_var: (M, C)
        self.grad = torch.zeros_like(self.flat)  # (M, P), written by loss_backward
        self.steps_taken = 0
        self.layers = parametrised_layers(arch)
        self.activation = activation_function(arch.activation)
        self.activation_backward = _activation_backward(arch.activation)
        self._workspace: dict[str, Tensor] = {}
        self._first_bias_column = arch.family != "mlp" and not arch.batchnorm
        self.convs = (
            [g.to(self.device) for g in _conv_geometry(arch, self.input_shape)]
            if arch.family != "mlp"
            else []
        )
        sizes = [math.prod(self.input_shape), arch.width, num_classes]
        for g in self.convs:
            sizes += [g.out_positions * (g.patch_size + 1), g.out_positions * g.out_channels]
        self._example_size = max(sizes)  # largest intermediate per example and model

    def _buffer(self, name: str, shape: Sequence[int], saved: list[_Saved] | None) -> Tensor:
        """A reused buffer for the large intermediate ``name`` of a training step (``saved`` given)
        or of an evaluation chunk (``saved`` None; kept apart, under ``eval_{name}``).

        Reusing them spares the allocator: on CPU, freshly allocated megabyte-sized tensors cost
        page faults every step. Each name is written once per step (or chunk), and what the
        backward pass reads is only read within that step. A buffer grows to the largest shape
        asked for and smaller requests (the last evaluation chunk) view its start.
        """
        key = name if saved is not None else f"eval_{name}"
        numel = math.prod(shape)
        buffer = self._workspace.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(numel, device=self.device, dtype=self.flat.dtype)
            self._workspace[key] = buffer
        return buffer[:numel].view(tuple(shape))

    def _padded(
        self, name: str, like: Tensor, geometry: _ConvGeometry | None = None, pad: int = 1
    ) -> Tensor:
        """A reused buffer ``(M, B, *(S + 2), C)`` with a zero border, to pad ``like`` (M, B, *S,
        C) — or, given ``geometry``, that conv's input — in."""
        if geometry is not None:
            batch = like.shape[1] // geometry.out_positions
            shape = (like.shape[0], batch, *geometry.in_spatial, geometry.in_channels)
        else:
            shape = tuple(like.shape)
        pad = geometry.pad if geometry is not None else pad
        padded = (*shape[:2], *(n + 2 * pad for n in shape[2:-1]), shape[-1])
        buffer = self._workspace.get(name)
        if buffer is None or buffer.shape != padded:
            buffer = torch.zeros(padded, device=self.device, dtype=self.flat.dtype)
            self._workspace[name] = buffer
        return buffer

    def _views(self, flat: Tensor) -> dict[str, Tensor]:
        sizes = [stop - start for start, stop in self.offsets.values()]
        parts = flat.split(sizes, dim=1)
        return {
            key: part.view(self.num_models, *shape)
            for (key, shape), part in zip(self.param_shapes.items(), parts, strict=True)
        }

    def params(self) -> dict[str, Tensor]:
        """Views ``(M, *shape)`` of every parameter of all models, keyed like the state dict."""
        cached = self.__dict__.get("_param_views")
        if cached is None or cached[0] is not self.flat:
            cached = (self.flat, self._views(self.flat))
            self._param_views = cached
        return cached[1]

    def grads(self) -> dict[str, Tensor]:
        """Views ``(M, *shape)`` of :attr:`grad`, keyed like :meth:`params`."""
        cached = self.__dict__.get("_grad_views")
        if cached is None or cached[0] is not self.grad:
            cached = (self.grad, self._views(self.grad))
            self._grad_views = cached
        return cached[1]

    def prepare_inputs(self, x: Tensor) -> Tensor:
        """Data ``(N, *input_shape)`` → what :meth:`forward` takes: ``(N, F)`` for MLPs, the
        first conv's patches ``(N, |S_out|·(k·C + 1))`` for CNNs (a column of ones for the bias;
        without one when BatchNorm follows the conv)."""
        if not self.convs:
            return x.reshape(x.shape[0], -1)
        geometry = self.convs[0]
        h = x.movedim(1, -1).unsqueeze(0)  # (1, N, *S, C)
        patches = _patches(h, geometry).view(x.shape[0], geometry.out_positions, -1)
        if self._first_bias_column:
            patches = torch.cat([patches, patches.new_ones(*patches.shape[:2], 1)], dim=2)
        return patches.reshape(x.shape[0], -1)

    def _head_inputs(self, h: Tensor) -> Tensor:
        return h if not self.convs else h.mean(dim=tuple(range(2, 2 + len(self.input_shape) - 1)))

    def forward(
        self,
        x: Tensor,
        *,
        training: bool,
        dropout: Tensor | None = None,
        dropout_rows: slice | None = None,
        bn_momentum: float = 0.1,
        saved: list[_Saved] | None = None,
    ) -> Tensor:
        """Logits of every model (no autograd; see :meth:`loss_backward`).

        Args:
            x: per-model inputs ``(M, B, F)`` or shared inputs ``(B, F)``, from
                :meth:`prepare_inputs`.
            training: BatchNorm uses (and updates) batch statistics when True.
            dropout: ``(depth, M, B, width)`` inverted-dropout multipliers ``keep / (1 − p_m)``
                of the hidden units (training only).
            dropout_rows: the models whose multipliers are not all 1 (default: all); the others
                skip the (on CPU, slow: broadcast over positions) multiplication.
            saved: when given, filled with what the backward pass needs, one entry per layer.

        Returns:
            ``(M, B, num_classes)``.
        """
        arch, models = self.arch, self.num_models
        params = self.params()
        batch = x.shape[-2]
        h = x
        for i, (prefix, norm) in enumerate(self.layers[:-1]):
            weight = params[f"{prefix}.weight"]
            bias = params.get(f"{prefix}.bias")  # (M, O) or None
            geometry = self.convs[i] if self.convs else None
            if geometry is None:  # linear layer
                inputs, matrix = h, weight  # (M|·, B, F), (M, O, F)
            elif geometry.dense is not None:
                table = torch.cat([weight.reshape(models, -1), weight.new_zeros(models, 1)], 1)
                rows = geometry.out_positions * arch.width
                out = self._buffer(f"dense{i}", (models, rows * geometry.in_features), saved)
                matrix = torch.index_select(table, 1, geometry.dense, out=out)
                matrix = matrix.view(models, rows, geometry.in_features)
                inputs = h.reshape(models, batch, -1)  # (M, B, |S_in|·C)
                if bias is not None:
                    bias = bias.repeat(1, geometry.out_positions)
            else:
                matrix = _kernel_matrix(weight)  # (M, O, k·C)
                if i == 0:  # the data's patches (·|M, B, |S_out|·(k·C [+ 1]))
                    if bias is not None:  # the bias as the kernel's last column
                        matrix = torch.cat([matrix, bias.unsqueeze(-1)], dim=2)
                        bias = None
                    inputs = h.view(*h.shape[:-1], geometry.out_positions, -1).flatten(-3, -2)
                else:
                    name = f"pad{i}" if saved is not None else f"eval_pad{i}"
                    patches = self._buffer(
                        f"patches{i}",
                        (models, batch * geometry.out_positions, geometry.patch_size),
                        saved,
                    )
                    inputs = _patches(h, geometry, self._padded(name, h, pad=geometry.pad), patches)
            if inputs.dim() == 2:  # shared inputs: the same for every model
                inputs = inputs.expand(models, *inputs.shape)
            shape = (models, inputs.shape[1], matrix.shape[1])
            out = self._buffer(f"z{i}", shape, saved)
            if bias is not None:
                z = torch.baddbmm(bias.unsqueeze(1), inputs, matrix.transpose(1, 2), out=out)
            else:
                z = torch.bmm(inputs, matrix.transpose(1, 2), out=out)
            if geometry is not None:
                z = z.view(models, batch, *geometry.out_spatial, arch.width)
            normalised = inv_std = None
            if norm is not None:
                z, normalised, inv_std = self._batch_norm(
                    params, norm, z, training, bn_momentum, saved is not None
                )
            if arch.has_skip(i):
                z = z + h
            keep_z = arch.activation not in _IN_PLACE_ACTIVATIONS
            a = self.activation(z) if keep_z else _IN_PLACE_ACTIVATIONS[arch.activation](z)
            multiplier = None
            dropped = False
            if dropout is not None:
                multiplier = dropout[i]  # (M, B, W)
                if geometry is not None:
                    multiplier = multiplier.view(models, batch, *([1] * geometry.dims), -1)
                if arch.activation == "relu" and saved is not None:
                    # in place on the (reused) buffer of z: no copies of the other rows
                    h = a = _multiply_rows_(a, multiplier, dropout_rows)
                    dropped = True
                else:
                    out = self._buffer(f"h{i}", a.shape, saved)
                    h = _multiply_rows(a, multiplier, out, dropout_rows)
            else:
                h = a
            if saved is not None:
                saved.append(
                    _Saved(
                        inputs,
                        matrix,
                        z if keep_z else None,
                        a,
                        multiplier,
                        normalised,
                        inv_std,
                        dropped,
                    )
                )
        pooled = self._head_inputs(h)  # (M, B, C)
        head = self.layers[-1][0]
        weight, bias = params[f"{head}.weight"], params[f"{head}.bias"]
        if saved is not None:
            saved.append(_Saved(pooled, weight, None, h, None))
        if pooled.dim() == 2:
            return torch.matmul(pooled, weight.transpose(1, 2)) + bias.unsqueeze(1)
        out = self._buffer("logits", (models, pooled.shape[1], weight.shape[1]), saved)
        return torch.baddbmm(bias.unsqueeze(1), pooled, weight.transpose(1, 2), out=out)

    def _batch_norm(
        self,
        params: dict[str, Tensor],
        norm: str,
        y: Tensor,
        training: bool,
        bn_momentum: float,
        keep: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """BatchNorm of channels-last ``y (M, B, *S, C)``: statistics per (model, channel)."""
        running_mean = self.buffers[f"{norm}.running_mean"]  # (M, C)
        running_var = self.buffers[f"{norm}.running_var"]
        gamma, beta = params[f"{norm}.weight"], params[f"{norm}.bias"]
        shape = (y.shape[0], *([1] * (y.dim() - 2)), y.shape[-1])
        if not training:
            scale = torch.rsqrt(running_var + BN_EPS) * gamma  # (M, C)
            shift = beta - running_mean * scale
            return y * scale.view(shape) + shift.view(shape), None, None
        reduce = tuple(range(1, y.dim() - 1))
        var, mean = torch.var_mean(y, dim=reduce, correction=0)  # (M, C)
        count = y.numel() // (y.shape[0] * y.shape[-1])
        running_mean.lerp_(mean, bn_momentum)
        running_var.lerp_(var * (count / max(count - 1, 1)), bn_momentum)
        inv_std = torch.rsqrt(var + BN_EPS)
        normalised = (y - mean.view(shape)) * inv_std.view(shape)
        out = torch.addcmul(beta.view(shape), normalised, gamma.view(shape))
        return out, (normalised if keep else None), inv_std

    def loss_backward(
        self,
        x: Tensor,
        labels: Tensor,
        *,
        dropout: Tensor | None = None,
        dropout_rows: slice | None = None,
        bn_momentum: float = 0.1,
    ) -> Tensor:
        """One training forward pass (BatchNorm in training mode) and its backward pass.

        Writes the gradient of ``Σ_m mean_b CE(logits_mb, labels_mb)`` into :attr:`grad`.

        Args:
            x: per-model inputs ``(M, B, F)`` from :meth:`prepare_inputs`.
            labels: ``(M, B)``.
            dropout, dropout_rows: inverted-dropout multipliers, as in :meth:`forward`.

        Returns:
            The logits ``(M, B, K)``.
        """
        arch, models = self.arch, self.num_models
        batch = labels.shape[1]
        saved: list[_Saved] = []
        logits = self.forward(
            x,
            training=True,
            dropout=dropout,
            dropout_rows=dropout_rows,
            bn_momentum=bn_momentum,
            saved=saved,
        )
        params = self.params()
        grads = self.grads()
        # ∂ mean_b CE / ∂ logits = (softmax − onehot) / B
        g = (logits - logits.amax(-1, keepdim=True)).exp_()  # softmax, by hand: faster on CPU
        g.div_(g.sum(-1, keepdim=True))
        index = labels.unsqueeze(-1)
        g.scatter_add_(-1, index, torch.full(index.shape, -1.0, dtype=g.dtype, device=g.device))
        g.mul_(1.0 / batch)
        head = self.layers[-1][0]
        top = saved.pop()
        # matmuls write into reused buffers: fresh outputs cost more than the products on CPU
        head_grad = grads[f"{head}.weight"]
        out = self._buffer("grad_head", head_grad.shape, saved)
        head_grad.copy_(torch.bmm(g.transpose(1, 2), top.inputs, out=out))
        torch.sum(g, dim=1, out=grads[f"{head}.bias"])
        out = self._buffer("grad_top", (models, batch, top.matrix.shape[2]), saved)
        g = torch.bmm(g, top.matrix, out=out)  # (M, B, C)
        if self.convs:  # global average pooling
            geometry = self.convs[-1]
            spread = (models, batch, *([1] * geometry.dims), arch.width)
            g = (g / geometry.out_positions).view(spread).expand(top.activation.shape)
            out = self._buffer("grad_pool", top.activation.shape, saved)
            g = out.copy_(g)  # dense: elementwise kernels are slow on broadcast inputs
        for i in range(len(saved) - 1, -1, -1):
            prefix, norm = self.layers[i]
            layer = saved[i]
            out = self._buffer(f"grad_z{i}", layer.activation.shape, saved)
            if layer.multiplier is not None and not layer.dropped:
                g = _multiply_rows(g, layer.multiplier, out, dropout_rows)
            g = self.activation_backward(g, layer.pre_activation, layer.activation, out)  # ∂/∂z
            if layer.multiplier is not None and layer.dropped:
                g = _multiply_rows_(g, layer.multiplier, dropout_rows)
            skip = g if arch.has_skip(i) else None
            if norm is not None:
                assert layer.normalised is not None and layer.inv_std is not None
                reduce = tuple(range(1, g.dim() - 1))
                grad_beta = g.sum(dim=reduce)
                grad_gamma = (g * layer.normalised).sum(dim=reduce)
                grads[f"{norm}.bias"].copy_(grad_beta)
                grads[f"{norm}.weight"].copy_(grad_gamma)
                count = g.numel() // (models * g.shape[-1])
                shape = (models, *([1] * (g.dim() - 2)), g.shape[-1])
                coef = (params[f"{norm}.weight"] * layer.inv_std / count).view(shape)
                centred = g * count - grad_beta.view(shape)
                centred = centred - layer.normalised * grad_gamma.view(shape)
                g = centred * coef
            g = self._linear_backward(i, g, layer, grads, batch, saved)
            if g is None:
                break
            if skip is not None:
                g = g + skip
        return logits

    def _linear_backward(
        self,
        i: int,
        g: Tensor,
        layer: _Saved,
        grads: dict[str, Tensor],
        batch: int,
        saved: list[_Saved],
    ) -> Tensor | None:
        """Gradients of layer ``i``'s weight and bias from ``g = ∂/∂z``; returns ``∂/∂h_in``
        (None for the first layer)."""
        models, width = self.num_models, self.arch.width
        prefix, norm = self.layers[i]
        weight_grad = grads[f"{prefix}.weight"]
        bias_grad = grads.get(f"{prefix}.bias") if norm is None else None
        geometry = self.convs[i] if self.convs else None
        if geometry is None or geometry.dense is None:  # linear layer or im2col conv
            flat_g = g.reshape(models, -1, width)  # (M, B·|S_out|, O)
            shape = (models, width, layer.inputs.shape[2])
            out = self._buffer(f"grad_w{i}", shape, saved)
            grad_matrix = torch.bmm(flat_g.transpose(1, 2), layer.inputs, out=out)
            if geometry is None:
                weight_grad.copy_(grad_matrix)
            else:  # (M, O, k·C) → (M, O, C, k)
                k = geometry.kernel_size
                if i == 0 and bias_grad is not None:  # the bias's column of the first conv
                    bias_grad.copy_(grad_matrix[:, :, -1])
                    grad_matrix, bias_grad = grad_matrix[:, :, :-1], None
                weight_grad.view(models, width, -1, k).copy_(
                    grad_matrix.unflatten(2, (k, -1)).transpose(2, 3)
                )
            if bias_grad is not None:
                torch.sum(flat_g, dim=1, out=bias_grad)
            if i == 0:
                return None
            shape = (models, flat_g.shape[1], layer.matrix.shape[2])
            grad_inputs = torch.bmm(
                flat_g, layer.matrix, out=self._buffer(f"grad_h{i}", shape, saved)
            )
            if geometry is None:
                return grad_inputs
            padded = self._padded(f"grad_pad{i}", grad_inputs, geometry)
            return _fold_patches(grad_inputs, geometry, padded)
        assert geometry.grad_index is not None and geometry.grad_mask is not None
        flat_g = g.reshape(models, batch, -1)  # (M, B, |S_out|·O)
        out = self._buffer(f"grad_dense{i}", layer.matrix.shape, saved)
        grad_dense = torch.bmm(flat_g.transpose(1, 2), layer.inputs, out=out).view(models, -1)
        picked = grad_dense.index_select(1, geometry.grad_index)
        picked = picked.view(models, *geometry.grad_mask.shape) * geometry.grad_mask
        torch.sum(picked, dim=-1, out=weight_grad.view(models, -1))
        if bias_grad is not None:
            torch.sum(g.reshape(models, -1, width), dim=1, out=bias_grad)
        out = self._buffer(f"grad_h{i}", (models, batch, layer.matrix.shape[2]), saved)
        grad_inputs = torch.bmm(flat_g, layer.matrix, out=out)  # (M, B, |S_in|·C)
        return grad_inputs.view(models, batch, *geometry.in_spatial, geometry.in_channels)

    def state_dict(self, model: int) -> dict[str, Tensor]:
        """Raw ``nn.Module`` state dict of model ``model`` (CPU copies)."""
        state: dict[str, Tensor] = {}
        for key in self.keys:
            if key in self.param_shapes:
                start, stop = self.offsets[key]
                value = self.flat[model, start:stop].view(self.param_shapes[key])
            elif key.endswith("num_batches_tracked"):
                value = torch.tensor(self.steps_taken, dtype=torch.long)
            else:
                value = self.buffers[key][model]
            state[key] = value.to("cpu", copy=True).contiguous()
        return state

    def state_dicts(self) -> list[Mapping[str, Tensor]]:
        """:meth:`state_dict` of every model, copied to the CPU in one transfer per key.

        Each key's values of all models are one fresh CPU tensor ``(M, *shape)``; model ``m``'s
        state dict is a read-only mapping onto row ``m`` of those (:class:`_RowStateDict`: no
        per-model tensors are made until read, and :func:`~weightspace.zoo.store.write_shard`
        copies rows out when it serialises them).
        """
        blocks: dict[str, Tensor] = {}
        for key in self.keys:
            if key in self.param_shapes:
                start, stop = self.offsets[key]
                # made contiguous where θ lives (fast on a GPU), then one transfer
                block = self.flat[:, start:stop].clone(memory_format=torch.contiguous_format)
                block = block.to("cpu")
                blocks[key] = block.view(self.num_models, *self.param_shapes[key])
            elif key.endswith("num_batches_tracked"):
                blocks[key] = torch.full((self.num_models,), self.steps_taken, dtype=torch.long)
            else:
                blocks[key] = self.buffers[key].to("cpu", copy=True)
        return [_RowStateDict(blocks, m) for m in range(self.num_models)]

    def finite(self) -> Tensor:
        """``(M,)`` bool: every parameter and buffer of the model is finite."""
        ok = torch.isfinite(self.flat).all(1)
        for value in self.buffers.values():
            ok &= torch.isfinite(value).all(1)
        return ok

    @torch.no_grad()
    def evaluate(
        self, x: Tensor, labels: Tensor, weights: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-model mean loss and accuracy ``(M,), (M,)`` on shared inputs ``x (N, F)`` (from
        :meth:`prepare_inputs`).

        ``labels`` is ``(N,)`` or per model ``(M, N)``; ``weights (M, N)`` restricts each model to
        its own examples (its training subset).
        """
        labels = labels.view(1, -1) if labels.dim() == 1 else labels
        loss_sum = torch.zeros(self.num_models, device=self.device)
        correct = torch.zeros(self.num_models, device=self.device)
        size = max(self.num_models * self._example_size, 1)
        chunk = min(max(EVAL_ELEMENTS // size, EVAL_MIN_CHUNK), EVAL_CHUNK)
        for start in range(0, x.shape[0], chunk):
            stop = start + chunk
            logits = self.forward(x[start:stop], training=False)
            w = None if weights is None else weights[:, start:stop]
            chunk_loss, chunk_correct = _accumulate_metrics(logits, labels[:, start:stop], w)
            loss_sum += chunk_loss
            correct += chunk_correct
        count = (
            torch.full_like(loss_sum, x.shape[0]) if weights is None else weights.sum(1)
        ).clamp_min(1)
        return loss_sum / count, correct / count


#: PyTorch's fused Adam kernel (one pass over θ, g, m, v), when this build has it.
_FUSED_ADAM: Callable[..., None] | None = getattr(torch, "_fused_adam_", None)


class _StackedOptimizer:
    """SGD (momentum, L2) and Adam (L2) on the flat ``θ (M, P)``, chosen per model.

    With ``g ← ∇θ + λ θ`` per model:

    * sgd:  ``b ← μ b + g``;  ``θ ← θ − η b``  (first step ``b = g``, as ``torch.optim.SGD``)
    * adam: ``m ← m + (1−β₁)(g − m)``; ``v ← β₂ v + (1−β₂) g²``;
      ``θ ← θ − η/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + ε)``  (as ``torch.optim.Adam``)

    Adam's per-model step sizes ``η`` differ, so where PyTorch's fused Adam kernel exists it runs
    with ``η = 1`` on a zeroed buffer ``δ`` (giving ``δ = −m̂ / (√v̂ + ε)`` in one pass) and
    ``θ ← θ + η δ`` follows — the same math in three passes instead of eight.

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
        self.denom = torch.empty_like(self.second_moment)
        self.step_count = 0
        self.adam_step = torch.zeros((), **column)  # the fused kernel reads t from the device

    @torch.no_grad()
    def step(self, flat: Tensor, grad: Tensor) -> None:
        self.step_count += 1
        k = self.num_sgd
        grad = grad.addcmul_(self.wd, flat)  # g ← ∇θ + λ θ, in place
        if k > 0:
            buf = self.first_moment[:k]
            torch.add(grad[:k], buf, alpha=self.settings.momentum, out=buf)  # b ← μ b + g
            flat[:k].addcmul_(self.lr[:k], buf, value=-1.0)
        if k == flat.shape[0]:
            return
        beta1, beta2 = self.settings.betas
        g, m, v = grad[k:], self.first_moment[k:], self.second_moment
        if _FUSED_ADAM is not None:
            self.adam_step.add_(1.0)
            delta = self.denom.zero_()
            _FUSED_ADAM(
                [delta],
                [g],
                [m],
                [v],
                [],
                [self.adam_step],
                lr=1.0,
                beta1=beta1,
                beta2=beta2,
                weight_decay=0.0,
                eps=self.settings.eps,
                amsgrad=False,
                maximize=False,
            )
            flat[k:].addcmul_(self.lr[k:], delta)
            return
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias1 = 1 - beta1**self.step_count
        bias2_sqrt = math.sqrt(1 - beta2**self.step_count)
        # in the preallocated buffer: m / (√v / √(1−β₂ᵗ) + ε), then θ ← θ − η/(1−β₁ᵗ) · that
        denom = torch.sqrt(v, out=self.denom).div_(bias2_sqrt).add_(self.settings.eps)
        update = torch.div(m, denom, out=denom)
        flat[k:].addcmul_(self.lr[k:], update, value=-1.0 / bias1)


def _steps_per_epoch(task: Task, settings: TrainSettings) -> int:
    return max(1, int(task.labels["train"].shape[0]) // settings.batch_size)


def _metrics_dict(values: dict[str, list[float]], model: int) -> dict[str, float]:
    return {name: values[name][model] for name in METRIC_NAMES}


def _blocks(flags: Sequence[bool]) -> list[tuple[int, int]]:
    """``[start, stop)`` of every maximal run of True in ``flags``."""
    blocks: list[tuple[int, int]] = []
    for i, flag in enumerate(flags):
        if flag and blocks and blocks[-1][1] == i:
            blocks[-1] = (blocks[-1][0], i + 1)
        elif flag:
            blocks.append((i, i + 1))
    return blocks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_group(
    task: Task,
    arch: ArchConfig | str,
    runs: Sequence[RunSpec],
    settings: TrainSettings,
    *,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
    timings: dict[str, float] | None = None,
) -> list[CheckpointResult]:
    """Train ``runs`` (all of ``arch`` on ``task``) together; checkpoints at ``settings``' epochs.

    The step loop issues no host↔device transfers or syncs: batch indices and dropout words of an
    epoch are computed on the device from the runs' counter-based streams
    (:class:`~weightspace.zoo.streams.RunStreams`) before its first step.

    Args:
        progress: called with the number of model-epochs finished after every epoch.
        timings: if given, filled with wall-clock seconds (device-synchronised at the phase
            boundaries): ``setup`` (streams, initialisation, data), ``epochs`` (training steps)
            and ``checkpoints`` (evaluation and copying the weights out).

    Returns:
        One :class:`CheckpointResult` per run and checkpoint epoch, ordered by epoch then run.
    """
    clock = time.perf_counter()
    arch = get_arch(arch)
    device = torch.device(device)
    models = len(runs)
    family = arch.family
    position = {run.run_id: i for i, run in enumerate(runs)}
    # sgd runs first (one block of rows per optimiser); the runs with dropout last among the sgd
    # runs and first among the adam runs, so that one block of rows draws dropout masks
    runs = sorted(
        runs,
        key=lambda r: (
            r.hyper.optimizer == "adam",
            (r.hyper.dropout > 0) != (r.hyper.optimizer == "adam"),
            position[r.run_id],
        ),
    )
    steps = _steps_per_epoch(task, settings)
    batch = settings.batch_size
    streams = RunStreams(runs, task, steps, batch, device)
    streams.plan_epochs(range(1, settings.epochs + 1))
    template = build_model(arch, task.input_shape(family), task.num_classes)
    initial = initial_parameters(
        template, [r.seed for r in runs], [r.hyper.init_scale for r in runs], device
    )
    network = StackedNetwork(arch, task.input_shape(family), task.num_classes, initial, device)
    optimizer = _StackedOptimizer(network.flat, runs, settings)

    x_train = network.prepare_inputs(task.inputs("train", family).to(device))
    splits = {
        s: (network.prepare_inputs(task.inputs(s, family).to(device)), task.labels[s].to(device))
        for s in ("val", "test")
    }
    train_labels = streams.labels  # (M, N)
    train_weights = streams.in_subset.to(network.flat.dtype)
    dropout_rows = [slice(start, stop) for start, stop in _blocks(streams.has_dropout)]
    units = _hidden_units(arch)
    inputs = torch.empty(models * batch, x_train.shape[1], device=device)
    words = torch.empty(models, batch * ((units + 1) // 2), dtype=torch.int32, device=device)
    scratch = torch.empty_like(words)
    # per layer contiguous (depth, M, B, W); rows without dropout stay 1
    multiplier = torch.ones(arch.depth, models, batch, arch.width, device=device)
    results: list[CheckpointResult] = []
    spent = {"setup": 0.0, "epochs": 0.0, "checkpoints": 0.0}

    def lap(phase: str) -> None:
        nonlocal clock
        if timings is not None:
            _sync(device)
            now = time.perf_counter()
            spent[phase] += now - clock
            clock = now

    def checkpoint(epoch: int) -> None:
        values: dict[str, Tensor] = {}
        values["train_loss"], values["train_accuracy"] = network.evaluate(
            x_train, train_labels, train_weights
        )
        for split, (x, y) in splits.items():
            values[f"{split}_loss"], values[f"{split}_accuracy"] = network.evaluate(x, y)
        listed = {k: v.cpu().double().tolist() for k, v in values.items()}
        finite = network.finite().cpu().tolist()
        for m, (run, state) in enumerate(zip(runs, network.state_dicts(), strict=True)):
            results.append(
                CheckpointResult(
                    run.run_id, epoch, state, _metrics_dict(listed, m), bool(finite[m])
                )
            )

    lap("setup")
    if 0 in settings.checkpoint_epochs:
        checkpoint(0)
        lap("checkpoints")
    for epoch in range(1, settings.epochs + 1):
        indices = streams.epoch_batches(epoch)  # (steps, M, B)
        dropout_keys = streams.dropout_words(epoch) if dropout_rows else None  # (steps, M)
        for step in range(steps):
            idx = indices[step]  # (M, B)
            x = torch.index_select(x_train, 0, idx.view(-1), out=inputs)
            y = train_labels.gather(1, idx)  # (M, B)
            dropout = None
            if dropout_keys is not None:
                for rows in dropout_rows:
                    streams.dropout_multiplier(
                        dropout_keys[step, rows],
                        rows,
                        multiplier[:, rows].permute(1, 2, 0, 3),
                        words[rows],
                        scratch[rows],
                    )
                dropout = multiplier
            network.loss_backward(
                x.view(models, batch, -1),
                y,
                dropout=dropout,
                dropout_rows=dropout_rows[0] if len(dropout_rows) == 1 else None,
                bn_momentum=settings.bn_momentum,
            )
            optimizer.step(network.flat, network.grad)
            network.steps_taken += 1
        lap("epochs")
        if epoch in settings.checkpoint_epochs:
            checkpoint(epoch)
            lap("checkpoints")
        if progress is not None:
            progress(models)
    results.sort(key=lambda r: (r.epoch, position[r.run_id]))
    if timings is not None:
        timings.update(spent)
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
    steps = _steps_per_epoch(task, settings)
    batch = settings.batch_size
    streams = RunStreams([run], task, steps, batch, device)
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
    labels = streams.labels[0]
    weights = streams.in_subset[0].to(x_train.dtype)
    splits = {
        s: (task.inputs(s, family).to(device), task.labels[s].to(device)) for s in ("val", "test")
    }
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
        indices = streams.epoch_batches(epoch)[:, 0]  # (steps, B)
        keeps = None
        if hp.dropout > 0:  # (steps, 1, B, units)
            keeps = streams.dropout_keep(streams.dropout_words(epoch), width * arch.depth)
        for step in range(steps):
            idx = indices[step]
            if keeps is not None:
                current_mask[0] = keeps[step, 0]
            loss = F.cross_entropy(model(x_train[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        current_mask[0] = None
        if epoch in settings.checkpoint_epochs:
            checkpoint(epoch)
            model.train()
    return results
