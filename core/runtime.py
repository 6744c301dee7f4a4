"""The public API: ``Runtime`` serves generate, stream, chat, tokenize, embed and classify requests.

The facade validates a request, fires the task hooks, picks the path (a scheduler task, or a waiter thread
when the engine declares continuous batching and the decoder can run inside the batcher) and hands the
request to :mod:`corert.generation`, which runs it: tokenizer plugin (ids) -> decoder plugin driving the
engine session (K/V through the kv_cache plugin), or the model's batch service -> incremental detokenize ->
stop strings -> Completion.  The Runtime owns what lives longer than a request: plugin selections, loaded
models with their locks, one decoder per loaded model, the scheduler.  It asks engines what they can do
(:class:`corert.interfaces.EngineCapabilities`), never checks their names.  Each Runtime has its own plugin
manager, so a host app can hold two differently configured runtimes side by side (the B side of an A/B is
``attrs.evolve(config, plugins=...)``).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import attrs

from . import generation, tool_calls
from .auto_engine import AUTO, EngineChoice, choose as choose_engine, explicit as explicit_engine
from .cancel import CancelToken, set_current
from .chat import render as render_chat, validate_messages
from .chunk_stream import DONE, Channel, ChunkStream
from .constraint import lark_constraint
from .config import RuntimeConfig  # noqa: F401  (re-exported: corert.runtime.RuntimeConfig)
from .errors import ConfigError, InputError, PluginError
from .hook_calls import request_hooks
from .implementation import AREAS, ENGINE_AREA, engine_name
from .interfaces import PRIORITIES, DecoderContext, EngineCapabilities, SamplingParams
from .isolation.pool import RemoteEncoder, WorkerPool
from .models.labels import model_label
from .models.store import ModelStore
from .plugin_host import PluginHost, Resolved, Selection, describe, parse_selections
from .prefill import prefill  # noqa: F401  (re-exported for decoders)
from .request_params import sampling_params
from .results import Completion, GenerateRequest, StreamChunk, Timings, Usage  # noqa: F401  (public)


#: how long close() waits for a model's running request to stop before leaving the model alone
CLOSE_WAIT_S = 30.0


@attrs.frozen
class ModelKey:
    """A loaded generation model is one per file and choice of engine, KV cache and tokenizer."""

    path: str
    engine: str
    engine_impl: str
    kv_cache: str
    tokenizer: str


class Runtime:
    """A configured runtime.  ``Runtime(engine="native", plugins={"tokenizer": "bpe:scalar"})``; keyword
    arguments override :class:`RuntimeConfig` fields (``config`` defaults to ``RuntimeConfig.from_env()``).
    ``extra_plugins`` registers (name, plugin) pairs after the entry points, so they override them."""

    def __init__(self, config: RuntimeConfig | None = None, *, extra_plugins: Iterable[tuple[str, object]] = (),
                 progress: bool = False, **overrides: Any):
        base = config if config is not None else RuntimeConfig.from_env()
        self.config = base.evolve(**overrides)  # plugins area by area, sub-configs key by key
        extra_plugins = tuple(extra_plugins)
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
        self._engines: dict[str, Any] = {}
        self._loaded: dict[ModelKey, Any] = {}
        self._tokenizers: dict[tuple, Any] = {}
        self._encoders: dict[tuple, Any] = {}
        self._model_locks: dict[ModelKey, threading.Lock] = {}
        #: one decoder per loaded model and decoding plugin, kept as long as the model: what it measured
        #: (speculative:adaptive's verify costs and accepted runs) serves the next request
        self._decoders: dict[tuple[ModelKey, str], Any] = {}
        self._engine_choices: dict[str, EngineChoice] = {}  # model file -> auto's choice
        self._batch_waiters: concurrent.futures.ThreadPoolExecutor | None = None
        #: isolation="process": the supervised workers that load and run the models instead of this process
        self._workers = WorkerPool(self.config, extra_plugins) if self.config.isolation == "process" else None

    # -- plugins ------------------------------------------------------------------------------------------
    def _engine_for(self, area: str) -> str | None:
        # under auto the engine is known per model file: selections are checked against it at load
        engine = self.config.engine
        return engine if area in ("kv_cache", "tokenizer") and engine != AUTO else None

    def _check_engine(self, engine: str) -> None:
        if engine != AUTO:
            self.host.resolve(ENGINE_AREA, engine)

    def engine_choice(self, model: str | None = None, pull: bool = True) -> EngineChoice:
        """The engine ``model`` runs on: the configured one, or under ``engine="auto"`` the first generation
        engine (by priority) that runs the file here, with the reason (see corert.auto_engine)."""
        if self.config.engine != AUTO:
            return explicit_engine(self.config.engine)
        path = str(self.store.resolve(model or self.config.model, pull=pull))
        with self._lock:
            choice = self._engine_choices.get(path)
            if choice is None:
                regs = sorted(self.host.implementations(ENGINE_AREA).values(),
                              key=lambda r: (-r.impl.priority, r.impl.name))
                choice = choose_engine(path, [r.impl.name for r in regs], self.engine, self._conflicts)
                self._engine_choices[path] = choice
            return choice

    def _conflicts(self, engine: str) -> list[str]:
        """The plugin selections that do not work with ``engine`` (auto passes such an engine over)."""
        out = []
        for area, sel in self.selections.items():
            reg = self.host.implementations(area).get(sel.name)
            if reg is not None and not reg.impl.supports_engine(engine):
                out.append(str(sel))
        return out

    def generation_engine(self, model: str | None = None) -> str:
        return self.engine_choice(model).engine

    def resolve(self, area: str, engine: str | None = None, model: str | None = None) -> Resolved:
        """The implementation and variant this runtime uses for ``area`` (kv_cache and tokenizer: on
        ``engine``, default the engine of ``model``)."""
        if area == ENGINE_AREA:
            return self.host.resolve(ENGINE_AREA, engine or self.generation_engine(model))
        eng = engine or (self.generation_engine(model) if area in ("kv_cache", "tokenizer") else None)
        return self.host.resolve(area, self.selections.get(area), engine=eng)

    def _listed_engine(self) -> tuple[str | None, dict[str, Any]]:
        """The default model's engine for the listings, without pulling the model."""
        try:
            choice = self.engine_choice(pull=False)
        except Exception as exc:  # noqa: BLE001 - e.g. not pulled yet: auto decides at load
            return None, {"requested": self.config.engine, "engine": None,
                          "reason": f"decided when the model is loaded ({exc})"}
        return choice.engine, choice.to_dict()

    def plugins_info(self) -> dict[str, Any]:
        engine, choice = self._listed_engine()
        info = describe(self.host, self.selections, engine)
        return {**info, "engine": self.config.engine, "engine_choice": choice, "kv_cache": self.kv_cache_info()}

    def kv_cache_info(self) -> dict[str, Any] | None:
        """The KV cache this runtime's engine uses, without loading anything: its provider's ``stats()`` when
        it has one (paged: configured page geometry and budget) and the live stats of the stores of the
        models this runtime has loaded (pages used/free, bytes, sharing, prefix hits, evictions, waste)."""
        try:
            engine, _ = self._listed_engine()
            if engine is None:
                return None
            res = self.resolve("kv_cache", engine)
            provider = self.host.create(res, engine=engine_name(engine), model=None, config=self.config)
        except Exception as exc:  # noqa: BLE001  (the area listing already reports why)
            return {"error": str(exc)}
        stats = getattr(provider, "stats", None)
        info: dict[str, Any] = {"name": res.label, **(stats() if callable(stats) else {})}
        settings = getattr(provider, "settings", None)  # llama_cpp: cache type and flash attention
        if callable(settings):
            info["settings"] = settings()
        with self._lock:
            loaded = [(key.path, m) for key, m in self._loaded.items() if key.kv_cache == res.label]
        info["stores"] = [{"model": model_label(path, self.store), **m.kv.stats()} for path, m in loaded
                          if callable(getattr(getattr(m, "kv", None), "stats", None))]
        if self._workers is not None:  # the models live in the workers: their stores' stats come from there
            info["stores"] = self._workers.kv_stores(res.label)
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
        res = self.resolve("tokenizer", engine, model)
        key = (str(path), res.label)
        with self._lock:
            tok = self._tokenizers.get(key)
            if tok is None:
                tok = self.host.create(res, model_path=str(path), config=self.config)
                self._tokenizers[key] = tok
            return tok

    def engine(self, engine: str | None = None, model: str | None = None):
        """The engine object (not a loaded model) for ``engine`` (default: the engine of ``model``); it
        declares its :class:`corert.interfaces.EngineCapabilities`."""
        res = self.resolve(ENGINE_AREA, engine, model)
        with self._lock:
            eng = self._engines.get(res.label)
            if eng is None:
                eng = self.host.create(res, config=self.config)
                if not isinstance(getattr(eng, "capabilities", None), EngineCapabilities):
                    raise PluginError(f"engine {res.label!r} declares no capabilities: give it a "
                                      f"corert.interfaces.EngineCapabilities 'capabilities' attribute")
                self._engines[res.label] = eng
            return eng

    def _engines_serving(self, task: str) -> list[str]:
        """Registered engines whose declared tasks include ``task``, best first (priority, then name)."""
        regs = sorted(self.host.implementations(ENGINE_AREA).values(), key=lambda r: (-r.impl.priority, r.impl.name))
        out = []
        for reg in regs:
            try:
                if self.engine(reg.impl.name).capabilities.serves(task):
                    out.append(reg.impl.name)
            except Exception:  # noqa: BLE001 - an engine that cannot be built serves nothing here
                continue
        return out

    def _model_key(self, model: str | None, engine: str) -> ModelKey:
        return ModelKey(str(self.model_path(model)), engine, self.resolve(ENGINE_AREA, engine).label,
                        self.resolve("kv_cache", engine).label, self.resolve("tokenizer", engine).label)

    def load_generation_model(self, model: str | None = None, engine: str | None = None):
        """The loaded model for ``model`` on ``engine`` and its lock (held by whoever uses its session)."""
        engine = engine or self.generation_engine(model)
        eng = self.engine(engine)
        if not eng.capabilities.serves("generate"):
            raise ConfigError(f"engine {engine!r} serves {' and '.join(sorted(eng.capabilities.tasks))}, not "
                              f"generation; use --engine {' or '.join(self._engines_serving('generate'))}")
        key = self._model_key(model, engine)
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is None:
                tokenizer = self.tokenizer(model, engine)
                kv = self.host.create(self.resolve("kv_cache", engine), engine=engine_name(engine), model=key.path,
                                      config=self.config)
                loaded = eng.load(key.path, tokenizer=tokenizer, kv_cache=kv, n_ctx=self.config.n_ctx,
                                  threads=self.scheduler.thread_budget(), config=self.config)
                self._loaded[key] = loaded
                self._model_locks[key] = threading.Lock()
            return loaded, self._model_locks[key]

    def decoder(self, model: str | None = None):
        """The decoding plugin's decoder for ``model`` on the configured engine, built once and kept as long
        as the loaded model.  One decoder per loaded model is safe on the plain path because every request
        on that model holds the model's lock for its whole generation; batched requests never use it."""
        model = model or self.config.model
        res = self.resolve("speculative")
        engine = self.generation_engine(model)
        dkey = (self._model_key(model, engine), res.label)
        with self._lock:
            decoder = self._decoders.get(dkey)
            if decoder is None:
                context = DecoderContext(model=model, store_path=self.store.path,
                                         load_model=lambda name: self.load_generation_model(name, engine))
                decoder = self.host.create(res, config=self.config, context=context)
                self._decoders[dkey] = decoder
            return decoder

    # -- generation ---------------------------------------------------------------------------------------
    def _request(self, prompt: str, model: str | None, stop: str | Sequence[str] | None, priority: str,
                 timeout: float | None, chat: bool = False, **sampling: Any) -> GenerateRequest:
        """``sampling``: :func:`corert.request_params.sampling_params`' options (max_tokens, temperature,
        top_k, top_p, seed, presence_penalty, frequency_penalty, logit_bias, logprobs, response_format,
        grammar, ignore_eos)."""
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a string, not {type(prompt).__name__}")
        if not prompt:
            raise InputError("the prompt is empty")
        if priority not in PRIORITIES:
            raise InputError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        try:
            params = sampling_params(lambda: self.tokenizer(model), **sampling)
        except TypeError as exc:  # an unknown option
            raise InputError(str(exc)) from None
        return GenerateRequest(prompt, model or self.config.model, params, stops, priority, timeout, chat)

    def generate(self, prompt: str, *, model: str | None = None, max_tokens: int = 128,
                 temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, seed: int | None = None,
                 stop: str | Sequence[str] | None = None, priority: str = "normal",
                 timeout: float | None = None, **options: Any) -> Completion:
        """``options``: presence_penalty, frequency_penalty, logit_bias, logprobs, response_format, grammar,
        ignore_eos
        (see :func:`corert.request_params.sampling_params`)."""
        req = self._request(prompt, model, stop, priority, timeout, max_tokens=max_tokens,
                            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, **options)
        return self._submit_and_wait("generate", req)

    def stream(self, prompt: str, *, model: str | None = None, max_tokens: int = 128, temperature: float = 0.8,
               top_k: int = 40, top_p: float = 0.95, seed: int | None = None,
               stop: str | Sequence[str] | None = None, priority: str = "normal",
               timeout: float | None = None, **options: Any) -> Iterator[StreamChunk]:
        req = self._request(prompt, model, stop, priority, timeout, max_tokens=max_tokens,
                            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, **options)
        return self._stream("generate", req)

    def chat(self, messages: Sequence[dict[str, str]], *, stream: bool = False, model: str | None = None,
             max_tokens: int = 256, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
             seed: int | None = None, stop: str | Sequence[str] | None = None, priority: str = "normal",
             timeout: float | None = None, tools: Sequence[dict] | None = None, tool_choice: Any = None,
             parallel_tool_calls: bool | None = None, **options: Any):
        """``tools`` / ``tool_choice`` as OpenAI's (see :mod:`corert.tool_calls`): the calls' arguments are
        held to each function's schema and come back parsed in ``Completion.tool_calls``."""
        msgs = validate_messages(messages)
        tok = self.tokenizer(model)
        template = self._chat_template(model)
        bos = tok.decode([tok.bos_id]) if tok.bos_id is not None else ""
        eos = tok.decode([tok.eos_id]) if tok.eos_id is not None else ""
        calls = tool_calls.tool_request(tools, tool_choice, parallel_tool_calls)
        rendered_tools = None
        if calls is not None:
            msgs = tool_calls.template_messages(msgs)
            if template and tool_calls.template_renders_tools(template):
                rendered_tools = list(calls.tools)
            else:  # the template ignores tools: describe them in the system message
                note = tool_calls.tools_system_message(calls)
                if msgs[0]["role"] == "system":
                    msgs[0] = {**msgs[0], "content": f"{msgs[0]['content']}\n\n{note}"}
                else:
                    msgs.insert(0, {"role": "system", "content": note})
            options["constraint"] = lark_constraint(tok, "tools", tool_calls.grammar(calls))
        prompt = render_chat(template, msgs, bos=bos, eos=eos, tools=rendered_tools)
        req = self._request(prompt, model, stop, priority, timeout, chat=True, max_tokens=max_tokens,
                            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, **options)
        if calls is None:
            return self._stream("chat", req) if stream else self._submit_and_wait("chat", req)
        if stream:
            return tool_calls.stream_with_calls(self._stream("chat", req))
        return tool_calls.finish(self._submit_and_wait("chat", req))

    def _chat_template(self, model: str | None) -> str | None:
        from .models.gguf_header import read_header

        header = read_header(self.model_path(model), want_arrays=False)
        return header.metadata.get("tokenizer.chat_template")

    # -- continuous batching (an engine that declares it, n_seqs > 1, a decoder the batcher can stand for) --
    def _batches(self, decoder, model: str | None) -> bool:
        caps = self.engine(model=model).capabilities
        return (self.config.n_seqs > 1 and caps.continuous_batching
                and (getattr(decoder, "runs_in_batcher", False)  # undeclared: it keeps its own turn
                     or self._batch_speculation(decoder, model) is not None))

    def _batch_speculation(self, decoder, model: str | None):
        """The decoder's drafts verified inside the batch, when it has a batch side and the engine verifies
        drafts there (else None: a speculative request keeps its own turn)."""
        if not self.engine(model=model).capabilities.batched_speculation:
            return None
        return getattr(decoder, "batch_speculation", None)

    def _submit(self, req: GenerateRequest, *args):
        """A request on the batching path only waits for its tokens (the forwards run on the batch service's
        driver thread), so it waits on a thread of its own, not on a scheduler worker; its timeout is
        honoured through the same cancel token the scheduler would give it."""
        decoder = self.decoder(req.model)
        if req.params.processes_logits and not getattr(decoder, "samples_every_token", False):
            raise InputError(f"decoder {decoder.name!r} cannot apply penalties, logit_bias, logprobs or a "
                             f"grammar (its accepted drafts bypass the sampler); use --plugin "
                             f"speculative=plain for such requests")
        if not self._batches(decoder, req.model):
            return self.scheduler.submit(self._serve, req, decoder, *args, priority=req.priority,
                                         timeout=req.timeout)
        with self._lock:
            if self._batch_waiters is None:
                self._batch_waiters = concurrent.futures.ThreadPoolExecutor(
                    max_workers=4 * self.config.n_seqs, thread_name_prefix="corert-batched-request")
        deadline = None if req.timeout is None else time.monotonic() + req.timeout

        def serve():
            set_current(CancelToken(deadline))
            try:
                return self._serve(req, decoder, *args)
            finally:
                set_current(None)

        return self._batch_waiters.submit(serve)

    def _submit_and_wait(self, task: str, req: GenerateRequest) -> Completion:
        with request_hooks(self.host.hook, task, req) as call:
            call.result = self._submit(req, None, None, time.perf_counter()).result()
        return call.result

    def _stream(self, task: str, req: GenerateRequest) -> ChunkStream:
        chunks = Channel()
        cancel = threading.Event()
        with contextlib.ExitStack() as setup:  # a request that fails to start ends its hooks here
            call = setup.enter_context(request_hooks(self.host.hook, task, req))
            # the channel is the emit: a worker's stream can then let its consumer read for itself
            fut = self._submit(req, chunks, cancel, time.perf_counter())
            hooks = setup.pop_all()  # ...else the stream's consumer ends them
        fut.add_done_callback(lambda f: chunks.put(DONE))

        def stop() -> None:  # the caller stopped early: let the worker stop too
            cancel.set()
            fut.cancel()

        def iterate() -> Iterator[StreamChunk]:
            with hooks:
                try:
                    while (item := chunks.get()) is not DONE:
                        yield item
                    call.result = fut.result()
                finally:
                    stop()

        def finish() -> None:  # push mode: the hooks end when the request does
            with hooks:
                call.result = fut.result()

        return ChunkStream(iterate(), chunks, finish, stop)

    def _serve(self, req: GenerateRequest, decoder, emit, cancel: threading.Event | None,
               submitted: float) -> Completion:
        """Runs on a scheduler worker (or a batched request's waiter thread): one generation."""
        if self._workers is not None:
            key = self._model_key(req.model, self.generation_engine(req.model))
            sup = self._workers.model(key, "generate", req.model,
                                      capacity=self.config.n_seqs if self._batches(decoder, req.model) else 1)
            return self._workers.generate(sup, req, emit, cancel, submitted)
        started = time.perf_counter()
        loaded, lock = self.load_generation_model(req.model)
        # continuous batching: requests share forwards instead of taking turns; otherwise one sequence per
        # loaded model and requests on it hold its lock in turn
        batching = loaded.batch_service() if self._batches(decoder, req.model) else None
        target = generation.Target(loaded, lock, decoder, batching,
                                   self._batch_speculation(decoder, req.model) if batching is not None else None)
        return generation.generate(req, target, generation.Clock(submitted, started),
                                   self.active_plugins(model=req.model),
                                   emit=emit, cancel=cancel)

    def active_plugins(self, engine: str | None = None, model: str | None = None) -> dict[str, str]:
        engine = engine or self.generation_engine(model)
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
        if self._workers is not None:
            return RemoteEncoder(self._workers.model(key, kind, name, capacity=1))
        with self._lock:
            enc = self._encoders.get(key)
            if enc is None:
                engine = self.config.engine
                if engine == AUTO or not self.engine(engine).capabilities.serves(kind):  # e.g. a generation engine
                    serving = self._engines_serving(kind)
                    if not serving:
                        raise ConfigError(f"no registered engine serves {kind}")
                    engine = serving[0]
                enc = self.engine(engine).load(str(path), kind=kind, threads=self.scheduler.thread_budget())
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
        with request_hooks(self.host.hook, task, request) as call:
            if isinstance(getattr(fn, "__self__", None), RemoteEncoder) and timeout is None:
                # its supervisor already queues requests by priority for the worker's one slot: calling it here
                # saves two thread hand-offs per request (a timeout still goes through the scheduler)
                call.result = fn(*args, priority=priority, **kwargs)
            else:
                call.result = self.scheduler.submit(fn, *args, priority=priority, timeout=timeout,
                                                    **kwargs).result()
        return call.result

    def workers_info(self) -> list[dict[str, Any]]:
        """With isolation="process": each supervised model's worker (state, pid, log, restarts)."""
        return self._workers.info() if self._workers is not None else []

    # -- lifetime -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the work in flight, then free each model once nobody is generating on it: freeing a model
        under a running forward would crash the process.  Running generations are asked to stop through
        their cancel token (they end at their next token); a model still busy after ``CLOSE_WAIT_S`` is
        left to the garbage collector rather than freed under its user."""
        if self._workers is not None:
            self._workers.close()
        with self._lock:  # taken apart under the lock, waited on outside it (a request may need the lock)
            scheduler, self._scheduler = self._scheduler, None
            loaded = list(self._loaded.items())
            self._loaded.clear()
            self._decoders.clear()
            waiters, self._batch_waiters = self._batch_waiters, None
        if scheduler is not None:
            scheduler.shutdown(wait=False, cancel_pending=True)
        for key, model in loaded:
            lock = self._model_locks.get(key)
            if lock is not None and not lock.acquire(timeout=CLOSE_WAIT_S):
                continue
            try:
                model.close()  # a batch service stops its driver thread first
            except Exception:  # noqa: BLE001
                pass
            finally:
                if lock is not None:
                    lock.release()
        if waiters is not None:
            waiters.shutdown(wait=False)

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
