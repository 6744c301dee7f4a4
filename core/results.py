"""What a generate request is and what it returns: the request, the finished Completion (OpenAI-shaped)
and the chunks of a stream.  Plain values, shared by the Runtime facade and the generation loop."""
from __future__ import annotations

import time
from typing import Any

import attrs

from .interfaces import SamplingParams


@attrs.frozen
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@attrs.frozen
class Timings:
    queue_ms: float
    tokenize_ms: float
    prompt_ms: float   # prompt evaluation up to the first generated token
    decode_ms: float   # from the first generated token to the last
    prompt_tokens: int
    decode_tokens: int  # tokens generated after the first

    def to_dict(self) -> dict[str, float]:
        d = attrs.asdict(self)
        d["prompt_tokens_per_s"] = self.prompt_tokens / (self.prompt_ms / 1e3) if self.prompt_ms > 0 else 0.0
        d["decode_tokens_per_s"] = self.decode_tokens / (self.decode_ms / 1e3) if self.decode_ms > 0 else 0.0
        return d


@attrs.frozen
class TokenLogprob:
    """A generated token's logprob (see :class:`corert.sampling.SampledToken`), its bytes, and the most likely
    alternatives at its position (``top``, each with no ``top`` of its own)."""

    token: int
    piece: bytes
    logprob: float
    top: tuple["TokenLogprob", ...] = ()

    @property
    def text(self) -> str:
        return self.piece.decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's chat shape: {"token", "logprob", "bytes", "top_logprobs"}."""
        d: dict[str, Any] = {"token": self.text, "logprob": self.logprob, "bytes": list(self.piece)}
        d["top_logprobs"] = [{"token": t.text, "logprob": t.logprob, "bytes": list(t.piece)} for t in self.top]
        return d


def completions_logprobs(lps: tuple[TokenLogprob, ...], start: int = 0) -> dict[str, Any]:
    """OpenAI's legacy completions shape: parallel lists, text offsets into the completion (its first token
    at ``start``)."""
    offsets, at = [], start
    for lp in lps:
        offsets.append(at)
        at += len(lp.text)
    return {"tokens": [lp.text for lp in lps], "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{t.text: t.logprob for t in lp.top} for lp in lps], "text_offset": offsets}


@attrs.frozen
class Completion:
    """A finished generation, OpenAI-shaped through :meth:`to_dict`."""

    id: str
    model: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" (end of generation or a stop string), "length", "cancelled", "tool_calls"
    usage: Usage
    timings: Timings
    plugins: dict[str, str]
    decoder_stats: dict[str, Any]
    created: int = attrs.field(factory=lambda: int(time.time()))
    chat: bool = False
    #: one per generated token (end-of-generation excluded) when the request asked for logprobs
    logprobs: tuple[TokenLogprob, ...] | None = None
    #: OpenAI ``tool_calls`` parsed from the output (chat with tools; finish_reason "tool_calls")
    tool_calls: tuple[dict[str, Any], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": self.finish_reason}
        if self.chat:
            content = (self.text or None) if self.tool_calls else self.text
            choice["message"] = {"role": "assistant", "content": content}
            if self.tool_calls:
                choice["message"]["tool_calls"] = [dict(c) for c in self.tool_calls]
            if self.logprobs is not None:
                choice["logprobs"] = {"content": [lp.to_dict() for lp in self.logprobs]}
        else:
            choice["text"] = self.text
            if self.logprobs is not None:
                choice["logprobs"] = completions_logprobs(self.logprobs)
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice], "text": self.text,
                "token_ids": list(self.token_ids), "usage": self.usage.to_dict(),
                "timings": self.timings.to_dict(), "plugins": dict(self.plugins),
                "decoder": dict(self.decoder_stats)}


@attrs.frozen
class StreamChunk:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None = None
    completion: Completion | None = None  # set on the last chunk
    #: the logprobs of the tokens whose text this chunk completes (when the request asked for them)
    logprobs: tuple[TokenLogprob, ...] = ()


@attrs.frozen
class GenerateRequest:
    prompt: str
    model: str
    params: SamplingParams
    stop: tuple[str, ...] = ()
    priority: str = "normal"
    timeout: float | None = None
    chat: bool = False
