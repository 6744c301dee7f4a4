"""Cooperative cancellation: a token per task that the running code checks.

A running Python thread cannot be killed, so a cancelled or timed-out task stops only when its own code
looks at its token.  Long-running task code (a generate loop) calls ``current_token().check()`` once per
step, e.g. per token: a cancelled request then ends within one decode step, and the worker (and the model
it holds) is free for the next task.  Code not run by a scheduler gets a token that is never cancelled, so
it can check freely.
"""
from __future__ import annotations

import threading
import time

from .errors import CancelledError, TaskTimeoutError


class CancelToken:
    """Set once by whoever cancels (the caller, a timeout, a shutdown); read by the task."""

    __slots__ = ("deadline", "_event", "_reason")

    def __init__(self, deadline: float | None = None):
        #: ``time.monotonic()`` after which the task is late; ``None``: no timeout.
        self.deadline = deadline
        self._event = threading.Event()
        self._reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._event.is_set():
            self._reason = reason
            self._event.set()

    @property
    def cancelled(self) -> bool:
        """True once cancelled, or once the deadline has passed (even before the watchdog noticed)."""
        return self._event.is_set() or (self.deadline is not None and time.monotonic() > self.deadline)

    @property
    def reason(self) -> str:
        if self._event.is_set():
            return self._reason
        return "timeout" if self.cancelled else ""

    def check(self) -> None:
        """Raise :class:`TaskTimeoutError` or :class:`CancelledError` if the task should stop now."""
        if not self.cancelled:
            return
        if self.reason == "timeout":
            raise TaskTimeoutError("the task ran past its timeout and was stopped")
        raise CancelledError(f"the task was cancelled ({self.reason})")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled (or ``timeout`` seconds); lets a task sleep without ignoring cancellation."""
        if self.deadline is not None:
            left = max(0.0, self.deadline - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        self._event.wait(timeout)
        return self.cancelled


class _NeverCancelled(CancelToken):
    """What code outside a scheduler gets: cancelling it would stop unrelated work, so it is ignored."""

    def cancel(self, reason: str = "cancelled") -> None:
        pass


_NEVER = _NeverCancelled()
_local = threading.local()


def current_token() -> CancelToken:
    """The token of the task running on this thread (a never-cancelled one outside any scheduler)."""
    return getattr(_local, "token", None) or _NEVER


def set_current(token: CancelToken | None) -> None:
    """Make ``token`` the current task's (schedulers call this around each task they run)."""
    _local.token = token
