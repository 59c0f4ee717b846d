"""Zoo architectures: small MLPs and CNNs registered by name (timm-style).

Names
-----
==========================================  ===================================================
``mlp-w{W}-d{D}-{act}``                     ``D`` hidden layers of ``W`` units (``D`` in 1–4,
                                            ``W`` in 8–128), then a linear head.
``cnn1d-c{C}-d{D}[-k{K}][-bn][-res]-{act}``  ``D`` conv layers of ``C`` channels (``D`` in 1–5,
``cnn2d-c{C}-d{D}[-k{K}][-bn][-res]-{act}``  ``C`` in 4–32), kernel ``K`` (3, 5 or 7; 3 when
                                            the name has no ``-k``), padding ``K // 2``; optional
                                            BatchNorm after each conv and residual connections;
                                            global average pooling, linear head.
==========================================  ===================================================

``act`` is one of ``relu``, ``leaky_relu`` (slope 0.01), ``tanh``, ``gelu`` (exact).

The first two conv layers have stride 2 (8×8 digits → 4×4 → 2×2; mnist1d length 40 → 20 → 10);
later layers have stride 1 and, with ``-res``, a ResNet-style identity skip
``x ← act(norm(conv(x)) + x)`` (so ``-res`` needs ``D ≥ 3``). Convs carry a bias unless followed by
BatchNorm, as usual.

Every architecture is an ordinary ``nn.Module`` with standard state-dict keys:

* MLP — ``nn.Sequential(Linear, Act, Linear, Act, …, Linear)``: keys ``0.weight``, ``0.bias``,
  ``2.weight``, …
* CNN — :class:`ConvNet`: ``blocks.{i}.conv.weight``/``.bias``, ``blocks.{i}.norm.*`` (BatchNorm),
  ``head.weight``, ``head.bias``.

Dropout is a training-time hyper-parameter of the zoo, not part of the module: the trainer applies
it to the output of each hidden activation (elementwise for MLPs, per channel for CNNs, like
``nn.Dropout2d``), so the module, its state dict and its spec are the same with or without it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from weightspace.errors import WeightspaceError

__all__ = [
    "ACTIVATION_NAMES",
    "ArchConfig",
    "ConvBlock",
    "ConvNet",
    "KERNEL_SIZES",
    "UnknownNameError",
    "build_model",
    "fold_batchnorm",
    "get_arch",
    "list_archs",
    "register_arch",
]

#: Activations zoo architectures may use.
ACTIVATION_NAMES: tuple[str, ...] = ("relu", "leaky_relu", "tanh", "gelu")
LEAKY_RELU_SLOPE = 0.01
BN_EPS = 1e-5
FAMILIES: tuple[str, ...] = ("mlp", "cnn1d", "cnn2d")
#: Number of leading conv layers that downsample with stride 2.
NUM_STRIDED_CONVS = 2
#: Conv kernel sides a CNN may use (odd, so padding ``k // 2`` keeps the centre).
KERNEL_SIZES: tuple[int, ...] = (3, 5, 7)
#: Most hidden layers (MLP) and conv layers (CNN).
MAX_DEPTH = {"mlp": 4, "cnn1d": 5, "cnn2d": 5}


class UnknownNameError(WeightspaceError, KeyError):
    """A task, architecture or preset name is not registered; the message lists valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _suggest(kind: str, name: str, valid: Sequence[str], limit: int = 40) -> str:
    shown = list(valid)[:limit]
    more = f" … and {len(valid) - limit} more" if len(valid) > limit else ""
    return f"unknown {kind} {name!r}; valid: {', '.join(shown)}{more}"


@dataclass(frozen=True)
class ArchConfig:
    """A zoo architecture.

    Args:
        family: ``"mlp"``, ``"cnn1d"`` or ``"cnn2d"``.
        width: hidden units per layer (MLP) or channels per conv (CNN).
        depth: hidden layers (MLP, 1–4) or conv layers (CNN, 1–5).
        activation: one of :data:`ACTIVATION_NAMES`.
        batchnorm: BatchNorm after every conv (CNN only).
        residual: identity skip around every stride-1 conv (CNN only, ``depth ≥ 3``).
        kernel: conv kernel side, one of :data:`KERNEL_SIZES` (CNN only; MLPs keep 3).
    """

    family: str
    width: int
    depth: int
    activation: str
    batchnorm: bool = False
    residual: bool = False
    kernel: int = 3

    def __post_init__(self) -> None:
        problems = []
        if self.family not in FAMILIES:
            problems.append(f"family must be one of {FAMILIES}")
        if self.activation not in ACTIVATION_NAMES:
            problems.append(f"activation must be one of {ACTIVATION_NAMES}")
        most = MAX_DEPTH.get(self.family, 4)
        if not 1 <= self.depth <= most:
            problems.append(f"depth must be 1–{most}")
        if self.kernel not in KERNEL_SIZES:
            problems.append(f"kernel must be one of {KERNEL_SIZES}")
        lo, hi = (8, 128) if self.family == "mlp" else (4, 32)
        if not lo <= self.width <= hi:
            problems.append(f"width must be {lo}–{hi}")
        if self.family == "mlp" and (self.batchnorm or self.residual or self.kernel != 3):
            problems.append("MLPs have neither kernels, BatchNorm nor residual connections")
        if self.residual and self.depth <= NUM_STRIDED_CONVS:
            problems.append(f"residual blocks need depth ≥ {NUM_STRIDED_CONVS + 1}")
        if problems:
            raise WeightspaceError(f"invalid architecture {self!r}: {'; '.join(problems)}")

    @property
    def name(self) -> str:
        """The registry name, e.g. ``cnn2d-c8-d3-bn-res-relu``."""
        if self.family == "mlp":
            return f"mlp-w{self.width}-d{self.depth}-{self.activation}"
        flags = ("-bn" if self.batchnorm else "") + ("-res" if self.residual else "")
        kernel = f"-k{self.kernel}" if self.kernel != 3 else ""
        return f"{self.family}-c{self.width}-d{self.depth}{kernel}{flags}-{self.activation}"

    @property
    def spatial_dims(self) -> int:
        """0 for MLPs, 1 or 2 for CNNs."""
        return {"mlp": 0, "cnn1d": 1, "cnn2d": 2}[self.family]

    def stride(self, layer: int) -> int:
        """Stride of conv ``layer`` (0-based)."""
        return 2 if layer < NUM_STRIDED_CONVS else 1

    def has_skip(self, layer: int) -> bool:
        """Whether conv ``layer`` has an identity skip connection."""
        return self.residual and layer >= NUM_STRIDED_CONVS

    @classmethod
    def parse(cls, name: str) -> ArchConfig:
        """Parse a name of the grammar in the module docstring (raises ``UnknownNameError``)."""
        acts = "|".join(ACTIVATION_NAMES)
        match = re.fullmatch(rf"mlp-w(\d+)-d(\d+)-({acts})", name)
        if match:
            return cls("mlp", int(match[1]), int(match[2]), match[3])
        match = re.fullmatch(
            rf"(cnn1d|cnn2d)-c(\d+)-d(\d+)(?:-k(\d+))?(-bn)?(-res)?-({acts})", name
        )
        if match:
            kernel = int(match[4]) if match[4] else 3
            if match[4] and kernel == 3:  # one name per architecture: kernel 3 has no -k
                raise UnknownNameError(f"unknown architecture {name!r}; {_ARCH_GRAMMAR}")
            return cls(
                match[1],
                int(match[2]),
                int(match[3]),
                match[7],
                bool(match[5]),
                bool(match[6]),
                kernel,
            )
        raise UnknownNameError(f"unknown architecture {name!r}; {_ARCH_GRAMMAR}")


_REGISTRY: dict[str, ArchConfig] = {}
_ARCH_GRAMMAR = (
    "valid names are mlp-w{8..128}-d{1..4}-{act} and "
    "cnn1d|cnn2d-c{4..32}-d{1..5}[-k5|-k7][-bn][-res]-{act} "
    f"(-res needs d >= 3) with act in {', '.join(ACTIVATION_NAMES)}, e.g. mlp-w32-d2-relu, "
    "cnn2d-c8-d2-relu, cnn1d-c16-d3-bn-res-tanh; list_archs() lists the registered ones"
)


def register_arch(config: ArchConfig) -> ArchConfig:
    """Register ``config`` under :attr:`ArchConfig.name` and return it."""
    _REGISTRY[config.name] = config
    return config


def list_archs(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a shell-style ``pattern`` (``"mlp*"``), sorted."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern))


def get_arch(name: str | ArchConfig) -> ArchConfig:
    """The architecture called ``name``: a registered one or any name of the documented grammar.

    Raises:
        UnknownNameError: the name is neither registered nor parseable; lists the valid names.
    """
    if isinstance(name, ArchConfig):
        return name
    if name in _REGISTRY:
        return _REGISTRY[name]
    try:
        return ArchConfig.parse(name)
    except WeightspaceError as exc:
        if isinstance(exc, UnknownNameError):
            raise
        raise UnknownNameError(f"{exc}; {_ARCH_GRAMMAR}") from None


def _register_defaults() -> None:
    for act in ACTIVATION_NAMES:
        for width in (8, 16, 32, 64, 128):
            for depth in (1, 2, 3, 4):
                register_arch(ArchConfig("mlp", width, depth, act))
        for family in ("cnn1d", "cnn2d"):
            for channels in (4, 8, 16, 32):
                for depth in (1, 2, 3, 4):
                    for bn in (False, True):
                        for res in (False, True) if depth > NUM_STRIDED_CONVS else (False,):
                            register_arch(ArchConfig(family, channels, depth, act, bn, res))


_register_defaults()


def make_activation(name: str) -> nn.Module:
    """The ``nn.Module`` of activation ``name``."""
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(LEAKY_RELU_SLOPE)
    if name == "tanh":
        return nn.Tanh()
    if name == "gelu":
        return nn.GELU()
    raise UnknownNameError(_suggest("activation", name, ACTIVATION_NAMES))


def activation_function(name: str) -> Callable[[Tensor], Tensor]:
    """The functional form of activation ``name`` (same math as :func:`make_activation`)."""
    functions: dict[str, Callable[[Tensor], Tensor]] = {
        "relu": torch.relu,
        "leaky_relu": lambda x: nn.functional.leaky_relu(x, LEAKY_RELU_SLOPE),
        "tanh": torch.tanh,
        "gelu": nn.functional.gelu,
    }
    if name not in functions:
        raise UnknownNameError(_suggest("activation", name, ACTIVATION_NAMES))
    return functions[name]


class ConvBlock(nn.Module):
    """``y = act(norm(conv(x)) [+ x])`` — one conv layer of a :class:`ConvNet`.

    Shapes:
        input ``(B, C_in, *spatial)``, output ``(B, C_out, *spatial / stride)``.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int,
        stride: int,
        activation: str,
        batchnorm: bool,
        residual: bool,
        kernel: int = 3,
    ) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        self.conv = conv(
            in_channels,
            out_channels,
            kernel,
            stride=stride,
            padding=kernel // 2,
            bias=not batchnorm,
        )
        self.norm = norm(out_channels, eps=BN_EPS) if batchnorm else nn.Identity()
        self.act = make_activation(activation)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.conv(x))
        if self.residual:
            y = y + x
        return self.act(y)


class ConvNet(nn.Module):
    """A small 1-D or 2-D CNN: conv blocks, global average pooling, linear head.

    Shapes:
        input ``(B, C_in, L)`` or ``(B, C_in, H, W)``, output ``(B, num_classes)``.
    """

    def __init__(self, arch: ArchConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        dims = arch.spatial_dims
        self.blocks = nn.ModuleList(
            ConvBlock(
                dims,
                in_channels if i == 0 else arch.width,
                arch.width,
                arch.stride(i),
                arch.activation,
                arch.batchnorm,
                arch.has_skip(i),
                arch.kernel,
            )
            for i in range(arch.depth)
        )
        self.pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(arch.width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(self.flatten(self.pool(x)))


def build_model(arch: str | ArchConfig, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """A fresh ``nn.Module`` of ``arch`` for inputs of ``input_shape`` (without batch dim).

    MLPs take ``(B, F)`` with ``input_shape = (F,)``; CNNs take ``(B, C, L)`` / ``(B, C, H, W)``.
    Parameters use PyTorch's default initialisation; the zoo trainer re-initialises them.
    """
    arch = get_arch(arch)
    input_shape = tuple(int(s) for s in input_shape)
    expected = 1 + arch.spatial_dims
    if len(input_shape) != expected:
        raise WeightspaceError(
            f"architecture {arch.name} needs inputs of {expected} dims (without batch), "
            f"got shape {input_shape}"
        )
    if arch.family == "mlp":
        layers: list[nn.Module] = []
        features = input_shape[0]
        for _ in range(arch.depth):
            layers += [nn.Linear(features, arch.width), make_activation(arch.activation)]
            features = arch.width
        layers.append(nn.Linear(features, num_classes))
        return nn.Sequential(*layers)
    return ConvNet(arch, input_shape[0], num_classes)


def parametrised_layers(arch: ArchConfig) -> list[tuple[str, str | None]]:
    """``(layer prefix, batchnorm prefix or None)`` of every weight layer, in forward order."""
    if arch.family == "mlp":
        return [(str(2 * i), None) for i in range(arch.depth + 1)]
    layers: list[tuple[str, str | None]] = [
        (f"blocks.{i}.conv", f"blocks.{i}.norm" if arch.batchnorm else None)
        for i in range(arch.depth)
    ]
    return layers + [("head", None)]


def fold_batchnorm(arch: str | ArchConfig, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The raw state dict of ``arch`` with BatchNorm folded into the conv before it.

    With ``s = γ / √(σ² + ε)`` per output channel: ``W' = s·W``, ``b' = β − μ·s (+ s·b)``. The
    result has one ``{layer}.weight``/``{layer}.bias`` pair per weight layer — the keys and math
    of :func:`weightspace.ingest.from_module` — so it pairs with the architecture's spec.
    Works on stacked tensors too (a leading model dimension on every entry).
    """
    arch = get_arch(arch)
    folded: dict[str, Tensor] = {}
    for layer, norm in parametrised_layers(arch):
        weight = state_dict[f"{layer}.weight"]
        bias = state_dict.get(f"{layer}.bias")
        if norm is not None:
            scale = torch.rsqrt(state_dict[f"{norm}.running_var"] + BN_EPS)
            scale = scale * state_dict[f"{norm}.weight"]
            shift = -state_dict[f"{norm}.running_mean"] * scale
            if bias is not None:
                shift = shift + bias * scale
            shift = shift + state_dict[f"{norm}.bias"]
            extra = weight.dim() - scale.dim()
            weight = weight * scale.reshape(*scale.shape, *([1] * extra))
            bias = shift
        folded[f"{layer}.weight"] = weight
        if bias is not None:
            folded[f"{layer}.bias"] = bias
    return folded


def hidden_activation_modules(model: nn.Module, arch: ArchConfig) -> list[nn.Module]:
    """The activation module of every hidden layer, where the trainer applies dropout."""
    if arch.family == "mlp":
        return [model[2 * i + 1] for i in range(arch.depth)]  # type: ignore[index]
    return [block.act for block in model.blocks]  # type: ignore[attr-defined]
