"""A Runtime's workers (``isolation = "process"``): one supervised worker per loaded model, the heartbeat
watchdog, and how extra plugins reach the workers."""
from __future__ import annotations

import importlib
import pickle
import re
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterable

import attrs

from ..cancel import current_token
from ..chunk_stream import Channel
from ..errors import ConfigError
from ..interfaces import PRIORITIES
from .limits import Limits
from .supervisor import SupervisedModel


class _ModuleRef:
    """Pickles as "import this module": a plugin module reaches a worker by its importable name."""

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return importlib.import_module, (self.name,)


def portable_plugins(extra: Iterable[tuple[str, object]]) -> bytes:
    """``extra_plugins`` as bytes a worker can load: modules by import name, other objects pickled (a
    module-level class, or an instance of one, in an importable module)."""
    refs = []
    for name, plugin in extra:
        ref = _ModuleRef(plugin.__name__) if isinstance(plugin, types.ModuleType) else plugin
        try:
            pickle.dumps(ref)
            refs.append((name, ref))
        except Exception as exc:  # noqa: BLE001 - whatever pickling raises
            raise ConfigError(f"extra plugin {name!r} cannot reach a worker process ({type(exc).__name__}: "
                              f"{exc}); with isolation='process' register an importable module or an object "
                              f"of a module-level class") from None
    return pickle.dumps(refs)


@attrs.frozen
class ConstraintText:
    """A request's constraint as it crosses to a worker: the compiled grammar's text; the worker binds it to
    its own tokenizer (the host's llguidance tokenizer is a native object)."""

    kind: str
    grammar: str


def portable_request(req, **changes: Any):
    """``req`` as a worker can unpickle it."""
    c = req.params.constraint
    if c is not None:
        changes["params"] = attrs.evolve(req.params, constraint=ConstraintText(c.kind, c.grammar))
    return attrs.evolve(req, **changes)


def bind_constraint(req, tokenizer):
    """In the worker: ``req`` with its constraint compiled for ``tokenizer`` again."""
    c = req.params.constraint
    if not isinstance(c, ConstraintText):
        return req
    from ..constraint import Constraint, ll_tokenizer

    return attrs.evolve(req, params=attrs.evolve(req.params, constraint=Constraint(c.kind, c.grammar,
                                                                                    ll_tokenizer(tokenizer))))


def _label(kind: str, name: str) -> str:
    """``generate-smollm2-135m-instruct``: names the worker in errors and its log file."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{kind}-{Path(name).stem if '/' in name else name}")[:80]


class WorkerPool:
    def __init__(self, config, extra_plugins: Iterable[tuple[str, object]]):
        self.config = config
        self._extra = portable_plugins(extra_plugins)
        self._lock = threading.Lock()
        self._models: dict[Any, SupervisedModel] = {}
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    def model(self, key: Any, kind: str, name: str, capacity: int) -> SupervisedModel:
        """The supervised model for ``key`` (created on first use; its worker starts with the first request)."""
        with self._lock:
            sup = self._models.get(key)
            if sup is None:
                cfg = self.config.worker
                spec = {"sys_path": list(sys.path), "config": self.config, "extra_plugins": self._extra,
                        "kind": kind, "model": name, "limits": Limits(cfg.memory, cfg.open_files),
                        "heartbeat_every": min(1.0, cfg.heartbeat_s / 5)}
                sup = self._models[key] = SupervisedModel(_label(kind, name), spec, cfg, capacity)
                if self._watchdog is None:
                    self._watchdog = threading.Thread(target=self._watch, name="corert-worker-watchdog",
                                                      daemon=True)
                    self._watchdog.start()
            return sup

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            with self._lock:
                models = list(self._models.values())
            now = time.monotonic()
            for sup in models:
                sup.check_heartbeat(now)

    def generate(self, sup: SupervisedModel, req, emit: Callable | None, cancel: threading.Event | None,
                 submitted: float):
        """Serve ``req`` in ``sup``'s worker, on the calling thread (a scheduler worker or a batched request's
        waiter), with its cancel token; the Completion's queue time includes the wait in this process."""
        token = current_token()
        waited_ms = (time.perf_counter() - submitted) * 1e3

        def message(rid: int) -> tuple:
            timeout = None if token.deadline is None else max(1e-3, token.deadline - time.monotonic())
            return ("gen", rid, portable_request(req, timeout=timeout), emit is not None)

        def forward(chunk) -> None:
            if chunk.completion is not None:
                chunk = attrs.evolve(chunk, completion=_queued(chunk.completion, waited_ms))
            emit(chunk)

        completion = sup.call(message, priority=req.priority, token=token, cancel=cancel,
                              emit=forward if emit is not None else None,
                              read_with=emit.read_with if isinstance(emit, Channel) else None)
        return _queued(completion, waited_ms)

    def kv_stores(self, kv_cache: str) -> list[dict[str, Any]]:
        """The live stats of the KV stores of the generation workers whose cache is ``kv_cache``."""
        with self._lock:
            models = [sup for key, sup in self._models.items() if getattr(key, "kv_cache", None) == kv_cache]
        return [store for sup in models for store in (sup.query("kv") or [])]

    def info(self) -> list[dict[str, Any]]:
        with self._lock:
            return [sup.info() for sup in self._models.values()]

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            models, self._models = list(self._models.values()), {}
        for sup in models:
            sup.close()


def _queued(completion, waited_ms: float):
    return attrs.evolve(completion, timings=attrs.evolve(completion.timings,
                                                         queue_ms=completion.timings.queue_ms + waited_ms))


class RemoteEncoder:
    """An embed/classify model in a worker, with the in-process encoder's ``embed`` / ``classify``."""

    def __init__(self, sup: SupervisedModel):
        self.sup = sup

    def _call(self, method: str, *args: Any, priority: str = "interactive", **kwargs: Any) -> Any:
        if priority not in PRIORITIES:
            raise ConfigError(f"unknown priority {priority!r}; use one of {', '.join(PRIORITIES)}")
        return self.sup.ask(lambda rid: ("enc", rid, method, args, kwargs), priority=priority,
                            token=current_token())

    def embed(self, texts, *, priority: str = "interactive"):
        return self._call("embed", texts, priority=priority)

    def classify(self, texts, top_k: int = 5, *, priority: str = "interactive"):
        return self._call("classify", texts, top_k=top_k, priority=priority)
