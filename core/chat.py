"""Chat prompts through the model's own chat template (tokenizer.chat_template in the GGUF)."""
from __future__ import annotations

from typing import Any, Sequence

from .errors import InputError, ModelError

_ROLES = ("system", "user", "assistant", "tool")


#: kept for the templates besides role and content: an assistant's calls, a tool result's call id and name
_TOOL_KEYS = ("tool_calls", "tool_call_id", "name")


def validate_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(f"message {i} must be a dict with 'role' and 'content'")
        if m["role"] not in _ROLES:
            raise InputError(f"message {i} has unknown role {m['role']!r}; use one of {', '.join(_ROLES)}")
        calls = m.get("tool_calls")
        if calls is not None and (m["role"] != "assistant" or not isinstance(calls, list)):
            raise InputError(f"message {i}: only an assistant message has tool_calls, as a list")
        if not isinstance(m["content"], str) and not (calls and m["content"] is None):
            raise InputError(f"message {i} content must be a string")
        out.append({"role": m["role"], "content": m["content"] or "",
                    **{k: m[k] for k in _TOOL_KEYS if m.get(k) is not None}})
    return out


def render(template: str | None, messages: Sequence[dict[str, Any]], bos: str = "", eos: str = "",
           tools: Sequence[dict[str, Any]] | None = None) -> str:
    if not template:
        raise ModelError("this model has no chat template (tokenizer.chat_template); use generate instead")
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise InputError(f"chat template refused the messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=list(messages), add_generation_prompt=True,
                                                bos_token=bos, eos_token=eos, tools=tools)
    except TemplateError as exc:
        raise ModelError(f"the model's chat template failed: {exc}") from exc
