"""LoRA adapters: peft layout, ΔW = (alpha/r) B A, the GL(r) symmetry, applying to a base."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from models import small_encoder_config
from weightspace.errors import CheckpointError, WeightspaceError
from weightspace.ingest import from_module
from weightspace.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoraAdapter,
    LoraError,
    LoraFactors,
    adapter_models,
    apply_adapter,
    canonical_factors,
    canonicalize_adapter,
    load_adapter,
    random_gl,
    save_adapter,
)
from weightspace.module import to_module
from weightspace.nn import Encoder

torch.set_num_threads(1)

SMALL = small_encoder_config()
BASE = "tiny-mlp"


class Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.fc2 = nn.Linear(10, 10)
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _base() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    model = Base().double().eval()
    return model, from_module(model, torch.zeros(1, 6, dtype=torch.float64))


def _write_adapter(
    directory: Path, *, r: int = 4, alpha: float = 8.0, seed: int = 0, **config_extra
) -> Path:
    """An adapter in peft's on-disk layout, written by hand (keys as peft saves them)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (n_in, n_out) in {"fc1": (6, 10), "fc2": (10, 10)}.items():
        a = torch.randn(r, n_in, generator=gen, dtype=torch.float64)
        b = torch.randn(n_out, r, generator=gen, dtype=torch.float64)
        tensors[f"base_model.model.{name}.lora_A.weight"] = a
        tensors[f"base_model.model.{name}.lora_B.weight"] = b
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / ADAPTER_WEIGHTS))
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": ["fc1", "fc2"],
        "base_model_name_or_path": BASE,
        **config_extra,
    }
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config))
    return directory


class LoraReference(nn.Module):
    """LoRA's forward as the paper writes it: ``W x + b + s B (A x)`` for adapted layers."""

    def __init__(self, base: Base, adapter: LoraAdapter) -> None:
        super().__init__()
        self.base, self.adapter = base, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def layer(name: str, h: torch.Tensor) -> torch.Tensor:
            out = getattr(self.base, name)(h)
            if name in self.adapter.modules:
                f = self.adapter.modules[name]
                out = out + f.scaling * (h @ f.A.T) @ f.B.T
            return out

        h = torch.relu(layer("fc1", x))
        return layer("head", torch.relu(layer("fc2", h)))


def test_load_reads_peft_layout_and_scaling(tmp_path: Path) -> None:
    adapter = load_adapter(_write_adapter(tmp_path / "a", r=4, alpha=8.0))
    assert sorted(adapter.modules) == ["fc1", "fc2"] and adapter.base_model == BASE
    assert adapter.modules["fc1"].A.shape == (4, 6) and adapter.modules["fc1"].B.shape == (10, 4)
    assert adapter.modules["fc1"].scaling == pytest.approx(8.0 / 4)
    rs = load_adapter(_write_adapter(tmp_path / "rs", r=4, alpha=8.0, use_rslora=True))
    assert rs.modules["fc2"].scaling == pytest.approx(8.0 / math.sqrt(4))
    pattern = load_adapter(_write_adapter(tmp_path / "p", alpha_pattern={"fc2": 2.0}))
    assert pattern.modules["fc2"].scaling == pytest.approx(2.0 / 4)
    assert pattern.modules["fc1"].scaling == pytest.approx(8.0 / 4)
    # the safetensors file itself, config beside it; and a save/load round trip
    again = load_adapter(tmp_path / "a" / ADAPTER_WEIGHTS)
    saved = load_adapter(save_adapter(again, tmp_path / "copy"))
    for name in adapter.modules:
        assert torch.equal(saved.modules[name].A, adapter.modules[name].A)
        assert torch.equal(saved.modules[name].B, adapter.modules[name].B)
        assert saved.modules[name].scaling == adapter.modules[name].scaling


def test_applied_adapter_computes_lora_forward(tmp_path: Path) -> None:
    model, (spec, state) = _base()
    adapter = load_adapter(_write_adapter(tmp_path / "a"))
    merged = apply_adapter(spec, state, adapter, base_name=BASE)
    assert torch.equal(merged["head.weight"], state["head.weight"])
    assert not torch.equal(merged["fc1.weight"], state["fc1.weight"])
    x = torch.randn(32, 6, dtype=torch.float64)
    expected = LoraReference(model, adapter)(x)
    assert torch.allclose(to_module(spec, merged)(x), expected, rtol=1e-10, atol=1e-10)


def test_gl_transform_keeps_delta_and_canonical_form(tmp_path: Path) -> None:
    adapter = load_adapter(_write_adapter(tmp_path / "a"))
    canonical = canonicalize_adapter(adapter)
    deltas = adapter.delta_state_dict()
    for name, f in canonical.modules.items():  # the canonical factors still give ΔW
        assert torch.allclose(f.delta(), deltas[f"{name}.weight"], rtol=1e-10, atol=1e-10)
        assert torch.allclose(f.A @ f.A.T, torch.eye(f.rank, dtype=f.A.dtype), atol=1e-10)
    for seed in range(3):
        moved, mats = random_gl(adapter, torch.Generator().manual_seed(seed))
        assert not torch.allclose(moved.modules["fc1"].A, adapter.modules["fc1"].A)
        for key, delta in moved.delta_state_dict().items():
            assert torch.allclose(delta, deltas[key], rtol=1e-10, atol=1e-10)
        other = canonicalize_adapter(moved)
        for name, f in other.modules.items():
            assert torch.allclose(f.A, canonical.modules[name].A, rtol=1e-8, atol=1e-8)
            assert torch.allclose(f.B, canonical.modules[name].B, rtol=1e-8, atol=1e-8)


def test_canonical_factors_of_a_rank_deficient_update() -> None:
    """r larger than min(in, out): the extra components are zero and ΔW is kept."""
    gen = torch.Generator().manual_seed(0)
    f = LoraFactors(torch.randn(5, 3, generator=gen), torch.randn(2, 5, generator=gen), 0.5)
    star = canonical_factors(f)
    assert star.A.shape == (5, 3) and star.B.shape == (2, 5) and star.A.dtype == torch.float32
    assert torch.allclose(star.delta(), f.delta(), atol=1e-5)
    assert torch.count_nonzero(star.B[:, 2:]) == 0


def test_adapter_embedding_is_gl_invariant(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = Encoder(SMALL).double().eval()
    adapter = load_adapter(_write_adapter(tmp_path / "a", seed=1))

    def embed(a: LoraAdapter, canonical: bool = True) -> np.ndarray:
        models = adapter_models(a, canonical=canonical)
        return encoder.embed([models[name] for name in sorted(models)])

    z = embed(adapter)
    moved, _ = random_gl(adapter, torch.Generator().manual_seed(3))
    assert np.allclose(embed(moved), z, rtol=1e-6, atol=1e-8)
    # Negative controls: raw factors are not GL(r)-invariant; another adapter embeds elsewhere.
    raw, raw_moved = embed(adapter, canonical=False), embed(moved, canonical=False)
    assert np.abs(raw - raw_moved).max() > 1e-4 * np.abs(raw).max()
    other = load_adapter(_write_adapter(tmp_path / "b", seed=2))
    assert np.abs(embed(other) - z).max() > 1e-4 * np.abs(z).max()


def test_base_mismatches_are_refused(tmp_path: Path) -> None:
    _, (spec, state) = _base()
    adapter = load_adapter(_write_adapter(tmp_path / "a"))
    with pytest.raises(LoraError, match=rf"{BASE!r}.*'other-model'"):
        apply_adapter(spec, state, adapter, base_name="other-model")
    small = from_module(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)))
    with pytest.raises(LoraError, match="'fc1' is not a linear layer"):
        apply_adapter(*small, adapter)
    wide = Base()
    wide.fc1, wide.fc2 = nn.Linear(6, 12), nn.Linear(12, 10)
    with pytest.raises(LoraError, match=r"'fc1'.*\[10, 6\].*\[12, 6\]"):
        apply_adapter(*from_module(wide), adapter)


def _corrupt(directory: Path, how: str) -> None:
    weights = directory / ADAPTER_WEIGHTS
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    from safetensors.torch import load_file

    tensors = load_file(str(weights))
    if how == "missing_b":
        del tensors["base_model.model.fc2.lora_B.weight"]
    elif how == "rank":
        tensors["base_model.model.fc2.lora_B.weight"] = torch.zeros(10, 3, dtype=torch.float64)
    elif how == "nan":
        tensors["base_model.model.fc1.lora_A.weight"][0, 0] = float("nan")
    elif how == "key":
        tensors["base_model.model.fc1.something.weight"] = torch.zeros(2)
    elif how == "conv":
        tensors["base_model.model.fc1.lora_A.weight"] = torch.zeros(4, 6, 1, 1)
    elif how == "int":
        tensors["base_model.model.fc1.lora_A.weight"] = torch.zeros(4, 6, dtype=torch.int64)
    elif how == "target":
        config["target_modules"] = ["fc1"]
    elif how == "r":
        config["r"] = 0
    elif how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
        return
    elif how == "no_config":
        (directory / ADAPTER_CONFIG).unlink()
        return
    save_file(tensors, str(weights))
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config))


@pytest.mark.parametrize(
    "how, message",
    [
        ("missing_b", "no lora_B"),
        ("rank", "rank"),
        ("nan", "NaN"),
        ("key", "something"),
        ("conv", "convolution"),
        ("int", "dtype"),
        ("target", "target_modules"),
        ("r", "'r' must be"),
        ("truncated", "safetensors"),
        ("no_config", "missing"),
    ],
)
def test_malformed_adapters_get_one_line_naming_the_file(
    tmp_path: Path, how: str, message: str
) -> None:
    directory = _write_adapter(tmp_path / how)
    _corrupt(directory, how)
    with pytest.raises(WeightspaceError, match=message) as info:
        load_adapter(directory)
    text = str(info.value)
    assert "\n" not in text and str(directory) in text
    assert isinstance(info.value, LoraError | CheckpointError)


def test_pickled_adapters_are_refused(tmp_path: Path) -> None:
    directory = _write_adapter(tmp_path / "bin")
    (directory / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(LoraError, match="only safetensors"):
        load_adapter(directory / "adapter_model.bin")
