"""Small test networks as specs, built by hand: MLPs, 1-D and 2-D CNNs, with and without residuals.

Every builder takes an activation name (one of :data:`weightspace.spec.ACTIVATIONS`) and returns
a :class:`NetworkSpec`; :func:`make_state_dict` draws its weights from a seed, and
:func:`make_inputs` a batch of inputs, so tests never touch the global RNG. The real
``nn.Module`` builders at the end (:func:`torch_mlp`, :func:`torch_residual_cnn`) seed their
initialisation inside ``torch.random.fork_rng``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.spec import ACTIVATIONS, NetworkSpec, Op, mlp_spec

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_MODULES",
    "ARCHITECTURES",
    "build",
    "make_state_dict",
    "make_inputs",
    "make_model",
    "small_encoder_config",
    "tiny_encoder",
    "torch_mlp",
    "torch_residual_cnn",
    "torch_inputs",
]


def _act(name: str, src: str, function: str) -> Op:
    attrs: dict = {"function": function}
    if function == "leaky_relu":
        attrs["negative_slope"] = 0.2
    if function == "gelu":
        attrs["approximate"] = "tanh"
    return Op(name, "activation", (src,), attrs)


def _linear(name: str, src: str, n_in: int, n_out: int, bias: bool = True) -> Op:
    return Op(name, "linear", (src,), {"in_features": n_in, "out_features": n_out, "bias": bias})


def _conv(
    name: str,
    src: str,
    dims: int,
    c_in: int,
    c_out: int,
    kernel: int | tuple[int, ...],
    *,
    padding: int = 0,
    stride: int = 1,
    bias: bool = True,
) -> Op:
    kernel = (kernel,) * dims if isinstance(kernel, int) else kernel
    return Op(
        name,
        f"conv{dims}d",
        (src,),
        {
            "in_channels": c_in,
            "out_channels": c_out,
            "kernel_size": kernel,
            "stride": (stride,) * dims,
            "padding": (padding,) * dims,
            "dilation": (1,) * dims,
            "bias": bias,
        },
    )


def mlp(act: str) -> NetworkSpec:
    """5 → 7 → 6 → 3."""
    return mlp_spec([5, 7, 6, 3], act)


def mlp_residual(act: str) -> NetworkSpec:
    """Two post-activation residual blocks tying three hidden groups; one bias-free layer."""
    return NetworkSpec(
        (
            Op("x", "input", (), {"shape": (5,)}),
            _linear("fc0", "x", 5, 6),
            _act("a0", "fc0", act),
            _linear("fc1", "a0", 6, 6),
            Op("add0", "add", ("a0", "fc1")),
            _act("a1", "add0", act),
            _linear("fc2", "a1", 6, 6, bias=False),
            Op("add1", "add", ("a1", "fc2")),
            _act("a2", "add1", act),
            _linear("fc3", "a2", 6, 4),
            _act("a3", "fc3", act),
            _linear("out", "a3", 4, 3),
        )
    )


def mlp_skips(act: str) -> NetworkSpec:
    """A skip from the input and a sum of two output layers: those ties are not permutable."""
    return NetworkSpec(
        (
            Op("x", "input", (), {"shape": (4,)}),
            _linear("fc0", "x", 4, 4),
            _act("a0", "fc0", act),
            Op("skip", "add", ("x", "a0")),
            _linear("fc1", "skip", 4, 5),
            _act("a1", "fc1", act),
            _linear("head0", "a1", 5, 3),
            _linear("head1", "a1", 5, 3),
            Op("out", "add", ("head0", "head1")),
        )
    )


def cnn1d(act: str) -> NetworkSpec:
    """(2, 12) → conv k3 p1 → conv k3 → avg pool 2 → flatten (5 channels × 5) → linear."""
    return NetworkSpec(
        (
            Op("x", "input", (), {"shape": (2, 12)}),
            _conv("c0", "x", 1, 2, 4, 3, padding=1),
            _act("a0", "c0", act),
            _conv("c1", "a0", 1, 4, 5, 3),
            _act("a1", "c1", act),
            Op("p", "pool", ("a1",), {"mode": "avg", "dims": 1, "kernel_size": 2, "stride": 2}),
            Op("f", "flatten", ("p",)),
            _linear("fc", "f", 25, 3),
        )
    )


def cnn1d_residual(act: str) -> NetworkSpec:
    """A residual conv block, max pool, a bias-free 1×1 conv, global average pool, linear."""
    return NetworkSpec(
        (
            Op("x", "input", (), {"shape": (3, 10)}),
            _conv("c0", "x", 1, 3, 4, 3, padding=1),
            _act("a0", "c0", act),
            _conv("c1", "a0", 1, 4, 4, 3, padding=1),
            _act("a1", "c1", act),
            Op("add", "add", ("a0", "a1")),
            Op("p", "pool", ("add",), {"mode": "max", "dims": 1, "kernel_size": 2, "stride": 2}),
            _conv("c2", "p", 1, 4, 5, 1, bias=False),
            _act("a2", "c2", act),
            Op("g", "global_pool", ("a2",), {"mode": "avg"}),
            _linear("fc", "g", 5, 3),
        )
    )


def cnn2d(act: str) -> NetworkSpec:
    """(2, 6, 6) → conv 3×3 p1 → max pool 2 → conv 2×2 stride 1 → flatten (4 × 2 × 2) → linear."""
    return NetworkSpec(
        (
            Op("x", "input", (), {"shape": (2, 6, 6)}),
            _conv("c0", "x", 2, 2, 3, 3, padding=1),
            _act("a0", "c0", act),
            Op("p", "pool", ("a0",), {"mode": "max", "dims": 2, "kernel_size": 2, "stride": 2}),
            _conv("c1", "p", 2, 3, 4, (2, 2)),
            _act("a1", "c1", act),
            Op("f", "flatten", ("a1",)),
            _linear("fc", "f", 16, 3),
        )
    )


def cnn2d_residual(act: str) -> NetworkSpec:
    """A residual 2-D conv block, adaptive average pool to 2×2, flatten, a hidden linear layer."""
    return NetworkSpec(
        (
            Op("x", "input", (), {"shape": (3, 5, 5)}),
            _conv("c0", "x", 2, 3, 4, 3, padding=1),
            _act("a0", "c0", act),
            _conv("c1", "a0", 2, 4, 4, 3, padding=1),
            _act("a1", "c1", act),
            Op("add", "add", ("a0", "a1")),
            Op("ap", "adaptive_pool", ("add",), {"mode": "avg", "dims": 2, "output_size": (2, 2)}),
            Op("f", "flatten", ("ap",)),
            _linear("fc0", "f", 16, 5),
            _act("a2", "fc0", act),
            _linear("fc1", "a2", 5, 2),
        )
    )


ARCHITECTURES: dict[str, Callable[[str], NetworkSpec]] = {
    "mlp": mlp,
    "mlp_residual": mlp_residual,
    "mlp_skips": mlp_skips,
    "cnn1d": cnn1d,
    "cnn1d_residual": cnn1d_residual,
    "cnn2d": cnn2d,
    "cnn2d_residual": cnn2d_residual,
}


def build(arch: str, act: str) -> NetworkSpec:
    return ARCHITECTURES[arch](act)


def make_state_dict(
    spec: NetworkSpec, seed: int = 1, dtype: torch.dtype = torch.float64
) -> dict[str, Tensor]:
    """Weights ~ N(0, 1/fan_in) (well-scaled activations), biases ~ N(0, 0.25)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in spec.param_shapes().items():
        t = torch.randn(shape, generator=generator, dtype=torch.float64)
        if key.endswith(".weight"):
            t = t / math.sqrt(math.prod(shape[1:]))
        else:
            t = 0.5 * t
        state[key] = t.to(dtype)
    return state


def make_inputs(
    spec: NetworkSpec, n: int = 8, seed: int = 1000, dtype: torch.dtype = torch.float64
) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, *spec.input_shape), generator=generator, dtype=torch.float64).to(dtype)


def make_model(
    arch: str, act: str, seed: int = 1, dtype: torch.dtype = torch.float64
) -> tuple[NetworkSpec, dict[str, Tensor]]:
    spec = build(arch, act)
    return spec, make_state_dict(spec, seed, dtype)


# ---------------------------------------------------------------------------------------------
# real nn.Modules (traced by weightspace.ingest.from_module), BatchNorm with non-trivial statistics
# ---------------------------------------------------------------------------------------------
ACTIVATION_MODULES: dict[str, Callable[[], nn.Module]] = {
    "identity": nn.Identity,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}


def _randomise_batchnorm(module: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(0.3 * torch.randn(n, generator=generator))
            bn.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            bn.weight.data.copy_(1 + 0.3 * torch.randn(n, generator=generator))
            bn.bias.data.copy_(0.3 * torch.randn(n, generator=generator))
    return module


def torch_mlp(act: str, seed: int = 1) -> nn.Module:
    """``nn.Sequential`` MLP 6 → 8 (BatchNorm) → 7 → 3, in eval mode."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = nn.Sequential(
            nn.Linear(6, 8),
            nn.BatchNorm1d(8),
            ACTIVATION_MODULES[act](),
            nn.Linear(8, 7),
            ACTIVATION_MODULES[act](),
            nn.Dropout(0.1),
            nn.Linear(7, 3),
        )
    return _randomise_batchnorm(module, seed).eval()


class TorchResidualCNN(nn.Module):
    """Conv-BN-act stem, one residual block with BatchNorm, max pool, flatten, linear head."""

    def __init__(self, act: str, dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        pool = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
        self.stem = conv(3, 4, 3, padding=1, bias=False)
        self.stem_norm = norm(4)
        self.conv = conv(4, 4, 3, padding=1)
        self.norm = norm(4)
        self.act = ACTIVATION_MODULES[act]()
        self.pool = pool(2)
        self.head = nn.Linear(4 * (3 if dims == 1 else 9), 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.stem_norm(self.stem(x)))
        h = self.act(h + self.norm(self.conv(h)))
        return self.head(torch.flatten(self.pool(h), 1))


def torch_residual_cnn(act: str, dims: int = 2, seed: int = 1) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = TorchResidualCNN(act, dims)
    return _randomise_batchnorm(module, seed).eval()


def torch_inputs(module: nn.Module, n: int = 8, seed: int = 1000) -> Tensor:
    """Inputs for :func:`torch_mlp` (6 features) or :func:`torch_residual_cnn` (3 × 6[ × 6])."""
    generator = torch.Generator().manual_seed(seed)
    if isinstance(module, TorchResidualCNN):
        shape = (3, 6) if isinstance(module.stem, nn.Conv1d) else (3, 6, 6)
    else:
        shape = (6,)
    return torch.randn((n, *shape), generator=generator)


def tiny_train_config() -> Any:
    """The small :class:`~weightspace.nn.EncoderConfig` training tests use (fast, still learns)."""
    from weightspace.nn.encoder import EncoderConfig

    return EncoderConfig(
        hidden=32, edge_hidden=16, num_layers=2, embedding_dim=32, projection_dim=32, head_hidden=32
    )


def small_encoder_config() -> Any:
    """The two-layer :class:`~weightspace.nn.EncoderConfig` the symmetry tests build encoders
    from (untrained; small enough to run in float64)."""
    from weightspace.nn.encoder import EncoderConfig

    return EncoderConfig(
        hidden=16, edge_hidden=8, num_layers=2, embedding_dim=12, projection_dim=8, head_hidden=8
    )


def tiny_encoder() -> Any:
    """A small untrained :class:`~weightspace.nn.Encoder` (seed 0, eval mode) for fast tests."""
    from weightspace.nn.encoder import Encoder, EncoderConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        config = EncoderConfig(
            hidden=16,
            edge_hidden=8,
            num_layers=1,
            pool_heads=2,
            embedding_dim=8,
            head_hidden=8,
            projection_dim=8,
        )
        return Encoder(config).eval()
