"""What the index needs from an encoder, and the content hash that de-duplicates models.

The index talks to encoders through one small protocol, :class:`Embedder`: ``embed(graphs)``
and a ``fingerprint`` identifying the encoder's weights. An embedder that canonicalises and
builds graphs itself (:class:`CanonicalisingEmbedder`, as :class:`weightspace.nn.Encoder` does in
its ``prepare``) is handed ``(NetworkSpec, state_dict)`` pairs instead, so each model is
canonicalised once and its graph built once, after canonicalisation (:func:`embedder_inputs`).

No code from data: an index records its encoder as a directory path and a fingerprint only;
:func:`encoder_from_manifest` reads that directory with ``weightspace.nn.Encoder.load``
(safetensors weights, JSON config). Importable ``module:attr`` encoders come only from the
caller (the command line, :func:`load_embedder`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from weightspace.errors import WeightspaceError
from weightspace.index.errors import EncoderMismatchError

if TYPE_CHECKING:
    from weightspace.graph import NeuralGraph
    from weightspace.nn.encoder import Encoder
    from weightspace.sources import LoadedModel

__all__ = [
    "Embedder",
    "CanonicalisingEmbedder",
    "content_hash",
    "embedder_fingerprint",
    "embedder_inputs",
    "embed_models",
    "embed_loaded",
    "graph_only_flags",
    "normalise",
    "load_embedder",
    "load_encoder_directory",
    "encoder_from_manifest",
    "IMPORT_REFERENCE",
    "is_import_reference",
    "recordable_encoder",
]

#: ``package.module:attr``: how a user names an importable encoder (never read from an index).
IMPORT_REFERENCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def is_import_reference(reference: str | Path) -> bool:
    """Whether ``reference`` names importable code (``module:attr``); a bundled encoder
    (``pretrained:NAME``) does not: it is a directory of weights shipped with the package."""
    from weightspace.pretrained import PREFIX

    text = str(reference)
    return not text.startswith(PREFIX) and IMPORT_REFERENCE.fullmatch(text) is not None


def recordable_encoder(reference: str | Path) -> str | None:
    """What an index records of the encoder the user named: ``pretrained:NAME`` as is (portable
    across installations), an existing directory as its absolute path; ``None`` for an
    importable ``module:attr``, which an index never records."""
    from weightspace.pretrained import PREFIX

    text = str(reference)
    if text.startswith(PREFIX):
        return text
    if is_import_reference(text) or not Path(text).is_dir():
        return None
    return str(Path(text).resolve())


@runtime_checkable
class Embedder(Protocol):
    """What the index needs from an encoder.

    ``embed`` maps a batch of :class:`~weightspace.graph.NeuralGraph` to an ``(n, d)`` float
    array; ``fingerprint`` identifies the encoder's weights, so an index is never queried with
    vectors of another space. ``dim`` is optional (read from the first embedding otherwise); so
    is ``predict_accuracy(graphs) -> (n,)``.
    """

    @property
    def fingerprint(self) -> str: ...

    def embed(self, graphs: Sequence[NeuralGraph]) -> np.ndarray: ...


@runtime_checkable
class CanonicalisingEmbedder(Embedder, Protocol):
    """An embedder that canonicalises models and builds their graphs itself
    (:meth:`weightspace.nn.Encoder.prepare`); its ``embed`` also takes ``(spec, state_dict)``
    pairs, which the index hands it so that no graph is built only to be taken apart again."""

    def prepare(self, models: Iterable[Any]) -> list[NeuralGraph]: ...


def _canonicalises(embedder: Embedder) -> bool:
    # looked up on the class: ``isinstance`` against the protocol would evaluate the
    # ``fingerprint`` property, which hashes every weight of an Encoder
    return callable(getattr(type(embedder), "prepare", None))


def embedder_inputs(embedder: Embedder, models: Sequence[LoadedModel]) -> list[Any]:
    """What ``embedder.embed`` reads for ``models``: ``(spec, state_dict)`` pairs for a
    :class:`CanonicalisingEmbedder`, graphs (built once, on demand) for any other."""
    if _canonicalises(embedder):
        return [model.embedder_input(canonicalising=True) for model in models]
    return [model.graph for model in models]


# ---------------------------------------------------------------------------------- hashing
def content_hash(spec_json: str, tensors: Mapping[str, Any]) -> str:
    """SHA-256 of the architecture and every tensor's name, dtype, shape and bytes.

    Independent of the file format and of the order of the state dict, so the same weights saved
    as ``.pt`` and as ``.safetensors`` are one model; a different spec (say another activation)
    over the same tensors is another model.
    """
    digest = hashlib.sha256()
    try:
        canonical_spec = json.dumps(json.loads(spec_json), sort_keys=True, separators=(",", ":"))
    except (json.JSONDecodeError, TypeError):
        canonical_spec = spec_json
    digest.update(canonical_spec.encode())
    for name in sorted(tensors):
        dtype, shape, data = _tensor_bytes(tensors[name])
        digest.update(f"\0{name}\0{dtype}\0{shape}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _tensor_bytes(value: Any) -> tuple[str, tuple[int, ...], bytes]:
    if hasattr(value, "detach"):  # torch.Tensor, any dtype (bfloat16 has no numpy twin)
        import torch

        tensor = value.detach().cpu().contiguous()
        raw = tensor.reshape(-1).view(dtype=torch.uint8).numpy().tobytes()
        return str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), raw
    array = np.ascontiguousarray(np.asarray(value))
    return str(array.dtype), tuple(array.shape), array.tobytes()


# ---------------------------------------------------------------------------------- embedding
def embedder_fingerprint(embedder: Embedder) -> str:
    """The embedder's fingerprint as a string (a property or a zero-argument method)."""
    value: Any = embedder.fingerprint
    return str(value() if callable(value) else value)


def embed_models(embedder: Embedder, models: Sequence[Any], *, source: str = "") -> np.ndarray:
    """Embed graphs (or what :func:`embedder_inputs` gives) and return L2-normalised float32
    vectors ``(n, d)``, checked for sanity."""
    vectors = np.asarray(embedder.embed(list(models)), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(models):
        raise WeightspaceError(
            f"encoder returned shape {vectors.shape} for {len(models)} models; expected (n, d)"
        )
    return normalise(vectors, source=source)


def embed_loaded(embedder: Embedder, models: Sequence[LoadedModel]) -> np.ndarray:
    """Unit vectors ``(n, d)`` of loaded models, each read the way ``embedder`` wants it.

    Raises:
        NonFiniteWeightsError: a model's canonical form overflows (a canonicalising embedder),
            naming its file; otherwise the embedder's error as raised.
    """
    from weightspace.symmetry_overflow import overflow_named_by_file

    named = (
        ((model.path, model.network_spec(), model.tensors) for model in models)
        if _canonicalises(embedder)
        else ()
    )
    with overflow_named_by_file(named):
        return embed_models(embedder, embedder_inputs(embedder, models), source=models[0].path)


def graph_only_flags(embedder: Embedder, count: int) -> list[bool]:
    """Which of the ``count`` models ``embedder`` last embedded it could not run on its probes
    (embedded by the graph branch alone): :attr:`Encoder.last_fallback
    <weightspace.nn.encoder.Encoder.last_fallback>`; all ``False`` for an encoder without a
    probe branch, or any other embedder."""
    flags = getattr(embedder, "last_fallback", None)
    if flags is None or len(flags) != count:
        return [False] * count
    return [bool(flag) for flag in flags]


def normalise(vectors: np.ndarray, *, source: str = "") -> np.ndarray:
    r"""Rows scaled to unit length, :math:`v / \lVert v \rVert_2`; NaN, Inf or a zero row is a
    :class:`~weightspace.errors.WeightspaceError` naming ``source``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.all(np.isfinite(vectors)):
        raise WeightspaceError(f"{source or 'vectors'}: embedding holds NaN or Inf values")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise WeightspaceError(f"{source or 'vectors'}: embedding is the zero vector")
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)


# ---------------------------------------------------------------------------------- loading
def load_embedder(reference: str | Path) -> Embedder:
    """Load an encoder the user named: a directory (``weightspace.nn.Encoder.load``), a bundled
    encoder (``pretrained:NAME``, :mod:`weightspace.pretrained`) or ``module:attr``.

    Only for references typed by the user (``--encoder``). ``module:attr`` names an importable
    object with ``embed`` and ``fingerprint``, or a zero-argument callable returning one (for
    baselines and third-party encoders); importing it runs its code, so a reference read from an
    index goes through :func:`load_encoder_directory` instead.
    """
    from weightspace.pretrained import resolve_encoder_reference

    text = str(reference)
    path = resolve_encoder_reference(text)  # pretrained:NAME → the bundled directory
    if not path.exists() and is_import_reference(text):
        module_name, attr = text.split(":")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise WeightspaceError(f"cannot import encoder {text!r}: {exc}") from None
        is_factory = isinstance(target, type) or not isinstance(target, Embedder)
        embedder = target() if is_factory and callable(target) else target
        if not isinstance(embedder, Embedder):
            raise WeightspaceError(f"{text!r} has no embed() and fingerprint; it is not an encoder")
        return embedder
    if not path.exists():
        raise WeightspaceError(
            f"encoder {text!r}: no such directory; give the output of `weightspace train`, "
            f"a bundled encoder (pretrained:NAME) or an importable 'module:attr'"
        )
    return load_encoder_directory(path)


def load_encoder_directory(directory: str | Path) -> Encoder:
    """An encoder directory written by ``weightspace train`` (or ``pretrained:NAME``, a bundled
    one), read with ``weightspace.nn.Encoder.load`` (safetensors weights and a JSON config;
    nothing imported)."""
    from weightspace.nn.encoder import Encoder
    from weightspace.pretrained import resolve_encoder_reference

    return Encoder.load(resolve_encoder_reference(directory))


def encoder_from_manifest(path: Path, manifest: Mapping[str, Any]) -> Encoder:
    """The encoder directory an index's manifest records, loaded and checked against its
    fingerprint; nothing is imported (see :meth:`ModelIndex.load_encoder`)."""
    reference = manifest.get("encoder")
    if reference is None:
        raise WeightspaceError(
            f"{path}: records no encoder directory (it was built with an importable encoder); "
            f"pass --encoder"
        )
    if not isinstance(reference, str) or is_import_reference(reference):
        raise WeightspaceError(
            f"{path}: records its encoder as the Python import {str(reference)!r}; weightspace "
            f"never imports code named by an index: pass --encoder (the encoder directory, or "
            f"that import if you trust it)"
        )
    embedder = load_encoder_directory(reference)
    fingerprint = embedder_fingerprint(embedder)
    if fingerprint != manifest.get("fingerprint"):
        raise EncoderMismatchError(
            f"{path}: built with encoder {str(manifest.get('fingerprint'))[:16]!r}, but "
            f"{reference!r} now holds encoder {fingerprint[:16]!r}; pass the original with "
            f"--encoder"
        )
    return embedder
