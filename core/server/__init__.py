"""``corert serve``: an OpenAI-compatible HTTP server over one Runtime (FastAPI + uvicorn, the serve extra).

    from corert import Runtime
    from corert.server import ServeSettings, create_app
    app = create_app(Runtime(engine="native", n_seqs=4), ServeSettings(api_key="..."))

Importing this package costs nothing: the web stack loads with ``create_app`` (``corert --help`` stays fast
and works without the extra).
"""
from __future__ import annotations

from typing import Any

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
