"""`corert serve --ray`'s app on a local Ray instance this module starts and stops (2 CPUs, no dashboard): two
corert replicas of num_cpus=1 (native engine, paged:q8 KV) behind the ingress, which serves the endpoint itself
on loopback (Serve's direct ingress: no proxy hop).  The real
openai client (strict validation) for chat, stream and embeddings; prefix-aware routing (8 requests sharing
a ~1,000-token prefix land on one replica, which computes the prefix once); a replica killed mid-stream.
Then the app is replaced by one serving two models with one loaded per replica (the second request evicts
the first) and autoscaling 1:2 (scaled up under load)."""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pickle
import secrets
import socket
import threading
import time

import httpx
import openai
import pytest

import ray  # the ray extra: scripts/setup.sh installs it, so a missing ray is a failed set-up, not a skip
from ray import serve

from serve_support import metric, metrics

from corert.config import RuntimeConfig  # noqa: E402
from corert.server.app import ServeSettings  # noqa: E402
from corert.server.asgi_bridge import Forwarded  # noqa: E402
from corert.spin import CHOSEN, GIVEN  # noqa: E402
from corert.server.ray_local import start_local  # noqa: E402
from corert.server.ray_deploy import LOOP_ENV, REPLICA_HEADER, RaySettings, body_of, build_app  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
OTHER = "gemma3-270m"
EMBED = "minilm-l6"
KEY = "k-" + secrets.token_hex(12)
AUTH = {"Authorization": f"Bearer {KEY}"}
# ~1,000 tokens of varied English, the same for every request of the prefix test
PREFIX = " ".join(f"Note {i}: the {w} keeper of the {c} archive wrote down {i * 7} facts about {w} rivers."
                  for i, (w, c) in enumerate([(w, c) for w in ("old", "young", "tired", "careful", "quiet",
                                                               "busy", "kind", "stern") for c in
                                              ("north", "south", "east", "west", "city")][:44]))


@pytest.fixture(scope="module")
def endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start_local("127.0.0.1", port, num_cpus=2, namespace="corert-test")  # as `corert serve --ray` does
    try:
        config = RuntimeConfig().evolve(model=MODEL, engine="native", plugins=["kv_cache=paged:q8"], n_seqs=4,
                                        n_ctx=2048)
        settings = ServeSettings(models=(MODEL,), api_key=KEY)
        # 16: the prefix test's 7 requests at once beside the replica's channel (an ongoing call too) and any
        # call still ending, with room to spare (at 8 a replica refuses the 9th: it goes to the other one)
        serve.run(build_app(config, settings, RaySettings(replicas=2, num_cpus=1, max_ongoing=16)),
                  name="corert", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(endpoint):
    with openai.OpenAI(base_url=endpoint + "/v1", api_key=KEY, max_retries=0, timeout=120,
                       _strict_response_validation=True) as c:
        yield c


@pytest.fixture(scope="module")
def loose(endpoint):
    """As users build it: strict validation would reject the base64 embeddings the client itself asks for."""
    with openai.OpenAI(base_url=endpoint + "/v1", api_key=KEY, max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def http(endpoint):
    with httpx.Client(base_url=endpoint, timeout=120, headers=AUTH) as c:
        yield c


def _listening(port: int) -> str:
    """The command line of the process that listens on ``port`` (Linux /proc)."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    sockets.add(f"socket:[{fields[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in sockets for fd in os.listdir(f"/proc/{pid}/fd")):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    return f.read().replace(b"\0", b" ").decode()
    return ""


def test_the_endpoint_is_the_ingress_itself(endpoint):
    """No proxy process between the client and the ingress (one process hop less per streamed event)."""
    listener = _listening(int(endpoint.rsplit(":", 1)[1]))
    assert "corert_ingress" in listener and "ProxyActor" not in listener, listener


def test_chat_stream_and_embeddings_through_the_endpoint(client, loose, http):
    assert {m.id for m in client.models.list().data} >= {MODEL, EMBED}
    messages = [{"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    emb = loose.embeddings.create(model=EMBED, input=["a red car", "a crimson automobile", "tax law"])
    v = [e.embedding for e in emb.data]
    assert len(v) == 3 and len(v[0]) == 384
    dot = [sum(a * b for a, b in zip(v[0], x)) for x in v[1:]]
    assert dot[0] > dot[1]  # the paraphrase is nearer than the unrelated text
    assert http.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(http.base_url.join("/metrics")).status_code == 401


def _events(body: bytes) -> list[str]:
    assert body.endswith(b"\n\n"), body[-40:]  # whole events only: no event is split between two items
    return [e.removeprefix("data: ") for e in body.decode().split("\n\n") if e]


def test_events_ready_together_cross_as_one_item_and_reach_the_client_in_order(client):
    """The replica sends every SSE event its app had ready at once as one Ray item (a stream's usage event and
    its [DONE] are always ready together), bodies joined; the openai client still gets every event, in order."""
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 12,
           "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    fwd = Forwarded("POST", "/v1/chat/completions", headers=(("authorization", f"Bearer {KEY}"),
                                                            ("content-type", "application/json")),
                    body=json.dumps({**ask, "ignore_eos": True}).encode())
    bursts = [pickle.loads(b) for b in
              serve.get_deployment_handle("corert_replica", "corert").options(stream=True).call.remote(fwd)]
    assert bursts[0][0]["type"] == "http.response.start" and bursts[0][0]["status"] == 200
    assert all(sum(m["type"] == "http.response.body" for m in b) <= 1 for b in bursts)  # a burst's bodies joined
    per_item = [_events(body_of(b)) for b in bursts if body_of(b)]
    last = per_item[-1]
    assert len(last) >= 2 and last[-1] == "[DONE]" and '"usage":{' in last[-2], last
    events = [json.loads(e) for item in per_item[:-1] + [last[:-1]] for e in item]
    texts = [c["delta"].get("content") for e in events for c in e["choices"] if c["delta"].get("content")]
    chunks = list(client.chat.completions.create(**ask, extra_body={"ignore_eos": True}))
    assert [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content] == texts
    assert len(chunks) == len(events) and chunks[-1].usage.completion_tokens == 12


def _streamed(http: httpx.Client, ask: dict) -> tuple[str, str]:
    """(replica, text) of ``ask`` streamed."""
    parts = []
    with http.stream("POST", "/v1/completions", json={**ask, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                parts.append(json.loads(line[6:])["choices"][0]["text"])
        return r.headers[REPLICA_HEADER], "".join(parts)


def _channel_carries_streams(http: httpx.Client, ask: dict) -> None:
    """The replica's first stream opens its channel, a call of its own that reaches the replica some time
    later: streams until one comes on it, so the streams after it do too (bounded)."""
    deadline = time.monotonic() + 120
    while True:
        before = metric(metrics(http), "corert_route_channel_bursts_total")
        _streamed(http, ask)
        if metric(metrics(http), "corert_route_channel_bursts_total") > before:
            return
        assert time.monotonic() < deadline, "no stream came on the replica's channel"


def test_a_replicas_streams_share_its_channel(http):
    """Four streams on one replica (their shared first block routes them together) reach the ingress on
    the replica's channel, the bursts of one decode step in one item; each stream's text is its text alone."""
    common = "The harbour master keeps a careful log of every ship that enters the port. " * 5  # > 256 bytes
    asks = [{"model": MODEL, "prompt": f"{common}Ship {i} arrived carrying", "max_tokens": 16, "temperature": 0,
             "ignore_eos": True} for i in range(4)]
    alone = [http.post("/v1/completions", json=a).json()["choices"][0]["text"] for a in asks]
    _channel_carries_streams(http, {**asks[0], "max_tokens": 4})
    before = metrics(http)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda a: _streamed(http, a), asks))
    after = metrics(http)
    assert len({replica for replica, _ in got}) == 1
    assert [text for _, text in got] == alone
    items, bursts = (metric(after, f"corert_route_channel_{n}_total") - metric(before, f"corert_route_channel_{n}_total")
                     for n in ("items", "bursts"))
    assert bursts >= 4 * 16 / 2, (items, bursts)  # most of the streams' bursts came on the channel...
    assert bursts >= 1.5 * items, (items, bursts)  # ...several to an item


def _ask(http: httpx.Client, question: str) -> tuple[str, dict]:
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": PREFIX + "\nQuestion: " + question,
                                           "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.headers[REPLICA_HEADER], r.json()


def test_shared_prefix_lands_on_one_replica_and_is_computed_once(http):
    n_prefix = http.post("/v1/tokenize", json={"model": MODEL, "text": PREFIX}).json()["count"]
    assert 800 <= n_prefix <= 1400, n_prefix
    before = metrics(http)
    first, _ = _ask(http, "who wrote the notes?")
    with concurrent.futures.ThreadPoolExecutor(7) as pool:
        rest = list(pool.map(lambda i: _ask(http, f"what did note {i} say?"), range(7)))
    assert {r for r, _ in rest} == {first}
    after = metrics(http)
    routed = metric(after, f'corert_route_requests_total{{replica="{first}"}}') - \
        metric(before, f'corert_route_requests_total{{replica="{first}"}}')
    assert routed == 8
    assert metric(after, "corert_route_prefix_hits_total") - metric(before, "corert_route_prefix_hits_total") == 7
    hits = sum(v for k, v in after.items() if k.startswith("corert_kv_prefix_hit_tokens_total{")
               and f'replica="{first}"' in k) - \
        sum(v for k, v in before.items() if k.startswith("corert_kv_prefix_hit_tokens_total{")
            and f'replica="{first}"' in k)
    # each of the 7 later requests took the shared prefix's whole pages from the cache (the first computed it)
    assert hits >= 7 * (n_prefix // 16 - 1) * 16, (hits, n_prefix)


def _replica_actors() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if "corert_replica" in a["name"]}


def test_replica_killed_mid_stream(http):
    names = _replica_actors()
    body = {"model": MODEL, "prompt": "Counting slowly: 1, 2, 3, 4, 5, 6,", "max_tokens": 400, "temperature": 0,
            "stream": True}
    events = []
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        victim = r.headers[REPLICA_HEADER]
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(line)
                break
        ray.kill(ray.get_actor(next(n for n in names if n.endswith(victim)), namespace="serve"))
        deadline = time.monotonic() + 60
        for line in lines:
            if line.startswith("data: "):
                events.append(line)
            assert time.monotonic() < deadline
    assert events[-1] != "data: [DONE]" and len(events) < 400, events[-3:]  # it was cut short...
    assert json.loads(events[-1][6:])["error"]["code"] == "replica_died", events[-3:]  # ...and says why
    for _ in range(3):  # the next requests succeed (the survivor takes them)
        r = http.post("/v1/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 2})
        assert r.status_code == 200 and r.headers[REPLICA_HEADER] != victim
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # Serve starts a replacement
        now = _replica_actors()
        status = serve.status().applications["corert"].deployments["corert_replica"]
        if len(now) == 2 and not any(n.endswith(victim) for n in now) and \
                status.replica_states.get("RUNNING") == 2:
            break
        time.sleep(1)
    else:
        pytest.fail(f"no replacement replica: {_replica_actors()}")


@pytest.fixture(scope="module")
def two_models(endpoint, http):
    """The module's app replaced: SmolLM2 and Gemma-270M on llama.cpp (quick to load), one kept per replica,
    1 to 2 replicas on queue depth (2 slots each)."""
    serve.delete("corert")
    config = RuntimeConfig().evolve(model=MODEL, engine="llama.cpp", n_seqs=2, n_ctx=2048)
    settings = ServeSettings(models=(MODEL, OTHER), api_key=KEY)
    serve.run(build_app(config, settings, RaySettings(autoscale=(1, 2), num_cpus=1, max_ongoing=16,
                                                      models_per_replica=1)), name="corert", route_prefix="/")
    return http


def _replica_models(values: dict[str, float], name: str) -> dict[str, float]:
    """``name``'s samples by model, summed over replicas."""
    out: dict[str, float] = {}
    for k, v in values.items():
        if k.startswith(name + "{"):
            model = k.split('model="', 1)[1].split('"', 1)[0]
            out[model] = out.get(model, 0.0) + v
    return out


def test_one_model_per_replica_the_second_evicts_the_first(two_models):
    http = two_models
    ask = {"prompt": "The capital of France is", "max_tokens": 2, "temperature": 0}
    first = http.post("/v1/completions", json={"model": MODEL, **ask})
    assert first.status_code == 200, first.text
    before = metrics(http)
    assert _replica_models(before, "corert_replica_model_loaded") == {MODEL: 1.0, OTHER: 0.0}
    listed = http.get("/v1/models").json()["data"]
    assert {m["id"] for m in listed if m["task"] == "generate"} == {MODEL, OTHER}  # both, one loaded
    second = http.post("/v1/completions", json={"model": OTHER, **ask})
    assert second.status_code == 200 and second.json()["model"] == OTHER, second.text
    assert second.headers[REPLICA_HEADER] == first.headers[REPLICA_HEADER]  # one replica so far
    after = metrics(http)
    assert _replica_models(after, "corert_replica_model_loaded") == {MODEL: 0.0, OTHER: 1.0}
    assert _replica_models(after, "corert_replica_model_evictions_total") == {MODEL: 1.0, OTHER: 0.0}
    assert _replica_models(after, "corert_replica_model_loads_total") == {MODEL: 1.0, OTHER: 1.0}
    again = http.post("/v1/completions", json={"model": MODEL, **ask})  # back: loaded again, Gemma out
    assert again.status_code == 200 and again.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]
    last = metrics(http)
    assert _replica_models(last, "corert_replica_model_evictions_total") == {MODEL: 1.0, OTHER: 1.0}
    assert _replica_models(last, "corert_replica_model_loads_total") == {MODEL: 2.0, OTHER: 1.0}


def test_autoscale_config_is_on_queue_depth():
    app = build_app(RuntimeConfig().evolve(n_seqs=4), ServeSettings(), RaySettings(autoscale=(1, 3), num_cpus=2))
    replica = app._bound_deployment.init_args[0]._bound_deployment  # the ingress is bound to the replicas
    auto = replica._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.initial_replicas, auto.max_replicas) == (1, 1, 3)
    assert auto.target_ongoing_requests == 4  # requests running or waiting in a replica: one per slot
    assert replica.ray_actor_options["num_cpus"] == 2
    # our code on Serve's own loops, in the replicas and the ingress: no thread hop per streamed item
    assert replica.ray_actor_options["runtime_env"] == {"env_vars": LOOP_ENV}
    assert app._bound_deployment.ray_actor_options["runtime_env"] == {"env_vars": LOOP_ENV}


def test_replicas_get_the_spin_chosen_before_ray_started():
    env = {"GOMP_SPINCOUNT": "1001", CHOSEN: GIVEN}
    app = build_app(RuntimeConfig(), ServeSettings(), RaySettings(env=env))
    replica = app._bound_deployment.init_args[0]._bound_deployment
    assert replica.ray_actor_options["runtime_env"] == {"env_vars": {**LOOP_ENV, **env}}


def test_autoscale_scales_up_under_load(two_models):
    """8 long streams on one replica of 2 slots (target: 2 ongoing per replica): Serve adds the second one
    within its metrics interval + upscale delay + a replica start, bounded here at 240 s."""
    stop = threading.Event()
    body = {"model": MODEL, "prompt": "Count: 1, 2, 3,", "max_tokens": 1500, "ignore_eos": True, "stream": True}

    def load() -> None:
        with two_models.stream("POST", "/v1/completions", json=body) as r:
            for _ in r.iter_lines():
                if stop.is_set():
                    break

    threads = [threading.Thread(target=load, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status = serve.status().applications["corert"].deployments["corert_replica"]
            if status.replica_states.get("RUNNING", 0) == 2:
                break
            time.sleep(2)
        else:
            pytest.fail(f"no second replica after 240 s: {status.replica_states}")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads)


def test_a_port_in_use_is_one_line_exit_2():
    import subprocess

    from cli_support import CORERT

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([CORERT, "serve", "--ray", "--port", str(port)], capture_output=True, text=True,
                             timeout=120)
    assert out.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("args, says", [(["--uds", "s.sock"], "--uds does not go with --ray"),
                                        (["--autoscale", "3:1"], "--autoscale wants MIN:MAX")])
def test_bad_ray_options_are_one_line_exit_2(args, says):
    import subprocess

    from cli_support import CORERT

    out = subprocess.run([CORERT, "serve", "--ray", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
