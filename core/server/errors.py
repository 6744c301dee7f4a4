"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status, and the
one table that maps corert's typed errors to statuses."""
from __future__ import annotations

from typing import Any

from ..errors import (CancelledError, ConfigError, ContextLengthError, CorertError, InputError, ModelError, PluginError,
                      QueueFullError, TaskTimeoutError, WorkerCrashed)


class APIError(Exception):
    """An error the server answers with; ``kind`` is OpenAI's error ``type``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self):
        from starlette.responses import JSONResponse  # the serve extra: imported by the running server only

        headers = {401: {"WWW-Authenticate": "Bearer"}, 503: {"Retry-After": "1"}}.get(self.status)
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


#: corert's typed errors -> (status, OpenAI type).  First match wins (subclasses before their bases).
_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (QueueFullError, 429, "rate_limit_error"),
    (WorkerCrashed, 503, "service_unavailable"),  # its worker is being restarted: retrying is safe
    (TaskTimeoutError, 504, "timeout_error"),
    (CancelledError, 499, "cancelled"),
    (ContextLengthError, 400, "invalid_request_error"),
    (InputError, 400, "invalid_request_error"),
    (ConfigError, 400, "invalid_request_error"),
    (ModelError, 400, "invalid_request_error"),
    (PluginError, 500, "server_error"),
    (CorertError, 500, "server_error"),
)


def from_exception(exc: BaseException) -> APIError:
    """The answer for an exception raised while serving a request (unexpected ones are a 500)."""
    if isinstance(exc, APIError):
        return exc
    message = " ".join(str(exc).split()) or type(exc).__name__
    for kind, status, type_name in _STATUS:
        if isinstance(exc, kind):
            code = "context_length_exceeded" if isinstance(exc, ContextLengthError) else None
            return APIError(status, message, type_name, code=code)
    return APIError(500, f"internal error: {type(exc).__name__}: {message}", "server_error")
