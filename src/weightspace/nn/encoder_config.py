"""The encoder's configuration: :class:`EncoderConfig` (architecture and head metadata, checked
on construction), its on-disk identity (:meth:`EncoderConfig.identity`, what the fingerprint
hashes) and the encoder directory's file names and format version."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from weightspace.errors import WeightspaceError
from weightspace.nn.probe_init import ProbeInitError, check_probe_init

__all__ = ["BRANCHES", "ENCODER_FORMAT_VERSION", "EncoderConfig", "EncoderError"]

ENCODER_FORMAT_VERSION = 1
WEIGHTS_FILE = "encoder.safetensors"
CONFIG_FILE = "config.json"
_FORMAT_NAME = "weightspace-encoder"


class EncoderError(WeightspaceError):
    """An encoder directory is missing, corrupt or incompatible, or cannot serve a request."""


@dataclass
class EncoderConfig:
    """Architecture of an :class:`Encoder` and the label metadata of its heads."""

    hidden: int = 64  # width of node states
    edge_hidden: int = 32  # width of edge states and messages
    num_layers: int = 4  # message-passing rounds
    aggregators: tuple[str, ...] = ("mean", "max")  # per direction, concatenated
    directions: tuple[str, ...] = ("forward", "backward")  # incoming and/or outgoing edges
    activation: str = "silu"  # nonlinearity of the message-passing layers
    features: str = "signlog"  # scalar feature map of weights and biases: signlog | fourier
    feature_scales: tuple[float, ...] = (0.01, 0.1, 1.0)  # signlog scales / fourier range
    num_frequencies: int = 4  # fourier only
    max_depth: int = 32  # deeper layers share the last depth embedding
    max_positions: int = 1024  # input/output position tables (positions taken modulo this)
    max_edge_features: int = 64  # widest edge (kernel entries) accepted
    pool_heads: int = 4  # attention heads of the pooling transformer
    pool_layers: int = 1  # transformer blocks before the attention readout
    pool_seeds: int = 2  # seed queries of the attention readout
    embedding_dim: int = 64  # width of the model embedding z
    projection_dim: int = 64  # width of the contrastive projection
    head_hidden: int = 64  # hidden width of every head
    targets: tuple[str, ...] = ("test_accuracy", "generalization_gap")  # regression outputs
    target_mean: tuple[float, ...] = (0.0, 0.0)  # targets are predicted standardised ...
    target_std: tuple[float, ...] = (1.0, 1.0)  # ... and mapped back with these
    tasks: tuple[str, ...] = ()  # class names of the task head (empty: no task head)
    canonicalize: bool = True  # canonical scale/sign form before encoding (exact invariance)
    function_probes: int = 0  # probe inputs of the function head (0: no function head)
    function_classes: int = 0  # classes per probe (the zoo's largest class count; padded)
    function_seed: int = 0  # seeds the choice of probe inputs in each task's training split
    branches: tuple[str, ...] = ("graph",)  # graph and/or probe (the learned-probe branch)
    probes: int = 32  # probe branch: learned probe inputs per input domain (P)
    probe_domains: tuple[str, ...] = ()  # probe branch: accepted input shapes ("64", "1x8x8")
    probe_classes: int = 0  # probe branch: outputs read per probe (largest class count; padded)
    probe_latent: int = 16  # probe branch: width k of the probes' latent codes
    probe_hidden: int = 64  # probe branch: width of the generator and of the output encoder
    probe_dim: int = 64  # probe branch: width of z_probe before the fusion
    probe_init: str = "gauss"  # probe branch: where the probes start: gauss | task
    #   (weightspace.nn.probe_init: the task's training inputs, an INR's coordinate grid)
    probe_sources: tuple[str, ...] = ()  # probe_init "task": the start of each probe domain
    classes: tuple[str, ...] = ()  # class names of the class head (a class-target zoo's labels,
    #   `train --objective class`; empty: no class head)
    probe_skip: bool = False  # probe branch: the embedding's last probes * probe_classes entries
    #   are the model's own probe outputs, standardised (weightspace.nn.probe_skip)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
        if len(self.target_mean) != len(self.targets) or len(self.target_std) != len(self.targets):
            raise EncoderError(
                f"encoder config: {len(self.targets)} targets but {len(self.target_mean)} means "
                f"and {len(self.target_std)} standard deviations"
            )
        if self.function_probes < 0 or self.function_classes < 0:
            raise EncoderError("encoder config: function_probes and function_classes must be >= 0")
        if bool(self.function_probes) != bool(self.function_classes):
            raise EncoderError(
                "encoder config: function_probes and function_classes must both be 0 (no "
                f"function head) or both > 0, got {self.function_probes} and "
                f"{self.function_classes}"
            )
        unknown = sorted(set(self.branches) - set(BRANCHES))
        if not self.branches or unknown or len(set(self.branches)) != len(self.branches):
            raise EncoderError(
                f"encoder config: branches must be distinct names from {list(BRANCHES)}, got "
                f"{list(self.branches)}"
            )
        if "probe" in self.branches and (
            self.probes < 1 or self.probe_classes < 1 or not self.probe_domains
        ):
            raise EncoderError(
                "encoder config: the probe branch needs probes >= 1, probe_classes >= 1 and at "
                f"least one probe domain, got {self.probes}, {self.probe_classes} and "
                f"{list(self.probe_domains)}"
            )
        try:
            check_probe_init(self.probe_init)
        except ProbeInitError as exc:
            raise EncoderError(f"encoder config: {exc}") from None
        if self.probe_init == "task" and len(self.probe_sources) != len(self.probe_domains):
            raise EncoderError(
                f"encoder config: probe_init 'task' needs one probe source per probe domain, "
                f"got {list(self.probe_sources)} for {list(self.probe_domains)}"
            )
        if (
            self.probe_skip
            and "probe" in self.branches
            and self.embedding_dim <= self.probes * self.probe_classes
        ):
            raise EncoderError(
                f"encoder config: probe_skip appends the {self.probes} x {self.probe_classes} "
                f"probe outputs to the embedding, so embedding_dim ({self.embedding_dim}) must be "
                f"larger than {self.probes * self.probe_classes} (--embedding-dim)"
            )
        if self.hidden % self.pool_heads:
            raise EncoderError(
                f"encoder config: hidden={self.hidden} must be divisible by "
                f"pool_heads={self.pool_heads}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def identity(self) -> dict[str, Any]:
        """:meth:`to_dict` without the probe fields when there is no probe branch, so a
        graph-only encoder's fingerprint is the one it had before the probe branch existed."""
        data = self.to_dict()
        if "probe" not in self.branches:
            for name in _PROBE_FIELDS:
                data.pop(name)
        if self.probe_init == "gauss" and not self.probe_sources:
            data.pop("probe_init", None)  # Gaussian-start encoders keep their fingerprint
            data.pop("probe_sources", None)
        if not self.classes:  # encoders without a class head keep their fingerprint
            data.pop("classes")
        if not self.probe_skip:  # encoders without the skip keep their fingerprint
            data.pop("probe_skip", None)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EncoderError(
                f"encoder config has unknown fields {unknown}; it was written by a newer "
                "weightspace — upgrade weightspace"
            )
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise EncoderError(f"encoder config is malformed: {exc}") from None


#: The encoder's branches: the graph network and the learned probes.
BRANCHES = ("graph", "probe")
_PROBE_FIELDS = (
    "branches",
    "probes",
    "probe_domains",
    "probe_classes",
    "probe_latent",
    "probe_hidden",
    "probe_dim",
    "probe_init",
    "probe_sources",
    "probe_skip",
)
