"""The ASGI app: ``create_app(runtime, ServeSettings(...))`` -> a FastAPI app over one Runtime.

The app never builds a Runtime (the CLI, a test or a Ray replica does) and never closes it.  Routes are
thin: request bodies are validated by the schemas, mapped onto the Runtime by :mod:`.requests`, generation
is served by :mod:`.generate`; every error leaves as OpenAI's error JSON through the handlers below.
"""
from __future__ import annotations

import base64
import contextlib
import time
from typing import Any

import attrs
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..errors import CorertError
from . import requests as mapping
from . import schemas as s
from .admission import Admission
from .errors import APIError, bad_request, from_exception
from .generate import GenerationServer
from .loading import ModelLoader
from .metrics import CONTENT_TYPE, Metrics
from .middleware import BodyLimit, ClientGone, CountRequests
from .security import check_key
from .streams import LiveThreads

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/classify",
             "/v1/tokenize", "/v1/detokenize", "/health", "/metrics", "/openapi.json")


@attrs.frozen
class ServeSettings:
    #: generation models served (names from the model store, or paths); empty: the runtime's model
    models: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    api_key: str | None = None
    #: sequence slots; None: the runtime's n_seqs
    slots: int | None = None
    max_queue: int = 64
    max_body_bytes: int = 8 << 20
    #: load the models (and generate one token each) when the app starts; /health is 503 until then
    load_at_start: bool = True
    #: generation models GET /v1/models lists; empty: ``models`` (a Ray replica's app of one model of several
    #: lists them all: the ingress sends each request to the app of its model)
    listed: tuple[str, ...] = attrs.field(default=(), converter=tuple)


_ERRORS = {status: {"model": s.ErrorResponse, "description": why} for status, why in (
    (400, "bad request"), (401, "missing or wrong API key"), (404, "unknown model"),
    (413, "request body too large"), (429, "queue full"), (500, "server error"), (503, "models loading"))}
# the schema of one server-sent event (what schemathesis checks each streamed event against)
_SSE = {200: {"content": {"text/event-stream": {"schema": {
    "type": "object", "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "required": ["data"]}}},
              "description": "JSON, or server-sent events when stream is true"}}


def create_app(runtime: Any, settings: ServeSettings = ServeSettings()) -> FastAPI:
    models = settings.models or (runtime.config.model,)
    embed_model, classify_model = runtime.config.embed_model, runtime.config.classify_model
    loader = ModelLoader(runtime, models)
    threads = LiveThreads()
    admission = Admission(settings.slots or runtime.config.n_seqs, settings.max_queue)
    metrics = Metrics(runtime, admission, threads)
    server = GenerationServer(runtime, admission, metrics, threads)
    started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if settings.load_at_start:
            loader.start()
        yield
        await server.drain(timeout=10)  # the caller closes the Runtime after this

    app = FastAPI(title="corert", version="0.1.0", lifespan=lifespan, openapi_url=None, docs_url=None,
                  redoc_url=None, description="OpenAI-compatible API over a corert Runtime")
    app.state.runtime, app.state.loader, app.state.metrics, app.state.admission = runtime, loader, metrics, admission
    app.state.threads = threads
    bearer = HTTPBearer(auto_error=False, description="the server's API key (when it has one)")

    def authorized(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        check_key(settings.api_key, cred.credentials if cred is not None else None)

    auth = [Depends(authorized)] if settings.api_key is not None else []  # documented only when required

    def ready() -> None:
        if not settings.load_at_start:
            return
        if loader.state == "loading":
            raise APIError(503, "the models are still loading; retry when GET /health answers 200",
                           "service_unavailable", code="loading")
        if loader.state == "error":
            raise APIError(503, f"loading the models failed: {loader.error}", "service_unavailable",
                           code="load_failed")

    def generation_model(name: str) -> None:
        if name not in models:
            raise APIError(404, f"model {name!r} is not served here; GET /v1/models lists: {', '.join(models)}",
                           param="model", code="model_not_found")
        ready()

    # -- errors ------------------------------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        kind = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}
        return APIError(exc.status_code, str(exc.detail), kind.get(exc.status_code, "invalid_request_error")
                        ).response()

    @app.exception_handler(CorertError)
    async def corert_error(request: Request, exc: CorertError):
        return from_exception(exc).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return from_exception(exc).response()

    @app.exception_handler(ClientGone)
    async def gone(request: Request, exc: ClientGone):
        return Response(status_code=499)  # nobody reads it; counted as the client's

    # -- generation --------------------------------------------------------------------------------------------
    @app.post("/v1/completions", response_model=s.CompletionResponse, dependencies=auth,
              responses={**_ERRORS, **_SSE})
    async def completions(body: s.CompletionRequest, request: Request):
        arrived = time.perf_counter()
        generation_model(body.model)
        return await server.serve(mapping.completion_plan(body), request, arrived)

    @app.post("/v1/chat/completions", response_model=s.ChatCompletionResponse, dependencies=auth,
              responses={**_ERRORS, **_SSE})
    async def chat_completions(body: s.ChatCompletionRequest, request: Request):
        arrived = time.perf_counter()
        generation_model(body.model)
        return await server.serve(mapping.chat_plan(body, runtime.config.n_ctx), request, arrived)

    # -- embeddings, classification, tokens --------------------------------------------------------------------
    @app.post("/v1/embeddings", response_model=s.EmbeddingResponse, dependencies=auth, responses=_ERRORS)
    async def embeddings(body: s.EmbeddingRequest):
        if body.model != embed_model:
            raise _wrong_task(body.model, "embeddings", embed_model, models)
        texts = _texts(body.input)
        result = await run_in_threadpool(runtime.embed, texts, model=body.model)
        if body.dimensions is not None and body.dimensions != result.dim:
            raise bad_request(f"this model's embeddings have {result.dim} dimensions, not {body.dimensions}",
                              param="dimensions")
        vectors = np.asarray(result.embeddings, dtype="<f4")
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.tobytes()).decode() if body.encoding_format == "base64"
                 else v.tolist()} for i, v in enumerate(vectors)]
        tokens = sum(i.tokens for i in result.inputs)
        return {"object": "list", "data": data, "model": body.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/classify", response_model=s.ClassifyResponse, dependencies=auth, responses=_ERRORS)
    async def classify(body: s.ClassifyRequest):
        model = body.model or classify_model
        if model != classify_model:
            raise _wrong_task(model, "classification", classify_model, models)
        result = await run_in_threadpool(runtime.classify, _texts(body.input), top_k=body.top_k, model=model)
        data = [{"index": i, "labels": [{"label": x.label, "score": x.score} for x in r.top]}
                for i, r in enumerate(result.results)]
        tokens = sum(r.tokens for r in result.results)
        return {"object": "list", "model": model, "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/tokenize", response_model=s.TokenizeResponse, dependencies=auth, responses=_ERRORS)
    async def tokenize(body: s.TokenizeRequest):
        generation_model(body.model)
        ids = await run_in_threadpool(runtime.tokenize, body.text, model=body.model, add_bos=body.add_special,
                                      parse_special=body.parse_special)
        return {"model": body.model, "tokens": ids, "count": len(ids)}

    @app.post("/v1/detokenize", response_model=s.DetokenizeResponse, dependencies=auth, responses=_ERRORS)
    async def detokenize(body: s.DetokenizeRequest):
        generation_model(body.model)
        text = await run_in_threadpool(runtime.detokenize, body.tokens, model=body.model)
        return {"model": body.model, "text": text}

    # -- the server itself -------------------------------------------------------------------------------------
    @app.get("/v1/models", response_model=s.ModelList, dependencies=auth, responses=_ERRORS)
    async def list_models():
        cards = [(m, "generate") for m in settings.listed or models] + [(embed_model, "embed"),
                                                                          (classify_model, "classify")]
        return {"object": "list", "data": [{"id": m, "object": "model", "created": started, "owned_by": "corert",
                                            "task": task} for m, task in cards]}

    @app.get("/health", response_model=s.Health, responses={503: {"model": s.Health,
                                                                   "description": "loading or failed"}})
    async def health():
        state = loader.state if settings.load_at_start else "ok"
        body = {"status": state, "error": loader.error}
        return JSONResponse(body, status_code=200 if state == "ok" else 503)

    @app.get("/metrics", dependencies=auth, response_class=Response,
             responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}, 401: _ERRORS[401]})
    async def prometheus():
        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE)

    @app.get("/openapi.json", dependencies=auth, include_in_schema=False)
    async def openapi():
        return _openapi(app)

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(CountRequests, count=lambda e, st: metrics.requests.labels(e, str(st)).inc(),
                       endpoints=ENDPOINTS)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema without its 422 answers: validation errors are OpenAI-shaped 400s here."""
    if app.openapi_schema is None:
        schema = app.openapi()
        for path in schema.get("paths", {}).values():
            for op in path.values():
                op.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def _texts(value: str | list[str]) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise bad_request("input must not be an empty list", param="input")
    if len(texts) > s.MAX_INPUTS:
        raise bad_request(f"input takes at most {s.MAX_INPUTS} texts, got {len(texts)}", param="input")
    return texts


def _wrong_task(model: str, task: str, serving: str, generation: tuple[str, ...]) -> APIError:
    if model in generation:
        return bad_request(f"model {model!r} is a generation model; {task} use {serving!r}", param="model")
    return APIError(404, f"model {model!r} is not served here; {task} use {serving!r}", param="model",
                    code="model_not_found")


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return bad_request(f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}",
                           code="invalid_json")
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden":
        return bad_request(f"unknown parameter {param!r}", param=param, code="unknown_parameter")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return bad_request(f"{param or 'body'}: {first.get('msg', 'invalid')}{more}", param=param)
