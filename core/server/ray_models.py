"""Several generation models on a Ray Serve replica, at most K loaded at once, the least recently used
unloaded first (``corert serve --ray --model A --model B --models-per-replica K``; Serve's
``serve.multiplexed``).

Each model gets its own Runtime and app in the replica (:class:`ServedApp`): unloading a model is then what
stopping ``corert serve`` is (its streams drained, up to 10 s, then the Runtime closed, which stops what still
runs at its next token). The ingress sends a request for model M with ``multiplexed_model_id=M``; Serve's
multiplexer hands back M's app, loading it first (and evicting the least recently used when K are loaded), and
the router prefers the replicas that hold M. A request that names no served generation model (embeddings,
``/v1/models``, ``/health``) goes to the most recently used app. The replica's ``/metrics``: its model loads
and evictions, then each loaded app's own metrics with a ``runtime`` label (the model it serves).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
from typing import Any, Awaitable, Callable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from ray import serve

from .asgi_bridge import Lifespan
from .ray_metrics import labelled, render

log = logging.getLogger("ray.serve")  # Serve keeps this logger's lines in the replica's log file


class ServedApp:
    """One Runtime and the app of ``corert serve`` over it, inside a replica: loaded and warmed up by
    :meth:`start` (the app answers nothing before), drained and closed by :meth:`close`."""

    def __init__(self, runtime: Any, app: Any, lifespan: Lifespan):
        self.runtime, self.app, self.lifespan = runtime, app, lifespan

    @classmethod
    async def start(cls, config: Any, settings: Any, num_cpus: int, wrap: Callable[[Any], Any]) -> "ServedApp":
        """``wrap``: what the app sees of the Runtime (the replica batches its encoders)."""
        from ..runtime import Runtime
        from .app import create_app

        runtime = await asyncio.to_thread(Runtime, config, n_threads=num_cpus)
        # what decides how the replica's OpenMP team waits (numba_setup chose it when the Runtime loaded)
        log.info("corert replica: %d threads, GOMP_SPINCOUNT=%s", num_cpus, os.environ.get("GOMP_SPINCOUNT"))
        app = create_app(wrap(runtime), settings)
        served = cls(runtime, app, Lifespan(app))
        await served.lifespan.start()
        loader = app.state.loader
        await asyncio.to_thread(loader.ready.wait)
        if loader.state != "ok":
            await served.close()
            raise RuntimeError(f"corert replica: loading the models failed: {loader.error}")
        return served

    def check_health(self) -> None:
        if self.app.state.loader.state == "error":
            raise RuntimeError(f"corert replica: {self.app.state.loader.error}")

    async def close(self) -> None:
        await self.lifespan.stop()  # drains the live streams before the Runtime goes
        await asyncio.to_thread(self.runtime.close)


class ModelLRU:
    """A replica's apps, one per model, at most ``capacity`` of them (Serve's multiplexer evicts)."""

    def __init__(self, start: Callable[[str], Awaitable[ServedApp]], models: Sequence[str], capacity: int):
        self.models, self.capacity = tuple(models), capacity
        self.loaded: collections.OrderedDict[str, ServedApp] = collections.OrderedDict()  # least recent first
        self.loads: collections.Counter[str] = collections.Counter()
        self.evictions: collections.Counter[str] = collections.Counter()

        async def load(model: str) -> ServedApp:
            served = await start(model)
            self.loads[model] += 1
            log.info("corert replica: loaded model %s (%d of at most %d)", model, len(self.loaded) + 1, capacity)

            async def evicted() -> None:
                self.evictions[model] += 1
                self.loaded.pop(model, None)
                log.info("corert replica: evicted model %s (least recently used, capacity %d)", model, capacity)
                await served.close()

            # Serve's multiplexer awaits the model's __del__ when it evicts it; set on the instance, not the
            # class, so that garbage collection never calls it
            served.__del__ = evicted
            self.loaded[model] = served
            return served

        self._load = load
        self._get = serve.multiplexed(max_num_models_per_replica=capacity)(load)

    async def app_for(self, model: str) -> ServedApp:
        """The app of ``model`` (loaded now if it is not), or with "" the most recently used one."""
        if not model:
            model = next(reversed(self.loaded), None) or self.models[0]
        served = await self._get(model)
        if model in self.loaded:
            self.loaded.move_to_end(model)
        return served

    def check_health(self) -> None:
        for served in list(self.loaded.values()):
            served.check_health()

    def metrics(self) -> bytes:
        loads = CounterMetricFamily("corert_replica_model_loads", "models loaded by this replica",
                                    labels=["model"])
        evictions = CounterMetricFamily("corert_replica_model_evictions", "models unloaded to make room "
                                                                          "(least recently used)", labels=["model"])
        for model in self.models:
            loads.add_metric([model], self.loads[model])
            evictions.add_metric([model], self.evictions[model])
        loaded = GaugeMetricFamily("corert_replica_model_loaded", "1 if the model is loaded on this replica",
                                   labels=["model"])
        for model in self.models:
            loaded.add_metric([model], 1.0 if model in self.loaded else 0.0)
        capacity = GaugeMetricFamily("corert_replica_model_capacity", "models a replica keeps loaded at most",
                                     value=self.capacity)
        apps = {m: s.app.state.metrics.render().decode() for m, s in list(self.loaded.items())}
        return render([loads, evictions, loaded, capacity, *labelled(apps, "runtime")])

    async def close(self) -> None:
        wrapper = getattr(self._load, "__serve_multiplex_wrapper", None)  # where Serve keeps its LRU
        if wrapper is not None:
            await wrapper.shutdown()  # evicts every model: each closes
