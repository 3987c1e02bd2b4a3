"""Refuse request bodies over `MAX_BODY_BYTES` before they are held in memory, and oversized headers.

A body announced as too large by `Content-Length` is refused before a byte of it is read; a
chunked one (or one that sends more than it announced) is refused as soon as the bytes read so
far pass the limit. Either way the answer is `413 payload_too_large` in the error envelope, and
uvicorn closes the connection after it instead of reading the rest.

Headers over `errors.MAX_HEADER_BYTES` in all are refused with `431`. That bounds what the app
does with them (a megabyte-long bearer token is not parsed and verified), not what uvicorn has
buffered by then: its httptools parser, the default with `uvicorn[standard]`, sets no limit on
headers (and refuses a URL over 65,535 bytes only once it has buffered it). Memory is bounded
before the app by a proxy in front, or by `--http h11`, whose `--h11-max-incomplete-event-size`
(16 KiB by default) caps the request line and headers together.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from errors import MAX_HEADER_BYTES, envelope


class BodyTooLarge(HTTPException):
    """Raised from `receive` while the app reads the body; FastAPI lets HTTP exceptions through
    its body parsing untouched, and the app's handler answers with the envelope."""

    def __init__(self, limit: int) -> None:
        # Closing the connection spares reading whatever else the client goes on sending.
        super().__init__(413, f"The request body is larger than {limit:,} bytes", headers={"Connection": "close"})


class SizeLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = 0
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value)
            # uvicorn has already refused a Content-Length that is not a number.
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await _refuse(413, "payload_too_large", BodyTooLarge(self.max_bytes).detail, scope, receive, send)
                return
        if header_bytes > MAX_HEADER_BYTES:
            message = f"The request headers are larger than {MAX_HEADER_BYTES:,} bytes"
            await _refuse(431, "headers_too_large", message, scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        return receive_within_limit


async def _refuse(status_code: int, code: str, message: str, scope: Scope, receive: Receive, send: Send) -> None:
    body = envelope(status_code, code, message)
    await JSONResponse(body, status_code=status_code, headers={"Connection": "close"})(scope, receive, send)
