"""``corert serve --ray``: the OpenAI-compatible app as Ray Serve replicas behind one endpoint (the ray extra).

Two deployments.  ``CorertReplica`` (``num_cpus`` each) owns one Runtime, built inside the replica from the
config (a ``Llama`` cannot be pickled; a config can), with ``n_threads = num_cpus`` (Ray sets
``OMP_NUM_THREADS``, numba would take every core) and numba's cache where numba keeps it for every corert
process of the install (beside the sources, else its user-wide cache; ``NUMBA_CACHE_DIR`` when set), so a
replica loads the kernels the node's other replicas and corert commands compiled; it serves the very app of
``corert serve``
(:func:`corert.server.create_app`: routes, streaming, auth, metrics) in-process, request by request
(asgi_bridge), its response as bursts of ASGI messages: every SSE event ready at once crosses as one item,
over Serve's gRPC transport (:class:`Bursts`); a stream's later bursts go on its ingress's channel, one item
for what all the replica's streams have ready at once (:mod:`~corert.server.ray_mux`).  ``Ingress`` (no CPU
of its own) serves the endpoint (Serve's direct ingress on a local Ray, :mod:`~corert.server.ray_local`;
Serve's proxy calls it on a joined cluster): it reads the body, hashes the prompt's leading blocks and
forwards the request through a handle whose router is the prefix-aware
:class:`~corert.server.ray_route.PrefixRouter`; it relays the response, a stream as a stream.

Failure: a replica that dies before the first byte of its answer has its request retried once on another
replica (nothing was sent, nothing is repeated twice to the client); one that dies mid-stream ends that
stream with an error event (``code: replica_died``); Serve replaces the replica.  A client that goes away
cancels the handle call, which cancels the app's request in the replica, which aborts its streams.
Embeddings and classification are batched per replica with ``@serve.batch``; generation batches in the
Runtime (continuous batching).  Several generation models with ``models_per_replica`` below their number:
one Runtime per model, loaded on demand, least recently used out (:mod:`~corert.server.ray_models`).
``GET /metrics`` at the ingress: the routing counters, then every replica's own metrics with a ``replica``
label.
"""
from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import threading
from typing import Any, AsyncIterator

import attrs
import grpc
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..spin import given_spin
from .asgi_bridge import Forwarded, call_app, header
from .errors import APIError
from .ray_local import free_port, reuse_address_for_direct_ingress, start_local
from .ray_mux import MUXED, ChannelBroken, IngressChannels, ReplicaChannels, muxed_bursts
from .ray_route import PrefixRouter, prefix_keys, routers
from .security import check_key

# a replica that dies mid-answer breaks its gRPC stream (Serve turns only UNAVAILABLE into ActorUnavailableError)
_REPLICA_GONE = (RayActorError, ActorUnavailableError, grpc.aio.AioRpcError, ChannelBroken)
REPLICA_HEADER = "x-corert-replica"
#: in our deployments' processes (runtime_env, so on any cluster): our code runs on the replica's own event
#: loop, and the ingress's router too, not each on a loop of its own in another thread, which every streamed
#: item crossed (quiet 2 cores, ray-1: replica CPU per token 5.8 -> 4.7 ms, ingress 0.44 -> 0.34; none of our
#: code blocks a loop: the Runtime's work runs in its own threads)
LOOP_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


@attrs.frozen
class RaySettings:
    replicas: int = 1
    #: (min, max) replicas, scaled on requests per replica; None: a fixed ``replicas``
    autoscale: tuple[int, int] | None = None
    num_cpus: int = 1
    #: requests one replica takes at once (running + waiting in its app); more wait in the ingress's router
    max_ongoing: int = 8
    policy: str = "prefix"  # prefix | random
    #: generation models one replica keeps loaded (least recently used out); None: all of them
    models_per_replica: int | None = None
    #: how long a replica may take to load its models and warm up
    start_timeout_s: float = 900.0
    #: set in every replica's process: the OpenMP spin chosen before Ray started (``run``); a replica choosing
    #: at its own start sees Ray's start-up as load and takes the short spin (quiet 2 cores: ~0.8x the tok/s)
    env: dict[str, str] = attrs.field(factory=dict)


def _prepare_process(num_cpus: int) -> None:
    """Before the Runtime exists: numba's thread count from this replica's CPUs.  Its cache stays numba's
    own (a directory of the replicas' alone missed every kernel the install's other processes had compiled:
    a fresh checkout's test run spent 80 s compiling them in the replicas again)."""
    os.environ["NUMBA_NUM_THREADS"] = str(num_cpus)
    import sys

    if "numba" in sys.modules:  # imported already (by whatever unpickled us): make it see the settings
        sys.modules["numba"].config.reload_config()


class _BatchedEncoders:
    """The Runtime as the app sees it, with ``embed`` and ``classify`` batched across requests by
    ``@serve.batch`` (the app calls them from its thread pool; the batch runs on the replica's loop)."""

    def __init__(self, runtime: Any, loop: asyncio.AbstractEventLoop):
        self._runtime, self._loop = runtime, loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    def embed(self, texts, *, model=None, **kw):
        return _unwrap(asyncio.run_coroutine_threadsafe(self._one(("embed", model, None, tuple(texts))),
                                                        self._loop).result())

    def classify(self, texts, *, top_k=5, model=None, **kw):
        return _unwrap(asyncio.run_coroutine_threadsafe(self._one(("classify", model, top_k, tuple(texts))),
                                                        self._loop).result())

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _one(self, items: list[tuple]) -> list[Any]:
        return await asyncio.to_thread(self._run, items)

    def _run(self, items: list[tuple]) -> list[Any]:
        """One Runtime call per (task, model, top_k) group, each request getting its slice of the result; a
        group that fails is run request by request, so an error reaches only the request it belongs to."""
        out: list[Any] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, (task, model, top_k, _) in enumerate(items):
            groups.setdefault((task, model, top_k), []).append(i)
        for (task, model, top_k), idx in groups.items():
            try:
                result = self._encode(task, model, top_k, [t for i in idx for t in items[i][3]])
            except Exception:  # noqa: BLE001 - whose input was at fault is found below
                for i in idx:
                    try:
                        out[i] = self._encode(task, model, top_k, list(items[i][3]))
                    except Exception as exc:  # noqa: BLE001 - raised in its own request (_unwrap)
                        out[i] = _Raised(exc)
                continue
            start = 0
            for i in idx:
                end = start + len(items[i][3])
                out[i] = (attrs.evolve(result, embeddings=result.embeddings[start:end],
                                       inputs=result.inputs[start:end]) if task == "embed" else
                          attrs.evolve(result, results=result.results[start:end]))
                start = end
        return out

    def _encode(self, task: str, model: str | None, top_k: int | None, texts: list[str]) -> Any:
        if task == "embed":
            return self._runtime.embed(texts, model=model)
        return self._runtime.classify(texts, top_k=top_k, model=model)


class _Raised:
    """An error of one request's share of a batch, carried back to that request alone."""

    def __init__(self, exc: Exception):
        self.exc = exc


def _unwrap(x: Any) -> Any:
    if isinstance(x, _Raised):
        raise x.exc
    return x


class CorertReplica:
    """The app of ``corert serve`` over one Runtime, built inside the replica's process; with
    ``models_per_replica`` below the number of served models, one Runtime per model, the least recently
    used unloaded first (:class:`~corert.server.ray_models.ModelLRU`)."""

    async def __init__(self, config: Any, settings: Any, num_cpus: int, models_per_replica: int | None = None):
        from .ray_models import ModelLRU, ServedApp

        _prepare_process(num_cpus)
        # Ray reserves CPUs, not cores: pinned lanes would put every replica of a node on its first cores
        config = config.evolve(scheduler={"pin_threads": False})
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.channels = ReplicaChannels()
        loop = asyncio.get_running_loop()

        def start(cfg: Any, st: Any) -> Any:
            return ServedApp.start(cfg, st, num_cpus, lambda runtime: _BatchedEncoders(runtime, loop))

        models = settings.models or (config.model,)
        self.one = self.lru = None
        if models_per_replica is None or models_per_replica >= len(models):
            self.one = await start(config, settings)
        else:
            self.lru = ModelLRU(lambda m: start(config.evolve(model=m),
                                                attrs.evolve(settings, models=(m,), listed=models)),
                                models, models_per_replica)
            await self.lru.app_for(models[0])  # warm: Serve sends the replica nothing before

    async def call(self, fwd: Forwarded) -> AsyncIterator[bytes]:
        """The response to ``fwd``: lists of ASGI messages, each what the app had ready at once, pickled (one
        item per list: an item costs ~1 CPU ms across the processes it crosses, a token ~2.6 ms to decode);
        a stream's later lists go on its ingress's channel when that is open (ray_mux)."""
        if self.lru is not None and fwd.method == "GET" and fwd.path == "/metrics":
            from .metrics import CONTENT_TYPE

            source = [[{"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", CONTENT_TYPE.encode())]},
                       {"type": "http.response.body", "body": self.lru.metrics()}]]
        else:
            served = self.one if self.lru is None else await self.lru.app_for(serve.get_multiplexed_model_id())
            source = call_app(served.app, fwd)
        bursts = _aiter(source, lambda burst: joined(burst, self.replica_id))
        first = await anext(bursts)
        channel = fwd.channel if _event_stream(first) else None
        async for burst in self.channels.relay(channel, fwd.stream, first, bursts):
            yield pickle.dumps(burst)  # bytes: gRPC carries them as they are

    async def channel(self, fwd: Forwarded) -> AsyncIterator[bytes]:
        """The ingress ``fwd.channel``'s streams: every burst they have ready at once, as one item."""
        async for batch in self.channels.serve(fwd.channel):
            yield batch

    def check_health(self) -> None:
        (self.one or self.lru).check_health()

    async def __del__(self):
        await (self.one or self.lru).close()


async def _aiter(items: Any, each: Any) -> AsyncIterator[Any]:
    if isinstance(items, list):
        for x in items:
            yield each(x)
    else:
        async for x in items:
            yield each(x)


def _event_stream(burst: list[dict[str, Any]]) -> bool:
    start = burst[0] if burst and burst[0]["type"] == "http.response.start" else {}
    return (header(start.get("headers", []), b"content-type") or "").startswith("text/event-stream")


def joined(burst: list[dict[str, Any]], replica_id: str) -> list[dict[str, Any]]:
    """A burst as it goes to the ingress: the replica's id added to the response start, consecutive bodies
    joined into one message (one bytes object to pickle, one chunk for the ingress to write; the app's SSE
    events are whole, so their boundaries stay intact)."""
    out: list[dict[str, Any]] = []
    for m in burst:
        if m["type"] == "http.response.start":
            m = {**m, "headers": [*m.get("headers", []), (REPLICA_HEADER.encode(), replica_id.encode())]}
        elif m["type"] == "http.response.body" and out and out[-1]["type"] == "http.response.body":
            m = {**m, "body": out.pop()["body"] + m.get("body", b"")}
        out.append(m)
    return out


class Bursts:
    """A replica's response as the ingress reads it: over Serve's gRPC transport (``_by_reference=False``: no
    Ray object per item; replica + ingress CPU per streamed event 1.6-1.9 ms -> 0.8-1.2 ms, measured with a
    model-free replica), the replica's pickled bursts passed through as bytes (``response_serialization="noop"``)."""

    def __init__(self, replicas: Any, fwd: Forwarded, model: str = ""):
        self._gen = replicas.options(stream=True, multiplexed_model_id=model, _by_reference=False,
                                     response_serialization="noop").call.remote(fwd)

    def __aiter__(self) -> "Bursts":
        return self

    async def __anext__(self) -> list[dict[str, Any]]:
        return pickle.loads(await self._gen.__anext__())  # our own replica's bytes

    def cancel(self) -> None:
        self._gen.cancel()


def body_of(burst: list[dict[str, Any]]) -> bytes:
    return b"".join(m.get("body", b"") for m in burst)


def body_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def route_text(path: str, data: dict[str, Any]) -> str:
    """The text whose prefix decides the replica: a completion's prompt, a chat's messages in order."""
    if path.endswith("/chat/completions"):
        parts = []
        for m in data.get("messages") or []:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"<{m.get('role', '') if isinstance(m, dict) else ''}>{content or ''}")
        return "".join(parts)
    prompt = data.get("prompt") if path.endswith("/completions") else None
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else ""


class Ingress:
    """The endpoint (or what Serve's proxy calls): forwards each request to a replica chosen by the prefix router."""

    def __init__(self, replicas: Any, api_key: str | None, multiplexed: tuple[str, ...] = ()):
        """``multiplexed``: the generation models replicas load on demand (a request for one of them is
        sent with its id, for Serve's multiplexer and our router); empty: every replica has every model."""
        reuse_address_for_direct_ingress()  # before Serve starts the endpoint's server
        self.replicas, self.api_key, self.multiplexed = replicas, api_key, frozenset(multiplexed)
        self.failures = self.retries = 0
        self.channels = IngressChannels(self._channel_call)

    def _channel_call(self, replica: str, channel: str) -> Any:
        return self.replicas.options(stream=True, _by_reference=False, response_serialization="noop").channel.remote(
            Forwarded("GET", "", pin=replica, channel=channel))

    def __del__(self):
        self.channels.close()

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        headers = tuple((k, v) for k, v in request.headers.items() if k.lower() != "host")
        if path == "/metrics" and request.method == "GET":
            return await self._metrics(request, headers)
        data = body_json(body) if request.method == "POST" else {}
        named = data.get("model") if isinstance(data.get("model"), str) else ""
        # the model is part of the prefix: another model's cache does not hold it
        stream, queue = self.channels.register()
        fwd = Forwarded(request.method, path, request.url.query.encode(), headers, body,
                        route_keys=prefix_keys(f"{named}\n{route_text(path, data)}") if data else (),
                        channel=self.channels.id, stream=stream)
        return await self._forward(fwd, named if named in self.multiplexed else "", queue)

    async def _start(self, fwd: Forwarded, model: str):
        """The replica's response generator and its first burst (the response start first); retried once on
        another replica when the first one died before answering (nothing reached the client yet)."""
        for attempt in range(2):
            gen = Bursts(self.replicas, fwd, model)
            try:
                return gen, await gen.__anext__()
            except _REPLICA_GONE:
                self.failures += 1
                if attempt == 0:
                    self.retries += 1
                    continue
                raise APIError(503, "the replica serving this request died and the retry failed too; retry",
                               "service_unavailable", code="replica_died") from None

    async def _forward(self, fwd: Forwarded, model: str, queue: asyncio.Queue) -> Response:
        """``queue``: where the stream's bursts come if its replica sends them on our channel."""
        try:
            gen, (start, *rest) = await self._start(fwd, model)
        except APIError as exc:
            self.channels.unregister(fwd.stream)
            return exc.response()
        raw = start.get("headers", [])
        kept = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw if k.lower() != b"content-length"}
        if (header(raw, b"content-type") or "").startswith("text/event-stream"):
            muxed = any(m["type"] == MUXED for m in rest)
            self.channels.on_replica(fwd.stream, header(raw, REPLICA_HEADER.encode()) or "")
            return StreamingResponse(self._relay(gen, rest, fwd.stream, queue if muxed else None),
                                     status_code=start["status"], headers=kept)
        self.channels.unregister(fwd.stream)
        chunks = [body_of(rest)]
        try:
            async for burst in gen:
                chunks.append(body_of(burst))
        except _REPLICA_GONE:
            self.failures += 1
            return _died().response()
        return Response(b"".join(chunks), status_code=start["status"], headers=kept)

    async def _relay(self, gen: Bursts, first: list[dict[str, Any]], stream: str,
                     queue: asyncio.Queue | None) -> AsyncIterator[bytes]:
        """A burst's events as one chunk: written as they came, never held for later ones.  ``queue``: the
        later bursts come on the replica's channel (the call itself then only ends, or raises)."""
        later = gen if queue is None else muxed_bursts(queue, gen)
        try:
            if body := body_of(first):
                yield body
            async for burst in later:
                if body := body_of(burst):
                    yield body
        except _REPLICA_GONE:
            self.failures += 1
            yield f"data: {json.dumps(_died().body())}\n\n".encode()
        finally:
            if later is not gen:
                await later.aclose()
            gen.cancel()  # the client left, or the stream ended: the replica's request ends too
            self.channels.unregister(stream)

    async def _metrics(self, request: Request, headers: tuple) -> Response:
        auth = request.headers.get("authorization", "")
        try:
            check_key(self.api_key, auth[7:] if auth.lower().startswith("bearer ") else None)
        except APIError as exc:
            return exc.response()
        from .ray_metrics import merged

        router = next(iter(routers()), None)
        ids = router.replica_ids() if router is not None else []
        per_replica = {}
        for replica in ids:  # one after another: calls made while serving one request share its internal id,
            try:             # which Serve's router matches a routed replica to its request by
                per_replica[replica] = await self._scrape(replica, headers)
            except (asyncio.TimeoutError, *_REPLICA_GONE):
                continue  # a replica that does not answer is left out of this scrape
        stats = router.stats.snapshot() if router is not None else None
        body, content_type = merged(per_replica, stats, len(ids), self.failures, self.retries,
                                    (self.channels.items, self.channels.bursts))
        return Response(body, media_type=content_type)

    async def _scrape(self, replica: str, headers: tuple) -> str:
        gen = Bursts(self.replicas, Forwarded("GET", "/metrics", headers=headers, pin=replica))

        async def read() -> str:
            return b"".join([body_of(burst) async for burst in gen]).decode()

        return await asyncio.wait_for(read(), 10.0)


def _died() -> APIError:
    return APIError(503, "the replica serving this request died mid-answer; Serve replaces it: retry",
                    "service_unavailable", code="replica_died")


def build_app(config: Any, settings: Any, ray: RaySettings):
    """The Serve application: the ingress bound to the replicas."""
    from ray.serve.config import RequestRouterConfig

    scaling: dict[str, Any] = {"num_replicas": ray.replicas}
    if ray.autoscale is not None:
        low, high = ray.autoscale
        # Serve's ongoing requests per replica: running + waiting in its app (its queue depth)
        scaling = {"autoscaling_config": {"min_replicas": low, "max_replicas": high, "initial_replicas": low,
                                          "target_ongoing_requests": max(1, config.n_seqs),
                                          "upscale_delay_s": 10, "downscale_delay_s": 120}}
    replica = serve.deployment(CorertReplica, name="corert_replica", **scaling,
                               max_ongoing_requests=ray.max_ongoing,
                               ray_actor_options={"num_cpus": ray.num_cpus,
                                                  "runtime_env": {"env_vars": {**LOOP_ENV, **ray.env}}},
                               health_check_period_s=10, graceful_shutdown_timeout_s=20,
                               request_router_config=RequestRouterConfig(request_router_class=PrefixRouter,
                                                                         request_router_kwargs={"policy": ray.policy}))
    ingress = serve.deployment(Ingress, name="corert_ingress", num_replicas=1, max_ongoing_requests=1000,
                               ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": LOOP_ENV}})
    models = settings.models or (config.model,)
    per_replica = ray.models_per_replica if ray.models_per_replica and ray.models_per_replica < len(models) else None
    return ingress.bind(replica.bind(config, settings, ray.num_cpus, per_replica), settings.api_key,
                        models if per_replica else ())


def run(args: Any, config: Any, settings: Any, ray_settings: RaySettings) -> int:
    """Start (or join, with --ray-address) a Ray cluster, deploy, print the address, serve until SIGTERM or
    Ctrl-C, then shut Serve down."""
    import ray

    host = args.host
    port = free_port(host) if args.port == 0 else (8080 if args.port is None else args.port)
    if args.ray_address:  # the cluster's own settings: its endpoint is Serve's proxy
        ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": host, "port": port})
        except BaseException:
            ray.shutdown()
            raise
    else:  # the replicas run on this machine: their spin from its pressure before Ray starts
        ray_settings = attrs.evolve(ray_settings, env={**given_spin(os.environ), **ray_settings.env})
        start_local(host, port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.run(build_app(config, settings, ray_settings), name="corert", route_prefix="/")
        shown = f"[{host}]" if ":" in host else host
        print(f"corert serve: listening on http://{shown}:{port} (Ray Serve)", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
