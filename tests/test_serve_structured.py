"""`corert serve` with OpenAI's sampling extras, through the real openai client (strict validation): logprobs
in the completions and chat shapes (streamed and not), logit_bias, response_format json_schema, corert's
GBNF ``grammar``, tools with tool_calls in the message and in a stream's deltas, and their bad values as
400s.  One server for the module (llama.cpp engine, SmolLM2)."""
from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from serve_support import Server

MODEL = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "Describe a pet as a JSON object."}]
PET = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                        "kind": {"enum": ["cat", "dog", "fish"]}},
       "required": ["name", "kind"], "additionalProperties": False}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def server():
    srv = Server("--port", "0", "--engine", "llama.cpp", "--ctx", "1024", "--model", MODEL)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.address + "/v1", api_key="none", max_retries=0, timeout=120,
                       _strict_response_validation=True) as c:
        yield c


def test_completion_logprobs_and_their_stream(client):
    kw = dict(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=2)
    out = client.completions.create(**kw)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == out.usage.completion_tokens
    assert "".join(lp.tokens) == out.choices[0].text and lp.text_offset[0] == 0
    assert all(len(top) == 2 and max(top.values()) >= lp.token_logprobs[i] - 1e-6  # greedy: the top one
               for i, top in enumerate(lp.top_logprobs))
    # openai's Completion type has no null finish_reason, which streamed chunks carry: read without strict
    # validation (as tests/test_serve_openai.py does)
    with openai.OpenAI(base_url=client.base_url, api_key="none", max_retries=0, timeout=120) as loose:
        streamed = [c.choices[0].logprobs for c in loose.completions.create(**kw, stream=True)
                    if c.choices and c.choices[0].logprobs]
    assert [t for s in streamed for t in s.tokens] == lp.tokens
    assert [o for s in streamed for o in s.text_offset] == lp.text_offset


def test_chat_logprobs_whole_and_streamed(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=5,
              temperature=0, logprobs=True, top_logprobs=3)
    whole = client.chat.completions.create(**kw).choices[0]
    content = whole.logprobs.content
    assert "".join(t.token for t in content) == whole.message.content and len(content) == 5
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token for t in content)  # greedy
    assert bytes(content[0].bytes).decode() == content[0].token
    # streamed: each delta carries its own tokens' logprobs (llama.cpp re-evaluates a cached prompt
    # differently, so this run's numbers are compared with its own text, not with the first run's)
    chunks = [c.choices[0] for c in client.chat.completions.create(**kw, stream=True) if c.choices]
    for c in chunks:
        if c.delta.content:
            assert "".join(t.token for t in c.logprobs.content) == c.delta.content
    assert sum(len(c.logprobs.content) for c in chunks if c.logprobs) == 5


def test_logit_bias_bans_the_greedy_token(server, client):
    kw = dict(model=MODEL, prompt="The capital of France is", max_tokens=1, temperature=0)
    first = client.completions.create(**kw).choices[0].text
    with server.client(timeout=60) as http:
        token = http.post("/v1/tokenize", json={"model": MODEL, "text": first}).json()["tokens"][0]
    assert client.completions.create(**kw, logit_bias={str(token): -100}).choices[0].text != first


def test_response_format_json_schema(client):
    out = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=80, temperature=0,
                                         response_format={"type": "json_schema",
                                                          "json_schema": {"name": "pet", "schema": PET}})
    assert out.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(out.choices[0].message.content), PET)


def test_grammar_extension(client):
    out = client.completions.create(model=MODEL, prompt="Is the sky green? Answer:", max_tokens=8,
                                    temperature=0, extra_body={"grammar": 'root ::= " yes" | " no"'})
    assert out.choices[0].text in (" yes", " no")


def test_tool_calls_in_the_message_and_the_stream(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Add 20 and 22."}], tools=[ADD],
              tool_choice="required", max_tokens=60, temperature=0)
    choice = client.chat.completions.create(**kw).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "add" and set(json.loads(call.function.arguments)) == {"a", "b"}
    chunks = list(client.chat.completions.create(**kw, stream=True))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) == 1 and deltas[0].function.arguments == call.function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


@pytest.mark.parametrize("body, words", [
    ({"logit_bias": {"99999": 1}}, "not in the vocabulary"),
    ({"logit_bias": {"5": 300}}, "[-100, 100]"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"grammar": "root ::= nowhere"}, "grammar"),
    ({"top_logprobs": 2}, "needs logprobs"),
])
def test_bad_values_are_400(server, body, words):
    with server.client(timeout=60) as http:
        r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "max_tokens": 2, **body})
    assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
