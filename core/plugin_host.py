"""The plugin host: one pluggy PluginManager per Runtime, filled from the ``corert`` entry-point group.

Order matters: our own distribution's entry points (the built-in plugins) are registered first, every other
distribution's after, so on a name collision the third-party implementation wins.  A plugin that fails to
import or to register is recorded in :attr:`PluginHost.failures`, warned about, and skipped: one broken
plugin never takes the host down.  ``deny`` blocks an entry point before it is imported; ``allow`` (when
given) admits only the third-party entry points it names.
"""
from __future__ import annotations

import importlib.metadata
import os
import warnings
from typing import Any, Iterable

import attrs
import pluggy

from . import hookspecs
from .hook_calls import trace_from_env
from .cpu import CpuInfo, Variant, choose_variant, info
from .errors import ConfigError, PluginError
from .implementation import AREAS, ENGINE_AREA, Implementation

ENTRY_POINT_GROUP = "corert"
OWN_DISTRIBUTION = "corert"

hookimpl = pluggy.HookimplMarker("corert")


@attrs.frozen
class Selection:
    """One term of the selection contract: ``AREA=NAME[:VARIANT]``."""

    area: str
    name: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Selection":
        area, sep, rest = text.strip().partition("=")
        if not sep or not area or not rest:
            raise ConfigError(f"bad plugin selection {text!r}: expected AREA=NAME[:VARIANT], "
                              f"e.g. tokenizer=bpe:scalar")
        return cls.of(area.strip(), rest.strip())

    @classmethod
    def of(cls, area: str, value: str) -> "Selection":
        if area not in AREAS:
            raise ConfigError(f"unknown plugin area {area!r}; areas are {', '.join(AREAS)}")
        name, _, variant = value.partition(":")
        if not name:
            raise ConfigError(f"empty plugin name for area {area!r}")
        return cls(area, name, variant or None)

    def __str__(self) -> str:
        return f"{self.area}={self.name}" + (f":{self.variant}" if self.variant else "")


def parse_selections(spec: str | Iterable[str] | dict[str, str] | None) -> dict[str, Selection]:
    """Accepts ``"a=x,b=y:v"``, a list of such terms, or ``{"a": "x", "b": "y:v"}``."""
    if not spec:
        return {}
    if isinstance(spec, dict):
        terms = [Selection.of(k, v) for k, v in spec.items()]
    else:
        items = spec.split(",") if isinstance(spec, str) else [t for s in spec for t in s.split(",")]
        terms = [Selection.parse(t) for t in items if t.strip()]
    return {t.area: t for t in terms}


@attrs.frozen
class PluginFailure:
    plugin: str
    stage: str  # "import" or "register"
    error: str


@attrs.frozen
class Registered:
    impl: Implementation
    plugin: str  # the entry point (or object) that registered it


@attrs.frozen
class Resolved:
    impl: Implementation
    variant: Variant
    reason: str
    plugin: str

    @property
    def label(self) -> str:
        return f"{self.impl.name}:{self.variant.name}"


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    own = [ep for ep in eps if _dist_name(ep) == OWN_DISTRIBUTION]
    rest = [ep for ep in eps if _dist_name(ep) != OWN_DISTRIBUTION]
    return own + rest


def _dist_name(ep: importlib.metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"].lower() if dist is not None else None


def _env_list(name: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, "").split(",") if x.strip()]


@attrs.define
class PluginHost:
    """The plugins of one Runtime and what they registered."""

    pm: pluggy.PluginManager
    failures: list[PluginFailure] = attrs.field(factory=list)
    registered: dict[str, dict[str, Registered]] = attrs.field(factory=dict)
    models: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def build(cls, allow: Iterable[str] = (), deny: Iterable[str] = (),
              extra: Iterable[tuple[str, object]] = ()) -> "PluginHost":
        """Load entry points (honouring allow/deny and ``CORERT_DISABLE``), then ``extra`` (name, plugin)
        pairs, which a host app or a test registers directly and which come last, so they override."""
        pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        pm.add_hookspecs(hookspecs)
        trace_from_env(pm)
        host = cls(pm)
        deny = set(deny) | set(_env_list("CORERT_DISABLE"))
        allow = set(allow) | set(_env_list("CORERT_ALLOW"))
        for ep in _entry_points():
            if ep.name in deny or pm.is_blocked(ep.name):
                pm.set_blocked(ep.name)
                continue
            if allow and _dist_name(ep) != OWN_DISTRIBUTION and ep.name not in allow:
                continue
            if pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - isolation is the point
                host._fail(ep.name, "import", exc)
                continue
            host._register(ep.name, plugin)
        for name, plugin in extra:
            if name not in deny:
                host._register(name, plugin)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"a plugin implements a hook corert does not define: {exc}") from exc
        host._collect()
        return host

    # -- registration ---------------------------------------------------------------------------------------
    def _fail(self, name: str, stage: str, exc: BaseException) -> None:
        failure = PluginFailure(name, stage, f"{type(exc).__name__}: {exc}")
        self.failures.append(failure)
        warnings.warn(f"corert plugin {name!r} skipped ({stage} failed: {failure.error})", RuntimeWarning,
                      stacklevel=3)

    def _register(self, name: str, plugin: object) -> None:
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} is invalid: {exc}") from exc
        except Exception as exc:  # noqa: BLE001
            self._fail(name, "register", exc)

    def _collect(self) -> None:
        """Run the registration hooks plugin by plugin, in registration order, so a plugin that raises is
        unregistered alone and a later plugin's name replaces an earlier one's."""
        from .models.registry import ModelSpec

        for _, plugin in list(self.pm.list_name_plugin()):  # registration order
            name = self.pm.get_name(plugin)
            impls: list[Implementation] = []
            models: list[ModelSpec] = []
            try:
                for hook_name in ("register_engines", "register_kv_caches", "register_decoders",
                                  "register_tokenizers", "register_schedulers"):
                    fn = getattr(plugin, hook_name, None)
                    if fn is not None and _is_hookimpl(fn):
                        fn(register=impls.append)
                fn = getattr(plugin, "register_models", None)
                if fn is not None and _is_hookimpl(fn):
                    fn(register=models.append)
                for impl in impls:
                    if not isinstance(impl, Implementation):
                        raise PluginError(f"registered {impl!r}, not an Implementation")
                for spec in models:
                    if not isinstance(spec, ModelSpec):
                        raise PluginError(f"registered {spec!r}, not a ModelSpec")
            except Exception as exc:  # noqa: BLE001
                self.pm.unregister(plugin)
                self._fail(name, "register", exc)
                continue
            for impl in impls:
                self.registered.setdefault(impl.area, {})[impl.name] = Registered(impl, name)
            for spec in models:
                self.models[spec.name] = spec

    # -- selection ------------------------------------------------------------------------------------------
    def implementations(self, area: str) -> dict[str, Registered]:
        return dict(self.registered.get(area, {}))

    def resolve(self, area: str, selection: Selection | str | None = None, engine: str | None = None,
                cpu: CpuInfo | None = None) -> Resolved:
        """The implementation and variant used for ``area``: the selected one, or the default."""
        if isinstance(selection, str):
            selection = Selection.of(area, selection) if area != ENGINE_AREA else \
                Selection(ENGINE_AREA, *(selection.split(":", 1) + [None])[:2])
        known = self.registered.get(area, {})
        if selection is not None:
            reg = known.get(selection.name)
            if reg is None:
                raise PluginError(f"unknown {area} plugin {selection.name!r}; known: "
                                  f"{', '.join(sorted(known)) or 'none'}")
            if engine is not None and not reg.impl.supports_engine(engine):
                raise PluginError(f"{area} plugin {selection.name!r} does not work with engine {engine!r} "
                                  f"(it supports {', '.join(reg.impl.engines or ())})")
            variant, reason = choose_variant(reg.impl.variants, selection.variant,
                                             f"{area}={selection.name}", cpu)
            return Resolved(reg.impl, variant, reason if selection.variant else f"selected; {reason}",
                            reg.plugin)
        candidates = [r for r in known.values() if engine is None or r.impl.supports_engine(engine)]
        if not candidates:
            raise PluginError(f"no {area} plugin is available" + (f" for engine {engine!r}" if engine else ""))
        # highest priority; ties go to the first name, never to whichever plugin happened to register first
        best = min(candidates, key=lambda r: (-r.impl.priority, r.impl.name))
        variant, reason = choose_variant(best.impl.variants, None, f"{area}={best.impl.name}", cpu)
        return Resolved(best.impl, variant, f"default; {reason}", best.plugin)

    def create(self, resolved: Resolved, **context: Any) -> Any:
        return resolved.impl.factory(resolved.variant.name, **context)

    # -- hooks the Runtime fires ---------------------------------------------------------------------------
    @property
    def hook(self):
        return self.pm.hook


def _is_hookimpl(fn: object) -> bool:
    return hasattr(fn, "corert_impl")


def describe(host: PluginHost, selections: dict[str, Selection], engine: str | None,
             cpu: CpuInfo | None = None) -> dict[str, Any]:
    """What ``corert plugins`` shows: per area, the implementations, their variants and the choice
    (``engine`` None: not known yet, engine=auto decides when it reads the model file)."""
    cpu = cpu or info()
    # the SIMD families, and whatever a registered variant asks for (avx512_vnni, amx_int8...): what decided
    required = {f for area in AREAS + (ENGINE_AREA,) for reg in host.implementations(area).values()
                for v in reg.impl.variants for f in v.requires}
    shown = required | {"avx2", "avx512", "avx512f", "avx512bw", "neon"}
    out: dict[str, Any] = {"cpu": {"machine": cpu.machine, "isa": cpu.isa,
                                   "features": sorted(cpu.features & shown)},
                           "engine": engine, "areas": {}}
    for area in AREAS + (ENGINE_AREA,):
        impls = []
        for name, reg in sorted(host.implementations(area).items()):
            impls.append({
                "name": name, "plugin": reg.plugin, "description": reg.impl.description,
                "engines": list(reg.impl.engines) if reg.impl.engines else "any",
                "priority": reg.impl.priority, "option_kind": reg.impl.option_kind,
                "variants": [{"name": v.name, "requires": sorted(v.requires),
                              "supported": v.supported(cpu), "description": v.description}
                             for v in reg.impl.variants],
            })
        entry: dict[str, Any] = {"implementations": impls}
        try:
            if area == ENGINE_AREA:
                if engine is None:
                    raise ConfigError("engine=auto: decided when the model file is read")
                chosen = host.resolve(area, engine, cpu=cpu)
            else:
                chosen = host.resolve(area, selections.get(area), engine=engine, cpu=cpu)
            entry["chosen"] = {"name": chosen.impl.name, "variant": chosen.variant.name,
                               "reason": chosen.reason}
        except Exception as exc:  # noqa: BLE001 - shown, not raised: `plugins` is a diagnostic
            entry["chosen"] = None
            entry["error"] = str(exc)
        out["areas"][area] = entry
    out["failures"] = [attrs.asdict(f) for f in host.failures]
    return out
