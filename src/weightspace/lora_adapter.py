"""A LoRA adapter (:class:`LoraAdapter`, its modules' :class:`LoraFactors`) and its files in the
``peft`` layout: :func:`load_adapter` reads and checks them, :func:`save_adapter` writes them. The
layout and the adapter's ``GL(r)`` symmetry are described in :mod:`weightspace.lora`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from weightspace.atomic import atomic_write
from weightspace.checkpoint_files import read_tensors
from weightspace.errors import WeightspaceError
from weightspace.graph import WEIGHT_DTYPES

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "LoraAdapter",
    "LoraError",
    "LoraFactors",
    "load_adapter",
    "save_adapter",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


class LoraError(WeightspaceError):
    """An adapter file is malformed, unsupported, or does not fit the given base model."""


@dataclass(frozen=True)
class LoraFactors:
    """One adapted module: ``A (r, in)``, ``B (out, r)`` and the scale ``s``."""

    A: Tensor
    B: Tensor
    scaling: float = 1.0

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def delta(self) -> Tensor:
        r""":math:`\Delta W = s\,B A`, ``(out, in)``."""
        return self.scaling * (self.B @ self.A)


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter: factors per module (named as in the base model's state dict).

    Attributes:
        modules: module path (``"layers.0.fc1"``) → its factors.
        r, alpha: the config's default rank and ``lora_alpha``.
        target_modules: the config's ``target_modules`` (names, or one regular expression).
        base_model: ``base_model_name_or_path`` (``None`` if not recorded).
        fan_in_fan_out: the base layers store ``W`` transposed (GPT-2's ``Conv1D``).
        source: where it was read from, named in errors.
    """

    modules: Mapping[str, LoraFactors]
    r: int
    alpha: float
    target_modules: tuple[str, ...] | str | None = None
    base_model: str | None = None
    fan_in_fan_out: bool = False
    source: str = "adapter"
    config: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def delta_state_dict(self) -> dict[str, Tensor]:
        r"""``{f"{m}.weight": ΔW_m}``: what the adapter adds to its base's state dict."""
        out = {}
        for name, factors in self.modules.items():
            delta = factors.delta()
            out[f"{name}.weight"] = delta.T if self.fan_in_fan_out else delta
        return out


# ------------------------------------------------------------------------------ reading, writing
def _files(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        return path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    return path.parent / ADAPTER_CONFIG, path


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """peft's ``rank_pattern`` / ``alpha_pattern``: the first key matching the module path's end."""
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def _targets(target_modules: Any, module: str) -> bool:
    if target_modules is None or target_modules == "all-linear":
        return True
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, module) is not None
    return any(module == t or module.endswith(f".{t}") for t in target_modules)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LoraError(f"{path}: missing; a LoRA adapter needs its {ADAPTER_CONFIG} (peft layout)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(config, dict):
        raise LoraError(f"{path}: the adapter config must be a JSON object")
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise LoraError(f"{path}: peft_type {peft_type!r} is not a LoRA adapter")
    r, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise LoraError(f"{path}: 'r' must be a positive integer, got {r!r}")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise LoraError(f"{path}: 'lora_alpha' must be a finite number, got {alpha!r}")
    targets = config.get("target_modules")
    if targets is not None and not (
        isinstance(targets, str)
        or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
    ):
        raise LoraError(f"{path}: 'target_modules' must be a list of names or a string")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            raise LoraError(f"{path}: {key!r} must be an object")
    return config


def load_adapter(path: str | Path) -> LoraAdapter:
    """Read a peft LoRA adapter: a directory, or its ``.safetensors`` file (config beside it).

    Only safetensors weights are read (never a pickle: ``adapter_model.bin`` is refused).

    Raises:
        LoraError: one line naming the file and the problem (missing config, bad key, shapes
            that disagree, a module outside ``target_modules``, non-finite or non-float values).
        CheckpointError, ResourceLimitError: the safetensors file is unreadable or too large.
    """
    config_path, weights_path = _files(Path(path))
    if weights_path.suffix != ".safetensors":
        raise LoraError(
            f"{weights_path}: only safetensors adapters are read (a .bin is a pickle); re-save "
            "it with peft's save_pretrained(..., safe_serialization=True)"
        )
    if not weights_path.is_file() and Path(path).is_dir():
        raise LoraError(f"{weights_path}: missing; expected the adapter weights in peft layout")
    config = _read_config(config_path)
    tensors, _ = read_tensors(weights_path)
    where = str(weights_path)
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        match = _KEY.match(key)
        if match is None:
            what = "embedding LoRA" if "lora_embedding" in key else None
            what = what or ("DoRA" if "lora_magnitude" in key else None)
            detail = (
                f"{what} is not supported"
                if what
                else f"expected '{_PREFIX}<module>.lora_A.weight'"
            )
            raise LoraError(f"{where}: tensor {key!r}: {detail}")
        pairs.setdefault(match["module"], {})[match["which"]] = value
    if not pairs:
        raise LoraError(f"{where}: holds no lora_A/lora_B tensors")
    r, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    targets = config.get("target_modules")
    modules: dict[str, LoraFactors] = {}
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise LoraError(f"{where}: module {module!r} has no {missing}.weight")
        a, b = pair["A"], pair["B"]
        for name, t in (("lora_A", a), ("lora_B", b)):
            if t.dtype not in WEIGHT_DTYPES:
                raise LoraError(f"{where}: {module}.{name} has dtype {t.dtype}; expected floats")
            if t.dim() != 2:
                raise LoraError(
                    f"{where}: {module}.{name} has shape {list(t.shape)}; only linear LoRA "
                    "(2-D factors) is supported, not convolution LoRA"
                )
            if not bool(torch.isfinite(t).all()):
                raise LoraError(f"{where}: {module}.{name} holds NaN or Inf values")
        rank = int(_pattern_value(config.get("rank_pattern") or {}, module, r))
        if a.shape[0] != rank or b.shape[1] != rank:
            raise LoraError(
                f"{where}: module {module!r}: lora_A {list(a.shape)} and lora_B "
                f"{list(b.shape)} do not share the rank r={rank} of {config_path.name}"
            )
        if not _targets(targets, module):
            raise LoraError(f"{where}: module {module!r} is not among target_modules {targets!r}")
        a_m = float(_pattern_value(config.get("alpha_pattern") or {}, module, alpha))
        scaling = a_m / math.sqrt(rank) if config.get("use_rslora") else a_m / rank
        modules[module] = LoraFactors(a, b, scaling)
    return LoraAdapter(
        modules=modules,
        r=r,
        alpha=alpha,
        target_modules=tuple(targets) if isinstance(targets, list) else targets,
        base_model=config.get("base_model_name_or_path"),
        fan_in_fan_out=bool(config.get("fan_in_fan_out", False)),
        source=where,
        config=config,
    )


def save_adapter(adapter: LoraAdapter, directory: str | Path) -> Path:
    """Write ``adapter`` in peft layout (config and safetensors, each written atomically)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        **dict(adapter.config),
        "peft_type": "LORA",
        "r": adapter.r,
        "lora_alpha": adapter.alpha,
        "target_modules": list(adapter.target_modules)
        if isinstance(adapter.target_modules, tuple)
        else adapter.target_modules,
        "base_model_name_or_path": adapter.base_model,
        "fan_in_fan_out": adapter.fan_in_fan_out,
    }
    tensors = {}
    for name, f in adapter.modules.items():
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = f.A.detach().contiguous().cpu()
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = f.B.detach().contiguous().cpu()
    atomic_write(directory / ADAPTER_WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write(
        directory / ADAPTER_CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2))
    )
    return directory
