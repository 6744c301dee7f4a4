"""Running the ASGI app in-process for one forwarded request (a Ray Serve replica serves the very app that
``corert serve`` serves, routes, auth and metrics included), and its lifespan (models loaded at start,
streams drained at shutdown).

A request's response leaves as its ASGI messages in bursts: the message the caller waited for and every one
already queued behind it.  A stream stays a stream across the Ray hop (no message waits for a later one), and
what piles up while the caller is busy (a stream's last token, its finish, usage and ``[DONE]`` events; the
tokens of a reader that fell behind) crosses as one item instead of one per message.

When the caller stops listening (its task is cancelled: the HTTP client went away), the app is told
``http.disconnect`` and then cancelled, which is what ends the Runtime's streams (engine abort).
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Sequence

import attrs


@attrs.frozen
class Forwarded:
    """One HTTP request as the ingress forwards it.  ``route_keys``: hashes of the prompt's leading blocks
    (see ray_route.prefix_keys), read by the router; ``pin``: a replica id the request must go to
    (the ingress gathering every replica's metrics, or opening a channel); ``channel``, ``stream``: the
    ingress's channel and this request's stream id on it (see ray_mux)."""

    method: str
    path: str
    query: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    route_keys: tuple[int, ...] = ()
    pin: str | None = None
    channel: str | None = None
    stream: str = ""


_DONE = object()


async def call_app(app: Any, req: Forwarded) -> AsyncIterator[list[dict[str, Any]]]:
    """``app``'s ASGI messages for ``req`` (``http.response.start``, then ``http.response.body`` ones), in
    bursts of those ready together, in order."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": req.method,
             "scheme": "http", "path": req.path, "raw_path": req.path.encode(), "query_string": req.query,
             "root_path": "", "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in req.headers],
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}
    out: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": req.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await out.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            out.put_nowait(_DONE)

    task = asyncio.ensure_future(run())
    try:
        ended = False
        while not ended and (message := await out.get()) is not _DONE:
            burst = [message]
            while not out.empty():  # only what is queued already: nothing is held back for a later message
                message = out.get_nowait()
                if message is _DONE:
                    ended = True
                    break
                burst.append(message)
            yield burst
        await task  # the app's own exception, if it raised one
    finally:
        gone.set()  # the app's disconnect watchers see the client gone...
        if not task.done():
            await asyncio.sleep(0)
            task.cancel()  # ...and whatever still runs is cancelled
        with contextlib.suppress(BaseException):
            await task


class Lifespan:
    """The app's ASGI lifespan, driven by hand: ``await start()`` runs its startup, ``await stop()`` its
    shutdown (the server's drain)."""

    def __init__(self, app: Any):
        self.app = app
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._events: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Future | None = None

    async def _receive(self) -> dict[str, Any]:
        return await self._inbox.get()

    async def _send(self, message: dict[str, Any]) -> None:
        await self._events.put(message)

    async def _expect(self, what: str, timeout: float) -> None:
        message = await asyncio.wait_for(self._events.get(), timeout)
        if message["type"] != f"lifespan.{what}.complete":
            raise RuntimeError(f"the app's lifespan {what} failed: {message.get('message', message['type'])}")

    async def start(self, timeout: float = 60.0) -> None:
        self._task = asyncio.ensure_future(self.app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                                    self._receive, self._send))
        await self._inbox.put({"type": "lifespan.startup"})
        await self._expect("startup", timeout)

    async def stop(self, timeout: float = 30.0) -> None:
        if self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(asyncio.TimeoutError, RuntimeError):
            await self._expect("shutdown", timeout)


def header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    """One header of an ``http.response.start`` message, or None."""
    for k, v in headers:
        if k.lower() == name:
            return v.decode("latin-1")
    return None
