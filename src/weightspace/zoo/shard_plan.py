"""The plan of a generated zoo: its configuration (what the manifest records), its shards — up
to ``runs_per_shard`` runs of one (task, architecture) pair — and the counts a preset would
produce."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from weightspace.zoo.architectures import (
    get_arch,
)
from weightspace.zoo.presets import Preset
from weightspace.zoo.store import (
    ZooError,
)
from weightspace.zoo.sweep import RunSpec
from weightspace.zoo.tasks import task_families
from weightspace.zoo.trainer import STREAMS_VERSION

__all__ = ["FITTED_PRESETS", "ShardPlan", "describe_preset", "plan_shards", "zoo_config"]


@dataclass(frozen=True)
class ShardPlan:
    """Runs trained together and stored in one shard."""

    name: str
    task: str
    arch: str
    runs: tuple[RunSpec, ...]


#: presets written by a generator of their own: name → ``"module:function"``, called as
#: ``function(out, preset, seed=..., device=...)`` and returning the opened zoo.
FITTED_PRESETS: dict[str, str] = {
    "vit-digits": "weightspace.zoo.vit_digits:generate_vit_digits_zoo",
    "lora": "weightspace.zoo.lora_zoo:generate_lora_zoo",
}


def zoo_config(preset: Preset, seed: int) -> dict[str, Any]:
    """The JSON-able configuration that determines a zoo's contents (stored in the manifest).

    ``streams_version`` is the version of the runs' random streams
    (:data:`~weightspace.zoo.streams.STREAMS_VERSION`): the same config under other streams gives
    other weights, so a zoo is only resumed by the streams that began it.
    """
    return {
        "streams_version": STREAMS_VERSION,
        "preset": preset.name,
        "seed": seed,
        "tasks": list(preset.tasks),
        "archs": list(preset.archs),
        "runs": preset.runs,
        "runs_per_shard": preset.runs_per_shard,
        "settings": json.loads(json.dumps(preset.settings.to_dict())),
        "search_space": json.loads(json.dumps(preset.search_space.to_dict())),
    }


def plan_shards(preset: Preset, seed: int) -> list[ShardPlan]:
    """Every shard of ``preset``: compatible (task, arch) pairs × runs, chunked.

    Raises:
        UnknownNameError: a task or architecture name is unknown (lists the valid ones).
        ZooError: no architecture fits any of the tasks, or ``preset`` is an INR preset (one
            vectorised fit, :mod:`weightspace.zoo.inr_fit`, no shards).
    """
    if preset.inr is not None:
        raise ZooError(f"preset {preset.name!r} fits INRs in one go; it has no shard plan")
    if preset.name in FITTED_PRESETS:
        raise ZooError(f"preset {preset.name!r} is written by its own generator; no shard plan")
    shards: list[ShardPlan] = []
    skipped: list[str] = []
    for task_name in preset.tasks:
        families = task_families(task_name)
        for arch_name in preset.archs:
            arch = get_arch(arch_name)
            if arch.family not in families:
                skipped.append(f"{arch.name} on {task_name}")
                continue
            runs = [
                RunSpec.make(task_name, arch.name, i, seed, preset.search_space)
                for i in range(preset.runs)
            ]
            for chunk, start in enumerate(range(0, len(runs), preset.runs_per_shard)):
                shards.append(
                    ShardPlan(
                        name=f"{task_name}__{arch.name}__{chunk:03d}",
                        task=task_name,
                        arch=arch.name,
                        runs=tuple(runs[start : start + preset.runs_per_shard]),
                    )
                )
    if not shards:
        raise ZooError(
            f"no architecture fits any task: {', '.join(skipped)} are incompatible (MLPs fit every "
            "task, cnn2d fits digits, cnn1d fits mnist1d)"
        )
    return shards


def describe_preset(preset: Preset, seed: int = 0) -> dict[str, Any]:
    """Counts a preset would produce (runs, checkpoints, shards) without training anything."""
    if preset.inr is not None:
        return {
            "preset": preset.name,
            "shards": 1,
            "runs": preset.runs,
            "checkpoints": preset.runs * len(preset.settings.checkpoint_epochs),
            "model_epochs": preset.runs * preset.settings.epochs,
            **{"config": asdict(preset.settings)},
        }
    shards = plan_shards(preset, seed)
    runs = sum(len(s.runs) for s in shards)
    return {
        "preset": preset.name,
        "shards": len(shards),
        "runs": runs,
        "checkpoints": runs * len(preset.settings.checkpoint_epochs),
        "model_epochs": runs * preset.settings.epochs,
        **{"config": asdict(preset.settings)},
    }
