"""The model index as an HTTP service (FastAPI): search, predict, look up.

Endpoints (OpenAPI docs at ``/docs``):

* ``POST /search`` — multipart upload of a safetensors ``file`` (and optionally its ``spec`` as
  JSON text, for files without one in their metadata), ``k`` and repeatable ``filter=key=value``;
  returns the nearest stored models with cosine score and metadata.
* ``POST /predict`` — the same upload; returns the predicted test accuracy, from the encoder's
  accuracy head, or else the mean stored accuracy of the nearest neighbours.
* ``GET /models/{id}`` — a stored model's metadata and spec.
* ``GET /health`` — liveness plus the index's size (read from disk), encoder fingerprint and
  recall; 503 with a JSON body when the index on disk is damaged.

Only safetensors is accepted over HTTP: the header is checked before anything is parsed, and a
pickle (``torch.save``) upload is refused, never unpickled. Bodies above ``max_upload_bytes`` are
refused with 413 as soon as the limit is crossed. Bad uploads are 4xx answers that say what is
wrong; the server keeps answering. Endpoints are synchronous and run in the server's thread
pool: FAISS search is thread-safe, each thread has its own SQLite connection.

Memory is bounded in three steps (:class:`ServerSettings`): uploads are loaded and embedded only
on a pool of ``max_concurrent_embeddings`` threads; at most ``max_queued_uploads`` more wait for
one, and further uploads get 429 before their body is read; and a model over the
parameter, node or edge caps (:class:`weightspace.limits.Limits`) gets 413 before its graph is
built (parameters are counted from the safetensors header, before any tensor is read). A damaged
index gets 503 with a JSON body. The checks of an upload are :mod:`weightspace.serve_uploads`, the
middleware :mod:`weightspace.serve_middleware`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import struct
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np

try:
    from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
    from fastapi.responses import JSONResponse
except ModuleNotFoundError as exc:  # the `serve` extra is not installed
    from weightspace.extras import missing_extra_error

    raise missing_extra_error(
        exc, "serve", feature="the HTTP service (weightspace.serve)"
    ) from None

from weightspace.errors import WeightspaceError
from weightspace.index import (
    Embedder,
    LoadedModel,
    ModelIndex,
    ModelLoader,
    content_hash,
    embed_models,
    embedder_inputs,
    load_model_file,
    parse_filters,
)
from weightspace.limits import Limits, default_limits
from weightspace.serve_middleware import UPLOAD_PATHS, Admission, UploadLimit
from weightspace.serve_uploads import (
    UploadError,
    check_declared_graph,
    check_safetensors_header,
    declared_parameters,
    safe_name,
    status_of,
)

#: the old private names, for code that imported them from here
_Admission, _UploadLimit, _UPLOAD_PATHS = Admission, UploadLimit, UPLOAD_PATHS

if TYPE_CHECKING:
    from weightspace.index.postgres import PostgresIndex

__all__ = [
    "create_app",
    "check_safetensors_header",
    "declared_parameters",
    "ServerSettings",
    "SERVER_MAX_EDGES",
    "server_limits",
    "DEFAULT_MAX_UPLOAD_BYTES",
]

#: Default upload limit: 64 MiB, far above any zoo model.
DEFAULT_MAX_UPLOAD_BYTES = 64 * 2**20
_MAX_K = 1000
_REFRESH_SECONDS = 2.0
#: The server's default cap on an uploaded model's graph edges. One embedding with the default
#: encoder configuration holds about 740 bytes per edge at its peak (measured with
#: benchmarks/bench_serve_memory.py: a 1M-edge MLP raised the server from 0.42 to 1.16 GiB), so
#: two embedding slots at this cap stay under 4 GB. ``WEIGHTSPACE_MAX_EDGES`` or ``--max-edges``
#: replace it.
SERVER_MAX_EDGES = 2_000_000


def server_limits() -> Limits:
    """:func:`weightspace.limits.default_limits`, with the edge cap lowered to
    :data:`SERVER_MAX_EDGES` unless ``WEIGHTSPACE_MAX_EDGES`` sets it."""
    limits = default_limits()
    if "WEIGHTSPACE_MAX_EDGES" in os.environ:
        return limits
    return limits.with_overrides(
        max_edges=min(limits.max_edges or SERVER_MAX_EDGES, SERVER_MAX_EDGES)
    )


@dataclass(frozen=True)
class ServerSettings:
    """What bounds the server's memory (``weightspace serve`` options).

    Peak memory is about the idle server plus ``max_concurrent_embeddings`` times what one
    embedding of a model at the caps takes (the encoder's edge states dominate: about 700 bytes
    per edge with the default encoder configuration); queued uploads are spooled to disk.
    """

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES  # larger bodies get 413
    max_concurrent_embeddings: int = 2  # uploads loaded and embedded at once
    max_queued_uploads: int = 32  # uploads waiting for a slot (spooled to disk); beyond, 429
    limits: Limits = field(default_factory=server_limits)  # per-model caps; above, 413

    def __post_init__(self) -> None:
        if self.max_concurrent_embeddings < 1 or self.max_queued_uploads < 0:
            raise ValueError("max_concurrent_embeddings must be >= 1, max_queued_uploads >= 0")


@dataclass(frozen=True)
class _Embedded:
    """What an embedding thread hands back for one upload."""

    filename: str
    spec_summary: str
    content_hash: str
    vector: np.ndarray  # (1, dim), unit norm
    predicted_accuracy: float | None


def create_app(
    index: ModelIndex | PostgresIndex,
    embedder: Embedder,
    *,
    loader: ModelLoader | None = None,
    max_upload_bytes: int | None = None,
    max_concurrent_embeddings: int | None = None,
    settings: ServerSettings | None = None,
) -> Any:
    """The FastAPI application serving ``index``, queried through ``embedder``.

    Args:
        index: an open :class:`~weightspace.index.ModelIndex`; reloaded when another process
            commits to it.
        embedder: the encoder that built the index (its fingerprint is checked here).
        loader: turns an uploaded file (and optional spec JSON) into a
            :class:`~weightspace.index.LoadedModel` (default:
            :func:`~weightspace.index.load_model_file` with the settings' caps).
        max_upload_bytes, max_concurrent_embeddings: override those of ``settings``.
        settings: upload size, concurrency, queue and per-model caps (:class:`ServerSettings`).

    Returns:
        An ASGI application for uvicorn: the FastAPI app (at ``.app.app``) behind the upload
        limit and the admission control.
    """
    settings = settings or ServerSettings()
    overrides = {
        "max_upload_bytes": max_upload_bytes,
        "max_concurrent_embeddings": max_concurrent_embeddings,
    }
    settings = dataclasses.replace(
        settings, **{key: value for key, value in overrides.items() if value is not None}
    )
    max_upload_bytes = settings.max_upload_bytes
    limits = settings.limits
    if loader is None:
        loader = functools.partial(load_model_file, limits=limits)
    index.check_embedder(embedder)
    # Uploads are loaded and embedded on this pool's threads only: at most N at once, and the
    # memory malloc keeps per thread after an embedding is bounded by N threads, not by the
    # request thread pool's 40 (measured: 8 request threads, 2 at a time, 1M-edge models:
    # 2.5 GB peak; the same work on 2 dedicated threads: 1.8 GB).
    embedding_pool = ThreadPoolExecutor(
        settings.max_concurrent_embeddings, thread_name_prefix="weightspace-embed"
    )
    refresh_lock = threading.Lock()
    last_refresh = [time.monotonic()]

    application = FastAPI(
        title="weightspace model search",
        description="Search a weightspace index of neural-network checkpoints by uploading a "
        "checkpoint (safetensors only).",
        version=str(index.manifest.get("format_version")),
    )

    @application.exception_handler(WeightspaceError)
    async def _user_error(_request: Request, exc: WeightspaceError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status_of(exc))

    @application.exception_handler(Exception)
    async def _server_error(_request: Request, exc: Exception) -> JSONResponse:
        # a bug, not bad input: still a JSON body, never a traceback sent to the client
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); see the server log"},
            status_code=500,
        )

    def maybe_refresh() -> None:
        now = time.monotonic()
        if now - last_refresh[0] < _REFRESH_SECONDS or not refresh_lock.acquire(blocking=False):
            return
        try:
            last_refresh[0] = now
            index.refresh()
        finally:
            refresh_lock.release()

    def load_upload(file: UploadFile, spec: str | None) -> LoadedModel:
        filename = safe_name(file.filename)
        head = file.file.read(8)
        if len(head) == 8:  # the header, then its declared parameter count, before any tensor
            (length,) = struct.unpack("<Q", head)
            head += file.file.read(min(length, max_upload_bytes))
        check_safetensors_header(head + file.file.read(2), filename)
        limits.check(filename, "params", declared_parameters(head[8:]))
        if spec is not None and not spec.strip():
            spec = None
        if spec is not None and not spec.lstrip().startswith("{"):
            raise UploadError(f"{filename}: the 'spec' field must be a NetworkSpec JSON object")
        check_declared_graph(filename, spec, head[8:], limits)
        with tempfile.TemporaryDirectory(prefix="weightspace-upload-") as folder:
            path = Path(folder) / (Path(filename).stem + ".safetensors")
            with open(path, "wb") as target:  # copied in chunks: the body is never held whole
                file.file.seek(0)
                shutil.copyfileobj(file.file, target, 2**20)
            try:
                loaded = loader(path, spec)
            except WeightspaceError as exc:
                message = str(exc).replace(str(path), filename).replace(folder, "")
                raise UploadError(message, status_of(exc)) from None
            except Exception as exc:  # a file the loader could not parse at all
                raise UploadError(f"{filename}: cannot read the checkpoint ({exc})") from None
        return dataclasses.replace(loaded, path=filename, metrics={})

    def process_upload(file: UploadFile, spec: str | None, with_head: bool) -> _Embedded:
        """On an embedding thread: load, embed, hash and (``with_head``) predict; only the small
        results leave it, so the model's tensors and graph are freed there."""
        loaded = load_upload(file, spec)
        inputs = embedder_inputs(embedder, [loaded])
        vector = embed_models(embedder, inputs, source=loaded.path)
        prediction = None
        head = getattr(embedder, "predict_accuracy", None)
        if with_head and callable(head):
            try:
                prediction = float(np.asarray(head(inputs), dtype=np.float64).ravel()[0])
            except WeightspaceError:
                prediction = None  # an encoder trained without an accuracy head says so
        return _Embedded(
            filename=loaded.path,
            spec_summary=loaded.spec_summary,
            content_hash=content_hash(loaded.spec_json, loaded.tensors),
            vector=vector,
            predicted_accuracy=prediction,
        )

    def embed_upload(file: UploadFile, spec: str | None, *, with_head: bool = False) -> _Embedded:
        return embedding_pool.submit(process_upload, file, spec, with_head).result()

    def check_k(k: int) -> None:
        if not 1 <= k <= _MAX_K:
            raise HTTPException(status_code=422, detail=f"k must be in [1, {_MAX_K}], got {k}")

    @application.get("/health")
    def health() -> dict[str, Any]:
        """Liveness, index size as committed on disk, encoder fingerprint and the approximate
        index's recall; 503 when the index on disk is damaged."""
        with refresh_lock:  # reads the manifest and catalog counts; reloads a new generation
            index.refresh(strict=True)
            last_refresh[0] = time.monotonic()
        store = getattr(index, "store", None)  # None: the pgvector backend (HNSW in PostgreSQL)
        return {
            "status": "ok",
            "models": len(index),
            "dim": index.dim,
            "fingerprint": index.fingerprint,
            "index_kind": "pgvector-hnsw" if store is None else store.active_kind,
            "recall_at_10": None if store is None else store.recall_at_10,
            "format_version": index.manifest.get("format_version"),
            "max_upload_bytes": max_upload_bytes,
            "max_concurrent_embeddings": settings.max_concurrent_embeddings,
            "max_queued_uploads": settings.max_queued_uploads,
            "limits": dataclasses.asdict(limits),
        }

    @application.get("/models/{model_id}")
    def get_model(model_id: int) -> dict[str, Any]:
        """A stored model's metadata (path, content hash, architecture, metrics, spec)."""
        record = index.get(model_id)
        if record is None:
            raise HTTPException(
                status_code=404, detail=f"no model with id {model_id} (ids run 0..{len(index) - 1})"
            )
        return record.to_dict(include_spec=True)

    @application.post("/search")
    def search(
        file: Annotated[UploadFile, File(description="A .safetensors checkpoint.")],
        spec: Annotated[
            str | None, Form(description="NetworkSpec JSON, if the file carries none.")
        ] = None,
        k: Annotated[int, Form(description="Neighbours to return.")] = 10,
        filter: Annotated[
            list[str] | None, Form(description="key=value metadata filters; repeatable.")
        ] = None,
    ) -> dict[str, Any]:
        """The stored models nearest to the uploaded checkpoint."""
        check_k(k)
        filters = parse_filters(filter)
        maybe_refresh()
        embedded = embed_upload(file, spec)
        [hits] = index.search(embedded.vector, k, filters=filters)
        stored = index.find_hash(embedded.content_hash)
        return {
            "query": {
                "filename": embedded.filename,
                "arch_summary": embedded.spec_summary,
                "content_hash": embedded.content_hash,
                "stored_as": None if stored is None else stored.id,
            },
            "hits": [hit.to_dict() for hit in hits],
        }

    @application.post("/predict")
    def predict(
        file: Annotated[UploadFile, File(description="A .safetensors checkpoint.")],
        spec: Annotated[
            str | None, Form(description="NetworkSpec JSON, if the file carries none.")
        ] = None,
        k: Annotated[int, Form(description="Neighbours for the fallback estimate.")] = 10,
    ) -> dict[str, Any]:
        """Predicted test accuracy of the uploaded checkpoint.

        From the encoder's accuracy head when it has one; otherwise the score-weighted mean
        stored ``test_accuracy`` of its ``k`` nearest neighbours.
        """
        check_k(k)
        maybe_refresh()
        embedded = embed_upload(file, spec, with_head=True)
        if embedded.predicted_accuracy is not None:
            return {
                "predicted_test_accuracy": embedded.predicted_accuracy,
                "method": "encoder accuracy head",
            }
        [hits] = index.search(embedded.vector, k)
        known = [h for h in hits if isinstance(h.record.metrics.get("test_accuracy"), int | float)]
        if not known:
            raise HTTPException(
                status_code=501,
                detail="this encoder has no accuracy head and no stored neighbour has a "
                "test_accuracy; index a zoo with metrics or use a trained encoder",
            )
        weights = np.array([max(h.score, 0.0) for h in known]) + 1e-12
        values = np.array([float(h.record.metrics["test_accuracy"]) for h in known])
        return {
            "predicted_test_accuracy": float(np.sum(weights * values) / np.sum(weights)),
            "method": f"mean of {len(known)} nearest neighbours",
            "neighbours": [h.record.id for h in known],
        }

    application.router.on_shutdown.append(lambda: embedding_pool.shutdown(wait=False))
    capacity = settings.max_concurrent_embeddings + settings.max_queued_uploads
    return UploadLimit(Admission(application, capacity), max_upload_bytes)
