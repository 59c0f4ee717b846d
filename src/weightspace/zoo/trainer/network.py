"""``M`` models of one architecture as one flat parameter tensor: storage, state dicts and
evaluation (the forward and backward passes are mixed in from :mod:`.forward` and
:mod:`.backward`)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor

from weightspace.zoo.architectures import (
    ArchConfig,
    activation_function,
    build_model,
    parametrised_layers,
)
from weightspace.zoo.trainer.backward import Saved, StackedBackward
from weightspace.zoo.trainer.conv import ConvGeometry, conv_geometry, extract_patches
from weightspace.zoo.trainer.elementwise import activation_backward
from weightspace.zoo.trainer.forward import StackedForward
from weightspace.zoo.trainer.results import (
    EVAL_CHUNK,
    EVAL_ELEMENTS,
    EVAL_MIN_CHUNK,
    accumulate_metrics,
)

__all__ = ["StackedNetwork"]


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


class StackedNetwork(StackedForward, StackedBackward):
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
        self.activation_backward = activation_backward(arch.activation)
        self._workspace: dict[str, Tensor] = {}
        self._first_bias_column = arch.family != "mlp" and not arch.batchnorm
        self.convs = (
            [g.to(self.device) for g in conv_geometry(arch, self.input_shape)]
            if arch.family != "mlp"
            else []
        )
        sizes = [math.prod(self.input_shape), arch.width, num_classes]
        for g in self.convs:
            sizes += [g.out_positions * (g.patch_size + 1), g.out_positions * g.out_channels]
        self._example_size = max(sizes)  # largest intermediate per example and model

    def _buffer(self, name: str, shape: Sequence[int], saved: list[Saved] | None) -> Tensor:
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
        self, name: str, like: Tensor, geometry: ConvGeometry | None = None, pad: int = 1
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
        patches = extract_patches(h, geometry).view(x.shape[0], geometry.out_positions, -1)
        if self._first_bias_column:
            patches = torch.cat([patches, patches.new_ones(*patches.shape[:2], 1)], dim=2)
        return patches.reshape(x.shape[0], -1)

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
            chunk_loss, chunk_correct = accumulate_metrics(logits, labels[:, start:stop], w)
            loss_sum += chunk_loss
            correct += chunk_correct
        count = (
            torch.full_like(loss_sum, x.shape[0]) if weights is None else weights.sum(1)
        ).clamp_min(1)
        return loss_sum / count, correct / count
