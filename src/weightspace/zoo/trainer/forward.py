"""The forward pass of :class:`~weightspace.zoo.trainer.network.StackedNetwork`: every model's
logits at once, with BatchNorm per (model, channel), saving what the backward pass needs."""

from __future__ import annotations

import torch
from torch import Tensor

from weightspace.zoo.architectures import BN_EPS
from weightspace.zoo.trainer.backward import Saved
from weightspace.zoo.trainer.conv import extract_patches, kernel_matrix
from weightspace.zoo.trainer.elementwise import IN_PLACE_ACTIVATIONS, multiply_rows, multiply_rows_

__all__ = ["StackedForward"]


class StackedForward:
    """The forward pass, mixed into :class:`~weightspace.zoo.trainer.network.StackedNetwork`
    (it reads that class's parameters, buffers, layers, conv geometry and workspace)."""

    def _head_inputs(self, h: Tensor) -> Tensor:
        """The head's input: ``h`` for MLPs; for CNNs global average pooling over positions,
        ``(M, B, *S, C) → (M, B, C)``."""
        return h if not self.convs else h.mean(dim=tuple(range(2, 2 + len(self.input_shape) - 1)))

    def forward(
        self,
        x: Tensor,
        *,
        training: bool,
        dropout: Tensor | None = None,
        dropout_rows: slice | None = None,
        bn_momentum: float = 0.1,
        saved: list[Saved] | None = None,
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
                matrix = kernel_matrix(weight)  # (M, O, k·C)
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
                    inputs = extract_patches(
                        h, geometry, self._padded(name, h, pad=geometry.pad), patches
                    )
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
            keep_z = arch.activation not in IN_PLACE_ACTIVATIONS
            a = self.activation(z) if keep_z else IN_PLACE_ACTIVATIONS[arch.activation](z)
            multiplier = None
            dropped = False
            if dropout is not None:
                multiplier = dropout[i]  # (M, B, W)
                if geometry is not None:
                    multiplier = multiplier.view(models, batch, *([1] * geometry.dims), -1)
                if arch.activation == "relu" and saved is not None:
                    # in place on the (reused) buffer of z: no copies of the other rows
                    h = a = multiply_rows_(a, multiplier, dropout_rows)
                    dropped = True
                else:
                    out = self._buffer(f"h{i}", a.shape, saved)
                    h = multiply_rows(a, multiplier, out, dropout_rows)
            else:
                h = a
            if saved is not None:
                saved.append(
                    Saved(
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
            saved.append(Saved(pooled, weight, None, h, None))
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
