"""A `corert serve` child process for tests: started with ``--port 0`` or ``--uds``, found by the line it
prints, ready when GET /health answers 200, always stopped (SIGTERM, then SIGKILL).  Every wait is bounded."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from typing import Any

import httpx

from cli_support import CORERT

_LISTENING = re.compile(r"corert serve: listening on (\S+)")


class Server:
    """``with Server(ARGS…) as srv:`` starts `corert serve ARGS…`, waits for /health 200, stops it after."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, start_timeout: float = 600):
        self.args = args
        self.proc = subprocess.Popen([CORERT, "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})
        self._stderr: list[str] = []
        threading.Thread(target=self._drain, args=(self.proc.stderr, self._stderr), daemon=True).start()
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._drain, args=(self.proc.stdout, self._lines), daemon=True).start()
        try:
            self.address = self._wait_listening(start_timeout)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _drain(pipe, sink) -> None:
        for line in pipe:
            sink.put(line) if isinstance(sink, queue.Queue) else sink.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def _wait_listening(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"corert serve exited {self.proc.returncode}: {self.stderr[-2000:]}")
                continue
            m = _LISTENING.search(line)
            if m:
                return m.group(1)
        raise TimeoutError(f"corert serve printed no address in {timeout} s: {self.stderr[-2000:]}")

    def __enter__(self) -> "Server":
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def uds(self) -> str | None:
        return self.address[len("unix:"):] if self.address.startswith("unix:") else None

    def client(self, **kw: Any) -> httpx.Client:
        """An httpx client on this server (TCP or UDS)."""
        if self.uds:
            return httpx.Client(transport=httpx.HTTPTransport(uds=self.uds), base_url="http://corert", **kw)
        return httpx.Client(base_url=self.address, **kw)

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        with self.client(timeout=5) as c:
            while time.monotonic() < deadline:
                r = c.get("/health")
                if r.status_code == 200:
                    return
                if r.json().get("status") == "error":
                    raise RuntimeError(f"the server failed to load its models: {r.json()}")
                time.sleep(0.25)
        raise TimeoutError(f"/health not 200 after {timeout} s: {self.stderr[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def metrics(client: httpx.Client, **headers: str) -> dict[str, float]:
    """/metrics as {'name{labels}': value} (comment lines dropped)."""
    out = {}
    for line in client.get("/metrics", headers=headers).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric(values: dict[str, float], name: str) -> float:
    """The sum of a metric over its label sets (one model here)."""
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))
