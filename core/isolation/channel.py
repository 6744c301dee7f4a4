"""One worker process and the socket to it: start, framed messages both ways, kill, reap.

The worker is a fresh interpreter (``python -m corert.isolation.worker FD LANE_FD``) started with ``subprocess``:
exec after fork, like multiprocessing's spawn context, so no thread of the host is ever forked, and unlike
spawn it never re-imports the host's ``__main__`` (an embedding script without a ``__main__`` guard would run
again in every worker).  Messages are pickled tuples (a stream's plain chunks: compact token frames), framed
by framing.py, over a socketpair; a request answered as a whole (an encoder's) goes over a second one, the direct lane, on which the caller reads its
own answer.
"""
from __future__ import annotations

import concurrent.futures
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .framing import Framed


def log_dir() -> Path:
    """Where workers write their logs (stdout, stderr, llama.cpp's own log): the user cache."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("corert")) / "workers"


KEPT_LOGS = 200  # a host that restarts workers for months keeps the newest logs, not all of them
#: while a caller reads its own stream, how often the reader thread looks for what it left unread
_DRAIN_S = 0.1


def _prune_logs(folder: Path) -> None:
    logs = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime if p.exists() else 0.0)
    for old in logs[:-KEPT_LOGS]:
        try:
            old.unlink()
        except OSError:
            pass


def describe_exit(code: int | None) -> str:
    """``-9`` -> "was killed by signal SIGKILL (9)", ``3`` -> "exited with code 3"."""
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by signal {name} ({-code})"
    return f"exited with code {code}"


class _Launcher:
    """Every worker is started from this one long-lived thread.  A worker asks for SIGKILL when its parent
    dies (PR_SET_PDEATHSIG), and Linux means the *thread* that started it: a worker started from a reader or
    timer thread would be killed when that thread ends."""

    _lock = threading.Lock()
    _jobs: "queue.SimpleQueue | None" = None

    @classmethod
    def run(cls, fn: Callable[[], Any]) -> Any:
        with cls._lock:
            if cls._jobs is None:
                cls._jobs = queue.SimpleQueue()
                threading.Thread(target=cls._serve, args=(cls._jobs,), name="corert-worker-launcher",
                                 daemon=True).start()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        cls._jobs.put((fn, fut))
        return fut.result()

    @staticmethod
    def _serve(jobs: "queue.SimpleQueue") -> None:
        while True:
            fn, fut = jobs.get()
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)


class WorkerProcess:
    """A started worker: ``send`` from any thread; ``on_message(worker, msg)`` and, once, ``on_exit(code)`` are
    called on this worker's reader thread."""

    def __init__(self, label: str, spec: dict[str, Any], on_message: Callable[["WorkerProcess", tuple], None],
                 on_exit: Callable[["WorkerProcess", int | None], None]):
        self.label = label
        log_dir().mkdir(parents=True, exist_ok=True)
        _prune_logs(log_dir())
        ours, theirs = socket.socketpair()
        lane_ours, lane_theirs = socket.socketpair()
        self.log_path = log_dir() / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{id(self):x}.log"
        from ..spin import handed_spin

        with open(self.log_path, "ab") as log:
            self.proc = _Launcher.run(lambda: subprocess.Popen(
                [sys.executable, "-m", "corert.isolation.worker", str(theirs.fileno()), str(lane_theirs.fileno())],
                pass_fds=(theirs.fileno(), lane_theirs.fileno()), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**os.environ, **handed_spin(os.environ)}))
        theirs.close()
        lane_theirs.close()
        self._lane: Framed | None = Framed(lane_ours)
        self._lane_lock = threading.Lock()
        self.pid = self.proc.pid
        self.conn = Framed(ours)
        self.last_seen = time.monotonic()
        #: why the host killed it (heartbeat, deadline), for the error message; None: it died by itself
        self.kill_reason: str | None = None
        self.exit_code: int | None = None
        #: everything but the model is loaded (the worker said "standby")
        self.prepared = False
        self._on_message, self._on_exit = on_message, on_exit
        #: whoever reads ``conn`` holds this: the reader thread, or a caller reading its own stream (pump)
        self._read_lock = threading.Lock()
        self._direct = 0  # callers reading for themselves (join_direct)
        self._direct_lock = threading.Lock()
        self._wake = threading.Event()  # the reader thread's nudge: a caller left, or met the worker's end
        self._eof = False
        self.send(("spec", {**spec, "spawned_at": time.time()}))
        self._reader = threading.Thread(target=self._read, name=f"corert-worker-{label}", daemon=True)
        self._reader.start()

    def send(self, msg: tuple) -> bool:
        """False when the worker is gone (its exit is reported by the reader thread)."""
        try:
            self.conn.send(msg)
            return True
        except (OSError, EOFError, ValueError):
            return False

    def _read(self) -> None:
        try:
            while not self._eof:
                if self._direct:
                    self._wake.wait(_DRAIN_S)
                    self._wake.clear()
                    self._drain()
                else:
                    with self._read_lock:
                        self._take(self.conn.recv())
        except (EOFError, OSError):
            pass
        finally:
            self._eof = True
            self.conn.close()
            self.exit_code = self._reap()
            self._on_exit(self, self.exit_code)
            with self._lane_lock:  # its user has seen the end of the lane (the worker is dead) and left
                self._lane.close()
                self._lane = None

    def _take(self, msg: tuple) -> None:
        self.last_seen = time.monotonic()
        self._on_message(self, msg)

    def _drain(self) -> None:
        """Dispatch what arrived while the caller reading for itself was elsewhere (a slow or gone consumer
        must not leave heartbeats unread, nor the worker blocked on a full socket)."""
        if self._read_lock.acquire(blocking=False):  # else that caller is reading
            try:
                while not self._eof and self.conn.readable(0):
                    self._take(self.conn.recv())
            finally:
                self._read_lock.release()

    def join_direct(self) -> None:
        """A caller reads this worker's messages itself (:meth:`pump`): the reader thread steps aside after
        the message it is waiting for, and from then on only drains what that caller leaves."""
        with self._direct_lock:
            self._direct += 1

    def leave_direct(self) -> None:
        with self._direct_lock:
            self._direct -= 1
        self._wake.set()  # back to reading every message

    def pump(self, wanted: Callable[[], bool]) -> bool:
        """Read the next message and dispatch it, on the calling thread, while ``wanted()``; False when it did
        not (not wanted any more, or the worker is gone: the reader thread reaps it and reports the exit)."""
        with self._read_lock:
            if self._eof or not wanted():
                return False
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                self._eof = True
                self._wake.set()
                return False
            self._take(msg)
            return True

    def ask(self, rid: int, msg: tuple, timeout: float | None) -> tuple | None:
        """Send ``msg`` on the direct lane and read its answer, ``("done" | "err", rid, value)``, on this
        thread; None when the worker is gone (its exit is reported by the reader thread); TimeoutError when
        no answer came within ``timeout`` seconds."""
        with self._lane_lock:
            lane = self._lane
            if lane is None:
                return None
            try:
                lane.send(msg)
                end = None if timeout is None else time.monotonic() + timeout
                while end is None or lane.readable(end - time.monotonic()):
                    answer = lane.recv()
                    if answer[1] == rid:  # an earlier caller that left before its answer: skip that one
                        return answer
            except (OSError, EOFError):
                return None
        raise TimeoutError(f"no answer from the worker for {self.label} in {timeout:.3f} s")

    def _reap(self) -> int | None:
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # closed its socket yet still running: it cannot serve us
            self.proc.kill()
            return self.proc.wait()

    def kill(self, reason: str | None = None) -> None:
        """SIGKILL; the reader thread reports the exit."""
        if self.kill_reason is None:
            self.kill_reason = reason
        try:
            self.proc.kill()
        except OSError:
            pass

    def stop(self, timeout: float = 2.0) -> None:
        """Ask it to exit, kill it if it does not, and wait until it is reaped."""
        self.send(("stop",))
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill("the host stopped it")
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=timeout + 5)

    def alive(self) -> bool:
        return self.exit_code is None and self.proc.poll() is None
