"""The worker process: one loaded model (generation, embed or classify) in an in-process Runtime.

It owns the tokenizer, engine, KV cache, decoder and batch service; the host sends requests and gets back
stream chunks (token ids and text, whatever else a chunk carries) and the finished result, never logits.
Started by :class:`corert.isolation.channel.WorkerProcess` as ``python -m corert.isolation.worker FD LANE_FD``.

Messages in:  ("spec", dict), ("load",) (a standby gets it when it takes over), then
              ("gen", rid, GenerateRequest, stream) · ("cancel", rid) · ("kv", rid) (its KV stores' stats) ·
              ("stop",)
Messages out: ("standby",) once all but the model is loaded ·
              ("ready", info) or ("fail", error) once the model is loaded or failed to load ·
              stream chunks: a token frame ("tokens", [(rid, ids, text), ...]) for plain ones (framing.py),
              else ("chunks", [(rid, StreamChunk), ...]) · ("done", rid, result) · ("err", rid, error) · ("hb",)
The direct lane (LANE_FD): ("enc", rid, method, args, kwargs) in, ("done", rid, result) or ("err", rid, error)
out (an EmbedResult in an embed frame, embed_frame.py), answered by the thread that read it.
"""
from __future__ import annotations

import collections
import errno
import os
import pickle
import socket
import sys
import threading
import time
import traceback
from typing import Any

from ..cancel import CancelToken, set_current
from .embed_frame import embed_body
from .framing import Framed, token_frame


def portable_error(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (the host re-raises the same type), else a PluginError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - anything unpicklable
        from ..errors import PluginError

        return PluginError(f"{type(exc).__name__}: {exc}")


def load_error(exc: BaseException, what: str, memory: int | None) -> BaseException:
    """A failed load as a typed error; running out of the address-space limit says so, and an engine's own
    load error in a limited worker names the limit (llama.cpp reports an allocation that failed only as
    "failed to load")."""
    from ..errors import CorertError, ModelError

    out_of_memory = isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM)
    if out_of_memory and memory is not None:
        return ModelError(f"loading {what} needs more memory than its worker may use: the worker's address space "
                          f"is limited to {memory >> 20} MiB (worker.memory); raise the limit or use a smaller "
                          f"model ({type(exc).__name__}: {exc})")
    if isinstance(exc, ModelError) and memory is not None:
        return ModelError(f"{exc} (the worker's address space is limited to {memory >> 20} MiB (worker.memory): "
                          f"if the load ran out of it, raise the limit)")
    if isinstance(exc, CorertError):
        return portable_error(exc)
    return ModelError(f"the worker could not load {what}: {type(exc).__name__}: {exc}")


class _Sender:
    """Everything the worker sends leaves from the thread that has it (a request's thread sends its own
    chunks: no hand-off to a sender thread and its wake-up per token).  Chunks put while the socket was busy
    leave together, in one frame, with the next send: a batch step's tokens for several streams, a burst.
    A token is never held back waiting for another.  One thread's messages arrive in the order it sent
    them (a request's chunks before its result)."""

    def __init__(self, conn: Framed):
        self.conn = conn
        self._ready: collections.deque = collections.deque()  # (rid, StreamChunk), not yet sent
        self._lock = threading.Lock()

    def chunk(self, rid: int, chunk) -> None:
        self._ready.append((rid, chunk))
        self.send(None)  # ours went out, by us or by the thread that held the lock

    def send(self, msg: tuple | None) -> None:
        body = None if msg is None else pickle.dumps(msg, protocol=5)  # outside the lock: a Completion is large
        with self._lock:
            bodies = [_chunks_body(self._ready)] if self._ready else []
            if body is not None:
                bodies.append(body)
            if not bodies:
                return
            try:
                self.conn.send_bodies(bodies)
            except (OSError, EOFError, ValueError):
                os._exit(0)  # the host is gone


def _plain(chunk) -> bool:
    """A StreamChunk that is text and ids only (every other field of StreamChunk at its default: a test
    fails when StreamChunk gains a field this does not check)."""
    return chunk.finish_reason is None and chunk.completion is None and not chunk.logprobs


def _chunks_body(ready: collections.deque) -> bytes:
    """Empty ``ready`` into one frame's body: a token frame when every chunk is plain text and ids (nearly
    every token), else one pickle (logprobs, the last chunk's Completion)."""
    items = []
    while ready:
        items.append(ready.popleft())
    if all(_plain(chunk) for _, chunk in items):
        return token_frame([(rid, chunk.token_ids, chunk.text) for rid, chunk in items])
    return pickle.dumps(("chunks", items), protocol=5)


def _heartbeat(sender: _Sender, every: float) -> None:
    while True:
        sender.send(("hb",))
        time.sleep(every)


class _Server:
    """Dispatches the host's requests to the in-process Runtime."""

    def __init__(self, spec: dict[str, Any], sender: _Sender):
        from ..runtime import Runtime

        self.spec, self.sender = spec, sender
        extra = pickle.loads(spec["extra_plugins"])
        self.rt = Runtime(spec["config"].evolve(isolation="none"), extra_plugins=extra)
        self.cancels: dict[int, threading.Event] = {}
        self.encoder = None

    def prepare(self) -> None:
        """What can be done before the model is needed: the engine object, the generation model's tokenizer
        and decoder (a standby worker does this ahead of time)."""
        if self.spec["kind"] == "generate":
            self.rt.engine()
            tok = self.rt.tokenizer(self.spec["model"])
            # a tokenizer's kernels may load (numba's cache) on first use: seconds a restart need not pay
            tok.incremental_decoder().feed(tok.encode("warm up", parse_special=True)[-1])
            self.rt.decoder(self.spec["model"])

    def load(self) -> dict[str, Any]:
        kind, model = self.spec["kind"], self.spec["model"]
        if kind == "generate":
            self.rt.load_generation_model(model)
            decoder = self.rt.decoder(model)
            return {"batches": self.rt._batches(decoder, model)}
        self.encoder = self.rt._encoder(kind, model)
        return {}

    def serve(self, conn: Framed) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            kind = msg[0]
            if kind == "gen":
                self._generate(*msg[1:])
            elif kind == "cancel":
                event = self.cancels.get(msg[1])
                if event is not None:
                    event.set()
            elif kind == "kv":
                info = self.rt.kv_cache_info() or {}
                self.sender.send(("done", msg[1], info.get("stores", [])))
            elif kind == "stop":
                return

    def _generate(self, rid: int, req, stream: bool) -> None:
        """Each request on a thread of its own, which answers only when the generation has really ended: the
        host's scheduler already ordered and admitted it (its slots), so a request that ignores its
        deadline keeps its slot until the host replaces this worker."""
        cancel = threading.Event()
        self.cancels[rid] = cancel
        emit = (lambda chunk: self.sender.chunk(rid, chunk)) if stream else None
        deadline = None if req.timeout is None else time.monotonic() + req.timeout
        threading.Thread(target=self._run, args=(rid, req, emit, cancel, deadline, time.perf_counter()),
                         name=f"corert-worker-request-{rid}", daemon=True).start()

    def _run(self, rid: int, req, emit, cancel: threading.Event, deadline: float | None, submitted: float) -> None:
        from .pool import bind_constraint

        set_current(CancelToken(deadline))
        try:
            req = bind_constraint(req, self.rt.load_generation_model(req.model)[0].tokenizer)
            msg = ("done", rid, self.rt._serve(req, self.rt.decoder(req.model), emit, cancel, submitted))
        except BaseException as exc:  # noqa: BLE001 - the host re-raises it
            msg = ("err", rid, portable_error(exc))
        finally:
            set_current(None)
            self.cancels.pop(rid, None)
        self.sender.send(msg)

    def serve_lane(self, lane: Framed) -> None:
        """The direct lane's requests, each answered by this thread: one encoder call at a time (the host
        sends one), no hand-off to pay for."""
        while True:
            try:
                _, rid, method, args, kwargs = lane.recv()
            except (EOFError, OSError):
                return  # the host is gone: the main loop sees it too
            body = None
            try:
                result = getattr(self.encoder, method)(*args, **kwargs)
                body = embed_body(rid, result)  # an embed answer: raw vectors, no pickling
                msg = ("done", rid, result)
            except Exception as exc:  # noqa: BLE001 - the host re-raises it
                msg = ("err", rid, portable_error(exc))
            try:
                if body is not None:
                    lane.send_bodies([body])
                else:
                    lane.send(msg)
            except OSError:
                return


def _prepared(spec: dict[str, Any], sender: _Sender) -> _Server:
    """A ready-to-load server.  A standby prepares on a thread at idle priority, which then ends: its imports
    and kernel loads (~1 s of CPU) would otherwise take a core from the serving worker's decode, and no
    thread that serves may inherit that priority (the compute thread is started here, at ours, first)."""
    if not spec["standby"]:
        server = _Server(spec, sender)
        server.prepare()
        return server
    from ..compute import on_compute_thread
    from . import limits

    on_compute_thread(int)  # starts the compute thread: the OpenMP team is its, at this thread's priority
    import numpy  # noqa: F401 - its BLAS starts its threads when it is imported: at our priority too
    out: dict[str, Any] = {}

    def prepare() -> None:
        idle, t0 = limits.idle_priority(), time.time()
        try:
            out["server"] = _Server(spec, sender)
            out["server"].prepare()
            print(f"standby prepared in {time.time() - t0:.2f} s{' at idle priority' if idle else ''}", flush=True)
        except BaseException as exc:  # noqa: BLE001 - raised on the main thread
            out["error"] = exc

    thread = threading.Thread(target=prepare, name="corert-worker-prepare", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["server"]


def main(fd: int, lane_fd: int) -> None:
    conn = Framed(socket.socket(fileno=fd))
    _, spec = conn.recv()
    sys.path[:] = spec["sys_path"]  # what the host can import (a test's plugin module), the worker can
    from . import limits

    applied = limits.apply(spec["limits"])
    print(f"corert worker pid {os.getpid()} for {spec['kind']} {spec['model']}: limits {applied}", flush=True)
    sender = _Sender(conn)
    threading.Thread(target=_heartbeat, args=(sender, spec["heartbeat_every"]), name="corert-worker-heartbeat",
                     daemon=True).start()
    t0 = time.time()
    try:
        server = _prepared(spec, sender)
        sender.send(("standby",))
        # a standby waits here, everything but the model loaded, until its worker dies
        if conn.recv()[0] != "load":
            os._exit(0)
        t1 = time.time()
        info = server.load()
    except BaseException as exc:  # noqa: BLE001 - MemoryError under the address-space limit included
        traceback.print_exc()
        sender.send(("fail", load_error(exc, spec["model"], spec["limits"].memory)))
        os._exit(3)
    print(f"loaded {info}: interpreter and imports {t0 - spec['spawned_at']:.2f} s, runtime {t1 - t0:.2f} s, "
          f"model {time.time() - t1:.2f} s; GOMP_SPINCOUNT {os.environ.get('GOMP_SPINCOUNT')}", flush=True)
    sender.send(("ready", info))
    threading.Thread(target=server.serve_lane, args=(Framed(socket.socket(fileno=lane_fd)),),
                     name="corert-worker-lane", daemon=True).start()
    server.serve(conn)
    try:
        server.rt.close()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # engine threads must not keep a finished worker alive


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
