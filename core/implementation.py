"""What a plugin registers: an :class:`Implementation` of one area, with its options and a factory.

Selection contract (tests, benchmarks, A/B and users all use it)::

    AREA=NAME[:OPTION]          kv_cache=paged:q8   tokenizer=bpe:scalar   speculative=speculative:adaptive

``AREA`` is one of :data:`AREAS`; ``NAME`` picks an implementation; ``OPTION`` is one of the implementation's
declared options, which are of two kinds:

- a **CPU variant** (:class:`corert.cpu.Variant`: avx2 / neon / scalar / vnni): the same computation in a
  kernel shape for a kind of CPU.  Every CPU variant of an implementation gives the same results; which
  one runs is a question of speed, so with no option given the best one the CPU supports is chosen
  (CPU detection), and asking for one the CPU lacks is an error.
- a **mode** (:class:`Mode`: q8 / f16 for a cache's pages, inference / balanced / batch for the scheduler,
  adaptive / lookup / draft for speculative decoding): a behaviour the user chooses, which may change
  results or costs.  Modes need no CPU feature; with none given, the mode of highest priority is used.

An implementation declares options of one kind.  The option part of the string was called the "variant"
before modes had their own name; the syntax is unchanged, and ``Resolved.variant`` still holds the option.

Defaults: with no NAME selected for an area, the implementation of highest ``priority`` that supports the
engine is used; ties go to the alphabetically first name, so the default never depends on the order in
which plugins registered.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import attrs

from .cpu import Variant

#: The four optimization areas of the selection contract, plus engines.
AREAS = ("kv_cache", "speculative", "tokenizer", "scheduler")
ENGINE_AREA = "engine"


def engine_name(engine: str) -> str:
    """``native:vnni`` -> ``native``: an engine's variant does not change which plugins work with it."""
    return engine.split(":", 1)[0]


@attrs.frozen
class Mode(Variant):
    """A behaviour option of an implementation (page dtype, scheduler preset, decoding strategy), chosen by
    the user or by ``priority``; unlike a CPU variant it needs no CPU feature."""

    kind: ClassVar[str] = "mode"

    def __attrs_post_init__(self):
        if self.requires:
            raise ValueError(f"mode {self.name!r} requires CPU features: declare it as a CPU Variant")


@attrs.frozen
class Implementation:
    """One swappable implementation, e.g. the ``bpe`` tokenizer with CPU variants avx2/neon/scalar, or the
    ``paged`` KV cache with modes q8/f16/f32.

    ``factory(option_name, **context)`` builds the working object; the context an area passes is documented
    on its ``register_*`` hook.  ``engines`` lists the engines it works with (``None``: any).  ``variants``
    holds its options (CPU variants or modes, see the module docstring).  When no name is selected for an
    area, the implementation with the highest ``priority`` that supports the engine is used (ties: the
    first name alphabetically), so a plugin becomes the default by registering with a higher priority.
    """

    area: str = attrs.field(validator=attrs.validators.in_(AREAS + (ENGINE_AREA,)))
    name: str
    factory: Callable[..., Any] = attrs.field(repr=False, eq=False)
    variants: tuple[Variant, ...] = attrs.field(default=(Mode("default"),), converter=tuple)
    engines: tuple[str, ...] | None = attrs.field(default=None,
                                                  converter=attrs.converters.optional(tuple))
    priority: int = 0
    description: str = ""

    @variants.validator
    def _one_kind(self, attribute, value):
        if len({v.kind for v in value}) > 1:
            raise ValueError(f"{self.area}={self.name} mixes CPU variants and modes: declare options of one kind")

    @property
    def option_kind(self) -> str:
        """``"CPU variant"`` or ``"mode"``: what the part after the colon of a selection picks here."""
        return "mode" if self.variants and self.variants[0].kind == "mode" else "CPU variant"

    def supports_engine(self, engine: str) -> bool:
        return self.engines is None or engine_name(engine) in self.engines
