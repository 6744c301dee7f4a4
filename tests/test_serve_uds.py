"""`corert serve --uds`: a Unix domain socket of mode 0600, the openai client over it (an httpx transport),
on the llama.cpp engine and without a key; and the refusal to listen beyond loopback without a key."""
from __future__ import annotations

import os
import stat

import httpx
import openai
import pytest

from cli_support import run_cli
from serve_support import Server, metric, metrics

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "corert.sock"
    with Server("--uds", str(path), "--engine", "llama.cpp", "--model", MODEL, "--ctx", "256",
                env={"CORERT_API_KEY": ""}) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    http = httpx.Client(transport=httpx.HTTPTransport(uds=server.uds), timeout=120)
    with openai.OpenAI(base_url="http://corert/v1", api_key="no-key-needed", http_client=http, max_retries=0,
                       _strict_response_validation=True) as c:
        yield c


def test_socket_is_private(server):
    mode = os.stat(server.uds).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_chat_and_stream_over_the_socket(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Say one word."}], max_tokens=6, temperature=0)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage is not None
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert {m.id for m in client.models.list().data} >= {MODEL}


def test_no_key_means_open_on_the_socket(server):
    with server.client(timeout=30) as c:
        m = metrics(c)
        assert metric(m, "corert_slots") == 1 and metric(m, "corert_request_threads") == 0


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_no_key_refuses_a_non_loopback_host(host):
    proc = run_cli("serve", "--host", host, "--port", "0", env={"CORERT_API_KEY": None}, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "without an API key" in proc.stderr


def test_stop_removes_the_socket_file(server):
    """Last in this module: SIGTERM ends the server cleanly (exit 0) and takes its socket file along."""
    path = server.uds
    server.stop()
    assert server.proc.returncode == 0 and not os.path.exists(path)
