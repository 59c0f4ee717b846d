"""ASGI middleware of the HTTP service: a body-size limit and admission control.

:class:`UploadLimit` refuses bodies over the limit with 413 as soon as it is crossed (streamed
ones included); :class:`Admission` answers 429 to uploads beyond the capacity in progress before
their body is read, so waiting uploads cost neither memory nor disk.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

__all__ = ["UPLOAD_PATHS", "Admission", "UploadLimit"]

#: the endpoints that take an upload
UPLOAD_PATHS = frozenset({"/search", "/predict"})


class UploadLimit:
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


class Admission:
    """ASGI middleware answering 429 to uploads beyond ``capacity`` in progress, before their
    body is read (so waiting uploads cost neither memory nor disk)."""

    def __init__(self, app: Any, capacity: int) -> None:
        self.app = app
        self.capacity = capacity
        self.in_progress = 0  # only touched on the event loop thread

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") not in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.capacity:
            detail = (
                f"server busy: {self.in_progress} uploads are being embedded or waiting; "
                f"retry later"
            )
            response = JSONResponse(
                {"detail": detail}, status_code=429, headers={"Retry-After": "1"}
            )
            await response(scope, receive, send)
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1
