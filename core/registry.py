"""What a plugin registers: an implementation of one area, with its CPU variants and a factory."""
from __future__ import annotations

from typing import Any, Callable

import attrs

from .cpu import Variant

#: The four optimization areas of the selection contract, plus engines.
AREAS = ("kv_cache", "speculative", "tokenizer", "scheduler")
ENGINE_AREA = "engine"


def engine_name(engine: str) -> str:
    """``native:vnni`` -> ``native``: an engine's variant does not change which plugins work with it."""
    return engine.split(":", 1)[0]


@attrs.frozen
class Implementation:
    """One swappable implementation, e.g. the ``bpe`` tokenizer with variants avx2/neon/scalar.

    ``factory(variant_name, **context)`` builds the working object; the context an area passes is documented
    on its ``register_*`` hook.  ``engines`` lists the engines it works with (``None``: any).  When no name is
    selected for an area, the implementation with the highest ``priority`` that supports the engine is used,
    so a plugin becomes the default by registering with a higher priority.
    """

    area: str = attrs.field(validator=attrs.validators.in_(AREAS + (ENGINE_AREA,)))
    name: str
    factory: Callable[..., Any] = attrs.field(repr=False, eq=False)
    variants: tuple[Variant, ...] = attrs.field(default=(Variant("default"),), converter=tuple)
    engines: tuple[str, ...] | None = attrs.field(default=None,
                                                  converter=attrs.converters.optional(tuple))
    priority: int = 0
    description: str = ""

    def supports_engine(self, engine: str) -> bool:
        return self.engines is None or engine_name(engine) in self.engines
