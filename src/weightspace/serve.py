"""The model index as an HTTP service (FastAPI): search, predict, look up.

Endpoints (OpenAPI docs at ``/docs``):

* ``POST /search`` — multipart upload of a safetensors ``file`` (and optionally its ``spec`` as
  JSON text, for files without one in their metadata), ``k`` and repeatable ``filter=key=value``;
  returns the nearest stored models with cosine score and metadata.
* ``POST /predict`` — the same upload; returns the predicted test accuracy, from the encoder's
  accuracy head, or else the mean stored accuracy of the nearest neighbours.
* ``GET /models/{id}`` — a stored model's metadata and spec.
* ``GET /health`` — liveness plus the index's size, encoder fingerprint and recall.

Only safetensors is accepted over HTTP: the header is checked before anything is parsed, and a
pickle (``torch.save``) upload is refused, never unpickled. Bodies above ``max_upload_bytes`` are
refused with 413 as soon as the limit is crossed. Bad uploads are 4xx answers that say what is
wrong; the server keeps answering. Endpoints are synchronous and run in the server's thread
pool: FAISS search is thread-safe, each thread has its own SQLite connection, and at most
``max_concurrent_embeddings`` uploads are loaded and embedded at once.
"""

from __future__ import annotations

import json
import re
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse

from weightspace.errors import (
    CheckpointError,
    MissingArchitectureError,
    NonFiniteWeightsError,
    ShapeMismatchError,
    SpecError,
    UnsupportedLayerError,
    WeightspaceError,
)
from weightspace.index import (
    LoadedModel,
    ModelIndex,
    ModelLoader,
    content_hash,
    embed_models,
    load_model_file,
    parse_filters,
)

__all__ = ["create_app", "check_safetensors_header", "DEFAULT_MAX_UPLOAD_BYTES"]

#: Default upload limit: 64 MiB, far above any zoo model.
DEFAULT_MAX_UPLOAD_BYTES = 64 * 2**20
_MAX_K = 1000
_REFRESH_SECONDS = 2.0


class UploadError(WeightspaceError):
    """An upload is not a usable safetensors checkpoint; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_safetensors_header(data: bytes, filename: str) -> None:
    """Raise :class:`UploadError` unless ``data`` starts like a safetensors file.

    A safetensors file is an 8-byte little-endian header length ``n``, then ``n`` bytes of JSON
    describing the tensors, then their raw bytes. Pickles and zip archives (``torch.save``) are
    named as such, so the client knows to convert them.
    """
    if data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or data[:2] == b"PK":
        raise UploadError(
            f"{filename}: looks like a torch.save/pickle file; only safetensors is accepted over "
            f"HTTP (convert with safetensors.torch.save_file)",
            415,
        )
    if len(data) < 10:
        raise UploadError(f"{filename}: {len(data)} bytes is too short for a safetensors file")
    (header_length,) = struct.unpack("<Q", data[:8])
    if header_length < 2 or 8 + header_length > len(data):
        raise UploadError(
            f"{filename}: not a safetensors file (header length {header_length} does not fit in "
            f"{len(data)} bytes; truncated or another format)"
        )
    header = data[8 : 8 + header_length]
    if not header.lstrip().startswith(b"{"):
        raise UploadError(f"{filename}: not a safetensors file (its header is not JSON)")
    try:
        json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UploadError(f"{filename}: corrupted safetensors header ({exc})") from None


def _status_of(exc: WeightspaceError) -> int:
    if isinstance(exc, UploadError):
        return exc.status
    if isinstance(exc, CheckpointError):
        return 400
    if isinstance(
        exc,
        MissingArchitectureError
        | UnsupportedLayerError
        | SpecError
        | ShapeMismatchError
        | NonFiniteWeightsError,
    ):
        return 422
    return 400


def _safe_name(filename: str | None) -> str:
    name = Path(filename or "upload.safetensors").name
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "upload.safetensors"


class _UploadLimit:
    """ASGI middleware refusing bodies over ``max_bytes`` with 413, streamed ones included."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return (
            f"upload too large: the limit is {self.max_bytes} bytes "
            f"({self.max_bytes / 2**20:.1f} MiB); start the server with a larger --max-upload-mb"
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self._message()}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises an HTTPException from body parsing as is
                    raise HTTPException(status_code=413, detail=self._message())
            return message

        await self.app(scope, limited_receive, send)


def create_app(
    index: ModelIndex,
    embedder: Any,
    *,
    loader: ModelLoader = load_model_file,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_concurrent_embeddings: int = 4,
) -> Any:
    """The FastAPI application serving ``index``, queried through ``embedder``.

    Args:
        index: an open :class:`~weightspace.index.ModelIndex`; reloaded when another process
            commits to it.
        embedder: the encoder that built the index (its fingerprint is checked here).
        loader: turns an uploaded file (and optional spec JSON) into a
            :class:`~weightspace.index.LoadedModel`.
        max_upload_bytes: larger request bodies get 413.
        max_concurrent_embeddings: uploads loaded and embedded at once (bounds memory).

    Returns:
        An ASGI application for uvicorn: the FastAPI app (at ``.app``) behind the upload limit.
    """
    index.check_embedder(embedder)
    embedding_slots = threading.BoundedSemaphore(max_concurrent_embeddings)
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
        return JSONResponse({"detail": str(exc)}, status_code=_status_of(exc))

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
        filename = _safe_name(file.filename)
        data = file.file.read()
        check_safetensors_header(data, filename)
        if spec is not None and not spec.strip():
            spec = None
        if spec is not None and not spec.lstrip().startswith("{"):
            raise UploadError(f"{filename}: the 'spec' field must be a NetworkSpec JSON object")
        with tempfile.TemporaryDirectory(prefix="weightspace-upload-") as folder:
            path = Path(folder) / (Path(filename).stem + ".safetensors")
            path.write_bytes(data)
            try:
                loaded = loader(path, spec)
            except WeightspaceError as exc:
                message = str(exc).replace(str(path), filename).replace(folder, "")
                raise UploadError(message, _status_of(exc)) from None
            except Exception as exc:  # a file the loader could not parse at all
                raise UploadError(f"{filename}: cannot read the checkpoint ({exc})") from None
        return LoadedModel(
            path=filename,
            spec_json=loaded.spec_json,
            spec_summary=loaded.spec_summary,
            tensors=loaded.tensors,
            graph=loaded.graph,
        )

    def embed_upload(file: UploadFile, spec: str | None) -> tuple[LoadedModel, np.ndarray]:
        with embedding_slots:
            loaded = load_upload(file, spec)
            vector = embed_models(embedder, [loaded.graph], source=loaded.path)
        return loaded, vector

    def check_k(k: int) -> None:
        if not 1 <= k <= _MAX_K:
            raise HTTPException(status_code=422, detail=f"k must be in [1, {_MAX_K}], got {k}")

    @application.get("/health")
    def health() -> dict[str, Any]:
        """Liveness, index size, encoder fingerprint and the approximate index's recall."""
        store = index.store
        return {
            "status": "ok",
            "models": len(index),
            "dim": index.dim,
            "fingerprint": index.fingerprint,
            "index_kind": store.active_kind,
            "recall_at_10": store.recall_at_10,
            "format_version": index.manifest.get("format_version"),
            "max_upload_bytes": max_upload_bytes,
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
        loaded, vector = embed_upload(file, spec)
        [hits] = index.search(vector, k, filters=filters)
        digest = content_hash(loaded.spec_json, loaded.tensors)
        stored = index.find_hash(digest)
        return {
            "query": {
                "filename": loaded.path,
                "arch_summary": loaded.spec_summary,
                "content_hash": digest,
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
        loaded, vector = embed_upload(file, spec)
        head = getattr(embedder, "predict_accuracy", None)
        if callable(head):
            try:
                with embedding_slots:
                    prediction = np.asarray(head([loaded.graph]), dtype=np.float64)
            except WeightspaceError:
                prediction = None  # an encoder trained without an accuracy head says so
            if prediction is not None:
                value = float(prediction.reshape(-1)[0])
                return {"predicted_test_accuracy": value, "method": "encoder accuracy head"}
        [hits] = index.search(vector, k)
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

    return _UploadLimit(application, max_upload_bytes)
