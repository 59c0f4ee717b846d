"""What a neural functional network (the ``nfn`` package) reads and what it is: the check that
an architecture fits one (:func:`nfn_incompatibility`), state dicts stacked into its
``(weights, biases)`` inputs (:func:`to_nfn_tensors`), and the reference ``InvariantNFN`` with its
``MlpHead`` (:class:`NFNNetwork`). The embedder that trains it is
:class:`weightspace.baselines.nfn.NFNEmbedder`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from weightspace.layout import layout_of
from weightspace.spec import NetworkSpec

__all__ = ["NFNNetwork", "nfn_incompatibility", "to_nfn_tensors"]


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


def to_nfn_tensors(
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


class NFNNetwork(nn.Module):
    """The reference ``InvariantNFN`` with its ``MlpHead`` (sigmoid output)."""

    def __init__(self, nfn_spec: object, mode: str, channels: Sequence[int], width: int) -> None:
        from nfn.layers import HNPLinear, HNPPool, NPLinear, TupleOp

        super().__init__()
        layers: list[nn.Module] = []
        previous = 1
        for count in channels:
            if mode == "hnp":
                layers.append(HNPLinear(nfn_spec, previous, count))
            else:
                layers.append(NPLinear(nfn_spec, previous, count, io_embed=True))
            layers.append(TupleOp(nn.ReLU()))
            previous = count
        self.equivariant = nn.Sequential(*layers)
        self.pool = HNPPool(nfn_spec)
        pooled = HNPPool.get_num_outs(nfn_spec) * previous
        self.embedding = nn.Sequential(
            nn.Flatten(), nn.Linear(pooled, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.head = nn.Linear(width, 1)

    def forward(self, features: object) -> tuple[Tensor, Tensor]:
        z = self.embedding(self.pool(self.equivariant(features)))  # (B, width)
        return z, self.head(z).squeeze(-1)  # (B, width), (B,) logits of the accuracy
