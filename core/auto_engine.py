"""``engine = "auto"`` (the default): per model file, the first generation engine that runs it here.

Engines are tried highest priority first (the native engine registers above llama.cpp); an engine that
implements :class:`corert.interfaces.ModelSupport` is asked about the file (native: architecture, every
tensor type, a vectorized CPU variant), one that does not is taken to run every file it loads (llama.cpp,
the fallback).  The choice is by capability and verdict, never by an engine's name.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import attrs

from .errors import ConfigError
from .interfaces import ModelSupport

AUTO = "auto"


@attrs.frozen
class EngineChoice:
    """The engine a model runs on: the one the configuration names, or auto's choice and why."""

    requested: str  # "auto" or an explicit engine selection
    engine: str  # the engine selection used, e.g. "native" or "llama.cpp:default"
    reason: str

    def to_dict(self) -> dict[str, str]:
        return attrs.asdict(self)


def explicit(engine: str) -> EngineChoice:
    return EngineChoice(engine, engine, "selected explicitly")


def choose(path: str, candidates: Iterable[str], engine: Callable[[str], Any],
           conflicts: Callable[[str], list[str]] = lambda name: []) -> EngineChoice:
    """Auto's choice for the model file ``path`` among ``candidates`` (engine names, best first; ``engine``
    builds one).  ``conflicts(name)`` lists the user's plugin selections that do not work with an engine
    (``kv_cache=llama_cpp:q8_0`` rules out native): such an engine is passed over."""
    refused: list[str] = []
    for name in candidates:
        eng = engine(name)
        if not eng.capabilities.serves("generate"):
            continue
        clash = conflicts(name)
        if clash:
            refused.append(f"not {name}: {', '.join(clash)} does not work with it")
            continue
        if not isinstance(eng, ModelSupport):
            why = f"{name} runs any model file it loads"
            return EngineChoice(AUTO, name, "; ".join(refused + [why]))
        verdict = eng.check_model(path)
        if verdict.ok:
            return EngineChoice(AUTO, name, f"{name} runs this file: {verdict.reason}")
        refused.append(f"not {name}: {verdict.reason}")
    raise ConfigError(f"engine=auto: no generation engine runs {path} ({'; '.join(refused) or 'none registered'})")
