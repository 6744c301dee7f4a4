"""ASGI middleware of the server: the request body size limit (413) and requests counted by endpoint and
status; and the disconnect watch a handler races its work against."""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request

from .errors import APIError

T = TypeVar("T")


class BodyLimit:
    """Refuses a body over ``max_bytes``: by its Content-Length before reading, or as it arrives (chunked).
    Raised as an HTTPException, which FastAPI's body parsing passes through to the error handlers."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await APIError(413, self._message(), code="request_too_large").response()(scope, receive, send)
                return
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the request body is larger than the server's limit of {self.max_bytes} bytes"


class CountRequests:
    """``count(endpoint, status)`` for every HTTP response; paths outside ``endpoints`` count as "other"
    (unbounded label values would grow the metrics without end)."""

    def __init__(self, app: Any, count: Callable[[str, int], None], endpoints: Iterable[str]):
        self.app, self.count, self.endpoints = app, count, frozenset(endpoints)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope.get("path", "") if scope.get("path", "") in self.endpoints else "other"
        status = 500

        async def counting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.count(endpoint, status)


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``await work``, cancelling it (and raising ClientGone) as soon as the client disconnects."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler was cancelled: so is its work
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task in done:
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:  # noqa: BLE001 - it was cancelled on purpose; its error is moot
        pass
    raise ClientGone()
