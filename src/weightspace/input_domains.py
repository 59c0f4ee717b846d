r"""Input domains for models whose input size the weights cannot tell.

A CNN that pools globally before its head (``nn.AdaptiveAvgPool2d(1)``, ``x.mean((2, 3))``)
runs on images of any size: its weights fix the channel count :math:`C` and the rank (one or
two spatial dims) but not the spatial size. A spec read from such a state dict says so with
``-1`` for each free dim (``input_shape == (1, -1, -1)``).

The encoder's probe branch keeps one set of learned probes per *domain*, an input shape
(:func:`weightspace.nn.probes.domain_key`: ``"1x8x8"``). A model of shape :math:`(C, ?, ?)`
is probed on the encoder's trained domain that matches it,

.. math::
    D(s) = \min\{\, d \in \mathcal{D} : \operatorname{rank} d = \operatorname{rank} s,\
    d_i = s_i \text{ for every known } s_i \,\}

(:math:`\mathcal{D}` the encoder's domains in their stored order, so the choice is
deterministic), which is sound because a globally pooled network's function is defined at every
spatial size. The choice is said once per process and domain (:func:`announce`), naming the
first file where a caller knows it; no matching domain is an :class:`InputDomainError`.

Importing this module is cheap (no torch).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightspace.errors import WeightspaceError

if TYPE_CHECKING:
    from weightspace.sources import LoadedModel, ModelLoader
    from weightspace.spec import NetworkSpec

__all__ = [
    "AssumedInputDomainWarning",
    "InputDomainError",
    "announce",
    "assumed_domain",
    "check_input_domain",
    "check_input_domains",
    "cli_warning",
    "has_free_size",
    "matching_domains",
    "probe_domains",
    "resolve_domain",
    "shape_text",
    "with_input_domains",
]

#: a free (unknown) input dim in a spec's ``input_shape``
FREE = -1


class InputDomainError(WeightspaceError):
    """A model's input size is free and none of the encoder's trained domains matches it."""


class AssumedInputDomainWarning(UserWarning):
    """A model of free input size is probed on one of the encoder's trained domains."""


#: (free shape, chosen domain) pairs already announced in this process
_ANNOUNCED: set[tuple[tuple[int, ...], str]] = set()


def has_free_size(shape: Sequence[int]) -> bool:
    """Whether some dim of ``shape`` is free (negative: the weights do not fix it)."""
    return any(int(s) < 0 for s in shape)


def shape_text(shape: Sequence[int]) -> str:
    """``[1, ?, ?]``: a shape as users read it, ``?`` for a free dim."""
    return "[" + ", ".join("?" if int(s) < 0 else str(int(s)) for s in shape) + "]"


def _domain_shape(key: str) -> tuple[int, ...]:
    return tuple(int(s) for s in key.split("x"))


def matching_domains(shape: Sequence[int], domains: Sequence[str]) -> list[str]:
    """The domain keys of ``domains`` (in their order) of ``shape``'s rank whose dims equal every
    known dim of ``shape`` (free dims match any size)."""
    shape = tuple(int(s) for s in shape)
    found = []
    for key in domains:
        candidate = _domain_shape(key)
        if len(candidate) == len(shape) and all(
            s < 0 or s == c for s, c in zip(shape, candidate, strict=True)
        ):
            found.append(key)
    return found


def _describe(shape: Sequence[int]) -> str:
    spatial = len(shape) - 1
    return f"{int(shape[0])} channel(s) and {spatial} spatial dim(s)"


def assumed_domain(shape: Sequence[int], domains: Sequence[str], *, source: str) -> str:
    """The trained domain a model of free input ``shape`` is probed on (module docstring).

    Args:
        shape: the model's input shape, with ``-1`` for free dims.
        domains: the encoder's probe domains (``EncoderConfig.probe_domains``).
        source: the file (or architecture) named in the error.

    Raises:
        InputDomainError: no domain of that rank and channel count.
    """
    found = matching_domains(shape, domains)
    if not found:
        trained = ", ".join(shape_text(_domain_shape(d)) for d in domains) or "none"
        raise InputDomainError(
            f"{source}: its input size is free (input shape {shape_text(shape)}, e.g. global "
            f"pooling before its head), and this encoder was trained on no input with "
            f"{_describe(shape)} (its input shapes: {trained}); embed it with an encoder trained "
            f"on such models (`weightspace train` on a zoo of them), or give --spec with a "
            f"fixed input shape the encoder knows"
        )
    return found[0]


def announce(
    shape: Sequence[int],
    domain: str,
    *,
    source: str,
    say: Callable[[str], None] | None = None,
) -> None:
    """Say once per process that models of free input ``shape`` are probed on ``domain``.

    Args:
        source: the first file (or architecture) of that shape, named in the message.
        say: prints the line (the CLI's ``warning:`` on stderr); default
            :func:`warnings.warn` with :class:`AssumedInputDomainWarning`.
    """
    key = (tuple(int(s) for s in shape), domain)
    if key in _ANNOUNCED:
        return
    _ANNOUNCED.add(key)
    message = (
        f"{source}: its input size is free (input shape {shape_text(shape)}); the encoder "
        f"probes it, and every later model of that shape, on its trained input shape "
        f"{shape_text(_domain_shape(domain))}"
    )
    if say is None:
        warnings.warn(message, AssumedInputDomainWarning, stacklevel=3)
    else:
        say(message)


def resolve_domain(spec: NetworkSpec, domains: Sequence[str] | None) -> str:
    """The probe domain key of ``spec`` for an encoder with ``domains``: its own
    (:func:`~weightspace.nn.probes.domain_key`) when it is fixed or no domains are given, else
    the matching trained one (:func:`assumed_domain`, announced once).

    This is the hook :mod:`weightspace.nn.probes` and :mod:`weightspace.nn.encoder` call.

    Raises:
        InputDomainError: a free input size that no trained domain matches.
    """
    shape = spec.input_shape
    key = "x".join(str(s) for s in shape)
    if domains is None or key in domains or not has_free_size(shape):
        return key
    chosen = assumed_domain(shape, domains, source=f"a model ({spec.summary()})")
    announce(shape, chosen, source=f"a model ({spec.summary()})")
    return chosen


def probe_domains(embedder: Any) -> tuple[str, ...] | None:
    """The probe domains of an encoder with a probe branch; ``None`` for any other embedder."""
    config = getattr(embedder, "config", None)
    if config is None or "probe" not in getattr(config, "branches", ()):
        return None
    return tuple(getattr(config, "probe_domains", ()))


def check_input_domain(
    spec: NetworkSpec,
    domains: Sequence[str] | None,
    *,
    source: str | Path,
    say: Callable[[str], None] | None = None,
) -> None:
    """Refuse (:class:`InputDomainError`, naming ``source``) or announce, naming ``source``,
    the domain a model of free input size will be probed on; nothing for a fixed one."""
    shape = spec.input_shape
    if domains is None or not has_free_size(shape):
        return
    chosen = assumed_domain(shape, domains, source=str(source))
    announce(shape, chosen, source=str(source), say=say)


def with_input_domains(
    loader: ModelLoader, embedder: Any, *, say: Callable[[str], None] | None = None
) -> ModelLoader:
    """``loader``, checking each model's input domain against ``embedder``'s probe domains
    (:func:`check_input_domain`): a free size no trained domain matches is refused naming the
    file (so ``--skip-errors`` can skip it), the assumed domain is said once."""
    domains = probe_domains(embedder)
    if domains is None:
        return loader

    def load(path: Path, spec_json: str | None = None) -> LoadedModel:
        model = loader(path, spec_json)
        check_input_domain(model.network_spec(), domains, source=model.path, say=say)
        return model

    return load


def cli_warning(message: str) -> None:
    """Print ``warning: message`` on stderr, as the CLI's other warnings are."""
    import typer

    typer.echo(f"warning: {message}", err=True)


def check_input_domains(
    specs: Sequence[NetworkSpec],
    sources: Sequence[str | Path],
    embedder: Any,
    *,
    say: Callable[[str], None] | None = None,
) -> None:
    """:func:`check_input_domain` for each model already loaded (``specs[i]`` read from
    ``sources[i]``) against ``embedder``'s probe domains."""
    domains = probe_domains(embedder)
    for spec, source in zip(specs, sources, strict=True):
        check_input_domain(spec, domains, source=source, say=say)
