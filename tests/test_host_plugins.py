"""The plugin host: entry points, overrides, fault isolation, allow/deny, check_pending, selection contract."""
from __future__ import annotations

import importlib.metadata
import json
import sys
import types
import warnings

import pluggy
import pytest

import corert
from corert import Implementation, PluginError, Runtime, Variant, hookimpl, hookspecs
from corert import plugin_host
from corert.cli import main as cli_main


def exercises(*hooks: str):
    """Marks a test as exercising these hooks through a plugin: test_every_hook_has_a_test reads the marks."""
    def mark(test):
        test.exercises_hooks = hooks
        return test
    return mark


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Adds entry points (as a third-party distribution would) after the real ones."""
    added: list[importlib.metadata.EntryPoint] = []
    real = plugin_host._entry_points

    monkeypatch.setattr(plugin_host, "_entry_points", lambda: real() + list(added))
    return added


class CountingTokenizer:
    """Wraps the reference tokenizer and counts calls: proves a request went through the override."""

    def __init__(self, inner):
        self.inner = inner
        self.encode_calls = 0
        self.name = "counting"
        for attr in ("vocab_size", "bos_id", "eos_id", "add_bos"):
            setattr(self, attr, getattr(inner, attr))

    def encode(self, text, add_bos=None, parse_special=False):
        self.encode_calls += 1
        return self.inner.encode(text, add_bos=add_bos, parse_special=parse_special)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@exercises("register_tokenizers")
def test_third_party_entry_point_overrides_a_default(fake_entry_points, smollm2):
    from corert.plugins.tokenizer.llama_cpp import LlamaCppTokenizer

    made = []

    def factory(variant, model_path, config=None):
        made.append(CountingTokenizer(LlamaCppTokenizer(model_path)))
        return made[-1]

    @hookimpl
    def register_tokenizers(register):
        register(Implementation(area="tokenizer", name="llama_cpp", factory=factory, priority=100,
                                engines=("llama.cpp",), description="third-party override"))

    _module("corert_test_override", register_tokenizers=register_tokenizers)
    fake_entry_points.append(importlib.metadata.EntryPoint(
        name="thirdparty_tok", value="corert_test_override", group="corert"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = Runtime(engine="llama.cpp", model=smollm2, plugins={"tokenizer": "llama_cpp"})
    res = rt.resolve("tokenizer")
    assert res.plugin == "thirdparty_tok" and res.impl.description == "third-party override"
    out = rt.generate("Hello", max_tokens=4, temperature=0)
    assert made and made[0].encode_calls == 1 and len(out.token_ids) > 0
    rt.close()


def test_broken_plugins_are_isolated_and_reported(fake_entry_points, smollm2, capsys):
    @hookimpl
    def register_tokenizers(register):
        raise RuntimeError("boom while registering")

    _module("corert_test_raises", register_tokenizers=register_tokenizers)
    fake_entry_points.append(importlib.metadata.EntryPoint(
        name="broken_import", value="corert_test_no_such_module", group="corert"))
    fake_entry_points.append(importlib.metadata.EntryPoint(
        name="broken_register", value="corert_test_raises", group="corert"))
    with pytest.warns(RuntimeWarning, match="broken_import"):
        rt = Runtime(engine="llama.cpp", model=smollm2, plugins={"tokenizer": "llama_cpp"})
    failures = {f.plugin: f.stage for f in rt.host.failures}
    assert failures.get("broken_import") == "import" and failures.get("broken_register") == "register"
    # the host still works
    assert rt.generate("Hi", max_tokens=2, temperature=0).usage.completion_tokens > 0
    info = rt.plugins_info()
    assert {"broken_import", "broken_register"} <= {f["plugin"] for f in info["failures"]}
    rt.close()
    # and `corert plugins` shows them
    assert cli_main(["plugins", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {"broken_import", "broken_register"} <= {f["plugin"] for f in shown["failures"]}


class RecordingEntryPoint:
    """An entry point that records whether the host tried to import it."""

    def __init__(self, name):
        self.name, self.value, self.group, self.dist, self.loaded = name, "x", "corert", None, False

    def load(self):
        self.loaded = True
        raise ImportError("should not have been imported")


@pytest.mark.parametrize("how", ["env", "config"])
def test_denied_entry_point_is_never_imported(fake_entry_points, monkeypatch, how):
    ep = RecordingEntryPoint("never_import_me")
    fake_entry_points.append(ep)
    if how == "env":
        monkeypatch.setenv("CORERT_DISABLE", "never_import_me")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = plugin_host.PluginHost.build(deny=["never_import_me"] if how == "config" else [])
    assert not ep.loaded
    assert host.pm.is_blocked("never_import_me")


def test_allow_list_admits_only_named_third_party_plugins(fake_entry_points):
    ep = RecordingEntryPoint("not_allowed")
    fake_entry_points.append(ep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = plugin_host.PluginHost.build(allow=["something_else"])
    assert not ep.loaded
    assert "llama_cpp" in host.implementations("tokenizer")  # built-ins are always admitted


def test_misspelled_hook_implementation_fails_loudly():
    @hookimpl
    def register_tokenizer(register):  # missing "s": not a hook corert defines
        pass

    plugin = _module("corert_test_misspelled", register_tokenizer=register_tokenizer)
    with pytest.raises(PluginError, match="register_tokenizer"):
        plugin_host.PluginHost.build(extra=[("misspelled", plugin)])


def test_registering_a_non_implementation_is_isolated():
    @hookimpl
    def register_kv_caches(register):
        register("not an Implementation")

    plugin = _module("corert_test_bad_register", register_kv_caches=register_kv_caches)
    with pytest.warns(RuntimeWarning, match="bad_register"):
        host = plugin_host.PluginHost.build(extra=[("bad_register", plugin)])
    assert any(f.plugin == "bad_register" and f.stage == "register" for f in host.failures)


# -- the selection contract, in its three forms ------------------------------------------------------------
def test_selection_from_python(smollm2):
    rt = Runtime(engine="llama.cpp", model=smollm2, plugins={"kv_cache": "llama_cpp:q8_0", "tokenizer": "llama_cpp"})
    assert rt.active_plugins()["kv_cache"] == "llama_cpp:q8_0"
    assert rt.generate("The sky is", max_tokens=3, temperature=0).usage.completion_tokens == 3
    rt.close()


def test_selection_from_environment(monkeypatch):
    monkeypatch.setenv("CORERT_PLUGINS", "kv_cache=llama_cpp:f32,tokenizer=llama_cpp")
    rt = Runtime()
    assert rt.active_plugins()["kv_cache"] == "llama_cpp:f32"
    assert rt.active_plugins()["tokenizer"] == "llama_cpp:default"


def test_selection_from_cli(capsys):
    assert cli_main(["plugins", "--json", "--plugin", "kv_cache=llama_cpp:q8_0",
                     "--plugin", "speculative=plain"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["areas"]["kv_cache"]["chosen"]["variant"] == "q8_0"
    assert info["areas"]["speculative"]["chosen"]["name"] == "plain"


def test_explicit_arguments_beat_the_environment(monkeypatch):
    monkeypatch.setenv("CORERT_PLUGINS", "kv_cache=llama_cpp:f32")
    rt = Runtime(plugins={"kv_cache": "llama_cpp:q8_0"})
    assert rt.active_plugins()["kv_cache"] == "llama_cpp:q8_0"


@pytest.mark.parametrize("spec,match", [
    ("tokenizer=no_such_tokenizer", "unknown tokenizer plugin"),
    ("kv_cache=llama_cpp:q3_z", "unknown variant"),
    ("nosucharea=x", "unknown plugin area"),
    ("tokenizer", "expected AREA=NAME"),
])
def test_bad_selections_are_clear_errors(spec, match):
    with pytest.raises(corert.CorertError, match=match):
        Runtime(plugins=[spec])


def test_plugins_json_lists_all_four_areas_with_a_chosen_variant(capsys):
    assert cli_main(["plugins", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for area in ("kv_cache", "speculative", "tokenizer", "scheduler"):
        entry = info["areas"][area]
        assert entry["implementations"], area
        assert entry["chosen"]["name"] and entry["chosen"]["variant"], area
    assert info["cpu"]["isa"] in ("avx512", "avx2", "neon", "scalar")


def _hook_specs() -> list[str]:
    """Every hook corert's host defines, read from its spec module (a new spec is picked up here)."""
    pm = pluggy.PluginManager(plugin_host.ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    return sorted(name for name in dir(pm.hook) if not name.startswith("_"))


def _exercised() -> dict[str, list[str]]:
    """hook -> the tests of this module marked as exercising it."""
    out: dict[str, list[str]] = {}
    for name, test in globals().items():
        if name.startswith("test_") and callable(test):
            for hook in getattr(test, "exercises_hooks", ()):
                out.setdefault(hook, []).append(name)
    return out


@pytest.mark.parametrize("hook", _hook_specs())
def test_every_hook_has_a_test(hook):
    """datasette's meta-test: a hook spec without a test here that exercises it through a plugin fails."""
    assert _exercised().get(hook), (f"no test exercises the {hook!r} hook: write one that goes through a plugin "
                                    f"implementing it and mark it @exercises({hook!r})")


def test_exercised_hooks_are_hook_specs():
    """A mark naming no spec (a typo, a renamed hook) would count a test for nothing."""
    assert set(_exercised()) <= set(_hook_specs())


@exercises("register_kv_caches")
def test_kv_cache_plugin_is_what_the_engine_uses(smollm2):
    from corert.plugins.kv_cache.llama_cpp import LlamaCppKV

    made = []

    class KVPlugin:
        @hookimpl
        def register_kv_caches(self, register):
            def factory(variant, engine, model, config=None):
                made.append((variant, engine, model))
                return LlamaCppKV(variant)

            register(Implementation(area="kv_cache", name="traced", engines=("llama.cpp",), factory=factory,
                                    variants=(Variant("q8_0"),)))

    rt = Runtime(engine="llama.cpp", model=smollm2, plugins={"kv_cache": "traced:q8_0", "tokenizer": "llama_cpp"},
                 extra_plugins=[("traced_kv", KVPlugin())])
    try:
        assert rt.generate("The sky is", max_tokens=3, temperature=0).usage.completion_tokens == 3
        loaded, _ = rt.load_generation_model()
    finally:
        rt.close()
    assert made == [("q8_0", "llama.cpp", smollm2)]
    assert loaded.llama.context_params.type_k == 8  # the plugin's cache type reached llama.cpp's context


@exercises("register_decoders")
def test_decoder_plugin_drives_the_generation(smollm2):
    from corert.plugins.speculative.plain import PlainDecoder

    made = []

    class CountingDecoder(PlainDecoder):
        def __init__(self):
            super().__init__()
            self.generations = 0

        def generate(self, *args, **kwargs):
            self.generations += 1
            return super().generate(*args, **kwargs)

    class DecoderPlugin:
        @hookimpl
        def register_decoders(self, register):
            register(Implementation(area="speculative", name="counting",
                                    factory=lambda variant, **ctx: made.append(CountingDecoder()) or made[-1]))

    rt = Runtime(engine="llama.cpp", model=smollm2, plugins={"speculative": "counting", "tokenizer": "llama_cpp"},
                 extra_plugins=[("counting_decoder", DecoderPlugin())])
    try:
        out = rt.generate("The sky is", max_tokens=4, temperature=0)
    finally:
        rt.close()
    assert out.plugins["speculative"] == "counting:default" and len(out.token_ids) == 4
    assert [d.generations for d in made] == [1]


@exercises("register_schedulers")
def test_scheduler_plugin_runs_the_requests(smollm2):
    from corert.plugins.scheduler.fifo import FifoScheduler

    class CountingScheduler(FifoScheduler):
        name = "counting"

        def __init__(self):
            super().__init__(cores=1)
            self.submitted = []

        def submit(self, fn, *args, priority="normal", **kwargs):
            self.submitted.append(priority)
            return super().submit(fn, *args, priority=priority, **kwargs)

    class SchedulerPlugin:
        @hookimpl
        def register_schedulers(self, register):
            register(Implementation(area="scheduler", name="counting",
                                    factory=lambda variant, config=None: CountingScheduler()))

    rt = Runtime(engine="llama.cpp", model=smollm2, plugins={"scheduler": "counting", "tokenizer": "llama_cpp"},
                 extra_plugins=[("counting_scheduler", SchedulerPlugin())])
    try:
        rt.generate("The sky is", max_tokens=2, temperature=0, priority="interactive")
        scheduler = rt.scheduler
    finally:
        rt.close()
    assert isinstance(scheduler, CountingScheduler) and scheduler.submitted == ["interactive"]


@exercises("register_engines")
def test_engine_plugin_replaces_a_built_in_engine(smollm2):
    from corert.engines.llama_cpp import LlamaCppEngine

    loads = []

    class CountingEngine(LlamaCppEngine):
        def load(self, model_path, **kwargs):
            loads.append(model_path)
            return super().load(model_path, **kwargs)

    class EnginePlugin:
        @hookimpl
        def register_engines(self, register):  # the same name: registered later, it replaces the built-in
            register(Implementation(area="engine", name="llama.cpp", description="counting llama.cpp",
                                    factory=lambda variant, **ctx: CountingEngine()))

    rt = Runtime(model=smollm2, engine="llama.cpp", plugins={"tokenizer": "llama_cpp"},
                 extra_plugins=[("counting_engine", EnginePlugin())])
    try:
        assert rt.resolve("engine").plugin == "counting_engine"
        assert rt.generate("The sky is", max_tokens=2, temperature=0).usage.completion_tokens == 2
    finally:
        rt.close()
    assert loads == [smollm2]


@exercises("on_request_start", "on_request_end")
def test_request_hooks_see_every_request(smollm2):
    seen = []

    class Tracer:
        @hookimpl
        def on_request_start(self, task, request):
            seen.append(("start", task))

        @hookimpl
        def on_request_end(self, task, request, result, error):
            seen.append(("end", task, error is None))

    rt = Runtime(engine="llama.cpp", model=smollm2, plugins={"tokenizer": "llama_cpp"}, extra_plugins=[("tracer", Tracer())])
    rt.generate("Hi", max_tokens=2, temperature=0)
    with pytest.raises(corert.InputError):
        rt.generate("", max_tokens=2)
    list(rt.stream("Hi", max_tokens=2, temperature=0))
    assert seen == [("start", "generate"), ("end", "generate", True),
                    ("start", "generate"), ("end", "generate", True)]
    rt.close()


def test_trace_hooks_env_prints_each_hook_call(smollm2, monkeypatch, capsys):
    """CORERT_TRACE_HOOKS=1: pluggy's hook-call monitoring prints each task hook call (arguments, the
    plugins that ran, the outcome) to stderr; unset, nothing is printed."""
    class Quiet:
        @hookimpl
        def on_request_end(self, task, request, result, error):
            pass

    for traced in (True, False):
        if traced:
            monkeypatch.setenv("CORERT_TRACE_HOOKS", "1")
        else:
            monkeypatch.delenv("CORERT_TRACE_HOOKS")
        rt = Runtime(engine="llama.cpp", model=smollm2, plugins={"tokenizer": "llama_cpp"},
                     extra_plugins=[("quiet", Quiet())])
        capsys.readouterr()
        try:
            rt.generate("Hi", max_tokens=2, temperature=0)
        finally:
            rt.close()
        err = capsys.readouterr().err
        if not traced:
            assert "corert hook:" not in err
            continue
        lines = [ln for ln in err.splitlines() if ln.startswith("corert hook:")]
        assert len(lines) == 4, lines
        assert lines[0].startswith("corert hook: on_request_start(task='generate', request=GenerateRequest(")
        assert lines[0].endswith("-> []") and lines[1] == "corert hook: on_request_start returned []"
        assert lines[2].startswith("corert hook: on_request_end(task='generate'") and "error=None" in lines[2]
        assert lines[2].endswith("-> [quiet]") and lines[3] == "corert hook: on_request_end returned []"


@exercises("register_models")
def test_registered_models_extend_the_store(tmp_path):
    from corert.models import ModelFile, ModelSpec, WheelMember

    @hookimpl
    def register_models(register):
        register(ModelSpec(name="my-model", kind="gguf", files=(
            ModelFile("x.gguf", (WheelMember("pkg", "1", "x.gguf"),), "0" * 64),)))

    rt = Runtime(models_dir=str(tmp_path), extra_plugins=[("mymodels", _module("corert_test_models",
                                                                                register_models=register_models))])
    assert "my-model" in rt.store.specs and "smollm2-135m-instruct" in rt.store.specs


def test_plugins_shows_paged_kv_config_and_live_stats(smollm2, capsys):
    from corert.cli import _kv_cache_lines

    rt = Runtime(model=smollm2, engine="native", plugins={"kv_cache": "paged:q8", "tokenizer": "llama_cpp"},
                 n_ctx=256)
    try:
        kv = rt.plugins_info()["kv_cache"]  # nothing loaded yet: the configuration only
        assert kv["name"] == "paged:q8" and kv["config"]["page_tokens"] == 16 and kv["stores"] == []
        assert rt.generate("The capital of France is", max_tokens=3, temperature=0).usage.completion_tokens
        (st,) = rt.plugins_info()["kv_cache"]["stores"]  # the loaded model's store, live
        assert st["model"] == "smollm2-135m-instruct" and st["dtype"] == "q8"  # a registry name, not a path
        assert st["pages_used"] + st["pages_free"] == st["pages_total"] > 0
        assert st["bytes_per_token"] == 12240  # SmolLM2: 30 layers x 3 KV heads x 2 x (64 + 4) bytes
        text = "\n".join(_kv_cache_lines(rt.plugins_info()["kv_cache"]))
        assert "12240 B/token" in text and "prefix hit rate" in text and "evictions" in text
    finally:
        rt.close()
    assert cli_main(["plugins", "--json", "--engine", "native", "--plugin", "kv_cache=paged:f16"]) == 0
    shown = json.loads(capsys.readouterr().out)["kv_cache"]
    assert shown["config"]["dtype"] == "f16" and shown["stores"] == []


@exercises("register_bench_cases")
def test_a_plugin_adds_and_replaces_bench_cases(fake_entry_points, capsys):
    """`corert bench` runs what plugins register: a new case, and a built-in name replaced by a later plugin."""
    from corert.tools.cases import BenchCase

    def add_arguments(p):
        p.add_argument("--times", type=int, default=2)

    _module("corert_test_bench_run", add_arguments=add_arguments,
            run=lambda args: {"bench": args.bench, "doubled": [args.times * 2]},
            render=lambda r: f"{r['bench']} doubled {r['doubled'][0]} on {r['machine']['cpu']}")

    @hookimpl
    def register_bench_cases(register):
        register(BenchCase("double", "corert_test_bench_run", "a third party's case"))
        register(BenchCase("kv", "corert_test_bench_run", "replaces the built-in kv case"))

    _module("corert_test_bench_cases", register_bench_cases=register_bench_cases)
    fake_entry_points.append(importlib.metadata.EntryPoint(
        name="thirdparty_bench", value="corert_test_bench_cases", group="corert"))
    assert cli_main(["bench", "double", "--times", "21", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["bench"] == "double" and r["doubled"] == [42] and r["machine"]["cores"] >= 1
    assert cli_main(["bench", "kv"]) == 0
    assert capsys.readouterr().out.startswith("kv doubled 4 on ")
    from corert.tools.cases import bench_cases

    cases = bench_cases()  # the built-ins stay beside the new case, in their order; kv is the plugin's now
    assert list(cases)[:3] == ["generate", "tokenize", "embed"] and "double" in cases
    assert cases["generate"].module == "corert.tools.bench.generate" and cases["kv"].module == "corert_test_bench_run"


# -- default per area, CPU variants and modes ---------------------------------------------------------------
def _kv_plugin(name: str, priority: int = 0):
    class KVPlugin:
        @hookimpl
        def register_kv_caches(self, register):
            register(Implementation(area="kv_cache", name=name, engines=("native",), priority=priority,
                                    factory=lambda variant, **ctx: None, variants=(corert.Mode("f32"),)))
    return KVPlugin()


@exercises("register_kv_caches")
def test_default_per_area_does_not_depend_on_registration_order():
    """The built-in kv caches registered in both orders (their entry points denied, the same modules
    registered again as extras): the native default stays contiguous, which declares it by priority.  Two
    plugins of equal priority: the first name wins, whichever registered first."""
    from corert.plugins.kv_cache import contiguous
    from corert.plugins.kv_cache.paged import plugin as paged

    builtins = [("again_contiguous", contiguous), ("again_paged", paged)]
    deny = ["kv_cache_contiguous", "kv_cache_paged"]
    for extra in (builtins, builtins[::-1]):
        host = plugin_host.PluginHost.build(deny=deny, extra=extra)
        assert host.resolve("kv_cache", engine="native").label == "contiguous:f16"
    tied = [("zeta_kv", _kv_plugin("zeta", priority=5)), ("alpha_kv", _kv_plugin("alpha", priority=5))]
    for extra in (tied, tied[::-1]):
        chosen = plugin_host.PluginHost.build(extra=extra).resolve("kv_cache", engine="native")
        assert chosen.impl.name == "alpha" and chosen.reason.startswith("default; mode")
    # a higher priority still beats the name
    chosen = plugin_host.PluginHost.build(extra=[("zeta_kv", _kv_plugin("zeta", priority=6)), tied[1]])
    assert chosen.resolve("kv_cache", engine="native").impl.name == "zeta"


def test_cpu_variants_and_modes_are_told_apart():
    """A selection's option is a CPU variant (tokenizer=bpe:scalar) or a mode (kv_cache=paged:q8); both keep
    the NAME[:VARIANT] syntax, and errors and `corert plugins` say which kind an implementation takes."""
    host = plugin_host.PluginHost.build()
    bpe = host.resolve("tokenizer", "bpe", engine="native")
    paged = host.resolve("kv_cache", "paged", engine="native")
    assert (bpe.impl.option_kind, paged.impl.option_kind) == ("CPU variant", "mode")
    assert bpe.reason.startswith("selected; variant best supported on this CPU")
    assert paged.reason == "selected; mode of highest priority" and paged.label == "paged:q8"
    assert isinstance(paged.variant, corert.Mode) and not isinstance(bpe.variant, corert.Mode)
    with pytest.raises(PluginError, match="unknown variant kv_cache=paged:avx2; known modes: q8, f16, f32"):
        host.resolve("kv_cache", "paged:avx2", engine="native")
    with pytest.raises(PluginError, match="unknown variant tokenizer=bpe:q8; known CPU variants: avx2, neon, scalar"):
        host.resolve("tokenizer", "bpe:q8", engine="native")
    info = plugin_host.describe(host, {}, "native")
    kinds = {i["name"]: i["option_kind"] for a in ("tokenizer", "scheduler") for i in info["areas"][a]["implementations"]}
    assert kinds["bpe"] == "CPU variant" and kinds["work_stealing"] == "mode"
    with pytest.raises(ValueError, match="mixes CPU variants and modes"):
        Implementation(area="tokenizer", name="x", factory=print, variants=(Variant("avx2"), corert.Mode("fast")))
    with pytest.raises(ValueError, match="declare it as a CPU Variant"):
        corert.Mode("wide", requires={"avx2"})
