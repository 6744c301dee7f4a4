"""Servers a benchmark starts and stops itself: a subprocess on loopback, a bounded wait until it answers,
and always killed (its whole process group) when the benchmark is done or fails."""
from __future__ import annotations

import collections
import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import time
from typing import Sequence

import attrs

from corert.errors import CorertError

from .spawn import popen

HOST = "127.0.0.1"


class ServerStartError(CorertError):
    """A benchmark's server exited or did not answer in time; the message carries its last output lines."""


@attrs.frozen
class ServerSpec:
    """How to start one server.  ``argv`` may hold ``{port}``; without it the server is asked for port 0
    and must print its port in a line matching ``port_pattern``."""

    name: str
    argv: tuple[str, ...]
    ready_path: str = "/v1/models"
    port_pattern: str | None = None
    env: dict[str, str] = attrs.field(factory=dict)
    start_timeout_s: float = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class ServerProcess:
    """One running server.  Use as a context manager: the exit stops it whatever happened."""

    def __init__(self, spec: ServerSpec):
        self.spec = spec
        self.port: int | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=60)
        self._port_seen = threading.Event()
        port = None if spec.port_pattern else free_port()
        argv = [a.format(port=port if port is not None else 0) for a in spec.argv]
        self.port = port
        # its own session: stopping it kills the children it may start too
        self.proc = popen(argv, spec.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          start_new_session=True, text=True, errors="replace", bufsize=1)
        self._reader = threading.Thread(target=self._drain, name=f"bench-{spec.name}-output", daemon=True)
        self._reader.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _drain(self) -> None:
        """Reads the server's output (so its pipe never fills), keeps the last lines for error messages."""
        assert self.proc.stdout is not None
        pattern = re.compile(self.spec.port_pattern) if self.spec.port_pattern else None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if pattern is not None and not self._port_seen.is_set():
                m = pattern.search(line)
                if m:
                    self.port = int(m.group(1))
                    self._port_seen.set()

    def _fail(self, why: str) -> ServerStartError:
        tail = " | ".join(list(self.lines)[-8:])
        return ServerStartError(f"{self.spec.name}: {why}; its last output: {tail or '(none)'}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.spec.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._fail(f"exited with code {self.proc.returncode} while starting")
            if self.port is not None:
                try:
                    if get(self.port, self.spec.ready_path, timeout=2.0)[0] == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.2)
        raise self._fail(f"not ready after {self.spec.start_timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:  # its children may outlive it
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._reader.join(timeout=5.0)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_all(specs: Sequence[ServerSpec], stack) -> dict[str, ServerProcess]:
    """Starts every server one after another (loads do not compete), each registered on ``stack``
    (a contextlib.ExitStack) so that all are stopped however the benchmark ends."""
    return {spec.name: stack.enter_context(ServerProcess(spec)) for spec in specs}
