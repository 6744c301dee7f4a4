"""The request and response bodies of the HTTP API (pydantic): what FastAPI validates and what
/openapi.json documents.  Shapes follow OpenAI's API; corert's extensions are marked as such.

Request bodies forbid unknown fields: a parameter corert does not know is a 400 that names it, never a
silent ignore.  Valid OpenAI parameters that corert does not support are declared here and refused in one
place, :data:`corert.server.requests.UNSUPPORTED`.
"""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

#: n > 1 runs n requests on one prompt; more than this is refused rather than queued for minutes
MAX_N = 16
#: OpenAI allows up to 4 stop sequences
MAX_STOPS = 4
#: texts in one embeddings / classify / tokenize request
MAX_INPUTS = 256

_INT64 = 2**63 - 1


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- errors --------------------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# -- generation requests -------------------------------------------------------------------------------------
class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    model: str = Field(min_length=1, description="a model from GET /v1/models")
    max_tokens: int | None = Field(None, ge=1, le=1 << 20)
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy (default 1)")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=1 << 20, description="corert extension: 0 = whole vocabulary")
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=0, le=_INT64)
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOPS} stop strings")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="accepted for compatibility; corert keeps no per-user state")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(None, description="token id (a decimal string) -> bias, -100..100")
    response_format: dict[str, Any] | None = Field(None, description=(
        '{"type": "text" | "json_object"}, or {"type": "json_schema", "json_schema": {"schema": {...}}}'))
    grammar: str | None = Field(None, description="corert extension: a GBNF grammar the output must match")
    ignore_eos: bool = Field(False, description="corert extension (llama-server's name): never choose an "
                                                "end-of-generation token; run to max_tokens or a stop string")


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(description="a prompt, or a list of prompts (choices in order)")
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = Field(None, description="may be null on an assistant's tool calls")
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=1 << 20)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


# -- generation responses ------------------------------------------------------------------------------------
FinishReason = Literal["stop", "length", "tool_calls"]


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _Choice(_Response):
    index: int
    logprobs: dict[str, Any] | None = None


class _Generated(_Response):
    id: str
    created: int
    model: str


class CompletionChoice(_Choice):
    text: str
    finish_reason: FinishReason | None = None


class CompletionResponse(_Generated):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChoice(_Choice):
    message: AssistantMessage
    finish_reason: FinishReason


class ChatCompletionResponse(_Generated):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class Delta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChunkChoice(_Choice):
    delta: Delta
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Generated):
    """One ``data:`` event of a streamed chat completion (documented here; sent as text/event-stream)."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# -- embeddings, classify, tokenize ----------------------------------------------------------------------------
class EmbeddingRequest(_Request):
    model: str = Field(min_length=1)
    input: str | list[str] = Field(description=f"a text or up to {MAX_INPUTS} texts")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="must equal the model's own dimension if given")
    user: str | None = None


class Embedding(_Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(_Response):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ClassifyRequest(_Request):
    """corert extension: intent classification with the classify model."""

    model: str | None = Field(None, description="default: the runtime's classify model")
    input: str | list[str]
    top_k: int = Field(5, ge=1, le=1000)


class Label(_Response):
    label: str
    score: float


class ClassifyResult(_Response):
    index: int
    labels: list[Label]


class ClassifyResponse(_Response):
    object: Literal["list"] = "list"
    model: str
    data: list[ClassifyResult]
    usage: EmbeddingUsage


class TokenizeRequest(_Request):
    """corert extension: text -> token ids with the model's tokenizer plugin."""

    model: str = Field(min_length=1)
    text: str
    add_special: bool | None = Field(None, description="add BOS as the model does (default: the model's own)")
    parse_special: bool = False


class TokenizeResponse(_Response):
    model: str
    tokens: list[int]
    count: int


class DetokenizeRequest(_Request):
    model: str = Field(min_length=1)
    tokens: list[int] = Field(max_length=1 << 20)


class DetokenizeResponse(_Response):
    model: str
    text: str


# -- models, health ----------------------------------------------------------------------------------------------
class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "corert"
    task: str = Field("generate", description="corert extension: generate | embed | classify")


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(_Response):
    status: Literal["ok", "loading", "error"]
    error: str | None = None
