"""The plugin host without a model: the selection grammar, entry-point order, allow/deny, registration
failures, resolution (messages and reasons) and `describe`, over the real built-in entry points plus plugins
registered directly.  Written to kill mutmut's mutants of corert/plugin_host.py (scripts/mutation.sh)."""
from __future__ import annotations

import importlib.metadata
import os
import types
import warnings

import pytest

from corert import plugin_host
from corert.cpu import CpuInfo, Variant
from corert.errors import ConfigError, PluginError
from corert.models.registry import ModelFile, ModelSpec
from corert.plugin_host import (PluginFailure, PluginHost, Resolved, Selection, describe, hookimpl,
                                parse_selections)
from corert.implementation import Implementation

#: a CPU with AVX2 and nothing wider: variant choices are fixed whatever machine runs the test
AVX2 = CpuInfo("x86_64", frozenset({"avx2", "fma", "sse4_2"}))
SCALAR = CpuInfo("x86_64", frozenset())


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for var in ("CORERT_DISABLE", "CORERT_ALLOW", "CORERT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)


def _plugin(name: str, **hooks) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(hooks)
    return mod


def _impl(area="tokenizer", name="toy", priority=0, engines=None, variants=None, made=None):
    def factory(variant, **ctx):
        if made is not None:
            made.append((variant, ctx))
        return (name, variant)
    kw = {"variants": variants} if variants else {}
    return Implementation(area=area, name=name, factory=factory, priority=priority, engines=engines,
                          description=f"{name} for tests", **kw)


def _registering(name, *impls, models=()):
    @hookimpl
    def register_tokenizers(register):
        for impl in impls:
            register(impl)

    @hookimpl
    def register_models(register):
        for m in models:
            register(m)
    return _plugin(name, register_tokenizers=register_tokenizers, register_models=register_models)


# -- the selection grammar ----------------------------------------------------------------------------------
def test_selection_parse_and_str():
    assert Selection.parse("tokenizer=we=ird") == Selection("tokenizer", "we=ird")  # split at the first '='
    s = Selection.parse("  tokenizer = bpe:scalar ")
    assert (s.area, s.name, s.variant) == ("tokenizer", "bpe", "scalar")
    assert str(s) == "tokenizer=bpe:scalar"
    s = Selection.parse("kv_cache=paged")
    assert s.variant is None and str(s) == "kv_cache=paged"
    assert str(Selection.of("scheduler", "fifo:")) == "scheduler=fifo"


@pytest.mark.parametrize("text", ["tokenizer", "=bpe", "tokenizer=", "tokenizer=  "])
def test_selection_parse_rejects_incomplete_terms(text):
    with pytest.raises(ConfigError, match=f"^bad plugin selection {text!r}: expected AREA=NAME\\[:VARIANT\\], "
                                          "e.g. tokenizer=bpe:scalar$"):
        Selection.parse(text)


def test_selection_of_rejects_unknown_areas_and_empty_names():
    with pytest.raises(ConfigError, match="^unknown plugin area 'engine'; areas are kv_cache, speculative, "
                                          "tokenizer, scheduler$"):
        Selection.of("engine", "x")
    with pytest.raises(ConfigError, match="^empty plugin name for area 'tokenizer'$"):
        Selection.of("tokenizer", ":avx2")


def test_parse_selections_in_every_form():
    assert parse_selections(None) == {} and parse_selections("") == {} and parse_selections({}) == {}
    want = {"tokenizer": Selection("tokenizer", "bpe", "avx2"), "kv_cache": Selection("kv_cache", "paged")}
    assert parse_selections("tokenizer=bpe:avx2, kv_cache=paged,") == want
    assert parse_selections(["tokenizer=bpe:avx2", "kv_cache=paged, "]) == want
    assert parse_selections({"tokenizer": "bpe:avx2", "kv_cache": "paged"}) == want
    assert parse_selections("tokenizer=a,tokenizer=b") == {"tokenizer": Selection("tokenizer", "b")}


# -- entry points ---------------------------------------------------------------------------------------------
def test_own_entry_points_come_first():
    eps = plugin_host._entry_points()
    names = [ep.name for ep in eps]
    assert {"engine_llama_cpp", "tokenizer_bpe", "scheduler_fifo"} <= set(names)
    dists = [plugin_host._dist_name(ep) for ep in eps]
    own = [d == "corert" for d in dists]
    assert own == sorted(own, reverse=True)  # every own entry point before any other
    assert len(names) == len(set(names)) == len(importlib.metadata.entry_points(group="corert"))
    by_name = dict(zip(names, dists))
    assert by_name["engine_llama_cpp"] == by_name["tokenizer_bpe"] == "corert"  # the distribution's name, lower case
    bare = importlib.metadata.EntryPoint(name="x", value="x", group="corert")
    assert plugin_host._dist_name(bare) is None


def test_env_list(monkeypatch):
    monkeypatch.setenv("CORERT_DISABLE", " a, ,b ,")
    assert plugin_host._env_list("CORERT_DISABLE") == ["a", "b"]
    assert plugin_host._env_list("CORERT_NOT_SET_ANYWHERE") == []


# -- building the host ------------------------------------------------------------------------------------------
def test_built_ins_register_every_area_and_the_models():
    host = PluginHost.build()
    assert host.failures == []
    assert {"llama_cpp", "bpe"} <= set(host.implementations("tokenizer"))
    assert {"fifo", "work_stealing"} <= set(host.implementations("scheduler"))
    assert {"llama_cpp", "contiguous", "paged"} <= set(host.implementations("kv_cache"))
    assert {"plain", "speculative"} <= set(host.implementations("speculative"))
    assert {"llama.cpp", "native", "onnx"} <= set(host.implementations("engine"))
    assert host.implementations("tokenizer")["bpe"].plugin == "tokenizer_bpe"
    assert "smollm2-135m-instruct" in host.models
    copy = host.implementations("tokenizer")
    copy.clear()  # a copy: the host's table is untouched
    assert host.implementations("tokenizer")
    assert host.implementations("no_such_area") == {}
    assert host.hook is host.pm.hook


def test_deny_by_argument_and_environment(monkeypatch):
    host = PluginHost.build(deny=["tokenizer_bpe"])
    assert "bpe" not in host.implementations("tokenizer") and host.pm.is_blocked("tokenizer_bpe")
    monkeypatch.setenv("CORERT_DISABLE", "scheduler_fifo, tokenizer_bpe")
    host = PluginHost.build()
    assert "fifo" not in host.implementations("scheduler") and "bpe" not in host.implementations("tokenizer")
    assert "work_stealing" in host.implementations("scheduler")


def test_extra_plugins_come_last_override_and_can_be_denied():
    made = []
    toy = _registering("toy_mod", _impl(name="bpe", priority=99, made=made))
    host = PluginHost.build(extra=[("toy", toy)])
    reg = host.implementations("tokenizer")["bpe"]
    assert reg.plugin == "toy" and reg.impl.description == "bpe for tests"  # replaced the built-in bpe
    host = PluginHost.build(extra=[("toy", toy)], deny=["toy"])
    assert host.implementations("tokenizer")["bpe"].plugin == "tokenizer_bpe"


def test_allow_admits_only_named_third_party_plugins(monkeypatch):
    class EP:  # a third-party entry point that must not be imported
        def __init__(self, name):
            self.name, self.value, self.group, self.dist, self.loaded = name, "x", "corert", None, False

        def load(self):
            self.loaded = True
            return _registering("third", _impl(name="third"))

    eps = [EP("third_a"), EP("third_b")]
    real = plugin_host._entry_points
    monkeypatch.setattr(plugin_host, "_entry_points", lambda: real() + eps)
    host = PluginHost.build(allow=["third_b"])
    assert [e.loaded for e in eps] == [False, True]
    assert host.implementations("tokenizer")["third"].plugin == "third_b"
    assert "bpe" in host.implementations("tokenizer")  # built-ins are always admitted
    eps[1].loaded = False
    monkeypatch.setenv("CORERT_ALLOW", "third_a")
    PluginHost.build()
    assert [e.loaded for e in eps] == [True, False]
    # the same name twice: the second is skipped, not registered again
    monkeypatch.delenv("CORERT_ALLOW")
    eps[:] = [EP("twin"), EP("twin"), EP("after")]
    PluginHost.build()
    assert [e.loaded for e in eps] == [True, False, True]


def test_failures_are_recorded_and_warned(monkeypatch):
    class Broken:
        name, value, group, dist = "broken_import", "x", "corert", None

        def load(self):
            raise ImportError("no such module")

    class Good:  # after the broken one: still loaded
        name, value, group, dist = "good_after", "x", "corert", None

        def load(self):
            return _registering("good", _impl(name="good_after"))

    real = plugin_host._entry_points
    monkeypatch.setattr(plugin_host, "_entry_points", lambda: real() + [Broken(), Good()])

    @hookimpl
    def register_tokenizers(register):
        register(_impl(name="half"))
        raise RuntimeError("boom")

    @hookimpl
    def register_models(register):
        register("not a spec")

    with pytest.warns(RuntimeWarning) as caught:
        host = PluginHost.build(extra=[("raises", _plugin("r", register_tokenizers=register_tokenizers)),
                                       ("bad_model", _plugin("m", register_models=register_models))])
    assert host.failures == [
        PluginFailure("broken_import", "import", "ImportError: no such module"),
        PluginFailure("raises", "register", "RuntimeError: boom"),
        PluginFailure("bad_model", "register", "PluginError: registered 'not a spec', not a ModelSpec"),
    ]
    # reported at the caller of PluginHost.build, not inside the host (under mutmut a trampoline frame sits
    # between them, so the exact file is not asserted)
    assert os.path.basename(caught[0].filename) != "plugin_host.py"
    assert [str(w.message) for w in caught] == [
        "corert plugin 'broken_import' skipped (import failed: ImportError: no such module)",
        "corert plugin 'raises' skipped (register failed: RuntimeError: boom)",
        "corert plugin 'bad_model' skipped (register failed: PluginError: registered 'not a spec', not a "
        "ModelSpec)",
    ]
    assert "half" not in host.implementations("tokenizer")  # nothing of a failed plugin is kept
    assert host.implementations("tokenizer")["good_after"].plugin == "good_after"
    assert not host.pm.has_plugin("raises") and not host.pm.has_plugin("bad_model")


def test_a_non_implementation_fails_that_plugin_alone():
    @hookimpl
    def register_schedulers(register):
        register("a string")

    with pytest.warns(RuntimeWarning):
        host = PluginHost.build(extra=[("odd", _plugin("o", register_schedulers=register_schedulers))])
    assert host.failures == [PluginFailure("odd", "register", "PluginError: registered 'a string', not an "
                                                              "Implementation")]
    assert "fifo" in host.implementations("scheduler")


def test_invalid_plugins_are_errors():
    @hookimpl
    def register_tokenizer(register):  # not a hook corert defines
        pass

    with pytest.raises(PluginError, match="^a plugin implements a hook corert does not define: "):
        PluginHost.build(extra=[("typo", _plugin("t", register_tokenizer=register_tokenizer))])

    @hookimpl
    def register_tokenizers(reg):  # an argument the spec does not have
        pass

    with pytest.raises(PluginError, match="^plugin 'badarg' is invalid: "):
        PluginHost.build(extra=[("badarg", _plugin("b", register_tokenizers=register_tokenizers))])


def test_a_plugin_pluggy_refuses_is_recorded():
    toy = _registering("toy_mod", _impl(name="toy"))
    with pytest.warns(RuntimeWarning, match="'again' skipped \\(register failed: ValueError"):
        host = PluginHost.build(extra=[("toy", toy), ("again", toy)])  # the same object twice
    assert [(f.plugin, f.stage) for f in host.failures] == [("again", "register")]
    assert host.implementations("tokenizer")["toy"].plugin == "toy"


def test_registered_models_and_later_names_win():
    spec = ModelSpec(name="toy-model", kind="bin", files=(ModelFile("t.bin", (), "0"),))
    first = _registering("first", _impl(name="same", priority=1), models=(spec,))
    second = _registering("second", _impl(name="same", priority=2))
    host = PluginHost.build(extra=[("first", first), ("second", second)])
    assert host.models["toy-model"] is spec
    assert host.implementations("tokenizer")["same"].plugin == "second"
    assert host.implementations("tokenizer")["same"].impl.priority == 2


def test_plain_functions_are_not_hooks():
    def register_tokenizers(register):  # no @hookimpl: pluggy ignores it, and so does the host
        register(_impl(name="unmarked"))

    def register_models(register):
        register(ModelSpec(name="unmarked-model", kind="bin", files=(ModelFile("t.bin", (), "0"),)))

    host = PluginHost.build(extra=[("plain", _plugin("p", register_tokenizers=register_tokenizers,
                                                     register_models=register_models))])
    assert "unmarked" not in host.implementations("tokenizer") and host.failures == []
    assert "unmarked-model" not in host.models


# -- resolution ---------------------------------------------------------------------------------------------------
VARIANTS = (Variant("wide", requires={"avx2"}, priority=2), Variant("narrow", priority=1))


def _toy_host(made=None):
    impls = (_impl(name="low", priority=1, variants=VARIANTS, made=made),
             _impl(name="high", priority=5, engines=("native",), made=made),
             _impl(area="engine", name="eng", variants=(Variant("fast", requires={"avx2"}), Variant("slow")))
             )

    @hookimpl
    def register_engines(register):
        register(impls[2])

    mod = _registering("toys", *impls[:2])
    mod.register_engines = register_engines
    return PluginHost.build(deny=["tokenizer_bpe", "tokenizer_llama_cpp"], extra=[("toys", mod)])


def test_resolve_a_selection():
    host = _toy_host()
    r = host.resolve("tokenizer", "low:narrow", cpu=AVX2)
    assert (r.impl.name, r.variant.name, r.reason, r.plugin) == ("low", "narrow", "chosen explicitly", "toys")
    assert r.label == "low:narrow"
    r = host.resolve("tokenizer", Selection("tokenizer", "low"), cpu=AVX2)
    assert (r.variant.name, r.reason) == ("wide", "selected; variant best supported on this CPU (needs avx2)")
    r = host.resolve("tokenizer", "low", engine="llama.cpp", cpu=SCALAR)
    assert (r.variant.name, r.reason) == ("narrow", "selected; variant best supported on this CPU (needs nothing)")
    with pytest.raises(PluginError, match="^unknown tokenizer plugin 'nope'; known: high, low$"):
        host.resolve("tokenizer", "nope")
    with pytest.raises(PluginError, match="^unknown speculative plugin 'x'; known: plain, speculative$"):
        host.resolve("speculative", "x")
    with pytest.raises(PluginError, match="^tokenizer plugin 'high' does not work with engine 'llama.cpp' "
                                          r"\(it supports native\)$"):
        host.resolve("tokenizer", "high", engine="llama.cpp")
    assert host.resolve("tokenizer", "high", engine="native:vnni").impl.name == "high"
    with pytest.raises(PluginError, match="^unknown variant tokenizer=low:zzz; known CPU variants: wide, narrow$"):
        host.resolve("tokenizer", "low:zzz")
    with pytest.raises(PluginError, match=r"\(it supports native, onnx\)$"):
        PluginHost.build(extra=[("two", _registering("two", _impl(name="two", engines=("native", "onnx"))))]
                         ).resolve("tokenizer", "two", engine="llama.cpp")
    with pytest.raises(PluginError, match="^unknown scheduler plugin 'x'; known: none$"):
        PluginHost.build(deny=["scheduler_fifo", "scheduler_work_stealing"]).resolve("scheduler", "x")


def test_resolve_an_engine_by_string():
    host = _toy_host()
    with pytest.raises(PluginError, match="^unknown variant engine=eng:slow:x; known CPU variants: fast, slow$"):
        host.resolve("engine", "eng:slow:x")  # split at the first ':' only
    with pytest.raises(ConfigError, match="^empty plugin name for area 'tokenizer'$"):
        host.resolve("tokenizer", ":wide")  # an area's string goes through the selection grammar
    r = host.resolve("engine", "eng:slow", cpu=AVX2)
    assert (r.impl.name, r.variant.name, r.reason) == ("eng", "slow", "chosen explicitly")
    r = host.resolve("engine", "eng", cpu=AVX2)
    assert r.variant.name == "fast" and r.reason.startswith("selected; variant best supported")


def test_resolve_the_default():
    host = _toy_host()
    r = host.resolve("tokenizer", cpu=AVX2)
    assert (r.impl.name, r.variant.name, r.plugin) == ("high", "default", "toys")
    assert r.reason == "default; mode of highest priority"  # no options declared: one mode, "default"
    r = host.resolve("tokenizer", engine="llama.cpp", cpu=SCALAR)  # high does not support llama.cpp
    assert (r.impl.name, r.variant.name) == ("low", "narrow")
    with pytest.raises(PluginError, match="^no scheduler plugin is available$"):
        PluginHost.build(deny=["scheduler_fifo", "scheduler_work_stealing"]).resolve("scheduler")
    bare = PluginHost.build(deny=["tokenizer_bpe", "tokenizer_llama_cpp"],
                            extra=[("n", _registering("n", _impl(name="n_only", engines=("native",))))])
    with pytest.raises(PluginError, match="^no tokenizer plugin is available for engine 'onnx'$"):
        bare.resolve("tokenizer", engine="onnx")
    with pytest.raises(PluginError, match=r"^no variant of tokenizer=n_only runs on this CPU \(x86_64\)$"):
        PluginHost.build(deny=["tokenizer_bpe", "tokenizer_llama_cpp"], extra=[(
            "n", _registering("n", _impl(name="n_only", variants=(Variant("w", requires={"avx2"}),))))]
        ).resolve("tokenizer", cpu=SCALAR)


def test_create_passes_the_variant_and_context():
    made = []
    host = _toy_host(made)
    r = host.resolve("tokenizer", "low:narrow", cpu=AVX2)
    assert host.create(r, engine="llama.cpp", model="m") == ("low", "narrow")
    assert made == [("narrow", {"engine": "llama.cpp", "model": "m"})]
    assert isinstance(r, Resolved)


# -- what `corert plugins` shows -------------------------------------------------------------------------------
def test_describe_lists_areas_choices_and_errors():
    host = _toy_host()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = describe(host, {"tokenizer": Selection("tokenizer", "low", "wide"),
                              "kv_cache": Selection("kv_cache", "nope")}, "eng", cpu=SCALAR)
    assert out["cpu"] == {"machine": "x86_64", "isa": "scalar", "features": []}
    assert out["engine"] == "eng"
    assert list(out["areas"]) == ["kv_cache", "speculative", "tokenizer", "scheduler", "engine"]
    tok = out["areas"]["tokenizer"]
    assert [i["name"] for i in tok["implementations"]] == ["high", "low"]
    low = tok["implementations"][1]
    assert low == {"name": "low", "plugin": "toys", "description": "low for tests", "engines": "any",
                   "priority": 1, "option_kind": "CPU variant",
                   "variants": [{"name": "wide", "requires": ["avx2"], "supported": False, "description": ""},
                                {"name": "narrow", "requires": [], "supported": True, "description": ""}]}
    assert tok["implementations"][0]["engines"] == ["native"]
    assert tok["chosen"] is None and "needs CPU features avx2" in tok["error"]
    assert out["areas"]["kv_cache"]["chosen"] is None
    assert out["areas"]["kv_cache"]["error"].startswith("unknown kv_cache plugin 'nope'")
    assert out["areas"]["engine"]["chosen"] == {"name": "eng", "variant": "slow",
                                                "reason": "selected; variant best supported on this CPU "
                                                          "(needs nothing)"}
    sched = out["areas"]["scheduler"]
    assert "error" not in sched and sched["chosen"]["name"] == host.resolve("scheduler", engine="eng").impl.name
    assert out["failures"] == []
    big = CpuInfo("x86_64", frozenset({"avx2", "avx512f", "fma", "neon"}))
    wide = describe(host, {}, "eng", cpu=big)
    assert wide["cpu"]["features"] == ["avx2", "avx512f", "neon"] and wide["cpu"]["isa"] == big.isa == "avx2"
    full = CpuInfo("x86_64", frozenset({"avx2", "avx512", "avx512f", "avx512bw", "avx512vnni", "sse2"}))
    assert describe(host, {}, "eng", cpu=full)["cpu"]["features"] == ["avx2", "avx512", "avx512bw", "avx512f"]
    # "high" is for the native engine only: the default for "eng" is "low", at its widest variant
    assert wide["areas"]["tokenizer"]["chosen"] == {"name": "low", "variant": "wide",
                                                    "reason": "default; variant best supported on this CPU "
                                                              "(needs avx2)"}


def test_describe_lists_the_features_a_variant_asks_for():
    # a CPU feature shows when it is present and a registered variant requires it (what decided the choice)
    host = PluginHost.build(deny=["tokenizer_bpe", "tokenizer_llama_cpp"], extra=[(
        "n", _registering("n", _impl(name="tiles", variants=(Variant("amx", requires={"amx_int8", "avx2"}),
                                                             Variant("plain")))))])
    cpu = CpuInfo("x86_64", frozenset({"amx_int8", "avx2", "sse2", "fma"}))
    assert describe(host, {}, "eng", cpu=cpu)["cpu"]["features"] == ["amx_int8", "avx2"]
    bare = CpuInfo("x86_64", frozenset({"avx2", "sse2"}))
    assert describe(host, {}, "eng", cpu=bare)["cpu"]["features"] == ["avx2"]


def test_describe_reports_failures():
    @hookimpl
    def register_tokenizers(register):
        raise RuntimeError("boom")

    with pytest.warns(RuntimeWarning):
        host = PluginHost.build(extra=[("bad", _plugin("b", register_tokenizers=register_tokenizers))])
    out = describe(host, {}, "llama.cpp")
    assert out["failures"] == [{"plugin": "bad", "stage": "register", "error": "RuntimeError: boom"}]
    assert out["cpu"]["machine"]  # this machine's CPU when none is given
