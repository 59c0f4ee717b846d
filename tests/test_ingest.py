"""Ingest: torch.fx tracing with BatchNorm folding, checkpoint files, and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from models import ACTIVATION_MODULES
from weightspace.errors import (
    CheckpointError,
    MissingArchitectureError,
    NonFiniteWeightsError,
    ShapeMismatchError,
    UnsupportedLayerError,
    WeightDtypeError,
    WeightspaceError,
)
from weightspace.graph import to_graph, to_state_dict
from weightspace.ingest import from_module, load_checkpoint, save_checkpoint
from weightspace.module import to_module


class ResidualCNN(nn.Module):
    """A custom forward(): conv stem, a BatchNorm residual block, functional pooling and view."""

    def __init__(self, act: str = "relu", dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.stem = conv(1, 6, 3, padding=1)
        self.conv1 = conv(6, 6, 3, padding=1, bias=False)
        self.bn1 = bn(6)
        self.conv2 = conv(6, 6, 3, padding=1)
        self.act = ACTIVATION_MODULES[act]()
        self.head = nn.Linear(6, 3)
        self.spatial = tuple(range(2, 2 + dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        h = self.act(self.bn1(self.conv1(x)))
        x = self.act(x + self.conv2(h))
        x = x.mean(dim=self.spatial)
        return self.head(x.view(x.size(0), -1))


def randomise_batchnorm(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return module.eval()


def models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    return {
        "mlp-bn": (
            nn.Sequential(
                nn.Linear(10, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)
            ),
            (10,),
        ),
        "cnn1d-pool": (
            nn.Sequential(
                nn.Conv1d(2, 4, 5),
                nn.Tanh(),
                nn.MaxPool1d(2),
                nn.Conv1d(4, 4, 3),
                nn.GELU(),
                nn.AdaptiveAvgPool1d(1),
                nn.Flatten(),
                nn.Linear(4, 2),
            ),
            (2, 20),
        ),
        "cnn2d-flatten": (
            nn.Sequential(
                nn.Conv2d(1, 3, 3),
                nn.BatchNorm2d(3),
                nn.SiLU(),
                nn.AvgPool2d(2),
                nn.Flatten(),
                nn.Linear(3 * 3 * 3, 4),
            ),
            (1, 8, 8),
        ),
        "resnet2d": (ResidualCNN("leaky_relu", 2), (1, 8, 8)),
        "resnet1d": (ResidualCNN("sigmoid", 1), (1, 16)),
    }


@pytest.mark.parametrize("name", list(models()))
def test_traced_spec_computes_the_same_function(name: str, dtype: torch.dtype) -> None:
    module, shape = models()[name]
    module = randomise_batchnorm(module).to(dtype)
    x = torch.randn(7, *shape, dtype=dtype)
    spec, state = from_module(module, x)
    rebuilt = to_module(spec, state)
    with torch.no_grad():
        expected, got = module(x), rebuilt(x)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert ((got - expected).abs().max() / expected.abs().max()) < tol
    assert not any("bn" in key or "running" in key for key in state)  # BatchNorm folded away
    # module -> graph -> module is exact
    back = to_state_dict(to_graph(spec, state))
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert torch.equal(to_module(spec, back)(x), got)


@pytest.mark.parametrize("act", list(ACTIVATION_MODULES))
def test_every_activation_traces(act: str) -> None:
    module = nn.Sequential(nn.Linear(4, 5), ACTIVATION_MODULES[act](), nn.Linear(5, 2)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    spec, state = from_module(module, x)
    assert torch.allclose(to_module(spec, state)(x), module(x), rtol=0, atol=1e-12)
    if act != "identity":
        assert spec.activations == (act,)


def test_functional_activations_and_torch_flatten() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv1d(1, 3, 3), nn.Linear(3 * 4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.leaky_relu(self.a(x), negative_slope=0.3)
            x = F.adaptive_max_pool1d(x, 4)
            return self.b(torch.flatten(x, 1))

    net = Net().double()
    x = torch.randn(2, 1, 10, dtype=torch.float64)
    spec, state = from_module(net, x)
    assert torch.allclose(to_module(spec, state)(x), net(x), atol=1e-12)
    assert to_graph(spec, state).edge_attr.shape[1] == 4  # 4 pooled positions per channel edge


@pytest.mark.parametrize(
    "module, match",
    [
        (nn.Sequential(nn.Linear(3, 3), nn.GroupNorm(1, 3)), r"'1' of type GroupNorm"),
        (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), "groups=2"),
        (nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3), nn.Linear(3, 2)), "BatchNorm '1'"),
    ],
)
def test_unsupported_layers_name_path_and_type(module: nn.Module, match: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=match):
        from_module(module)


def test_weight_sharing_and_scalar_ops_are_refused() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x))

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) * 2

    with pytest.raises(UnsupportedLayerError, match="applied twice"):
        from_module(Shared())
    with pytest.raises(UnsupportedLayerError, match="not supported"):
        from_module(Scaled())


# ----------------------------------------------------------------------------- files


@pytest.fixture
def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))


def test_safetensors_with_spec_metadata_round_trips(tmp_path: Path, mlp: nn.Sequential) -> None:
    spec, state = from_module(mlp)
    path = save_checkpoint(tmp_path / "m.safetensors", spec, state)
    spec2, state2 = load_checkpoint(path)
    assert spec2 == spec
    assert all(torch.equal(state2[k], state[k]) for k in state)
    assert not list(tmp_path.glob("*.tmp"))


def test_architecture_from_activation_spec_and_factory(tmp_path: Path, mlp: nn.Sequential) -> None:
    torch.save(mlp.state_dict(), tmp_path / "m.pt")
    spec_a, _ = load_checkpoint(tmp_path / "m.pt", activation="tanh")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec_a.to_json())
    spec_b, _ = load_checkpoint(tmp_path / "m.pt", spec=spec_file)
    assert spec_a == spec_b
    spec_c, state_c = load_checkpoint(tmp_path / "m.pt", model=mlp)
    x = torch.randn(3, 6)
    assert torch.allclose(to_module(spec_c, state_c)(x), mlp(x))


def test_sequential_cnn_from_activation_infers_global_pooling(tmp_path: Path) -> None:
    cnn = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    cnn = randomise_batchnorm(cnn)
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, tmp_path / "c.safetensors")
    spec, state = load_checkpoint(tmp_path / "c.safetensors", activation="relu")
    x = torch.randn(2, 1, 6, 6)
    assert torch.allclose(to_module(spec, state)(x), cnn(x), atol=1e-5)
    flat = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3))
    torch.save(flat.state_dict(), tmp_path / "flat.pt")
    with pytest.raises(MissingArchitectureError, match="spatial layout"):
        load_checkpoint(tmp_path / "flat.pt", activation="relu")


def test_bad_files(tmp_path: Path, mlp: nn.Sequential) -> None:
    spec, state = from_module(mlp)
    good = save_checkpoint(tmp_path / "good.safetensors", spec, state)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.safetensors: the file is empty"):
        load_checkpoint(tmp_path / "empty.safetensors")
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.safetensors: not a valid safetensors"):
        load_checkpoint(tmp_path / "trunc.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_checkpoint(tmp_path / "garbage.safetensors")
    torch.save(mlp, tmp_path / "pickled.pt")  # a whole module: unpickling would import code
    with pytest.raises(CheckpointError, match="pickled.pt: refused: the file is a pickle"):
        load_checkpoint(tmp_path / "pickled.pt")
    torch.save(mlp.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(MissingArchitectureError, match="plain.pt.*--activation.*--spec.*--model"):
        load_checkpoint(tmp_path / "plain.pt")
    bad = {k: v.clone() for k, v in state.items()}
    bad["0.weight"][0, 0] = float("inf")
    save_checkpoint(tmp_path / "inf.safetensors", spec, bad)
    with pytest.raises(NonFiniteWeightsError, match="inf.safetensors.*'0.weight'.*allow"):
        load_checkpoint(tmp_path / "inf.safetensors")
    assert load_checkpoint(tmp_path / "inf.safetensors", allow_nonfinite=True)[1]["0.weight"][
        0, 0
    ] == float("inf")
    other = json.loads(spec.to_json())
    other["ops"][1]["attrs"]["out_features"] = 7
    other["ops"][3]["attrs"]["in_features"] = 7
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(
        ShapeMismatchError, match=r"good.safetensors: tensor '0.weight' has shape \[5, 6\]"
    ):
        load_checkpoint(good, spec=tmp_path / "other.json")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.complex64])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_non_float_weights_are_refused_naming_file_tensor_and_dtype(
    tmp_path: Path, mlp: nn.Sequential, dtype: torch.dtype, suffix: str
) -> None:
    spec, state = from_module(mlp)
    bad = {k: (v * 10).to(dtype) if k == "2.weight" else v for k, v in state.items()}
    path = tmp_path / f"ints{suffix}"
    if suffix == ".safetensors":
        save_file(bad, path, {"weightspace_spec": spec.to_json()})
        kwargs: dict = {}
    else:
        torch.save(bad, path)
        kwargs = {"spec": spec}
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(
        WeightDtypeError, match=rf"ints{suffix}: tensor '2.weight' has dtype {name}"
    ):
        load_checkpoint(path, **kwargs)
    with pytest.raises(WeightDtypeError):  # the flag is about NaN, not about integers
        load_checkpoint(path, allow_nonfinite=True, **kwargs)
    with pytest.raises(WeightDtypeError, match="model: tensor '2.weight'"):
        to_graph(spec, bad)


def test_finite_for_refuses_nan_even_when_allowed(tmp_path: Path, mlp: nn.Sequential) -> None:
    spec, state = from_module(mlp)
    state["0.weight"][0, 0] = float("nan")
    path = save_checkpoint(tmp_path / "nan.safetensors", spec, state)
    assert load_checkpoint(path, allow_nonfinite=True)[0] == spec
    with pytest.raises(NonFiniteWeightsError, match="nan.safetensors.*embedding needs finite"):
        load_checkpoint(path, allow_nonfinite=True, finite_for="embedding")


FACTORIES = """
from torch import nn

def good():
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))

def broken():
    raise ValueError("no weights for\\nyou")

def not_a_module():
    return 42
"""


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlp: nn.Sequential):
    """A module of model factories in a fresh working directory that is not on sys.path."""
    import sys

    name = f"wsfactories_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(FACTORIES)
    (tmp_path / "bad_import.py").write_text("raise RuntimeError('import-time failure')\n")
    torch.save(mlp.state_dict(), tmp_path / "m.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield name
    sys.modules.pop(name, None)
    sys.modules.pop("bad_import", None)


def test_model_factory_from_the_working_directory(tmp_path: Path, factory_module: str) -> None:
    import sys

    path_before = list(sys.path)
    spec, _ = load_checkpoint(tmp_path / "m.pt", model=f"{factory_module}:good")
    assert spec.num_parameters == 47
    assert sys.path == path_before  # the working directory was on the path for that import only


@pytest.mark.parametrize(
    "target, message",
    [
        ("{m}:broken", r"model factory '{m}:broken' raised ValueError: no weights for you$"),
        ("{m}:not_a_module", "returned a int, not an nn.Module"),
        ("{m}:missing", "cannot be imported"),
        ("bad_import:f", "cannot be imported .RuntimeError: import-time failure"),
        ("no_colon", "must look like"),
    ],
)
def test_model_factory_failures_are_one_line(
    tmp_path: Path, factory_module: str, target: str, message: str
) -> None:
    target = target.format(m=factory_module)
    with pytest.raises(WeightspaceError, match=message.format(m=factory_module)) as info:
        load_checkpoint(tmp_path / "m.pt", model=target)
    assert "\n" not in str(info.value)
