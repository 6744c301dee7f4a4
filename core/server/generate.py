"""Serving a completions / chat request: admission -> one Runtime stream per choice -> a JSON body, or SSE
chunks in OpenAI's format.

The first chunk is awaited before any header is sent, so an error the Runtime raises at the start (a
prompt longer than the context, a bad message list) is an HTTP error with its status, not a broken stream.
Streaming: chat choices open with a chunk carrying the role; each piece of text is one chunk; each choice
ends with a chunk carrying its finish_reason; ``stream_options.include_usage`` adds a last chunk with the
usage and no choices; then ``data: [DONE]``.  An error after the first chunk ends the stream with an
``{"error": ...}`` event.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
import weakref
from functools import partial
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from ..results import completions_logprobs
from .admission import Admission
from .errors import from_exception
from .metrics import Metrics
from .middleware import unless_disconnected
from .requests import GenerationPlan
from .streams import Item, LiveThreads, StreamGroup


def _finish_reason(reason: str | None) -> str:
    # "cancelled" never reaches a listening client
    return reason if reason in ("length", "tool_calls") else "stop"


def _logprobs(chat: bool, lps, offset: int = 0) -> dict[str, Any] | None:
    """OpenAI's logprobs object of these tokens: chat's {"content": [...]}, or completions' parallel lists
    (text offsets counted from ``offset``, where these tokens' text starts in the choice's text)."""
    if lps is None:
        return None
    if chat:
        return {"content": [lp.to_dict() for lp in lps]}
    return completions_logprobs(tuple(lps), offset)


def _tool_call_deltas(calls) -> list[dict[str, Any]]:
    return [{"index": k, **call} for k, call in enumerate(calls)]


class _Tally:
    """Per request: text and completions by choice, usage, and the latency metrics as chunks arrive."""

    def __init__(self, plan: GenerationPlan, metrics: Metrics, arrived: float):
        self.plan, self.metrics, self.arrived = plan, metrics, arrived
        self.text: dict[int, list[str]] = {c.index: [] for c in plan.choices}
        self.sent: dict[int, int] = {c.index: 0 for c in plan.choices}  # characters streamed per choice
        self.completions: dict[int, Any] = {}
        self._last: dict[int, float] = {}

    def add(self, item: Item) -> None:
        chunk = item.chunk
        if chunk.token_ids:
            last = self._last.get(item.index)
            if last is None:
                self.metrics.ttft.observe(item.at - self.arrived)
            else:
                self.metrics.itl.observe(item.at - last)
            self._last[item.index] = item.at
        self.text[item.index].append(chunk.text)
        if chunk.completion is not None:
            self.completions[item.index] = chunk.completion
            self.metrics.finished(chunk.completion)

    def usage(self) -> dict[str, int]:
        per_prompt = max(1, len(self.plan.choices) // self.plan.n)  # choices of one prompt are consecutive
        prompt = sum(c.usage.prompt_tokens for i, c in self.completions.items() if i % per_prompt == 0)
        completion = sum(c.usage.completion_tokens for c in self.completions.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _close(items: AsyncIterator[Item]) -> None:
    """Close the chunk iterator; one still running in a task that is being cancelled (the request itself
    was cancelled) ends by that cancellation, and the group's threads were already told to stop."""
    with contextlib.suppress(RuntimeError):
        await items.aclose()


class GenerationServer:
    def __init__(self, runtime: Any, admission: Admission, metrics: Metrics, threads: LiveThreads):
        self.runtime, self.admission, self.metrics, self.threads = runtime, admission, metrics, threads
        self._groups: weakref.WeakSet[StreamGroup] = weakref.WeakSet()

    async def drain(self, timeout: float) -> bool:
        """Stop every live request and wait (at most ``timeout`` s) until their threads are gone, so whoever
        closes the Runtime next does not free a model under a running stream.  True when all are gone."""
        for group in list(self._groups):
            group.cancel()
        deadline = time.monotonic() + timeout
        while self.threads.count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self.threads.count

    async def serve(self, plan: GenerationPlan, request: Request, arrived: float):
        stack = contextlib.AsyncExitStack()
        try:
            await unless_disconnected(request, stack.enter_async_context(self.admission.hold(len(plan.choices))))
            group = StreamGroup(self.threads)
            self._groups.add(group)
            stack.callback(group.cancel)
            for choice in plan.choices:
                group.start(choice.index, partial(choice.call, self.runtime), after=choice.after)
            items = group.__aiter__()
            stack.push_async_callback(_close, items)
            tally = _Tally(plan, self.metrics, arrived)
            first = await unless_disconnected(request, anext(items, None))
        except BaseException:
            await stack.aclose()
            raise
        rid = f"{'chatcmpl' if plan.chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if not plan.stream:
            async with stack:
                await unless_disconnected(request, self._collect(first, items, tally))
            return JSONResponse(self._body(rid, tally))
        return StreamingResponse(self._events(rid, first, items, tally, stack), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @staticmethod
    async def _collect(first: Item | None, items: AsyncIterator[Item], tally: _Tally) -> None:
        if first is not None:
            tally.add(first)
        async for item in items:
            tally.add(item)

    def _body(self, rid: str, tally: _Tally) -> dict[str, Any]:
        plan, created = tally.plan, int(time.time())
        choices = []
        for c in plan.choices:
            done = tally.completions[c.index]
            text = "".join(tally.text[c.index])
            reason = _finish_reason(done.finish_reason)
            message = {"role": "assistant", "content": text}
            if done.tool_calls:  # the call's text was held back: the completion has what is left of it
                message = {**message, "content": done.text or None, "tool_calls": list(done.tool_calls)}
            choices.append({"index": c.index, "finish_reason": reason,
                            "logprobs": _logprobs(plan.chat, done.logprobs),
                            **({"message": message} if plan.chat else {"text": text})})
        return {"id": rid, "object": "chat.completion" if plan.chat else "text_completion", "created": created,
                "model": plan.model, "choices": choices, "usage": tally.usage()}

    async def _events(self, rid: str, first: Item | None, items: AsyncIterator[Item], tally: _Tally,
                      stack: contextlib.AsyncExitStack) -> AsyncIterator[str]:
        plan, created = tally.plan, int(time.time())
        kind = "chat.completion.chunk" if plan.chat else "text_completion"
        usage_field = {"usage": None} if plan.include_usage else {}

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            body = {"id": rid, "object": kind, "created": created, "model": plan.model, "choices": choices,
                    **usage_field, **extra}
            return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"

        def choice(index: int, text: str | None, reason: str | None, lps=None, calls=None) -> dict[str, Any]:
            logprobs = _logprobs(plan.chat, lps, tally.sent[index]) if lps else None
            if text:
                tally.sent[index] += len(text)
            if plan.chat:
                delta = {} if text is None else {"content": text}
                if calls:
                    delta["tool_calls"] = _tool_call_deltas(calls)
                return {"index": index, "delta": delta, "finish_reason": reason, "logprobs": logprobs}
            return {"index": index, "text": text or "", "finish_reason": reason, "logprobs": logprobs}

        async with stack:  # ends the choices' streams and frees their slots, however the response ends
            if plan.chat:
                yield event([{"index": c.index, "delta": {"role": "assistant", "content": ""},
                              "finish_reason": None, "logprobs": None} for c in plan.choices])
            try:
                pending = [first] if first is not None else []
                while True:
                    item = pending.pop() if pending else await anext(items, None)
                    if item is None:
                        break
                    tally.add(item)
                    if item.chunk.text:
                        yield event([choice(item.index, item.chunk.text, None, item.chunk.logprobs)])
                    done = item.chunk.completion
                    if done is not None:
                        if plan.chat and done.tool_calls:  # held back while generated: sent whole
                            yield event([choice(item.index, done.text or None, None, calls=done.tool_calls)])
                        yield event([choice(item.index, None, _finish_reason(item.chunk.finish_reason))])
            except Exception as exc:  # noqa: BLE001 - the status is sent: the error goes in the stream
                yield f"data: {json.dumps(from_exception(exc).body(), ensure_ascii=False)}\n\n"
                return
            if plan.include_usage:
                yield event([], usage=tally.usage())
            yield "data: [DONE]\n\n"
