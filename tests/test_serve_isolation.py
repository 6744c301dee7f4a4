"""`corert serve` runs its models in supervised workers by default: the same greedy text as in-process, and a
worker killed under a request answers 503 with a retry hint while the server lives on and serves the next
request.  `--isolation none` keeps them in the server's process."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from serve_support import Server, metric, metrics

MODEL = "smollm2-135m-instruct"


def _workers_of(pid: int) -> list[int]:
    """The server's worker processes (the serving one and its standby)."""
    out = []
    for child in os.listdir("/proc"):
        if child.isdigit():
            try:
                with open(f"/proc/{child}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{child}/cmdline", "rb") as fh:
                    cmd = fh.read()
            except OSError:
                continue
            if ppid == pid and b"corert.isolation.worker" in cmd:
                out.append(int(child))
    return out


@pytest.fixture(scope="module")
def server():
    srv = Server("--port", "0", "--engine", "llama.cpp", "--ctx", "512", "--model", MODEL)  # isolation: the default
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
    assert not _workers_of(srv.proc.pid)


def test_killed_worker_is_a_503_and_the_server_serves_on(server, runtime):
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    want = runtime.generate(body["prompt"], max_tokens=8, temperature=0).text
    assert _workers_of(server.proc.pid), "corert serve should run its model in a worker by default"
    with server.client(timeout=120) as http:
        assert http.post("/v1/completions", json=body).json()["choices"][0]["text"] == want
        answer = {}
        long = {**body, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 400}
        t = threading.Thread(target=lambda: answer.setdefault("r", http.post("/v1/completions", json=long)))
        t.start()
        deadline = time.monotonic() + 60
        while metric(metrics(http), "corert_active_sequences") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        for pid in _workers_of(server.proc.pid):
            os.kill(pid, signal.SIGKILL)
        t.join(120)
        r = answer["r"]
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "SIGKILL" in r.json()["error"]["message"]
        assert http.post("/v1/completions", json=body).json()["choices"][0]["text"] == want


def test_isolation_none_serves_from_the_server_process(runtime):
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    with Server("--port", "0", "--engine", "llama.cpp", "--ctx", "512", "--model", MODEL,
                "--isolation", "none") as srv, srv.client(timeout=120) as http:
        text = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
        assert text == runtime.generate(body["prompt"], max_tokens=4, temperature=0).text
        assert _workers_of(srv.proc.pid) == []
