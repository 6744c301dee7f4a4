"""An OpenAI-API client for the serving benchmarks, on the standard library (one thread per client): it
times every streamed chunk, so time-to-first-token and inter-token gaps are measured where a user sees
them, and it can hang up mid-stream."""
from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any, Callable, Sequence

import attrs

from corert.tools.bench.server_procs import HOST


@attrs.frozen
class Reply:
    """One request's outcome.  ``tokens`` is the server's own count (``usage.completion_tokens``) when it
    sends one, else the number of chunks that carried text.  Times are seconds from sending the request."""

    status: int
    text: str = ""
    tokens: int = 0
    chunk_times: tuple[float, ...] = ()
    seconds: float = 0.0
    finish_reason: str | None = None
    body: Any = None  # the parsed JSON of a non-streamed reply (or of an error)
    error: str = ""

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] if self.chunk_times else None

    @property
    def gaps(self) -> list[float]:
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:])]


def _chunk_text(choice: dict[str, Any]) -> str:
    if "text" in choice:
        return choice.get("text") or ""
    return (choice.get("delta") or {}).get("content") or ""


def _json(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def _exchange(port: int, send: Callable[[http.client.HTTPConnection], None], timeout: float) -> Reply:
    """One request sent by ``send`` on a fresh connection; its whole reply read: status and parsed JSON."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    t0 = time.perf_counter()
    try:
        send(conn)
        resp = conn.getresponse()
        data = resp.read()
    except OSError as exc:
        return Reply(status=0, error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)
    finally:
        conn.close()
    return Reply(status=resp.status, body=_json(data), seconds=time.perf_counter() - t0)


def post(port: int, path: str, body: Any, *, timeout: float = 300.0, raw: bytes | None = None) -> Reply:
    """A non-streamed request (or one whose reply is an error): the status, the parsed JSON body, and the
    first choice's text and the completion tokens when it is a completion."""
    reply = _exchange(port, lambda conn: conn.request("POST", path, body=raw if raw is not None else json.dumps(body),
                                                      headers={"Content-Type": "application/json"}), timeout)
    parsed = reply.body
    if not (isinstance(parsed, dict) and parsed.get("choices")):
        return reply
    c = parsed["choices"][0]
    text = c.get("text") if "text" in c else ((c.get("message") or {}).get("content") or "")
    tokens = (parsed.get("usage") or {}).get("completion_tokens", 0)
    return attrs.evolve(reply, text=text or "", tokens=tokens or 0)


def declare_body(port: int, path: str, size: int, timeout: float = 30.0) -> Reply:
    """A request that declares a ``size``-byte body and waits (``Expect: 100-continue``) before sending it:
    how a client such as curl sends a large upload.  A server that refuses the size answers at once."""
    def send(conn: http.client.HTTPConnection) -> None:
        conn.putrequest("POST", path)
        for name, value in (("Content-Type", "application/json"), ("Content-Length", str(size)),
                            ("Expect", "100-continue")):
            conn.putheader(name, value)
        conn.endheaders()

    return _exchange(port, send, timeout)


def stream(port: int, path: str, body: dict[str, Any], *, timeout: float = 300.0,
           hang_up_after: int | None = None) -> Reply:
    """A streamed request (SSE).  ``hang_up_after=k`` closes the socket after k text chunks (a client that
    disconnects mid-stream).  ``timeout`` bounds every read and the whole request."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    t0 = time.perf_counter()
    deadline = t0 + timeout
    times: list[float] = []
    parts: list[str] = []
    usage_tokens = None
    finish = None
    status = 0
    try:
        conn.request("POST", path, body=json.dumps({**body, "stream": True}),
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        resp = conn.getresponse()
        status = resp.status
        if status != 200:
            return Reply(status=status, body=_json(resp.read()), seconds=time.perf_counter() - t0)
        for raw in resp:
            if time.perf_counter() > deadline:
                return Reply(status=status, text="".join(parts), tokens=len(times), chunk_times=tuple(times),
                             seconds=time.perf_counter() - t0, error="timed out mid-stream")
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or ():
                text = _chunk_text(choice)
                if text:
                    times.append(time.perf_counter() - t0)
                    parts.append(text)
                finish = choice.get("finish_reason") or finish
            if hang_up_after is not None and len(times) >= hang_up_after:
                break
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Reply(status=status, text="".join(parts), tokens=len(times), chunk_times=tuple(times),
                     seconds=time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()  # for hang_up_after: the disconnect itself
    return Reply(status=status, text="".join(parts), tokens=usage_tokens if usage_tokens else len(times),
                 chunk_times=tuple(times), seconds=time.perf_counter() - t0, finish_reason=finish)


@attrs.frozen
class Round:
    """N clients started together, one streamed request each."""

    replies: tuple[Reply, ...]
    wall_s: float  # from the first request sent to the last stream's end


def concurrent_streams(port: int, path: str, bodies: Sequence[dict[str, Any]], timeout: float = 600.0) -> Round:
    """Sends every body at once from its own thread (a barrier releases them together); bounded by
    ``timeout`` per request."""
    replies: list[Reply | None] = [None] * len(bodies)
    starts: list[float] = [0.0] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def client(i: int) -> None:
        barrier.wait(timeout=60)
        starts[i] = time.perf_counter()
        replies[i] = stream(port, path, bodies[i], timeout=timeout)

    threads = [threading.Thread(target=client, args=(i,), name=f"bench-client-{i}") for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 120)
    done = [r if r is not None else Reply(status=0, error="client thread did not finish") for r in replies]
    t0 = min(starts)
    wall = max(s + r.seconds for s, r in zip(starts, done)) - t0
    return Round(replies=tuple(done), wall_s=wall)
