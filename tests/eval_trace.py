"""What a real engine session evaluated, and for which task: lets a test count the tokens a cancelled
request evaluated after its cancel, and see which request the engine served next (no tests here).

The session stays the real one; only its ``eval`` is wrapped, to note each call with the cancel token of the
task that made it (``corert.cancel.current_token()`` on the calling thread) and whether that token was
already cancelled when the call began.
"""
from __future__ import annotations

import threading
from typing import Callable

import attrs

from corert.cancel import CancelToken, current_token


@attrs.frozen
class Eval:
    index: int              # position in the trace (marks included)
    token: CancelToken      # the task's cancel token: one per request
    n_ids: int              # ids evaluated by this call (the prompt, then one per generated token)
    cancelled: bool         # the token was already cancelled (or past its deadline) when the call began


class EvalTrace:
    """Wrap ``session.eval`` (undone by ``monkeypatch``).  ``pause(token, n)`` runs before the n-th eval of
    the task with ``token`` (1 = its prompt); a test uses it to hold a generation at a known point."""

    def __init__(self, monkeypatch, session, pause: Callable[[CancelToken, int], None] | None = None):
        self._lock = threading.Lock()
        self._items: list[Eval | str] = []
        real = session.eval

        def traced(ids, *args, **kwargs):
            token = current_token()
            with self._lock:
                self._items.append(Eval(len(self._items), token, len(ids), token.cancelled))
                n = sum(1 for e in self._items if isinstance(e, Eval) and e.token is token)
            if pause is not None:
                pause(token, n)
            return real(ids, *args, **kwargs)

        monkeypatch.setattr(session, "eval", traced)

    def mark(self, label: str) -> None:
        """Note a moment (e.g. "the caller closed the stream") in the trace's order."""
        with self._lock:
            self._items.append(label)

    def requests(self) -> list[CancelToken]:
        """The tokens of the requests the session evaluated for, in the order they began."""
        seen: list[CancelToken] = []
        for e in self.evals():
            if not any(e.token is t for t in seen):
                seen.append(e.token)
        return seen

    def evals(self, token: CancelToken | None = None) -> list[Eval]:
        with self._lock:
            items = list(self._items)
        return [e for e in items if isinstance(e, Eval) and (token is None or e.token is token)]

    def position(self, label: str) -> int:
        """Where the mark ``label`` is in the trace (comparable with ``Eval.index``)."""
        with self._lock:
            return self._items.index(label)

    def after(self, label: str, token: CancelToken) -> list[Eval]:
        """The evals of ``token``'s request that began after the mark ``label``."""
        at = self.position(label)
        return [e for e in self.evals(token) if e.index > at]
