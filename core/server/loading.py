"""Loading the served models in the background: GET /health answers 503 until every model is loaded and
has generated one token (so the first request does not pay for loading or kernel compilation), then 200."""
from __future__ import annotations

import threading
from typing import Any, Sequence


class ModelLoader:
    def __init__(self, runtime: Any, models: Sequence[str]):
        self.runtime, self.models = runtime, tuple(models)
        self.state = "loading"  # loading | ok | error
        self.error: str | None = None
        self.ready = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._load, name="corert-serve-load", daemon=True)
            self._thread.start()

    def _load(self) -> None:
        try:
            for model in self.models:
                if self.runtime.config.isolation == "none":  # else the warm-up loads it in its worker
                    self.runtime.load_generation_model(model)
                self.runtime.generate("Hello", model=model, max_tokens=1, temperature=0.0)  # warm-up
            self.state = "ok"
        except Exception as exc:  # noqa: BLE001 - reported by /health and the log, the server stays up
            self.state, self.error = "error", f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        finally:
            self.ready.set()
