"""The worker process: one loaded model (generation, embed or classify) in an in-process Runtime.

It owns the tokenizer, engine, KV cache, decoder and batch service; the host sends requests and gets back
stream chunks (token ids and text, whatever else a chunk carries) and the finished result, never logits.
Started by :class:`corert.isolation.channel.WorkerProcess` as ``python -m corert.isolation.worker FD LANE_FD``.

Messages in:  ("spec", dict), ("load",) (a standby gets it when it takes over), then
              ("gen", rid, GenerateRequest, stream) · ("cancel", rid) · ("kv", rid) (its KV stores' stats) ·
              ("stop",)
Messages out: ("standby",) once all but the model is loaded ·
              ("ready", info) or ("fail", error) once the model is loaded or failed to load ·
              ("chunks", [(rid, StreamChunk), ...]) · ("done", rid, result) · ("err", rid, error) · ("hb",)
The direct lane (LANE_FD): ("enc", rid, method, args, kwargs) in, ("done", rid, result) or ("err", rid, error)
out, answered by the thread that read it.
"""
from __future__ import annotations

import errno
import os
import pickle
import queue
import socket
import sys
import threading
import time
import traceback
from typing import Any

from ..cancel import CancelToken, set_current
from .framing import Framed

_CHUNK = "chunk"


def portable_error(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (the host re-raises the same type), else a PluginError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - anything unpicklable
        from ..errors import PluginError

        return PluginError(f"{type(exc).__name__}: {exc}")


def load_error(exc: BaseException, what: str, memory: int | None) -> BaseException:
    """A failed load as a typed error; running out of the address-space limit says so."""
    from ..errors import CorertError, ModelError

    out_of_memory = isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM)
    if out_of_memory and memory is not None:
        return ModelError(f"loading {what} needs more memory than its worker may use: the worker's address space "
                          f"is limited to {memory >> 20} MiB (worker.memory); raise the limit or use a smaller "
                          f"model ({type(exc).__name__}: {exc})")
    if isinstance(exc, CorertError):
        return portable_error(exc)
    return ModelError(f"the worker could not load {what}: {type(exc).__name__}: {exc}")


class _Outbox:
    """Everything the worker sends goes through one thread, in order; chunks that are ready together (a
    batch step's tokens for several streams, a burst) leave in one message."""

    def __init__(self, conn: Framed):
        self.conn = conn
        self.items: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="corert-worker-outbox", daemon=True).start()

    def put(self, msg: tuple) -> None:
        self.items.put(msg)

    def send_now(self, msg: tuple) -> None:
        """Send from the calling thread (a query's answer: no chunks to keep in order with, no hand-off)."""
        try:
            self.conn.send(msg)
        except (OSError, EOFError, ValueError):
            os._exit(0)  # the host is gone

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything put so far has been sent."""
        done = threading.Event()
        self.items.put(("_flushed", done))
        done.wait(timeout)

    def _run(self) -> None:
        while True:
            msg = self.items.get()
            chunks = []
            while msg is not None and msg[0] == _CHUNK:
                chunks.append(msg[1:])
                try:
                    msg = self.items.get_nowait()
                except queue.Empty:
                    msg = None
            if msg is not None and msg[0] == "_flushed":
                msg, flushed = None, msg[1]
            else:
                flushed = None
            try:
                if chunks:
                    self.conn.send(("chunks", chunks))
                if msg is not None:
                    self.conn.send(msg)
                if flushed is not None:
                    flushed.set()
            except (OSError, EOFError, ValueError):
                os._exit(0)  # the host is gone


def _heartbeat(outbox: _Outbox, every: float) -> None:
    while True:
        outbox.put(("hb",))
        time.sleep(every)


class _Server:
    """Dispatches the host's requests to the in-process Runtime."""

    def __init__(self, spec: dict[str, Any], outbox: _Outbox):
        from ..runtime import Runtime

        self.spec, self.outbox = spec, outbox
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
                self.outbox.send_now(("done", msg[1], info.get("stores", [])))
            elif kind == "stop":
                return

    def _generate(self, rid: int, req, stream: bool) -> None:
        """Each request on a thread of its own, which answers only when the generation has really ended: the
        host's scheduler already ordered and admitted it (its slots), so a request that ignores its
        deadline keeps its slot until the host replaces this worker."""
        cancel = threading.Event()
        self.cancels[rid] = cancel
        emit = (lambda chunk: self.outbox.put((_CHUNK, rid, chunk))) if stream else None
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
        self.outbox.put(msg)

    def serve_lane(self, lane: Framed) -> None:
        """The direct lane's requests, each answered by this thread: one encoder call at a time (the host
        sends one), no hand-off to pay for."""
        while True:
            try:
                _, rid, method, args, kwargs = lane.recv()
            except (EOFError, OSError):
                return  # the host is gone: the main loop sees it too
            try:
                msg = ("done", rid, getattr(self.encoder, method)(*args, **kwargs))
            except Exception as exc:  # noqa: BLE001 - the host re-raises it
                msg = ("err", rid, portable_error(exc))
            try:
                lane.send(msg)
            except OSError:
                return


def _prepared(spec: dict[str, Any], outbox: _Outbox) -> _Server:
    """A ready-to-load server.  A standby prepares on a thread at idle priority, which then ends: its imports
    and kernel loads (~1 s of CPU) would otherwise take a core from the serving worker's decode, and no
    thread that serves may inherit that priority (the compute thread is started here, at ours, first)."""
    if not spec["standby"]:
        server = _Server(spec, outbox)
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
            out["server"] = _Server(spec, outbox)
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
    outbox = _Outbox(conn)
    threading.Thread(target=_heartbeat, args=(outbox, spec["heartbeat_every"]), name="corert-worker-heartbeat",
                     daemon=True).start()
    t0 = time.time()
    try:
        server = _prepared(spec, outbox)
        outbox.put(("standby",))
        # a standby waits here, everything but the model loaded, until its worker dies
        if conn.recv()[0] != "load":
            os._exit(0)
        t1 = time.time()
        info = server.load()
    except BaseException as exc:  # noqa: BLE001 - MemoryError under the address-space limit included
        traceback.print_exc()
        outbox.put(("fail", load_error(exc, spec["model"], spec["limits"].memory)))
        outbox.flush()
        os._exit(3)
    print(f"loaded {info}: interpreter and imports {t0 - spec['spawned_at']:.2f} s, runtime {t1 - t0:.2f} s, "
          f"model {time.time() - t1:.2f} s", flush=True)
    outbox.put(("ready", info))
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
