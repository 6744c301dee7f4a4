"""How the Runtime calls the task hooks: one context manager around a request, and an opt-in trace.

    with request_hooks(host.hook, "embed", texts) as call:
        call.result = ...          # on_request_end gets it; an exception raised inside gets there instead

``CORERT_TRACE_HOOKS=1`` prints every hook call the plugin manager dispatches (name, arguments, which
implementations ran, the outcome) to stderr, through pluggy's hook-call monitoring: A/B debugging of what a
plugin saw without touching it.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

import attrs
import pluggy

TRACE_ENV = "CORERT_TRACE_HOOKS"


@attrs.define
class HookCall:
    """Filled in by the request: what ``on_request_end`` reports as its result."""

    result: Any = None


@contextlib.contextmanager
def request_hooks(hook, task: str, request: Any) -> Iterator[HookCall]:
    """``on_request_start`` now, ``on_request_end`` when the block ends, with the result or the exception
    that ended it (re-raised)."""
    hook.on_request_start(task=task, request=request)
    call = HookCall()
    try:
        yield call
    except BaseException as exc:
        hook.on_request_end(task=task, request=request, result=None, error=exc)
        raise
    hook.on_request_end(task=task, request=request, result=call.result, error=None)


def trace_from_env(pm: pluggy.PluginManager, environ: dict[str, str] | None = None) -> bool:
    """Trace ``pm``'s hook calls to stderr when CORERT_TRACE_HOOKS is set to a true value."""
    value = (os.environ if environ is None else environ).get(TRACE_ENV, "")
    if value.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    pm.add_hookcall_monitoring(_before, _after)
    return True


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _before(hook_name: str, impls, kwargs: dict[str, Any]) -> None:
    args = ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items())
    names = ", ".join(impl.plugin_name for impl in impls)
    print(f"corert hook: {hook_name}({args}) -> [{names}]", file=sys.stderr, flush=True)


def _after(outcome, hook_name: str, impls, kwargs: dict[str, Any]) -> None:
    exc = outcome.exception
    result = f"raised {type(exc).__name__}: {exc}" if exc is not None else f"returned {_short(outcome.get_result())}"
    print(f"corert hook: {hook_name} {result}", file=sys.stderr, flush=True)
