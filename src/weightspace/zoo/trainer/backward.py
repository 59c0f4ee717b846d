"""The hand-written backward pass of :class:`~weightspace.zoo.trainer.network.StackedNetwork`.

For the loss ``L = Σ_m mean_b CE(logits_mb, y_mb)`` the gradient ``∂L/∂θ_m`` is what model ``m``
alone would get: softmax − one-hot over ``B``, then per layer batched matmuls (linear, im2col
and dense convs), BatchNorm, residual skips, activations, dropout and global average pooling,
each written out without autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from weightspace.zoo.trainer.conv import fold_patches
from weightspace.zoo.trainer.elementwise import multiply_rows, multiply_rows_

__all__ = ["Saved", "StackedBackward"]


@dataclass
class Saved:
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


class StackedBackward:
    """The backward pass, mixed into :class:`~weightspace.zoo.trainer.network.StackedNetwork`
    (it runs that class's forward pass and writes into its :attr:`grad`)."""

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
        saved: list[Saved] = []
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
                g = multiply_rows(g, layer.multiplier, out, dropout_rows)
            g = self.activation_backward(g, layer.pre_activation, layer.activation, out)  # ∂/∂z
            if layer.multiplier is not None and layer.dropped:
                g = multiply_rows_(g, layer.multiplier, dropout_rows)
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
        layer: Saved,
        grads: dict[str, Tensor],
        batch: int,
        saved: list[Saved],
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
            return fold_patches(grad_inputs, geometry, padded)
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
