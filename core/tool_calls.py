"""Tool calling: OpenAI's ``tools`` / ``tool_choice`` into the chat prompt and a grammar, the output back
into ``tool_calls``.

Format: the one Qwen2.5's chat template teaches (Hermes style), each call on its own lines,

    <tool_call>
    {"name": "<function name>", "arguments": {<arguments>}}
    </tool_call>

A template that renders ``tools`` itself (Qwen2.5's) gets them as OpenAI sends them; for one that ignores
them (SmolLM2's) the tools and this format are described in a system message we prepend.  The grammar
(llguidance Lark with one embedded JSON schema per function) holds each call's name to a declared function
and its arguments to that function's ``parameters`` schema:
- ``tool_choice="required"`` or a named function: a call (several with ``parallel_tool_calls``), nothing else;
- ``"auto"`` (the default): calls, or text that does not start with ``<`` (so it cannot start a call);
- ``"none"``: no tools in the prompt and no grammar.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Any, Iterator, Mapping, Sequence

import attrs

from .errors import InputError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.S)
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@attrs.frozen
class ToolRequest:
    """Validated tools (OpenAI's shape) and the functions the output may call."""

    tools: tuple[dict, ...]
    choice: str  # "auto" | "required" | "function"
    allowed: tuple[str, ...]  # names the grammar admits
    parallel: bool = False  # more than one call per turn

    @property
    def functions(self) -> dict[str, dict]:
        return {t["function"]["name"]: t["function"] for t in self.tools}


def tool_request(tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any = None,
                 parallel_tool_calls: bool | None = None) -> ToolRequest | None:
    """None when there are no tools or ``tool_choice`` is "none"; bad input raises InputError.  One call per
    turn unless ``parallel_tool_calls`` is True (OpenAI's default is True, but a small model allowed more
    calls repeats its call until max_tokens)."""
    if tools is None:
        if tool_choice not in (None, "none"):
            raise InputError("tool_choice needs tools")
        return None
    if not isinstance(tools, (list, tuple)) or not tools:
        raise InputError("tools must be a non-empty list of {'type': 'function', 'function': {...}}")
    clean = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, Mapping) else None
        if not isinstance(t, Mapping) or t.get("type") != "function" or not isinstance(fn, Mapping):
            raise InputError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., ...}}}}")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InputError(f"tools[{i}] function name must be 1-64 letters, digits, _ or -, got {name!r}")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, Mapping):
            raise InputError(f"tools[{i}] function parameters must be a JSON schema object")
        clean.append({"type": "function", "function": {**fn, "parameters": dict(params)}})
    names = [t["function"]["name"] for t in clean]
    if len(set(names)) != len(names):
        raise InputError("tools have duplicate function names")
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise InputError(f"parallel_tool_calls must be true or false, got {parallel_tool_calls!r}")
    parallel = bool(parallel_tool_calls)
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return None
    if choice in ("auto", "required"):
        return ToolRequest(tuple(clean), choice, tuple(names), parallel)
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if name not in names:
            raise InputError(f"tool_choice names {name!r}, which is not one of the tools ({', '.join(names)})")
        return ToolRequest(tuple(clean), "function", (name,), parallel)
    raise InputError('tool_choice must be "none", "auto", "required" or {"type": "function", "function": '
                      '{"name": ...}}')


def template_renders_tools(template: str) -> bool:
    return "tools" in template


def tools_system_message(req: ToolRequest) -> str:
    """The tools and the call format, for a template that does not render ``tools`` itself."""
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in req.tools)
    return ("You can call functions. Their signatures, one JSON object per line, are inside <tools></tools>:\n"
            f"<tools>\n{listing}\n</tools>\n\nTo call a function, answer with a JSON object holding its name and "
            f"arguments inside tags:\n{OPEN}\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n"
            f"{CLOSE}")


def grammar(req: ToolRequest) -> str:
    """llguidance Lark for the allowed calls (see the module docstring)."""
    fns = req.functions
    bodies = []
    for i, name in enumerate(req.allowed):
        schema = {"type": "object", "properties": {"name": {"const": name},
                                                   "arguments": fns[name]["parameters"]},
                  "required": ["name", "arguments"], "additionalProperties": False}
        bodies.append(f"body{i}: %json {json.dumps(schema)}")
    more = ' ("\\n" call)*' if req.parallel else ""
    calls = (f'calls: call{more}\ncall: "{OPEN}\\n" body "\\n{CLOSE}"\n'
             f"body: {' | '.join(f'body{i}' for i in range(len(bodies)))}\n" + "\n".join(bodies) + "\n")
    if req.choice == "auto":
        return "start: calls | TEXT\nTEXT: /[^<](.|\\n)*/\n" + calls
    return "start: calls\n" + calls


def parse(text: str) -> tuple[str, list[dict[str, Any]]]:
    """(the text outside the calls, OpenAI ``tool_calls``: arguments as a JSON string)."""
    calls = []
    for m in _CALL.finditer(text):
        try:
            body = json.loads(m.group(1))
        except json.JSONDecodeError:
            continue  # not a call (a grammar-constrained output always parses)
        if isinstance(body, dict) and isinstance(body.get("name"), str):
            calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                          "function": {"name": body["name"],
                                       "arguments": json.dumps(body.get("arguments", {}), ensure_ascii=False)}})
    content = _CALL.sub("", text).strip() if calls else text
    return content, calls


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: a call's ``arguments`` as an object (OpenAI sends a string)."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = dict(c.get("function", c))
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"])
                    except json.JSONDecodeError:
                        raise InputError(f"tool call arguments must be JSON, got {fn['arguments']!r}") from None
                calls.append({**c, "function": fn})
            m["tool_calls"] = calls
        out.append(m)
    return out


def holds_calls(text: str) -> bool:
    """Whether a stream's text so far may be (the start of) tool calls rather than an answer."""
    return OPEN.startswith(text[:len(OPEN)]) if text else True


def finish(completion):
    """The completion with its calls parsed out: ``tool_calls`` set and finish_reason "tool_calls" when it
    made any, else unchanged."""
    content, calls = parse(completion.text)
    if not calls:
        return completion
    reason = completion.finish_reason if completion.finish_reason != "stop" else "tool_calls"
    return attrs.evolve(completion, text=content, tool_calls=tuple(calls), finish_reason=reason)


def stream_with_calls(chunks: Iterator) -> Iterator:
    """A chat stream under tools: text that may start a call is held back (the calls arrive parsed on the
    last chunk's completion); an answer in text streams as usual once it cannot be a call."""
    held: list = []
    text, passing = "", False
    for chunk in chunks:
        if chunk.completion is not None:
            completion = finish(chunk.completion)
            if not completion.tool_calls:
                yield from held
            yield attrs.evolve(chunk, completion=completion, finish_reason=completion.finish_reason)
            return
        if passing:
            yield chunk
            continue
        text += chunk.text
        held.append(chunk)
        if not holds_calls(text):
            passing = True
            yield from held
            held = []
