"""The public API: ``Runtime`` serves generate, stream, chat, tokenize, embed and classify requests.

Data path of one generate request (DESIGN.md): scheduler (priority, thread budget) -> tokenizer plugin (ids)
-> engine forward (K/V through the kv_cache plugin) -> decoding plugin (plain or speculative) -> incremental
detokenize -> caller.  Each Runtime has its own plugin manager, so a host app can hold two differently
configured runtimes side by side (the B side of an A/B is ``attrs.evolve(config, plugins=...)``).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import attrs

from .cancel import CancelToken, current_token, set_current
from .chat import render as render_chat, validate_messages
from .config import RuntimeConfig  # noqa: F401  (re-exported: corert.runtime.RuntimeConfig)
from .errors import ConfigError, InputError, ModelError
from .implementation import AREAS, ENGINE_AREA, engine_name
from .interfaces import PRIORITIES, SamplingParams
from .models.labels import model_label
from .models.store import ModelStore
from .plugin_host import PluginHost, Resolved, Selection, describe, parse_selections
from .prefill import prefill  # noqa: F401  (re-exported for decoders)
from .stops import StopMatcher

GENERATION_ENGINES = ("llama.cpp", "native")


# -- results ---------------------------------------------------------------------------------------------
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
class Completion:
    """A finished generation, OpenAI-shaped through :meth:`to_dict`."""

    id: str
    model: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" (end of generation or a stop string), "length", "cancelled"
    usage: Usage
    timings: Timings
    plugins: dict[str, str]
    decoder_stats: dict[str, Any]
    created: int = attrs.field(factory=lambda: int(time.time()))
    chat: bool = False

    def to_dict(self) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": self.finish_reason}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": self.text}
        else:
            choice["text"] = self.text
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


@attrs.frozen
class GenerateRequest:
    prompt: str
    model: str
    params: SamplingParams
    stop: tuple[str, ...] = ()
    priority: str = "normal"
    timeout: float | None = None
    chat: bool = False


_DONE = object()


class Runtime:
    """A configured runtime.  ``Runtime(engine="native", plugins={"tokenizer": "bpe:scalar"})``; keyword
    arguments override :class:`RuntimeConfig` fields (``config`` defaults to ``RuntimeConfig.from_env()``).
    ``extra_plugins`` registers (name, plugin) pairs after the entry points, so they override them."""

    def __init__(self, config: RuntimeConfig | None = None, *, extra_plugins: Iterable[tuple[str, object]] = (),
                 progress: bool = False, **overrides: Any):
        base = config if config is not None else RuntimeConfig.from_env()
        self.config = base.evolve(**overrides)  # plugins area by area, sub-configs key by key
        self.host = PluginHost.build(allow=self.config.allow, deny=self.config.deny, extra=extra_plugins)
        self.selections: dict[str, Selection] = parse_selections(self.config.plugins)
        self.store = ModelStore(root=self.config.models_dir or ModelStore().root, progress=progress)
        if self.host.models:
            self.store.specs = dict(self.host.models)
        self._check_engine(self.config.engine)
        for area, sel in self.selections.items():  # unknown names and variants fail now, not mid-request
            self.host.resolve(area, sel, engine=self._engine_for(area))
        self._lock = threading.RLock()
        self._scheduler = None
        self._loaded: dict[tuple, Any] = {}
        self._tokenizers: dict[tuple, Any] = {}
        self._encoders: dict[tuple, Any] = {}
        self._model_locks: dict[tuple, threading.Lock] = {}
        self._batch_waiters: concurrent.futures.ThreadPoolExecutor | None = None

    # -- plugins ------------------------------------------------------------------------------------------
    def _engine_for(self, area: str) -> str | None:
        return self.config.engine if area in ("kv_cache", "tokenizer") else None

    def _check_engine(self, engine: str) -> None:
        self.host.resolve(ENGINE_AREA, engine)

    def resolve(self, area: str, engine: str | None = None) -> Resolved:
        """The implementation and variant this runtime uses for ``area``."""
        if area == ENGINE_AREA:
            return self.host.resolve(ENGINE_AREA, engine or self.config.engine)
        eng = engine or (self.config.engine if area in ("kv_cache", "tokenizer") else None)
        return self.host.resolve(area, self.selections.get(area), engine=eng)

    def plugins_info(self) -> dict[str, Any]:
        return {**describe(self.host, self.selections, self.config.engine), "kv_cache": self.kv_cache_info()}

    def kv_cache_info(self) -> dict[str, Any] | None:
        """The KV cache this runtime's engine uses, without loading anything: its provider's ``stats()`` when
        it has one (paged: configured page geometry and budget) and the live stats of the stores of the
        models this runtime has loaded (pages used/free, bytes, sharing, prefix hits, evictions, waste)."""
        try:
            res = self.resolve("kv_cache")
            provider = self.host.create(res, engine=engine_name(self.config.engine), model=None,
                                        config=self.config)
        except Exception as exc:  # noqa: BLE001  (the area listing already reports why)
            return {"error": str(exc)}
        stats = getattr(provider, "stats", None)
        info: dict[str, Any] = {"name": res.label, **(stats() if callable(stats) else {})}
        with self._lock:
            loaded = [(key[0], m) for key, m in self._loaded.items() if key[-2] == res.label]
        info["stores"] = [{"model": model_label(path, self.store), **m.kv.stats()} for path, m in loaded
                          if callable(getattr(getattr(m, "kv", None), "stats", None))]
        return info

    @property
    def scheduler(self):
        with self._lock:
            if self._scheduler is None:
                self._scheduler = self.host.create(self.resolve("scheduler"), config=self.config)
            return self._scheduler

    # -- models -------------------------------------------------------------------------------------------
    def model_path(self, model: str | None = None) -> Path:
        return self.store.resolve(model or self.config.model)

    def tokenizer(self, model: str | None = None, engine: str | None = None):
        """The tokenizer plugin's tokenizer for a GGUF model (no engine load)."""
        path = self.model_path(model)
        res = self.resolve("tokenizer", engine)
        key = (str(path), res.label)
        with self._lock:
            tok = self._tokenizers.get(key)
            if tok is None:
                tok = self.host.create(res, model_path=str(path), config=self.config)
                self._tokenizers[key] = tok
            return tok

    def load_generation_model(self, model: str | None = None, engine: str | None = None):
        engine = engine or self.config.engine
        if engine_name(engine) not in GENERATION_ENGINES and engine != self.config.engine:
            raise ConfigError(f"engine {engine!r} does not generate text; use one of {', '.join(GENERATION_ENGINES)}")
        eng_res = self.resolve(ENGINE_AREA, engine)
        if engine_name(engine) == "onnx":
            raise ConfigError("engine 'onnx' serves embed and classify, not generation; "
                              f"use --engine {' or '.join(GENERATION_ENGINES)}")
        path = self.model_path(model)
        kv_res = self.resolve("kv_cache", engine)
        tok_res = self.resolve("tokenizer", engine)
        key = (str(path), engine, eng_res.label, kv_res.label, tok_res.label)
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is None:
                tokenizer = self.tokenizer(model, engine)
                kv = self.host.create(kv_res, engine=engine_name(engine), model=str(path), config=self.config)
                eng = self.host.create(eng_res, config=self.config)
                loaded = eng.load(str(path), tokenizer=tokenizer, kv_cache=kv, n_ctx=self.config.n_ctx,
                                  threads=self.scheduler.thread_budget(), config=self.config)
                self._loaded[key] = loaded
                self._model_locks[key] = threading.Lock()
            return loaded, self._model_locks[key]

    # -- generation ---------------------------------------------------------------------------------------
    def _request(self, prompt: str, model: str | None, max_tokens: int, temperature: float, top_k: int,
                 top_p: float, seed: int | None, stop: str | Sequence[str] | None, priority: str,
                 timeout: float | None, chat: bool = False) -> GenerateRequest:
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a string, not {type(prompt).__name__}")
        if not prompt:
            raise InputError("the prompt is empty")
        if not isinstance(max_tokens, int) or max_tokens <= 0:
            raise InputError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if temperature < 0:
            raise InputError(f"temperature must be ≥ 0, got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0:
            raise InputError(f"top_k must be ≥ 0 (0 = whole vocabulary), got {top_k}")
        if priority not in PRIORITIES:
            raise InputError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                seed=seed)
        return GenerateRequest(prompt, model or self.config.model, params, stops, priority, timeout, chat)

    def generate(self, prompt: str, *, model: str | None = None, max_tokens: int = 128,
                 temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, seed: int | None = None,
                 stop: str | Sequence[str] | None = None, priority: str = "normal",
                 timeout: float | None = None) -> Completion:
        req = self._request(prompt, model, max_tokens, temperature, top_k, top_p, seed, stop, priority, timeout)
        return self._submit_and_wait("generate", req)

    def stream(self, prompt: str, *, model: str | None = None, max_tokens: int = 128, temperature: float = 0.8,
               top_k: int = 40, top_p: float = 0.95, seed: int | None = None,
               stop: str | Sequence[str] | None = None, priority: str = "normal",
               timeout: float | None = None) -> Iterator[StreamChunk]:
        req = self._request(prompt, model, max_tokens, temperature, top_k, top_p, seed, stop, priority, timeout)
        return self._stream("generate", req)

    def chat(self, messages: Sequence[dict[str, str]], *, stream: bool = False, model: str | None = None,
             max_tokens: int = 256, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
             seed: int | None = None, stop: str | Sequence[str] | None = None, priority: str = "normal",
             timeout: float | None = None):
        msgs = validate_messages(messages)
        tok = self.tokenizer(model)
        loaded_meta = self._chat_template(model)
        bos = tok.decode([tok.bos_id]) if tok.bos_id is not None else ""
        eos = tok.decode([tok.eos_id]) if tok.eos_id is not None else ""
        prompt = render_chat(loaded_meta, msgs, bos=bos, eos=eos)
        req = self._request(prompt, model, max_tokens, temperature, top_k, top_p, seed, stop, priority, timeout,
                            chat=True)
        return self._stream("chat", req) if stream else self._submit_and_wait("chat", req)

    def _chat_template(self, model: str | None) -> str | None:
        from .models.gguf_header import read_header

        header = read_header(self.model_path(model), want_arrays=False)
        return header.metadata.get("tokenizer.chat_template")

    # -- continuous batching (native engine, n_seqs > 1, plain decoding) ------------------------------------
    def _batches(self, req: GenerateRequest) -> bool:
        if self.config.n_seqs <= 1 or engine_name(self.config.engine) != "native":
            return False
        return self.resolve("speculative").impl.name == "plain"

    def _run_step(self, fn):
        """A batching step runs as a scheduler task: forwards queue with the other work on its cores."""
        return self.scheduler.submit(fn, priority="normal").result()

    def _submit(self, req: GenerateRequest, *args):
        """A request on the batching path only waits for its tokens (the forwards are the service's, run
        on the scheduler), so it waits on a thread of its own, not on a scheduler worker; its timeout is
        honoured through the same cancel token the scheduler would give it."""
        if not self._batches(req):
            return self.scheduler.submit(self._serve, req, *args, priority=req.priority, timeout=req.timeout)
        with self._lock:
            if self._batch_waiters is None:
                self._batch_waiters = concurrent.futures.ThreadPoolExecutor(
                    max_workers=4 * self.config.n_seqs, thread_name_prefix="corert-batched-request")
        deadline = None if req.timeout is None else time.monotonic() + req.timeout

        def serve():
            set_current(CancelToken(deadline))
            try:
                return self._serve(req, *args)
            finally:
                set_current(None)

        return self._batch_waiters.submit(serve)

    def _submit_and_wait(self, task: str, req: GenerateRequest) -> Completion:
        self.host.hook.on_request_start(task=task, request=req)
        submitted = time.perf_counter()
        try:
            fut = self._submit(req, None, None, submitted)
            result = fut.result()
        except BaseException as exc:
            self.host.hook.on_request_end(task=task, request=req, result=None, error=exc)
            raise
        self.host.hook.on_request_end(task=task, request=req, result=result, error=None)
        return result

    def _stream(self, task: str, req: GenerateRequest) -> Iterator[StreamChunk]:
        self.host.hook.on_request_start(task=task, request=req)
        chunks: queue.Queue = queue.Queue()
        cancel = threading.Event()
        submitted = time.perf_counter()
        fut = self._submit(req, chunks.put, cancel, submitted)
        fut.add_done_callback(lambda f: chunks.put(_DONE))

        def iterate() -> Iterator[StreamChunk]:
            try:
                while (item := chunks.get()) is not _DONE:
                    yield item
                result = fut.result()
            except BaseException as exc:
                cancel.set()
                self.host.hook.on_request_end(task=task, request=req, result=None, error=exc)
                raise
            finally:
                cancel.set()  # the caller stopped early: let the worker stop too
                fut.cancel()
            self.host.hook.on_request_end(task=task, request=req, result=result, error=None)

        return iterate()

    def _serve(self, req: GenerateRequest, emit, cancel: threading.Event | None, submitted: float) -> Completion:
        """Runs on a scheduler worker: the whole data path of one generation."""
        started = time.perf_counter()
        loaded, lock = self.load_generation_model(req.model)
        tok = loaded.tokenizer
        decoder_res = self.resolve("speculative")
        decoder = self.host.create(decoder_res, config=self.config, runtime=self, model=req.model)
        # continuous batching (native engine, n_seqs > 1, plain decoding): requests share forwards instead of
        # taking turns; otherwise one sequence per loaded model and requests on it hold its lock in turn
        batching = (loaded.batch_service() if self.config.n_seqs > 1 and decoder_res.impl.name == "plain"
                    and hasattr(loaded, "batch_service") else None)
        with contextlib.nullcontext() if batching is not None else lock:
            t0 = time.perf_counter()
            ids = tok.encode(req.prompt, parse_special=True)
            t1 = time.perf_counter()
            if not ids:
                raise InputError("the prompt is empty after tokenization")
            if len(ids) >= loaded.n_ctx:
                raise InputError(f"the prompt has {len(ids)} tokens; the context holds {loaded.n_ctx} "
                                 f"(prompt + at least one generated token): shorten it or raise n_ctx")
            params = attrs.evolve(req.params, max_tokens=min(req.params.max_tokens, loaded.n_ctx - len(ids)))
            detok = tok.incremental_decoder()
            stops = StopMatcher(req.stop)
            out: list[int] = []
            text: list[str] = []
            finish = "length"
            first_at = None
            n_yielded = 0
            stop_check = current_token()  # the scheduler's cancel token: timeouts and cancels end the loop
            tokens = (batching.generate(ids, params, tok.is_eog) if batching is not None
                      else decoder.generate(loaded.session(), ids, params, tok.is_eog))
            try:
                for token in tokens:
                    stop_check.check()
                    n_yielded += 1
                    if first_at is None:
                        first_at = time.perf_counter()
                    if tok.is_eog(token):
                        finish = "stop"
                        break
                    out.append(token)
                    piece, hit = stops.push(detok.feed(token))
                    if piece:
                        text.append(piece)
                        if emit is not None:
                            emit(StreamChunk(piece, (token,)))
                    if hit:
                        finish = "stop"
                        break
                    if cancel is not None and cancel.is_set():
                        finish = "cancelled"
                        break
            finally:
                # end the decoder too, whatever ended the loop.  A request stopped by its token or a raised
                # error would otherwise leave it suspended, and the error's traceback keeps it alive: a
                # batched stream then goes on decoding in the batch until its max_tokens
                close = getattr(tokens, "close", None)
                if close is not None:
                    close()
            end = time.perf_counter()
            if finish != "stop":
                tail, _ = stops.push(detok.flush())
                tail += stops.flush()
                if tail:
                    text.append(tail)
                    if emit is not None:
                        emit(StreamChunk(tail, ()))
        first_at = first_at or end
        completion = Completion(
            id=f"cmpl-{uuid.uuid4().hex[:24]}", model=req.model, text="".join(text), token_ids=tuple(out),
            finish_reason=finish, usage=Usage(len(ids), len(out)),
            timings=Timings(queue_ms=(started - submitted) * 1e3, tokenize_ms=(t1 - t0) * 1e3,
                            prompt_ms=(first_at - t1) * 1e3, decode_ms=(end - first_at) * 1e3,
                            prompt_tokens=len(ids), decode_tokens=max(0, n_yielded - 1)),
            plugins=self.active_plugins(),
            decoder_stats=({"continuous_batching": True, "peak_streams": batching.peak_streams}
                           if batching is not None else decoder.stats()), chat=req.chat)
        if emit is not None:
            emit(StreamChunk("", (), finish, completion))
        return completion

    def active_plugins(self, engine: str | None = None) -> dict[str, str]:
        engine = engine or self.config.engine
        out = {"engine": engine}
        for area in AREAS:
            try:
                out[area] = self.resolve(area, engine).label
            except Exception:  # noqa: BLE001 - an area without an implementation for this engine
                continue
        return out

    # -- tokenization -------------------------------------------------------------------------------------
    def tokenize(self, text: str, *, model: str | None = None, add_bos: bool | None = None,
                 parse_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"text must be a string, not {type(text).__name__}")
        return list(self.tokenizer(model).encode(text, add_bos=add_bos, parse_special=parse_special))

    def detokenize(self, ids: Sequence[int], *, model: str | None = None) -> str:
        tok = self.tokenizer(model)
        clean = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) and not hasattr(i, "__index__"):
                raise InputError(f"token ids must be integers, got {i!r}")
            i = int(i)
            if not 0 <= i < tok.vocab_size:
                raise InputError(f"token id {i} out of range 0..{tok.vocab_size - 1}")
            clean.append(i)
        return tok.decode(clean)

    # -- embeddings and classification (onnx engine) --------------------------------------------------------
    def _encoder(self, kind: str, model: str | None):
        name = model or (self.config.embed_model if kind == "embed" else self.config.classify_model)
        path = self.store.resolve(name)
        key = (kind, str(path))
        with self._lock:
            enc = self._encoders.get(key)
            if enc is None:
                engine = self.config.engine if self.config.engine.startswith("onnx") else "onnx"
                eng = self.host.create(self.resolve(ENGINE_AREA, engine), config=self.config)
                enc = eng.load(str(path), kind=kind, threads=self.scheduler.thread_budget())
                self._encoders[key] = enc
            return enc

    def embed(self, texts: Sequence[str], *, model: str | None = None, priority: str = "interactive",
              timeout: float | None = None):
        enc = self._encoder("embed", model)
        return self._run_task("embed", texts, enc.embed, priority, timeout, texts)

    def classify(self, texts: Sequence[str], *, top_k: int = 5, model: str | None = None,
                 priority: str = "interactive", timeout: float | None = None):
        if not isinstance(top_k, int) or top_k <= 0:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}")
        enc = self._encoder("classify", model)
        return self._run_task("classify", texts, enc.classify, priority, timeout, texts, top_k=top_k)

    def _run_task(self, task: str, request: Any, fn, priority: str, timeout: float | None, *args, **kwargs):
        self.host.hook.on_request_start(task=task, request=request)
        try:
            result = self.scheduler.submit(fn, *args, priority=priority, timeout=timeout, **kwargs).result()
        except BaseException as exc:
            self.host.hook.on_request_end(task=task, request=request, result=None, error=exc)
            raise
        self.host.hook.on_request_end(task=task, request=request, result=result, error=None)
        return result

    # -- lifetime -----------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            for loaded in self._loaded.values():
                try:
                    loaded.close()
                except Exception:  # noqa: BLE001
                    pass
            self._loaded.clear()
            if self._batch_waiters is not None:
                self._batch_waiters.shutdown(wait=False)
                self._batch_waiters = None
            if self._scheduler is not None:
                self._scheduler.shutdown(wait=False)
                self._scheduler = None

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
