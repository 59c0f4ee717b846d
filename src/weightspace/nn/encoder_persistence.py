"""Identity and persistence of :class:`~weightspace.nn.encoder.Encoder`: its fingerprint and
the save / load entry points (a mixin; the files themselves are
:mod:`weightspace.nn.encoder_files`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from weightspace.nn.encoder import Encoder
    from weightspace.nn.encoder_config import EncoderConfig

__all__ = ["EncoderPersistence"]


class EncoderPersistence:
    """:attr:`fingerprint`, :meth:`save`, :meth:`load` and their Hugging Face names for
    :class:`~weightspace.nn.encoder.Encoder` (a mixin)."""

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the config (branches and probe count included when the encoder has
        a probe branch) and the weights: equal fingerprints, equal encoders."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.config.identity(), sort_keys=True).encode())
        for key, tensor in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``encoder.safetensors`` and ``config.json`` into ``directory`` (atomically;
        :func:`weightspace.nn.encoder_files.save_encoder`)."""
        from weightspace.nn.encoder_files import save_encoder

        return save_encoder(self, directory)

    @classmethod
    def read_config(cls, directory: str | os.PathLike[str]) -> EncoderConfig:
        """The :class:`EncoderConfig` stored in an encoder directory (validated;
        :func:`weightspace.nn.encoder_files.read_encoder_config`)."""
        from weightspace.nn.encoder_files import read_encoder_config

        return read_encoder_config(directory)

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> Path:
        """Hugging Face's name for :meth:`save`: ``config.json`` + ``encoder.safetensors`` in
        ``save_directory``, which :meth:`from_pretrained` (or ``--encoder DIR``) reads back."""
        return self.save(save_directory)

    @classmethod
    def from_pretrained(
        cls,
        name_or_directory: str | os.PathLike[str] = "small",
        *,
        device: torch.device | str | None = None,
    ) -> Encoder:
        """Load a bundled encoder (``"small"`` or ``"pretrained:small"``) or an encoder
        directory (from :meth:`save_pretrained` or ``weightspace train``), in eval mode.

        A bare name is a bundled encoder when one of that name is installed and no directory
        of that name exists here; anything else is read as a directory.

        Raises:
            EncoderError: the directory is missing, corrupt, or incompatible.
            PretrainedError: ``pretrained:NAME`` names no bundled encoder.
        """
        from weightspace.pretrained import PREFIX, list_pretrained

        text = os.fspath(name_or_directory)
        if not text.startswith(PREFIX) and not Path(text).exists() and text in list_pretrained():
            text = PREFIX + text
        return cls.load(text, device=device)

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], *, device: torch.device | str | None = None
    ) -> Encoder:
        """Load an encoder directory written by :meth:`save` (in eval mode); ``pretrained:NAME``
        loads the bundled encoder ``NAME`` (:func:`weightspace.nn.encoder_files.load_encoder`).

        Raises:
            EncoderError: the directory is missing, corrupt, or incompatible with this version.
            PretrainedError: ``pretrained:NAME`` names no bundled encoder.
        """
        from weightspace.nn.encoder_files import load_encoder

        return load_encoder(directory, device=device, cls=cls)
