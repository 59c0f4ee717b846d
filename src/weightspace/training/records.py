"""What a run leaves in its directory: the resumable ``checkpoint.pt`` (every epoch), the log
(``log.csv``) and, at the end, the encoder with its config, the run split and the zoo's
fingerprint. Every file is written atomically (:mod:`weightspace.atomic`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from weightspace.atomic import atomic_write, atomic_write_bytes
from weightspace.training.config import TrainError

__all__ = [
    "CHECKPOINT_FILE",
    "LOG_COLUMNS",
    "LOG_FILE",
    "load_checkpoint",
    "save_checkpoint",
    "write_json",
    "write_log",
    "write_outputs",
]

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.csv"
LOG_COLUMNS = (
    "epoch",
    "step",
    "lr",
    "seconds",
    "partial",
    "train_loss",
    "train_contrastive",
    "train_accuracy_mse",
    "train_gap_mse",
    "train_task_ce",
    "train_function_kl",
    "val_contrastive",
    "val_view_top1",
    "val_accuracy_tau",
    "val_accuracy_r2",
    "val_accuracy_mae",
    "val_gap_tau",
    "val_task_accuracy",
    "val_function_kl",
    "val_function_agreement",
    "train_class_ce",
    "val_class_ce",
    "val_class_top1",
    "val_score",
)


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def write_log(path: Path, rows: list[dict[str, float]]) -> None:
    """One CSV row per epoch, columns :data:`LOG_COLUMNS`, atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, "") for k in LOG_COLUMNS})

    atomic_write(path, write)


def _resumable_part(config: dict[str, Any]) -> dict[str, Any]:
    """The config fields that must match to resume (not where or how long it runs)."""
    return {k: v for k, v in config.items() if k not in ("device", "threads", "time_limit")}


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config completed with today's defaults for the fields it predates, so a run
    left before a field existed still resumes."""
    from weightspace.training.config import TrainConfig

    defaults = json.loads(json.dumps(TrainConfig().to_dict()))
    return {**{k: v for k, v in defaults.items() if k not in config}, **config}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """The resumable state (``config``, ``zoo_fingerprint``, ``model``, ``optimizer``,
    ``scheduler``, ``best_weights``, ``state``, ``log``), atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(
    path: Path, config: dict[str, Any], fingerprint: str, device: torch.device
) -> dict[str, Any] | None:
    """The state :func:`save_checkpoint` left at ``path`` (``None`` if there is none), checked
    to come from a run with the same config and zoo (``weights_only``: checkpoints are data).

    Raises:
        TrainError: unreadable, or left by another configuration or zoo.
    """
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise TrainError(
            f"{path}: cannot resume from it ({exc}); delete it to start over"
        ) from None
    if (
        _resumable_part(_with_defaults(saved.get("config", {})))
        != _resumable_part(json.loads(json.dumps(config)))
        or saved.get("zoo_fingerprint") != fingerprint
    ):
        raise TrainError(
            f"{path}: left by a run with another configuration or zoo; use another --out, or "
            "delete it to start over"
        )
    return saved


def write_outputs(out: Path, encoder: Any, config: dict[str, Any], data: Any, zoo: str) -> None:
    """The finished run: the encoder (``encoder.safetensors``, ``config.json``), its
    ``train_config.json``, ``splits.json`` and ``zoo_fingerprint.json``."""
    encoder.save(out)
    write_json(out / "train_config.json", config)
    write_json(out / "splits.json", data.splits)
    write_json(
        out / "zoo_fingerprint.json",
        {
            "zoo": str(Path(zoo).resolve()),
            "fingerprint": data.fingerprint,
            "checkpoints_used": len(data.ids),
            "runs": {k: len(v) for k, v in data.splits.items()},
        },
    )
