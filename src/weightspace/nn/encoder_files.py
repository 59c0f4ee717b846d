"""An encoder directory on disk: ``encoder.safetensors`` (weights) and ``config.json``
(``{"format": "weightspace-encoder", "format_version": 1, "encoder": {...}}``), written
atomically and read back with a one-line :class:`~weightspace.nn.encoder.EncoderError` for
anything missing, corrupt or from a newer weightspace. :meth:`Encoder.save
<weightspace.nn.encoder.Encoder.save>`, :meth:`~weightspace.nn.encoder.Encoder.read_config` and
:meth:`~weightspace.nn.encoder.Encoder.load` are these functions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from weightspace.atomic import atomic_write_bytes
from weightspace.nn.encoder import (
    _FORMAT_NAME,
    CONFIG_FILE,
    ENCODER_FORMAT_VERSION,
    WEIGHTS_FILE,
    Encoder,
    EncoderConfig,
    EncoderError,
)
from weightspace.nn.probe_init import deferred_probe_init

__all__ = ["load_encoder", "read_encoder_config", "save_encoder"]


def save_encoder(encoder: Encoder, directory: str | os.PathLike[str]) -> Path:
    """Write ``encoder.safetensors`` and ``config.json`` into ``directory`` (atomically)."""
    from safetensors.torch import save

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    meta = {"format": _FORMAT_NAME, "format_version": str(ENCODER_FORMAT_VERSION)}
    atomic_write_bytes(path / WEIGHTS_FILE, save(tensors, metadata=meta))
    config = {
        "format": _FORMAT_NAME,
        "format_version": ENCODER_FORMAT_VERSION,
        "encoder": encoder.config.to_dict(),
        "fingerprint": encoder.fingerprint,
    }
    atomic_write_bytes(path / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return path


def read_encoder_config(directory: str | os.PathLike[str]) -> EncoderConfig:
    """The :class:`EncoderConfig` stored in an encoder directory (validated)."""
    path = Path(directory)
    if not path.is_dir():
        raise EncoderError(
            f"{path}: no such encoder directory; create one with `weightspace train`"
        )
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise EncoderError(
            f"{config_path}: missing; {path} is not an encoder directory (expected "
            f"{CONFIG_FILE} and {WEIGHTS_FILE} written by `weightspace train`)"
        )
    try:
        data = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EncoderError(f"{config_path}: not valid JSON ({exc}); the file is corrupt") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT_NAME:
        raise EncoderError(f"{config_path}: not a weightspace encoder config")
    version = data.get("format_version")
    if not isinstance(version, int) or version > ENCODER_FORMAT_VERSION:
        raise EncoderError(
            f"{config_path}: encoder format version {version!r} is not supported by this "
            f"weightspace (supports up to {ENCODER_FORMAT_VERSION}); upgrade weightspace"
        )
    if not isinstance(data.get("encoder"), dict):
        raise EncoderError(f"{config_path}: the 'encoder' section is missing")
    try:
        return EncoderConfig.from_dict(data["encoder"])
    except EncoderError as exc:
        raise EncoderError(f"{config_path}: {exc}") from None


def load_encoder(
    directory: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    cls: type[Encoder] = Encoder,
) -> Encoder:
    """Load an encoder directory written by :func:`save_encoder` (in eval mode);
    ``pretrained:NAME`` loads the bundled encoder ``NAME``; ``cls`` is the class built.

    Raises:
        EncoderError: the directory is missing, corrupt, or incompatible with this version.
        PretrainedError: ``pretrained:NAME`` names no bundled encoder.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from weightspace.pretrained import resolve_encoder_reference

    path = resolve_encoder_reference(os.fspath(directory))
    config = read_encoder_config(path)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise EncoderError(f"{weights_path}: missing; the encoder directory is incomplete")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise EncoderError(
            f"{weights_path}: cannot read the weights ({exc}); the file is corrupt"
        ) from None
    with deferred_probe_init():  # the probes' start is in the weights read next
        encoder = cls(config)
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) == 1:  # cast first: a float64 encoder's weights are read without rounding
        encoder = encoder.to(dtype=next(iter(dtypes)))
    try:
        encoder.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise EncoderError(
            f"{weights_path}: weights do not match {path / CONFIG_FILE} "
            f"({' '.join(first[:3])[:300]}); the directory is inconsistent"
        ) from None
    if device is not None:
        encoder = encoder.to(device)
    return encoder.eval()
