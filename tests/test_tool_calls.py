"""Tool calling on real models: Qwen2.5-Coder's template renders the tools itself, SmolLM2's does not (the
tools go into a system message); either way the call's arguments are held to the function's schema and come
back parsed in ``tool_calls``, streamed or not; a conversation with a call and its result renders through
the template."""
from __future__ import annotations

import json
import warnings

import jsonschema
import pytest

from corert import Runtime
from corert.errors import InputError
from corert.tool_calls import parse

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _check(completion, name: str, schema: dict) -> dict:
    assert completion.finish_reason == "tool_calls" and len(completion.tool_calls) == 1
    call = completion.tool_calls[0]
    assert call["type"] == "function" and call["function"]["name"] == name and call["id"].startswith("call_")
    args = json.loads(call["function"]["arguments"])
    jsonschema.validate(args, schema)
    message = completion.to_dict()["choices"][0]["message"]
    assert message["tool_calls"][0] == call and message["content"] is None
    return args


@pytest.fixture(scope="module")
def qwen(qwen05):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = Runtime(engine="llama.cpp", model=qwen05)
    yield rt
    rt.close()


@pytest.mark.slow
def test_qwen_template_renders_the_tools_and_the_call_follows_the_schema(qwen):
    out = qwen.chat(ASK, tools=TOOLS, tool_choice="required", max_tokens=60, temperature=0)
    assert _check(out, "get_weather", WEATHER["function"]["parameters"])["city"] == "Paris"


def test_qwen_renders_a_call_and_its_result_back(qwen):
    """The assistant's call (arguments as OpenAI's JSON string) and the tool's answer go through the
    template; the model then answers in text (tool_choice auto)."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'}]
    out = qwen.chat(history, tools=TOOLS, max_tokens=30, temperature=0)
    assert out.tool_calls is None and out.finish_reason in ("stop", "length") and out.text.strip()


@pytest.mark.slow
def test_smollm2_gets_the_tools_in_a_system_message_and_a_named_function(runtime):
    ask = [{"role": "user", "content": "Add 20 and 22."}]
    choice = {"type": "function", "function": {"name": "add"}}
    out = runtime.chat(ask, tools=TOOLS, tool_choice=choice, max_tokens=60, temperature=0)
    _check(out, "add", ADD["function"]["parameters"])
    chunks = list(runtime.chat(ask, tools=TOOLS, tool_choice=choice, max_tokens=60, temperature=0,
                               stream=True))
    assert "".join(c.text for c in chunks) == ""  # the call's text is held back...
    last = chunks[-1].completion  # ...and arrives parsed
    assert last.tool_calls[0]["function"] == out.tool_calls[0]["function"]
    assert chunks[-1].finish_reason == "tool_calls"


def test_tool_choice_none_and_auto_text_answers(runtime):
    text = runtime.chat(ASK, tools=TOOLS, tool_choice="none", max_tokens=8, temperature=0)
    assert text.tool_calls is None and text.text == runtime.chat(ASK, max_tokens=8, temperature=0).text


def test_parse_and_bad_tool_requests(runtime):
    content, calls = parse('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
    assert content == "" and json.loads(calls[0]["function"]["arguments"]) == {"a": 1, "b": 2}
    assert parse("no call here") == ("no call here", [])
    for kwargs, message in [({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not one of"),
                            ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "name must be"),
                            ({"tool_choice": "sometimes"}, "tool_choice must be"),
                            ({"response_format": {"type": "json_object"}}, "cannot be combined")]:
        with pytest.raises(InputError, match=message):
            runtime.chat(ASK, **{"tools": TOOLS, **kwargs}, max_tokens=4)
