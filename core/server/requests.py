"""OpenAI request bodies -> Runtime calls: the one place where the HTTP API's parameters meet the Runtime's.

Defaults are OpenAI's (temperature 1, top_p 1; top_k, corert's extension, 0 = whole vocabulary;
max_tokens 16 for completions, the rest of the context for chat).  ``n`` > 1 and a list of prompts become
one Runtime request per choice (seed + i when a seed is given, so each choice is reproducible and the
choices differ).
"""
from __future__ import annotations

from typing import Any, Callable

import attrs

from .errors import bad_request
from .schemas import MAX_STOPS, ChatCompletionRequest, CompletionRequest

#: Valid OpenAI parameters the Runtime does not support.  Each maps to a test of "not used" (absent or its
#: neutral value); a request that uses one gets a 400 naming it, never a silent ignore.  To support one: map
#: it onto the Runtime in :func:`_sampling` (or the chat messages) and delete its entry here; the schema
#: field already exists in :mod:`corert.server.schemas`.
UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "echo": lambda v: not v,
    "suffix": lambda v: not v,
    "best_of": lambda v: v is None or v == 1,
}


@attrs.frozen
class Choice:
    """One Runtime request: ``call(runtime)`` returns its blocking stream of StreamChunks."""

    index: int
    call: Callable[[Any], Any]
    #: the choice on the same prompt that starts first; this one starts once that one has its first token,
    #: when the prompt's K/V is in the cache (paged prefix sharing: the prompt is evaluated once, not n times)
    after: int | None = None


@attrs.frozen
class GenerationPlan:
    """What one completions / chat request runs."""

    model: str
    chat: bool
    stream: bool
    include_usage: bool
    choices: tuple[Choice, ...]
    #: how many prompts the choices cover (usage counts each prompt's tokens once)
    n: int


def check_supported(body: CompletionRequest | ChatCompletionRequest) -> None:
    for name, unused in UNSUPPORTED.items():
        if name in type(body).model_fields and not unused(getattr(body, name)):
            raise bad_request(f"parameter {name!r} is not supported by this server yet; leave it out",
                              param=name, code="unsupported_parameter")


def _stops(stop: str | list[str] | None) -> list[str] | None:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise bad_request(f"stop takes at most {MAX_STOPS} strings, got {len(stops)}", param="stop")
    if any(not s for s in stops):
        raise bad_request("stop strings must not be empty", param="stop")
    return stops or None


def _sampling(body: CompletionRequest | ChatCompletionRequest, max_tokens: int, i: int) -> dict[str, Any]:
    return {"model": body.model, "max_tokens": max_tokens,
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "top_p": 1.0 if body.top_p is None else body.top_p,
            "top_k": 0 if body.top_k is None else body.top_k,
            "seed": None if body.seed is None else body.seed + i,
            "stop": _stops(body.stop),
            "presence_penalty": body.presence_penalty or 0.0, "frequency_penalty": body.frequency_penalty or 0.0,
            "logit_bias": body.logit_bias or None, "logprobs": _logprobs(body),
            "response_format": body.response_format, "grammar": body.grammar, "ignore_eos": body.ignore_eos}


def _logprobs(body: CompletionRequest | ChatCompletionRequest) -> int | None:
    """How many alternatives per token the Runtime reports (None: no logprobs).  Completions: ``logprobs``
    is that count; chat: ``logprobs`` switches them on and ``top_logprobs`` is the count."""
    if isinstance(body, CompletionRequest):
        return body.logprobs
    if not body.logprobs:
        if body.top_logprobs is not None:
            raise bad_request("top_logprobs needs logprobs=true", param="top_logprobs")
        return None
    return body.top_logprobs or 0


def _include_usage(body) -> bool:
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed with stream=true", param="stream_options")
    return bool(body.stream_options and body.stream_options.include_usage)


def completion_plan(body: CompletionRequest) -> GenerationPlan:
    check_supported(body)
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts:
        raise bad_request("prompt must not be an empty list", param="prompt")
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    choices = []
    for p, prompt in enumerate(prompts):
        for i in range(body.n):
            kw = _sampling(body, max_tokens, i)
            choices.append(Choice(p * body.n + i, lambda rt, prompt=prompt, kw=kw: rt.stream(prompt, **kw),
                                  after=p * body.n if i else None))
    return GenerationPlan(body.model, False, body.stream, _include_usage(body), tuple(choices), len(prompts))


def messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The messages as the Runtime takes them: text parts joined, OpenAI's "developer" role as "system", an
    assistant's tool calls and a tool result's call id kept."""
    out = []
    for m in body.messages:
        content = m.content if isinstance(m.content, str) or m.content is None else \
            "".join(part.text for part in m.content)
        msg = {"role": "system" if m.role == "developer" else m.role, "content": content}
        msg.update({k: v for k, v in (("tool_calls", m.tool_calls), ("tool_call_id", m.tool_call_id),
                                       ("name", m.name)) if v is not None})
        out.append(msg)
    return out


def chat_plan(body: ChatCompletionRequest, n_ctx: int) -> GenerationPlan:
    check_supported(body)
    if body.max_tokens is not None and body.max_completion_tokens is not None \
            and body.max_tokens != body.max_completion_tokens:
        raise bad_request("max_tokens and max_completion_tokens differ; give one", param="max_completion_tokens")
    limit = body.max_completion_tokens or body.max_tokens
    max_tokens = n_ctx if limit is None else limit  # the generation loop caps it at what the context leaves
    msgs = messages(body)
    tools = {"tools": body.tools, "tool_choice": body.tool_choice, "parallel_tool_calls": body.parallel_tool_calls}
    choices = tuple(Choice(i, lambda rt, kw=_sampling(body, max_tokens, i): rt.chat(msgs, stream=True, **kw,
                                                                                   **tools),
                           after=0 if i else None) for i in range(body.n))
    return GenerationPlan(body.model, True, body.stream, _include_usage(body), choices, 1)
