"""A persistent vector index of checkpoints: FAISS for the vectors, SQLite for the metadata.

An index is a directory::

    INDEX/
      meta.sqlite              manifest (format version, encoder directory and fingerprint, dim,
                               kind, recall, generation, checksum of the vector file), one row per
                               model (path, content hash, spec, metrics, embedding) and one row per
                               committed batch (its checksums)
      vectors-<generation>.faiss   the FAISS index of the committed generation
      write.lock               held by the one process allowed to write

Scores are inner products of L2-normalised vectors, i.e. cosine similarities in ``[-1, 1]``.
Below ``approximate_threshold`` stored vectors the FAISS index is exact (``IndexFlatIP``); above
it, ``kind="auto"`` switches to an inverted file (``IndexIVFFlat``) whose ``nprobe`` is tuned
until recall@10 against exact search reaches ``target_recall``, and that measured recall is kept
in the manifest.

Integrity: every write takes ``write.lock``, writes the new FAISS file under a fresh generation
name (temporary file, fsync, rename), then commits the SQLite rows and the new generation number
in one transaction; only then is the previous FAISS file removed. A writer killed at any point
leaves the previously committed index loadable: SQLite rolls back the unfinished transaction and
the manifest still names the previous FAISS file. A model whose content hash (spec plus tensors)
is already stored is not stored again. Checksums of the vector file and of every batch are
checked on open and by :func:`weightspace.index_integrity.verify_index`
(:mod:`weightspace.index_integrity`).

No code from data: an index records its encoder as a directory path and a fingerprint only.
:meth:`ModelIndex.load_encoder` reads that directory with ``weightspace.nn.Encoder.load``
(safetensors weights, JSON config) and checks the fingerprint; nothing an index names is ever
imported. Importable ``module:attr`` encoders come only from the caller (the command line).

The index talks to encoders through the small :class:`Embedder` protocol and to checkpoint files
through a :data:`ModelLoader`, so anything with ``embed(graphs)`` and ``fingerprint`` can be
indexed; :func:`load_model_file` and :func:`iter_zoo` are the defaults, built on
``weightspace.ingest`` and ``weightspace.zoo`` (imported lazily).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from weightspace.errors import CheckpointError, WeightspaceError
from weightspace.index_integrity import (
    IndexCorruptError,
    IndexFormatError,
    check_catalog,
    check_file,
    file_digest,
    rows_digest,
    validate_manifest,
    vectors_digest,
)
from weightspace.limits import Limits

__all__ = [
    "INDEX_FORMAT_VERSION",
    "DEFAULT_APPROXIMATE_THRESHOLD",
    "IndexFormatError",
    "IndexCorruptError",
    "EncoderMismatchError",
    "IndexBusyError",
    "Embedder",
    "LoadedModel",
    "ModelLoader",
    "ModelRecord",
    "SearchHit",
    "AddReport",
    "VectorStore",
    "ModelIndex",
    "content_hash",
    "load_model_file",
    "iter_zoo",
    "iter_inputs",
    "load_embedder",
    "load_encoder_directory",
    "load_source",
    "parse_filters",
]

#: Version of the on-disk layout written; 2 added embeddings in the catalog and checksums.
INDEX_FORMAT_VERSION = 2
#: Versions this code opens; a version-1 index is searchable but has no checksums and cannot be
#: extended until ``weightspace index repair`` upgrades it.
READABLE_FORMAT_VERSIONS = (1, 2)
#: Stored vectors from which ``kind="auto"`` uses an approximate (IVF) index; below it search is
#: exact. Exact inner-product search over 20k vectors of dim 128 takes about 1 ms on one core.
DEFAULT_APPROXIMATE_THRESHOLD = 20_000
#: Recall@10 against exact search that ``nprobe`` is tuned to reach.
DEFAULT_TARGET_RECALL = 0.97

IndexKind = Literal["auto", "flat", "ivf", "hnsw"]
#: ``on_progress(stage, done, total)`` with stage ``"embed"`` or ``"write"``; total 0 if unknown.
ProgressCallback = Callable[[str, int, int], None]

_META_FILE = "meta.sqlite"
_LOCK_FILE = "write.lock"
_VECTORS_PATTERN = re.compile(r"^vectors-(\d+)\.faiss$")
_FILTER_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_COLUMN_FILTERS = {"path": "path", "content_hash": "content_hash", "arch_summary": "spec_summary"}
_RECALL_QUERIES = 200
_EXACT_SUBSET_LIMIT = 50_000
_PARALLEL_QUERIES = 16  # smaller query batches are searched on one OpenMP thread


# ---------------------------------------------------------------------------------- errors
class EncoderMismatchError(WeightspaceError):
    """An index was built with another encoder than the one used to query or extend it."""


class IndexBusyError(WeightspaceError):
    """Another process holds the index's write lock."""


# ---------------------------------------------------------------------------------- protocols
@runtime_checkable
class Embedder(Protocol):
    """What the index needs from an encoder.

    ``embed`` maps a batch of graphs (whatever the :data:`ModelLoader` produced, by default
    :class:`~weightspace.graph.NeuralGraph`) to an ``(n, d)`` float array; ``fingerprint``
    identifies the encoder's weights, so an index is never queried with vectors of another
    space. ``dim`` is optional (read from the first embedding otherwise); so is
    ``predict_accuracy(graphs) -> (n,)``.
    """

    @property
    def fingerprint(self) -> str: ...

    def embed(self, graphs: Sequence[Any]) -> np.ndarray: ...


@dataclass(frozen=True)
class LoadedModel:
    """One checkpoint ready to embed.

    Attributes:
        path: where it came from (a file path, or ``ZOO_DIR#ID`` for a zoo row).
        spec_json: the architecture as JSON (``NetworkSpec.to_json()``).
        spec_summary: a short architecture string for tables.
        tensors: state-dict name → tensor (torch or numpy), hashed for de-duplication.
        graph: what the embedder consumes.
        metrics: zoo metadata and metrics (run, epoch, task, test_accuracy, ...), JSON scalars.
    """

    path: str
    spec_json: str
    spec_summary: str
    tensors: Mapping[str, Any]
    graph: Any
    metrics: Mapping[str, Any] = field(default_factory=dict)


#: ``loader(path, spec_json_or_None) -> LoadedModel``; raises a WeightspaceError on bad input.
ModelLoader = Callable[[Path, "str | None"], LoadedModel]


@dataclass(frozen=True)
class ModelRecord:
    """The stored metadata of one model."""

    id: int
    path: str
    content_hash: str
    spec_summary: str
    spec_json: str
    metrics: dict[str, Any]
    added_at: str

    def to_dict(self, *, include_spec: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "path": self.path,
            "content_hash": self.content_hash,
            "arch_summary": self.spec_summary,
            "metrics": self.metrics,
            "added_at": self.added_at,
        }
        if include_spec:
            out["spec"] = json.loads(self.spec_json) if self.spec_json else None
        return out


@dataclass(frozen=True)
class SearchHit:
    """One neighbour: its cosine ``score`` and stored metadata."""

    rank: int
    score: float
    record: ModelRecord

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, **self.record.to_dict()}


@dataclass
class AddReport:
    """What an add stored: new ids, and inputs skipped as already stored (path, existing id)."""

    added: list[int] = field(default_factory=list)
    duplicates: list[tuple[str, int]] = field(default_factory=list)


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
        array = _tensor_bytes(tensors[name])
        dtype, shape, data = array
        digest.update(f"\0{name}\0{dtype}\0{shape}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _tensor_bytes(value: Any) -> tuple[str, tuple[int, ...], bytes]:
    if hasattr(value, "detach"):  # torch.Tensor, any dtype (bfloat16 has no numpy twin)
        tensor = value.detach().cpu().contiguous()
        raw = tensor.reshape(-1).view(dtype=_torch_uint8()).numpy().tobytes()
        return str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), raw
    array = np.ascontiguousarray(np.asarray(value))
    return str(array.dtype), tuple(array.shape), array.tobytes()


def _torch_uint8() -> Any:
    import torch

    return torch.uint8


# ---------------------------------------------------------------------------------- inputs
def load_model_file(
    path: Path, spec_json: str | None = None, *, limits: Limits | None = None, **load_kwargs: Any
) -> LoadedModel:
    """Load one checkpoint file through ``weightspace.ingest`` and build its neural graph.

    Args:
        path: a safetensors file or a ``torch.save`` file (read with ``weights_only=True``).
        spec_json: the architecture as JSON text, for files that do not carry their own. Only
            ever parsed as JSON, never taken as a path (it may come from an HTTP client).
        limits: parameter, node and edge bounds checked before anything large is allocated
            (default: :func:`weightspace.limits.default_limits`).
        load_kwargs: more keyword arguments of :func:`weightspace.ingest.load_checkpoint`
            (``activation``, ``spec``, ``model``, ``allow_nonfinite``), from the CLI.

    Raises:
        CheckpointError, SpecError, UnsupportedLayerError, MissingArchitectureError, ...: as
        raised by :func:`weightspace.ingest.load_checkpoint` and
        :func:`weightspace.graph.to_graph`, each naming the file.
    """
    from weightspace.graph import to_graph
    from weightspace.ingest import load_checkpoint
    from weightspace.spec import NetworkSpec

    if spec_json is not None:
        try:
            load_kwargs["spec"] = NetworkSpec.from_json(spec_json)
        except WeightspaceError as exc:
            raise type(exc)(f"{path}: the given spec: {exc}") from None
    load_kwargs = {key: value for key, value in load_kwargs.items() if value is not None}
    # load_checkpoint checks parameters, nodes and edges against ``limits`` before allocating
    spec, state_dict = load_checkpoint(path, limits=limits, **load_kwargs)
    graph = to_graph(spec, state_dict, check=False)  # load_checkpoint checked it
    return LoadedModel(
        path=str(path),
        spec_json=spec.to_json(),
        spec_summary=spec.summary(),
        tensors=state_dict,
        graph=graph,
    )


def _json_scalar(value: Any) -> Any:
    """A JSON-safe scalar, or ``None`` for values that are not (NaN, arrays, objects)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def iter_zoo(directory: Path) -> Iterator[LoadedModel]:
    """Every checkpoint of a model zoo (``weightspace.zoo``), with its metrics as metadata."""
    from weightspace.zoo import Zoo

    zoo = Zoo.open(directory)
    for row in zoo.table.to_dict(orient="records"):
        yield _zoo_model(zoo, directory, row)


def _zoo_model(zoo: Any, directory: Path, row: Mapping[str, Any]) -> LoadedModel:
    """One zoo row (the table's ``checkpoint_id`` column names it) as a :class:`LoadedModel`."""
    from weightspace.graph import to_graph

    model_id = str(row["checkpoint_id"])
    spec = zoo.spec(model_id)
    state_dict = zoo.state_dict(model_id)
    metrics = {
        str(key): scalar
        for key, value in row.items()
        if not str(key).startswith("spec") and (scalar := _json_scalar(value)) is not None
    }
    return LoadedModel(
        path=f"{directory}#{model_id}",
        spec_json=spec.to_json(),
        spec_summary=spec.summary(),
        tensors=state_dict,
        graph=to_graph(spec, state_dict),
        metrics=metrics,
    )


def load_source(
    path: str, spec_json: str | None = None, *, loader: ModelLoader = load_model_file
) -> LoadedModel:
    """Reload a stored model from its source: ``ZOO_DIR#ID`` (a zoo row) or a checkpoint file."""
    directory, sep, checkpoint_id = path.rpartition("#")
    if sep and _is_zoo(Path(directory)):
        from weightspace.zoo import Zoo

        zoo = Zoo.open(directory)
        return _zoo_model(zoo, Path(directory), zoo.row(checkpoint_id).to_dict())
    return loader(Path(path), spec_json or None)


def _is_zoo(directory: Path) -> bool:
    return (directory / "manifest.json").is_file() and (directory / "checkpoints.parquet").exists()


def iter_inputs(
    inputs: Iterable[str | Path],
    *,
    loader: ModelLoader = load_model_file,
    spec_json: str | None = None,
) -> Iterator[LoadedModel]:
    """Expand zoo directories, checkpoint files and plain directories of checkpoints.

    A plain directory contributes every file under it whose suffix is in
    :data:`weightspace.ingest.CHECKPOINT_SUFFIXES`, in sorted order. A missing path raises
    :class:`~weightspace.errors.CheckpointError` before anything is loaded.
    """
    from weightspace.ingest import CHECKPOINT_SUFFIXES

    paths = [_resolve_input(Path(p)) for p in inputs]  # stored paths must mean the same anywhere
    for path in paths:
        if path.is_dir() and _is_zoo(path):
            yield from iter_zoo(path)
        elif path.is_dir():
            files = sorted(p for p in _walk_files(path) if p.suffix in CHECKPOINT_SUFFIXES)
            if not files:
                raise CheckpointError(
                    path,
                    f"directory holds no model zoo and no checkpoint files "
                    f"({', '.join(CHECKPOINT_SUFFIXES)})",
                )
            for file in files:
                yield loader(file, spec_json)
        else:
            yield loader(path, spec_json)


def _resolve_input(path: Path) -> Path:
    """``path`` made absolute with its symlinks resolved; a loop or a missing path is refused."""
    try:
        resolved = path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a symlink loop as RuntimeError
        raise CheckpointError(path, "symlink loop; point at a real file or directory") from None
    except FileNotFoundError:
        raise CheckpointError(path, "no such file or directory") from None
    except OSError as exc:
        problem = "symlink loop" if "loop" in str(exc).lower() else exc.strerror or str(exc)
        raise CheckpointError(path, problem) from None
    return resolved


def _walk_files(directory: Path) -> Iterator[Path]:
    """Regular files under ``directory``, following no directory symlink (so no loop)."""
    for root, _dirs, files in os.walk(directory, followlinks=False):
        for name in files:
            candidate = Path(root) / name
            try:
                if candidate.is_file():  # False for a dangling link or a link loop
                    yield candidate
            except OSError:
                continue


_IMPORT_REFERENCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def load_embedder(reference: str | Path) -> Any:
    """Load an encoder the user named: a directory (``weightspace.nn.Encoder.load``) or
    ``module:attr``.

    Only for references typed by the user (``--encoder``). ``module:attr`` names an importable
    object with ``embed`` and ``fingerprint``, or a zero-argument callable returning one (for
    baselines and third-party encoders); importing it runs its code, so a reference read from an
    index goes through :func:`load_encoder_directory` instead.
    """
    text = str(reference)
    path = Path(text)
    if not path.exists() and _IMPORT_REFERENCE.fullmatch(text):
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
            f"encoder {text!r}: no such directory; give the output of `weightspace train` or "
            f"an importable 'module:attr'"
        )
    return load_encoder_directory(path)


def load_encoder_directory(directory: str | Path) -> Any:
    """An encoder directory written by ``weightspace train``, read with
    ``weightspace.nn.Encoder.load`` (safetensors weights and a JSON config; nothing imported)."""
    from weightspace.nn.encoder import Encoder

    return Encoder.load(Path(directory))


def encoder_from_manifest(path: Path, manifest: Mapping[str, Any]) -> Any:
    """The encoder directory an index's manifest records, loaded and checked against its
    fingerprint; nothing is imported (see :meth:`ModelIndex.load_encoder`)."""
    reference = manifest.get("encoder")
    if reference is None:
        raise WeightspaceError(
            f"{path}: records no encoder directory (it was built with an importable encoder); "
            f"pass --encoder"
        )
    if not isinstance(reference, str) or _IMPORT_REFERENCE.fullmatch(reference):
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


def embedder_fingerprint(embedder: Any) -> str:
    """The embedder's fingerprint as a string (a property or a zero-argument method)."""
    value = embedder.fingerprint
    return str(value() if callable(value) else value)


def embed_models(embedder: Any, graphs: Sequence[Any], *, source: str = "") -> np.ndarray:
    """Embed graphs and return L2-normalised float32 vectors ``(n, d)``, checked for sanity."""
    vectors = np.asarray(embedder.embed(list(graphs)), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(graphs):
        raise WeightspaceError(
            f"encoder returned shape {vectors.shape} for {len(graphs)} models; expected (n, d)"
        )
    return _normalise(vectors, source=source)


def _normalise(vectors: np.ndarray, *, source: str = "") -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.all(np.isfinite(vectors)):
        raise WeightspaceError(f"{source or 'vectors'}: embedding holds NaN or Inf values")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise WeightspaceError(f"{source or 'vectors'}: embedding is the zero vector")
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)


# ---------------------------------------------------------------------------------- FAISS
def _faiss() -> Any:
    import faiss

    return faiss


@contextlib.contextmanager
def _omp_threads(threads: int | None) -> Iterator[None]:
    """Run FAISS with ``threads`` OpenMP threads in this thread (``None``: leave as is).

    A search of a few queries gains nothing from threads, and on a busy machine an OpenMP
    barrier waiting for a descheduled thread costs tens of milliseconds (measured: 40 ms vs
    0.2 ms p50 at 10k vectors on 2 loaded cores). The setting is per calling thread.
    """
    if threads is None:
        yield
        return
    faiss = _faiss()
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


class VectorStore:
    """Unit vectors in a FAISS inner-product index, exact or approximate with tuned recall.

    Rows are numbered ``0..n-1`` in insertion order; the :class:`ModelIndex` maps them to
    metadata. ``search`` is safe to call from several threads at once; ``add`` is not.

    Args:
        dim: vector dimension.
        kind: ``"flat"`` (exact), ``"ivf"``, ``"hnsw"``, or ``"auto"`` (flat below
            ``approximate_threshold`` vectors, IVF above).
        approximate_threshold: the switch point for ``"auto"``.
        target_recall: recall@10 against exact search that the approximate index is tuned to.
    """

    def __init__(
        self,
        dim: int,
        *,
        kind: IndexKind = "auto",
        approximate_threshold: int = DEFAULT_APPROXIMATE_THRESHOLD,
        target_recall: float = DEFAULT_TARGET_RECALL,
        seed: int = 0,
    ) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if kind not in ("auto", "flat", "ivf", "hnsw"):
            raise ValueError(f"unknown index kind {kind!r}; use auto, flat, ivf or hnsw")
        self.dim = dim
        self.kind: IndexKind = kind
        self.approximate_threshold = approximate_threshold
        self.target_recall = target_recall
        self.seed = seed
        self.index: Any = _faiss().IndexFlatIP(dim)
        self.active_kind: str = "flat"
        self.search_parameter: int | None = None  # nprobe (IVF) or efSearch (HNSW)
        self.recall_at_10: float | None = None  # None: exact
        self.trained_at: int = 0
        self.tuned_at: int = 0  # vectors stored when recall was last measured

    # -------------------------------------------------------------- size and state
    def __len__(self) -> int:
        return int(self.index.ntotal)

    def state(self) -> dict[str, Any]:
        """What the manifest records about this store."""
        return {
            "kind": self.kind,
            "active_kind": self.active_kind,
            "search_parameter": self.search_parameter,
            "recall_at_10": self.recall_at_10,
            "trained_at": self.trained_at,
            "recall_measured_at": self.tuned_at,
            "approximate_threshold": self.approximate_threshold,
            "target_recall": self.target_recall,
        }

    def _wanted_kind(self, total: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "ivf" if total >= self.approximate_threshold else "flat"

    # -------------------------------------------------------------- add
    def add(self, vectors: np.ndarray) -> None:
        """Append unit vectors ``(n, dim)``.

        Rebuilds the FAISS index when its kind changes or an IVF index has grown 4x since it was
        trained; re-measures recall (re-tuning nprobe / efSearch) after a rebuild or 10% growth.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        if len(vectors) == 0:
            return
        total = len(self) + len(vectors)
        wanted = self._wanted_kind(total)
        retrain = wanted != self.active_kind or (
            wanted == "ivf" and total > 4 * max(self.trained_at, 1)
        )
        if retrain and wanted != "flat":
            everything = np.concatenate([self.reconstruct_all(), vectors])
            self._rebuild(everything, wanted)
        else:
            self.index.add(vectors)
        # re-measuring recall needs exact search over everything: only after a rebuild or 10%
        # growth, so that small adds to a large index stay cheap
        if self.active_kind != "flat" and (retrain or total > 1.1 * self.tuned_at):
            self._tune()

    def reconstruct_all(self) -> np.ndarray:
        """Every stored vector, ``(n, dim)`` float32, in row order."""
        n = len(self)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._ensure_direct_map()
        return np.asarray(self.index.reconstruct_n(0, n), dtype=np.float32)

    def reconstruct(self, rows: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``rows``, ``(len(rows), dim)``."""
        self._ensure_direct_map()
        ids = np.asarray(rows, dtype=np.int64)
        return np.asarray(self.index.reconstruct_batch(ids), dtype=np.float32).reshape(
            len(ids), self.dim
        )

    def _ensure_direct_map(self) -> None:
        if self.active_kind == "ivf":
            ivf = _faiss().extract_index_ivf(self.index)
            if ivf.direct_map.type == 0:  # NoMap
                ivf.make_direct_map()

    def _rebuild(self, vectors: np.ndarray, kind: str) -> None:
        faiss = _faiss()
        n = len(vectors)
        if kind == "flat":
            index = faiss.IndexFlatIP(self.dim)
            index.add(vectors)
        elif kind == "ivf":
            # about 2 sqrt(n) lists, a power of two, each trained on at most 40 points per list
            nlist = int(2 ** round(math.log2(max(2.0 * math.sqrt(n), 16.0))))
            nlist = max(1, min(nlist, n // 8 if n >= 8 else 1))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = 10
            index.cp.seed = self.seed
            rng = np.random.default_rng(self.seed)
            sample_size = min(n, 40 * nlist)
            sample = vectors[np.sort(rng.choice(n, size=sample_size, replace=False))]
            index.train(sample)
            index.add(vectors)
            index.make_direct_map()
            quantizer.this.disown()  # the IVF index owns its quantizer from now on
            index.own_fields = True
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 64
            index.add(vectors)
        else:  # pragma: no cover - guarded in __init__
            raise ValueError(kind)
        self.index = index
        self.active_kind = kind
        self.trained_at = n

    def _tune(self) -> None:
        """Smallest nprobe / efSearch whose recall@10 vs exact reaches ``target_recall``."""
        faiss = _faiss()
        n = len(self)
        rng = np.random.default_rng(self.seed + 1)
        rows = rng.choice(n, size=min(_RECALL_QUERIES, n), replace=False)
        queries = self.reconstruct(np.sort(rows))
        # queries are stored models slightly perturbed, like a re-uploaded derivative would be
        queries = queries + rng.normal(scale=0.25 / math.sqrt(self.dim), size=queries.shape)
        queries = _normalise(queries.astype(np.float32))
        k = min(10, n)
        exact = faiss.IndexFlatIP(self.dim)
        exact.add(self.reconstruct_all())
        _, truth = exact.search(queries, k)
        if self.active_kind == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            candidates = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if p < ivf.nlist]
            candidates.append(ivf.nlist)
        else:
            candidates = [16, 32, 64, 128, 256, 512, 1024]
        recall = 0.0
        chosen = candidates[-1]
        for parameter in candidates:
            _, found = self.index.search(queries, k, params=self._params(parameter))
            recall = float(
                np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)])
            )
            chosen = parameter
            if recall >= self.target_recall:
                break
        self.search_parameter = chosen
        self.recall_at_10 = recall
        self.tuned_at = n

    def _params(self, parameter: int | None, selector: Any = None) -> Any:
        faiss = _faiss()
        if self.active_kind == "ivf":
            params = faiss.SearchParametersIVF()
            params.nprobe = int(parameter or 1)
        elif self.active_kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = int(parameter or 16)
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        return params

    # -------------------------------------------------------------- search
    def search(
        self, queries: np.ndarray, k: int, *, allowed_rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by inner product: ``(scores, rows)``, both ``(q, k')`` with
        ``k' = min(k, candidates)``; rows are ``-1`` where fewer candidates exist.

        ``allowed_rows`` restricts the candidates (a metadata filter). Small candidate sets are
        searched exactly; large ones through the approximate index with a FAISS selector.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"expected queries of shape (q, {self.dim}), got {queries.shape}")
        n = len(self)
        candidates = n if allowed_rows is None else len(allowed_rows)
        k = min(k, candidates)
        if k <= 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        with _omp_threads(1 if len(queries) < _PARALLEL_QUERIES else None):
            return self._search(queries, k, allowed_rows)

    def _search(
        self, queries: np.ndarray, k: int, allowed_rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if allowed_rows is None:
            return self.index.search(queries, k, params=self._params(self.search_parameter))
        allowed_rows = np.asarray(allowed_rows, dtype=np.int64)
        if self.active_kind == "flat" or len(allowed_rows) > _EXACT_SUBSET_LIMIT:
            selector = _faiss().IDSelectorBatch(allowed_rows)
            params = self._params(self.search_parameter, selector)
            return self.index.search(queries, k, params=params)
        subset = self.reconstruct(allowed_rows)  # (m, dim)
        scores = queries @ subset.T  # (q, m)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, axis=1), allowed_rows[top]

    # -------------------------------------------------------------- persistence
    def save(self, path: Path) -> None:
        """Write the FAISS index to ``path`` (the caller makes the write atomic)."""
        _faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, dim: int, state: Mapping[str, Any]) -> VectorStore:
        """Read a store written by :meth:`save`, with the manifest's ``state``."""
        store = cls(
            dim,
            kind=state.get("kind", "auto"),
            approximate_threshold=int(
                state.get("approximate_threshold", DEFAULT_APPROXIMATE_THRESHOLD)
            ),
            target_recall=float(state.get("target_recall", DEFAULT_TARGET_RECALL)),
        )
        faiss = _faiss()
        store.index = faiss.read_index(str(path))
        if store.index.d != dim:
            raise IndexFormatError(f"{path}: FAISS index has dim {store.index.d}, manifest {dim}")
        # the kind is read off the FAISS object, not trusted from the manifest
        if isinstance(store.index, faiss.IndexFlat):
            store.active_kind = "flat"
        elif isinstance(store.index, faiss.IndexHNSW):
            store.active_kind = "hnsw"
        elif faiss.try_extract_index_ivf(store.index) is not None:
            store.active_kind = "ivf"
        else:
            raise IndexFormatError(f"{path}: unexpected FAISS index {type(store.index).__name__}")
        parameter = state.get("search_parameter")
        store.search_parameter = None if parameter is None else int(parameter)
        recall = state.get("recall_at_10")
        store.recall_at_10 = None if recall is None else float(recall)
        store.trained_at = int(state.get("trained_at", 0))
        store.tuned_at = int(state.get("recall_measured_at", 0))
        return store


# ---------------------------------------------------------------------------------- the index
_SCHEMA = """
CREATE TABLE manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    content_hash TEXT NOT NULL UNIQUE,
    spec_summary TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    metrics TEXT NOT NULL,
    added_at TEXT NOT NULL,
    embedding BLOB
);
CREATE TABLE batches (
    generation INTEGER PRIMARY KEY,
    first_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    vectors_digest TEXT NOT NULL,
    rows_digest TEXT NOT NULL,
    committed_at TEXT NOT NULL
);
"""
_RECORD_COLUMNS = "id, path, content_hash, spec_summary, spec_json, metrics, added_at"


def parse_filters(filters: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["task=digits", "epoch=10"]`` → ``{"task": "digits", "epoch": 10}``.

    Values that parse as JSON numbers or booleans are compared as such; everything else as text.
    """
    if filters is None:
        return {}
    if isinstance(filters, Mapping):
        items = list(filters.items())
    else:
        items = []
        for text in filters:
            key, sep, value = str(text).partition("=")
            if not sep or not key.strip():
                raise WeightspaceError(f"filter {text!r} is not of the form key=value")
            items.append((key.strip(), value.strip()))
    parsed: dict[str, Any] = {}
    for key, value in items:
        if not _FILTER_KEY.match(key):
            raise WeightspaceError(
                f"filter key {key!r} may only hold letters, digits, '_', '.' and '-'"
            )
        if isinstance(value, str):
            with contextlib.suppress(json.JSONDecodeError):
                decoded = json.loads(value)
                if isinstance(decoded, bool | int | float):
                    value = decoded
        parsed[key] = value
    return parsed


@contextlib.contextmanager
def _catalog_errors(meta: Path) -> Iterator[None]:
    """Turn SQLite failures (a damaged file, a dropped table, a busy lock) into one-line errors."""
    try:
        yield
    except (sqlite3.Error, UnicodeDecodeError) as exc:  # text that is not UTF-8 too
        text = " ".join(str(exc).split())
        if "locked" in text or "busy" in text:
            raise IndexBusyError(
                f"{meta}: the catalog is locked by another process ({text})"
            ) from None
        raise IndexCorruptError(
            f"{meta}: the catalog is damaged ({text}); check it with `weightspace index info "
            f"--verify`, then rebuild the index"
        ) from None


def _connect(meta: Path) -> sqlite3.Connection:
    """A connection for reading. Not ``mode=ro``: after a killed writer, the first reader must be
    able to roll back the hot journal SQLite left behind."""
    connection = sqlite3.connect(meta, timeout=30, check_same_thread=False)
    connection.execute("PRAGMA query_only=ON")
    return connection


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class ModelIndex:
    """A persistent, de-duplicated index of model embeddings with metadata.

    Open one with :meth:`open`, or make one with :meth:`build`. Reads (``search``, ``get``) are
    thread-safe; writes (``add``) take the index's file lock and commit atomically.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], store: VectorStore) -> None:
        self.path = path
        self.manifest = manifest
        self.store = store
        self._local = threading.local()

    # -------------------------------------------------------------- properties
    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def encoder(self) -> str | None:
        """The encoder directory recorded at build time, if any (never imported: see
        :meth:`load_encoder`)."""
        value = self.manifest.get("encoder")
        return None if value is None else str(value)

    def load_encoder(self) -> Any:
        """The recorded encoder directory, loaded with ``weightspace.nn.Encoder.load`` and
        checked against the index's fingerprint.

        Raises:
            WeightspaceError: the index records no encoder directory, or (indexes built before
                format 2) an importable ``module:attr``, which is never imported: pass
                ``--encoder``.
            EncoderMismatchError: the directory holds another encoder now.
        """
        return encoder_from_manifest(self.path, self.manifest)

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    def __len__(self) -> int:
        return len(self.store)

    def __repr__(self) -> str:
        return (
            f"ModelIndex({str(self.path)!r}, models={len(self)}, dim={self.dim}, "
            f"kind={self.store.active_kind!r}, fingerprint={self.fingerprint[:12]!r})"
        )

    @property
    def format_version(self) -> int:
        return int(self.manifest["format_version"])

    def info(self) -> dict[str, Any]:
        """The manifest plus the live count, for ``/health`` and the CLI."""
        return {**self.manifest, "count": len(self), "path": str(self.path)}

    def check_catalog(self) -> None:
        """Cheap catalog check beyond :meth:`open`'s (:func:`~weightspace.index_integrity.
        check_catalog`): SQLite's ``quick_check`` and JSON in every row's metrics and spec."""
        check_catalog(self)

    # -------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | Path) -> ModelIndex:
        """Open a committed index; refuse other format versions, damaged or inconsistent files.

        Checks on every open (cheap): the catalog's tables and row count against the manifest,
        the vector file against its recorded checksum (:func:`~weightspace.index_integrity.
        check_file`, quick mode), and the FAISS vector count.
        """
        path = Path(path)
        meta = path / _META_FILE
        if not path.is_dir() or not meta.is_file():
            raise IndexFormatError(
                f"{path}: not a weightspace index (no {_META_FILE}); create one with "
                f"`weightspace index build`"
            )
        for _attempt in range(5):
            manifest = cls._read_manifest(path)
            vectors = path / f"vectors-{manifest['generation']}.faiss"
            try:
                if manifest["format_version"] >= 2:
                    check_file(
                        vectors,
                        manifest["vectors_checksum"],
                        repair_hint=f"run `weightspace index repair {path}`",
                    )
                store = VectorStore.load(vectors, int(manifest["dim"]), manifest["store"])
            except (IndexCorruptError, RuntimeError) as exc:
                if not vectors.exists():
                    time.sleep(0.05)  # a writer committed a newer generation meanwhile: re-read
                    continue
                if isinstance(exc, IndexCorruptError):
                    raise
                raise IndexCorruptError(
                    f"{vectors}: cannot read the FAISS index ({str(exc).splitlines()[0][:200]}); "
                    f"run `weightspace index repair {path}`"
                ) from None
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                raise IndexCorruptError(
                    f"{meta}: the manifest's store settings are damaged ({exc}); run "
                    f"`weightspace index repair {path}`"
                ) from None
            if len(store) != int(manifest["count"]):
                raise IndexCorruptError(
                    f"{vectors}: holds {len(store)} vectors but {meta} lists "
                    f"{manifest['count']} models; run `weightspace index repair {path}`"
                )
            return cls(path, manifest, store)
        raise IndexFormatError(
            f"{path}: the vectors file of the committed generation is missing; run "
            f"`weightspace index repair {path}`"
        )

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        """The manifest, checked against the catalog in one read transaction: the tables exist,
        the rows and (format 2) the committed batches add up to the manifest's count."""
        meta = path / _META_FILE
        try:
            connection = _connect(meta)
            try:
                connection.execute("BEGIN")  # one snapshot: a writer commits all or nothing
                tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
                if "manifest" not in tables:
                    raise IndexFormatError(
                        f"{meta}: not a weightspace index database (no manifest table); an "
                        f"interrupted first build leaves this behind: run `weightspace index "
                        f"build --overwrite` again"
                    )
                rows = connection.execute("SELECT key, value FROM manifest").fetchall()
                counts = None
                if "models" in tables:
                    counts = connection.execute("SELECT count(*) FROM models").fetchone()[0]
                batched = None
                if "batches" in tables:
                    batched = connection.execute(
                        "SELECT coalesce(sum(count), 0) FROM batches"
                    ).fetchone()[0]
                connection.commit()
            finally:
                connection.close()
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise IndexFormatError(
                f"{meta}: not a weightspace index database, or a damaged one "
                f"({' '.join(str(exc).split())}); rebuild it with `weightspace index build "
                f"--overwrite`"
            ) from None
        return validate_manifest(
            path,
            rows,
            tables,
            models=counts,
            batched=batched,
            readable=READABLE_FORMAT_VERSIONS,
            current=INDEX_FORMAT_VERSION,
        )

    def _connection(self) -> sqlite3.Connection:
        """A read-only connection owned by the calling thread."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = _connect(self.path / _META_FILE)
            self._local.connection = connection
        return connection

    def close(self) -> None:
        """Close this thread's database connection (others close when their thread ends)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def check_embedder(self, embedder: Any) -> None:
        """Raise :class:`EncoderMismatchError` unless ``embedder`` built this index."""
        fingerprint = embedder_fingerprint(embedder)
        if fingerprint != self.fingerprint:
            raise EncoderMismatchError(
                f"{self.path}: built with encoder {self.fingerprint[:16]!r} "
                f"({self.encoder or 'unknown source'!r}), but the given encoder is "
                f"{fingerprint[:16]!r}; query with the same encoder or rebuild the index"
            )

    # -------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        path: str | Path,
        models: Iterable[LoadedModel],
        embedder: Any,
        *,
        encoder: str | None = None,
        kind: IndexKind = "auto",
        approximate_threshold: int = DEFAULT_APPROXIMATE_THRESHOLD,
        overwrite: bool = False,
        batch_size: int = 64,
        on_progress: ProgressCallback | None = None,
        lock_timeout: float = 10.0,
    ) -> tuple[ModelIndex, AddReport]:
        """Embed ``models`` and store them as a new index at ``path``.

        An existing index at ``path`` is replaced only with ``overwrite=True``, and only when the
        new one is committed: a build that fails or is killed leaves it as it was. ``encoder`` is
        the encoder's directory, recorded so that later commands can load it without
        ``--encoder``; an importable ``module:attr`` is refused here (an index never names code).
        """
        fingerprint = embedder_fingerprint(embedder)
        path = Path(path)
        if encoder is not None:
            if _IMPORT_REFERENCE.fullmatch(str(encoder)) or not Path(encoder).is_dir():
                raise WeightspaceError(
                    f"{path}: an index records only an encoder directory, not {str(encoder)!r}"
                )
            encoder = str(Path(encoder).resolve())
        if not overwrite and _existing_generation(path) is not None:  # fail before embedding
            raise WeightspaceError(
                f"{path}: an index already exists; use `index add` to extend it or "
                f"--overwrite to replace it"
            )
        records, vectors, report = _embed_all(
            models, embedder, known_hashes={}, batch_size=batch_size, on_progress=on_progress
        )
        dim = int(vectors.shape[1]) if len(vectors) else _declared_dim(embedder)
        store = VectorStore(dim, kind=kind, approximate_threshold=approximate_threshold)
        store.add(vectors)
        manifest = {
            "format_version": INDEX_FORMAT_VERSION,
            "fingerprint": fingerprint,
            "encoder": encoder,
            "dim": dim,
            "created_at": _now(),
        }
        path.mkdir(parents=True, exist_ok=True)
        with _write_lock(path, lock_timeout):
            previous = _existing_generation(path)
            if previous is not None and not overwrite:
                raise WeightspaceError(
                    f"{path}: an index already exists; use `index add` to extend it or "
                    f"--overwrite to replace it"
                )
            _commit(
                path,
                manifest,
                store,
                records,
                vectors,
                first_id=0,
                reset=True,
                on_progress=on_progress,
            )
        report.added.extend(range(len(records)))
        report.duplicates[:] = [
            (source, -1 - existing if existing < 0 else existing)
            for source, existing in report.duplicates
        ]
        return cls.open(path), report

    def add(
        self,
        models: Iterable[LoadedModel],
        embedder: Any,
        *,
        batch_size: int = 64,
        on_progress: ProgressCallback | None = None,
        lock_timeout: float = 10.0,
    ) -> AddReport:
        """Embed and store ``models`` not stored yet (by content hash); commit atomically."""
        self.check_embedder(embedder)
        with _write_lock(self.path, lock_timeout):
            self._reload_for_writing()
            records, vectors, report = _embed_all(
                models,
                embedder,
                known_hashes=self._hash_to_id(),
                batch_size=batch_size,
                on_progress=on_progress,
            )
            self._append_locked(records, vectors, report, on_progress)
        return report

    def add_vectors(
        self,
        vectors: np.ndarray,
        records: Sequence[Mapping[str, Any]],
        *,
        on_progress: ProgressCallback | None = None,
        lock_timeout: float = 10.0,
    ) -> AddReport:
        """Store precomputed vectors ``(n, dim)`` with metadata records.

        Each record needs ``path`` and ``content_hash``, and may have ``spec_summary``,
        ``spec_json`` and ``metrics``. The vectors must come from this index's encoder.
        """
        vectors = _normalise(np.asarray(vectors, dtype=np.float32))
        if len(records) != len(vectors):
            raise ValueError(f"got {len(vectors)} vectors but {len(records)} records")
        with _write_lock(self.path, lock_timeout):
            self._reload_for_writing()
            known = self._hash_to_id()
            report = AddReport()
            keep: list[int] = []
            rows: list[dict[str, Any]] = []
            for i, record in enumerate(records):
                digest = str(record["content_hash"])
                if digest in known:
                    report.duplicates.append((str(record["path"]), known[digest]))
                    continue
                known[digest] = -1 - len(keep)
                keep.append(i)
                rows.append(_row(record))
            self._append_locked(rows, vectors[keep], report, on_progress)
        return report

    def _append_locked(
        self,
        rows: list[dict[str, Any]],
        vectors: np.ndarray,
        report: AddReport,
        on_progress: ProgressCallback | None,
    ) -> None:
        if not rows:
            return
        if vectors.shape[1] != self.dim:
            raise WeightspaceError(
                f"{self.path}: vectors have dim {vectors.shape[1]}, the index holds dim {self.dim}"
            )
        first_id = len(self.store)
        self.store.add(vectors)
        try:
            _commit(
                self.path,
                self.manifest,
                self.store,
                rows,
                vectors,
                first_id=first_id,
                reset=False,
                on_progress=on_progress,
            )
        finally:
            self._reload_locked()  # on failure, back to the committed state
        report.added.extend(range(first_id, first_id + len(rows)))
        report.duplicates[:] = [
            (path, first_id - 1 - existing if existing < 0 else existing)
            for path, existing in report.duplicates
        ]

    def _reload_locked(self) -> None:
        fresh = ModelIndex.open(self.path)
        self.manifest, self.store = fresh.manifest, fresh.store

    def _reload_for_writing(self) -> None:
        """Reload under the write lock; refuse to extend an old-format or damaged catalog."""
        self._reload_locked()
        if self.format_version < INDEX_FORMAT_VERSION:
            raise IndexFormatError(
                f"{self.path}: index format {self.format_version} has no checksums and cannot be "
                f"extended; upgrade it with `weightspace index repair {self.path}` (re-embeds "
                f"from the source files) or rebuild it"
            )
        self.check_catalog()

    def refresh(self, *, strict: bool = False) -> bool:
        """Reload if another process committed a newer generation; return whether it did.

        Reads the manifest and the catalog's counts from disk. ``strict``: a damaged index on
        disk raises :class:`IndexFormatError` (else the loaded state is kept), and the vector
        file is checked against its checksum even when unchanged.
        """
        try:
            manifest = self._read_manifest(self.path)
            vectors = self.path / f"vectors-{self.generation}.faiss"
            if strict and manifest["generation"] == self.generation and self.format_version >= 2:
                try:
                    check_file(vectors, manifest["vectors_checksum"], repair_hint="repair it")
                except IndexCorruptError:
                    if vectors.exists():
                        raise
                    manifest = self._read_manifest(self.path)  # a writer committed meanwhile
        except IndexFormatError:
            if strict:
                raise
            return False
        if manifest["generation"] == self.generation:
            return False
        fresh = ModelIndex.open(self.path)
        self.manifest, self.store = fresh.manifest, fresh.store
        return True

    def _hash_to_id(self) -> dict[str, int]:
        with _catalog_errors(self.path / _META_FILE):
            connection = _connect(self.path / _META_FILE)
            try:
                return dict(connection.execute("SELECT content_hash, id FROM models").fetchall())
            finally:
                connection.close()

    def query_catalog(self, sql: str, values: Sequence[Any] = ()) -> list[Any]:
        """Rows of a read-only catalog query on this thread's connection; SQLite errors become
        one-line :class:`IndexCorruptError` (or :class:`IndexBusyError`)."""
        with _catalog_errors(self.path / _META_FILE):
            return self._connection().execute(sql, values).fetchall()

    # -------------------------------------------------------------- reading
    def get(self, model_id: int) -> ModelRecord | None:
        """The stored metadata of one model, or ``None`` (also for ids no SQLite integer holds)."""
        model_id = int(model_id)
        if not 0 <= model_id < 2**63:
            return None
        rows = self.query_catalog(f"SELECT {_RECORD_COLUMNS} FROM models WHERE id = ?", (model_id,))
        return _record(rows[0], self.path) if rows else None

    def find_hash(self, digest: str) -> ModelRecord | None:
        """The stored model with this content hash, or ``None``."""
        rows = self.query_catalog(
            f"SELECT {_RECORD_COLUMNS} FROM models WHERE content_hash = ?", (str(digest),)
        )
        return _record(rows[0], self.path) if rows else None

    def _allowed_rows(self, filters: Mapping[str, Any]) -> np.ndarray:
        clauses, values = [], []
        for key, value in filters.items():
            if key in _COLUMN_FILTERS:
                clauses.append(f"{_COLUMN_FILTERS[key]} = ?")
            else:
                clauses.append(f"json_extract(metrics, '$.\"{key}\"') = ?")
            values.append(value)
        query = "SELECT id FROM models WHERE " + " AND ".join(clauses)
        ids = [row[0] for row in self.query_catalog(query, values)]
        return np.asarray([i for i in ids if i < len(self.store)], dtype=np.int64)

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        filters: Iterable[str] | Mapping[str, Any] | None = None,
    ) -> list[list[SearchHit]]:
        """Nearest stored models of each query vector ``(q, dim)`` (or ``(dim,)``).

        Args:
            queries: embeddings from this index's encoder; normalised here.
            k: neighbours per query.
            filters: ``key=value`` strings or a mapping; keys are metric names (``task``,
                ``epoch``, ...) or ``path``, ``content_hash``, ``arch_summary``.
        """
        if k < 1:
            raise WeightspaceError(f"k must be at least 1, got {k}")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise WeightspaceError(
                f"query vectors have shape {queries.shape}; this index holds dim {self.dim}"
            )
        queries = _normalise(queries, source="query")
        parsed = parse_filters(filters)
        allowed = self._allowed_rows(parsed) if parsed else None
        scores, rows = self.store.search(queries, k, allowed_rows=allowed)
        ids = sorted({int(r) for r in rows.ravel() if r >= 0})
        records: dict[int, ModelRecord] = {}
        if ids:
            placeholders = ",".join("?" * len(ids))
            for row in self.query_catalog(
                f"SELECT {_RECORD_COLUMNS} FROM models WHERE id IN ({placeholders})", ids
            ):
                records[row[0]] = _record(row, self.path)
        results: list[list[SearchHit]] = []
        for score_row, id_row in zip(scores, rows, strict=True):
            hits = []
            for score, row in zip(score_row, id_row, strict=True):
                if row < 0 or int(row) not in records:
                    continue
                hits.append(SearchHit(len(hits) + 1, float(score), records[int(row)]))
            results.append(hits)
        return results

    def search_models(
        self,
        models: Sequence[LoadedModel],
        embedder: Any,
        k: int = 10,
        *,
        filters: Iterable[str] | Mapping[str, Any] | None = None,
    ) -> list[list[SearchHit]]:
        """Embed ``models`` with ``embedder`` (checked against the index) and search."""
        self.check_embedder(embedder)
        vectors = embed_models(embedder, [m.graph for m in models], source=models[0].path)
        return self.search(vectors, k, filters=filters)


# ---------------------------------------------------------------------------------- writing
def _record(row: Sequence[Any], index_path: Path) -> ModelRecord:
    """A catalog row as a :class:`ModelRecord`; a damaged row is an :class:`IndexCorruptError`."""
    try:
        metrics = json.loads(row[5])
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
        if not all(isinstance(v, str) for v in (row[1], row[2], row[3], row[4], row[6])):
            raise ValueError("a text column holds another type")
    except (TypeError, ValueError) as exc:
        raise IndexCorruptError(
            f"{index_path / _META_FILE}: catalog row {row[0]} is damaged ({exc}); check the "
            f"index with `weightspace index info --verify` and rebuild it"
        ) from None
    return ModelRecord(
        id=int(row[0]),
        path=row[1],
        content_hash=row[2],
        spec_summary=row[3],
        spec_json=row[4],
        metrics=metrics,
        added_at=row[6],
    )


def _row(record: Mapping[str, Any]) -> dict[str, Any]:
    metrics = {
        str(k): s
        for k, v in dict(record.get("metrics", {})).items()
        if (s := _json_scalar(v)) is not None
    }
    return {
        "path": str(record["path"]),
        "content_hash": str(record["content_hash"]),
        "spec_summary": str(record.get("spec_summary", "")),
        "spec_json": str(record.get("spec_json", "")),
        "metrics": metrics,
    }


def _declared_dim(embedder: Any) -> int:
    dim = getattr(embedder, "dim", None)
    if dim is None:
        raise WeightspaceError(
            "no models to index and the encoder declares no dim; give at least one checkpoint"
        )
    return int(dim)


def _embed_all(
    models: Iterable[LoadedModel],
    embedder: Any,
    *,
    known_hashes: Mapping[str, int],
    batch_size: int,
    on_progress: ProgressCallback | None,
) -> tuple[list[dict[str, Any]], np.ndarray, AddReport]:
    """Hash, de-duplicate and embed in batches; nothing is written here."""
    report = AddReport()
    seen = dict(known_hashes)
    rows: list[dict[str, Any]] = []
    chunks: list[np.ndarray] = []
    batch: list[tuple[dict[str, Any], Any]] = []

    def flush() -> None:
        if not batch:
            return
        vectors = embed_models(embedder, [g for _, g in batch], source=batch[0][0]["path"])
        chunks.append(vectors)
        rows.extend(r for r, _ in batch)
        batch.clear()
        if on_progress is not None:
            on_progress("embed", len(rows), 0)  # total unknown: inputs are streamed

    for model in models:
        digest = content_hash(model.spec_json, model.tensors)
        if digest in seen:
            report.duplicates.append((model.path, seen[digest]))
            continue
        # a later duplicate of this model refers to it as -1 - its position until committed
        seen[digest] = -1 - (len(rows) + len(batch))
        record = _row(
            {
                "path": model.path,
                "content_hash": digest,
                "spec_summary": model.spec_summary,
                "spec_json": model.spec_json,
                "metrics": model.metrics,
            }
        )
        batch.append((record, model.graph))
        if len(batch) >= batch_size:
            flush()
    flush()
    if chunks:
        vectors = np.concatenate(chunks)
    else:
        dim = getattr(embedder, "dim", None)
        vectors = np.zeros((0, int(dim) if dim else 0), dtype=np.float32)
    return rows, vectors, report


@contextlib.contextmanager
def _write_lock(path: Path, timeout: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(path / _LOCK_FILE))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise IndexBusyError(
            f"{path}: another process is writing this index (lock {path / _LOCK_FILE} held for "
            f"{timeout:.0f} s); wait for it to finish"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _existing_generation(path: Path) -> int | None:
    """The committed generation of the index at ``path``; ``None`` if nothing was committed.

    An index of another format version, or a damaged one, counts as existing (``0``): it is
    replaced only on request.
    """
    meta = path / _META_FILE
    if not meta.is_file():
        return None
    try:
        connection = _connect(meta)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        finally:
            connection.close()
    except (sqlite3.DatabaseError, UnicodeDecodeError):
        return 0
    if "manifest" not in tables:
        return None  # an interrupted first build committed nothing
    try:
        return int(ModelIndex._read_manifest(path)["generation"])
    except IndexFormatError:
        return 0


def _generations_on_disk(path: Path) -> list[int]:
    return [int(m.group(1)) for p in path.iterdir() if (m := _VECTORS_PATTERN.match(p.name))]


def _commit(
    path: Path,
    manifest: Mapping[str, Any],
    store: VectorStore,
    rows: Sequence[Mapping[str, Any]],
    vectors: np.ndarray,
    *,
    first_id: int,
    reset: bool,
    on_progress: ProgressCallback | None,
    chunk: int = 10_000,
) -> None:
    """Write the new generation's FAISS file, then its rows, its batch checksums and the
    manifest (with the file's checksum) in one transaction.

    ``vectors`` ``(len(rows), dim)`` are the rows' unit vectors, stored in the catalog too (so
    ``index repair`` can rebuild the FAISS file). The caller holds the write lock. Killed before
    the COMMIT, the previous generation stays the committed one and its FAISS file is untouched.
    """
    generation = max([*_generations_on_disk(path), 0]) + 1
    vectors_file = path / f"vectors-{generation}.faiss"
    temporary = path / f".vectors-{generation}.faiss.tmp-{os.getpid()}"
    store.save(temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    checksum = file_digest(temporary)
    os.replace(temporary, vectors_file)
    _fsync_directory(path)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) != len(rows):
        raise ValueError(f"got {len(vectors)} vectors for {len(rows)} rows")

    # a damaged catalog (a mangled schema, a dropped table) fails here as one line
    with _catalog_errors(path / _META_FILE):
        connection = sqlite3.connect(path / _META_FILE, timeout=30, isolation_level=None)
        try:
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("BEGIN IMMEDIATE")
            try:
                if reset:
                    for table in ("manifest", "models", "batches"):
                        connection.execute(f"DROP TABLE IF EXISTS {table}")
                    for statement in _SCHEMA.strip().split(";"):
                        if statement.strip():
                            connection.execute(statement)
                stamp = _now()
                catalog = [
                    (
                        first_id + offset,
                        row["path"],
                        row["content_hash"],
                        row["spec_summary"],
                        row["spec_json"],
                        json.dumps(row["metrics"], sort_keys=True),
                        str(row.get("added_at") or stamp),
                    )
                    for offset, row in enumerate(rows)
                ]
                for start in range(0, len(rows), chunk):
                    connection.executemany(
                        f"INSERT INTO models ({_RECORD_COLUMNS}, embedding) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (*values, vectors[start + offset].tobytes())
                            for offset, values in enumerate(catalog[start : start + chunk])
                        ],
                    )
                    if on_progress is not None:
                        on_progress("write", min(start + chunk, len(rows)), len(rows))
                if rows:
                    connection.execute(
                        "INSERT INTO batches (generation, first_id, count, vectors_digest, "
                        "rows_digest, committed_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            generation,
                            first_id,
                            len(rows),
                            vectors_digest(vectors),
                            rows_digest(catalog),
                            stamp,
                        ),
                    )
                new_manifest = {
                    **manifest,
                    "format_version": INDEX_FORMAT_VERSION,
                    "generation": generation,
                    "count": len(store),
                    "store": store.state(),
                    "vectors_checksum": checksum,
                    "updated_at": stamp,
                    "faiss_version": _faiss().__version__,
                }
                connection.executemany(
                    "INSERT OR REPLACE INTO manifest (key, value) VALUES (?, ?)",
                    [(key, json.dumps(value)) for key, value in new_manifest.items()],
                )
                connection.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                with contextlib.suppress(OSError):
                    vectors_file.unlink()
                raise
        finally:
            connection.close()
    for old in _generations_on_disk(path):
        if old != generation:
            with contextlib.suppress(OSError):
                (path / f"vectors-{old}.faiss").unlink()
    for stray in path.glob(".vectors-*.tmp-*"):
        with contextlib.suppress(OSError):
            stray.unlink()
