r"""timm's ``VisionTransformer`` read by module type onto the token spec.

A ViT computes, for an image cut into :math:`N` patches :math:`p_1 \dots p_N` (each flattened to
:math:`C p^2` values, row-major over the patch grid),

.. math::
    x_0 = [c;\ W_e p_1 + b_e;\ \dots;\ W_e p_N + b_e] + P, \qquad
    x_{l+1} = y_l + \mathrm{MLP}(\mathrm{LN}_2\, y_l),\quad
    y_l = x_l + \mathrm{MHA}(\mathrm{LN}_1\, x_l),

then a final LayerNorm, the class token (or the mean of the patch tokens) and a linear head.

**Mapping.** ``PatchEmbed``'s convolution (kernel = stride = patch, no padding) is a per-token
``linear`` on patch vectors, so the spec's input is the ``(1 + N, C p^2)`` token matrix that
:func:`vit_tokens` makes from an image, with an all-zero *class slot* first. The class token has
no op of its own: the zero slot's embedding is :math:`b_e`, so the positional table's row 0 is
stored as :math:`c + P_0 - b_e` (:math:`c - b_e` when the class token takes no position), which
gives the class token's exact value. ``Attention`` (one fused ``qkv`` ``Linear`` of ``(3E, E)``,
heads contiguous, scale :math:`d^{-1/2}`) is exactly an ``attention`` op's ``in_proj``;
``LayerScale`` :math:`\gamma` is folded into the rows of the projection before it (exact).
Refused with :class:`~weightspace.errors.UnsupportedLayerError` naming the part: register
tokens, average pooling beside a class token, query/key norms, attention norms, gated MLPs,
dynamic image sizes, and a patch norm.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from weightspace.attention import AttentionWeights
from weightspace.errors import UnsupportedLayerError
from weightspace.hub.builder import TokenSpecBuilder
from weightspace.spec import NetworkSpec
from weightspace.transformer import _ACTIVATIONS

__all__ = ["is_timm_vit", "timm_vit_spec", "vit_tokens"]


def is_timm_vit(module: nn.Module) -> bool:
    """Whether ``module`` is a timm ``VisionTransformer`` (checked without importing timm)."""
    return any(
        c.__name__ == "VisionTransformer" and c.__module__.startswith("timm.")
        for c in type(module).__mro__
    )


def vit_tokens(image: Tensor, patch_size: int, *, class_slot: bool = True) -> Tensor:
    """The spec input of a ViT: ``(B, C, H, W)`` images to ``(B, [1 +] N, C p^2)`` patch vectors
    (row-major over the patch grid, each flattened as ``(C, p, p)`` like a conv kernel), with a
    zero class slot first when ``class_slot``."""
    b, c, h, w = image.shape
    p = patch_size
    if h % p or w % p:
        raise UnsupportedLayerError(f"image of {h}x{w} pixels is not a whole number of {p}-patches")
    patches = image.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    tokens = patches.reshape(b, (h // p) * (w // p), c * p * p)
    if class_slot:
        tokens = torch.cat([tokens.new_zeros(b, 1, tokens.shape[2]), tokens], dim=1)
    return tokens


def _refuse(model: nn.Module, path: str, what: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"{type(model).__name__}: {path!r} {what} has no neural-graph form; a model the probe "
        "branch can run may be embedded by its function alone"
    )


def _layer_scale(module: nn.Module) -> Tensor | None:
    """``LayerScale``'s :math:`\\gamma`, or ``None`` for ``nn.Identity``."""
    return None if isinstance(module, nn.Identity) else module.gamma.detach()


def timm_vit_spec(
    model: nn.Module, example_input: Tensor | None = None
) -> tuple[NetworkSpec, dict[str, Tensor]]:
    """The ``(spec, state_dict)`` of a timm ``VisionTransformer`` (module docstring).

    Args:
        model: the ViT (its eval-mode function is read).
        example_input: ``(B, C, H, W)`` images; only the shape is read (default: the model's
            ``img_size``).

    Raises:
        UnsupportedLayerError: naming the path and type of the first part with no graph form.
    """
    kind = type(model).__name__
    embed = model.patch_embed
    conv = embed.proj
    if getattr(model, "num_reg_tokens", 0):
        raise _refuse(model, "reg_token", f"({model.num_reg_tokens} register tokens)")
    if getattr(model, "dynamic_img_size", False) or getattr(embed, "dynamic_img_pad", False):
        raise _refuse(model, "patch_embed", "with a dynamic image size")
    if not isinstance(embed.norm, nn.Identity):
        raise _refuse(model, "patch_embed.norm", f"({type(embed.norm).__name__})")
    if (
        not getattr(embed, "flatten", True)
        or conv.kernel_size != conv.stride
        or conv.padding
        != (
            0,
            0,
        )
    ):
        raise _refuse(model, "patch_embed.proj", "(not a non-overlapping patch convolution)")
    class_token = model.cls_token is not None
    if class_token and model.global_pool != "token":
        raise _refuse(model, "global_pool", f"{model.global_pool!r} beside a class token")
    if not class_token and model.global_pool != "avg":
        raise _refuse(model, "global_pool", f"{model.global_pool!r} without a class token")
    if model.pos_embed is None:
        raise _refuse(model, "pos_embed", "(absent: no learned positional embedding)")

    p = int(conv.kernel_size[0])
    channels = int(conv.in_channels)
    if example_input is not None:
        h, w = (int(s) for s in example_input.shape[-2:])
    else:
        h, w = (int(s) for s in embed.img_size)
    n = (h // p) * (w // p)
    num_tokens = n + int(class_token)
    positions = model.pos_embed.detach()[0]  # (P, E): P = N (+1 unless no_embed_class)
    if len(positions) != n + int(class_token and not model.no_embed_class):
        raise _refuse(model, "pos_embed", f"of {len(positions)} rows for {n} patches")
    builder = TokenSpecBuilder({"shape": (num_tokens, channels * p * p), "layout": "tokens"}, kind)

    weight = conv.weight.detach().reshape(conv.out_channels, -1)  # (E, C p^2)
    bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(len(weight))
    x = builder.linear("patch_embed.proj", weight, bias, "input")
    table = positions.clone()
    if class_token:
        cls = model.cls_token.detach()[0, 0]
        first = cls - bias if model.no_embed_class else cls + positions[0] - bias
        table = torch.cat([first[None], positions[int(not model.no_embed_class) :]])
    builder.embedding("pos_embed", table, "position")
    x = builder.add("pos_embed.add", x, "pos_embed")
    x = builder.norm("norm_pre", model.norm_pre, x)

    for i, block in enumerate(model.blocks):
        x = _block(builder, model, f"blocks.{i}", block, x)

    x = builder.norm("norm", model.norm, x)
    x = builder.token_pool("pool", "first" if class_token else "mean", x)
    x = builder.norm("fc_norm", model.fc_norm, x)
    if isinstance(model.head, nn.Linear):
        builder.linear("head", model.head.weight, model.head.bias, x)
    elif not isinstance(model.head, nn.Identity):
        raise _refuse(model, "head", f"of type {type(model.head).__name__}")
    return builder.build()


def _block(builder: TokenSpecBuilder, model: nn.Module, path: str, block: nn.Module, x: str) -> str:
    """Append a pre-norm ``Block``; return the name of its output."""
    attn, mlp = block.attn, block.mlp
    if type(block).__name__ != "Block":
        raise _refuse(model, path, f"of type {type(block).__name__}")
    for part in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(attn, part, nn.Identity()), nn.Identity):
            raise _refuse(model, f"{path}.attn.{part}", f"({type(getattr(attn, part)).__name__})")
    if type(mlp).__name__ != "Mlp" or not isinstance(
        getattr(mlp, "norm", nn.Identity()), nn.Identity
    ):
        raise _refuse(model, f"{path}.mlp", f"of type {type(mlp).__name__}")
    e, h = attn.qkv.in_features, attn.num_heads
    if abs(float(attn.scale) - (e // h) ** -0.5) > 1e-12:
        raise _refuse(model, f"{path}.attn", f"with scale {attn.scale} (not head_dim ** -0.5)")
    out_w, out_b = attn.proj.weight.detach(), attn.proj.bias
    fc2_w, fc2_b = mlp.fc2.weight.detach(), mlp.fc2.bias
    gamma1, gamma2 = _layer_scale(block.ls1), _layer_scale(block.ls2)
    if gamma1 is not None:  # LayerScale after a linear: scale its rows (exact)
        out_w = gamma1[:, None] * out_w
        out_b = None if out_b is None else gamma1 * out_b.detach()
    if gamma2 is not None:
        fc2_w = gamma2[:, None] * fc2_w
        fc2_b = None if fc2_b is None else gamma2 * fc2_b.detach()
    weights = AttentionWeights(
        in_proj=attn.qkv.weight.detach(),
        in_bias=None if attn.qkv.bias is None else attn.qkv.bias.detach(),
        out_proj=out_w,
        out_bias=None if out_b is None else out_b.detach(),
        num_heads=int(h),
    )
    act = _ACTIVATIONS.get(type(mlp.act))
    if act is None:
        raise _refuse(model, f"{path}.mlp.act", f"of type {type(mlp.act).__name__}")
    act_attrs = {"function": act}
    if act == "gelu":
        act_attrs["approximate"] = mlp.act.approximate

    normed = builder.norm(f"{path}.norm1", block.norm1, x)
    a = builder.attention(f"{path}.attn", weights, normed)
    x = builder.add(f"{path}.add1", x, a)
    normed = builder.norm(f"{path}.norm2", block.norm2, x)
    hidden = builder.linear(f"{path}.mlp.fc1", mlp.fc1.weight, mlp.fc1.bias, normed)
    hidden = builder.activation(f"{path}.mlp.act", act_attrs, hidden)
    out = builder.linear(f"{path}.mlp.fc2", fc2_w, fc2_b, hidden)
    return builder.add(f"{path}.add2", x, out)
