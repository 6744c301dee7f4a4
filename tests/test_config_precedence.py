"""Configuration: defaults < TOML file < environment (CORERT_*) < explicit arguments, through
`RuntimeConfig.from_toml` / `from_env` / `Runtime(**overrides)` and through the CLI's `--config`; every
CORERT_* variable `RuntimeConfig.from_env` documents; bad settings are ConfigErrors (exit 2 on the CLI)."""
from __future__ import annotations

import json
import textwrap

import pytest

from cli_support import assert_bad_input, cli_json, run_cli
from corert import Runtime, RuntimeConfig
from corert.errors import ConfigError

SMOL = "smollm2-135m-instruct"
QWEN = "qwen2.5-coder-0.5b-instruct"
SUB_ENV = ("CORERT_KV_BUDGET", "CORERT_KV_PAGE_TOKENS", "CORERT_KV_KERNEL", "CORERT_SCHEDULER_PIN_THREADS",
           "CORERT_SCHEDULER_CPUS", "CORERT_NATIVE_PREFILL_ROWS", "CORERT_LLAMA_FLASH_ATTN")
ALL_ENV = ("CORERT_MODEL", "CORERT_ENGINE", "CORERT_PLUGINS", "CORERT_CTX", "CORERT_THREADS", "CORERT_ALLOW",
           "CORERT_DISABLE", "CORERT_MODELS_DIR", "CORERT_DRAFT_MODEL", "CORERT_N_SEQS") + SUB_ENV


@pytest.fixture
def clean_env(monkeypatch):
    for k in ALL_ENV:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _toml(tmp_path, text: str, name: str = "corert.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


# -- from_toml -------------------------------------------------------------------------------------------
def test_from_toml_reads_the_corert_table_or_the_top_level(tmp_path):
    table = RuntimeConfig.from_toml(_toml(tmp_path, """
        [other]
        model = "ignored"
        [corert]
        model = "qwen2.5-coder-0.5b-instruct"
        engine = "native"
        n_ctx = 512
        n_threads = 1
        n_seqs = 4
        plugins = {kv_cache = "paged:f16", tokenizer = "llama_cpp"}
        deny = ["tokenizer_bpe"]
        allow = "a,b"
        draft_model = "d"
        draft_depth = 3
        embed_model = "e"
        classify_model = "c"
        models_dir = "/somewhere"
        queue_size = 8
        [corert.kv]
        budget = "3M"
        page_tokens = 32
        kernel = "scalar"
        [corert.scheduler]
        pin_threads = false
        cpus = [0]
        [corert.native]
        prefill_rows = 64
        """))
    assert (table.model, table.engine, table.n_ctx, table.n_threads, table.n_seqs) == (QWEN, "native", 512, 1, 4)
    assert table.plugins == {"kv_cache": "paged:f16", "tokenizer": "llama_cpp"}
    assert (table.deny, table.allow) == (("tokenizer_bpe",), ("a", "b"))
    assert (table.draft_model, table.draft_depth, table.embed_model, table.classify_model) == ("d", 3, "e", "c")
    assert (table.models_dir, table.queue_size) == ("/somewhere", 8)
    assert (table.kv.budget, table.kv.page_tokens, table.kv.kernel) == (3 << 20, 32, "scalar")
    assert (table.scheduler.pin_threads, table.scheduler.cpus, table.native.prefill_rows) == (False, (0,), 64)
    top = RuntimeConfig.from_toml(_toml(tmp_path, 'n_ctx = 256\nplugins = ["tokenizer=bpe:scalar"]\n', "top.toml"))
    assert top.n_ctx == 256 and top.plugins == {"tokenizer": "bpe:scalar"} and top.model == SMOL
    over = RuntimeConfig.from_toml(tmp_path / "top.toml", n_ctx=1024)
    assert over.n_ctx == 1024 and over.plugins == top.plugins


def test_a_commands_defaults_sit_under_the_file(tmp_path):
    """`corert serve` starts from isolation="process"; a TOML file (and anything above it) still wins."""
    serve_defaults = RuntimeConfig().evolve(isolation="process")
    assert RuntimeConfig.from_toml(_toml(tmp_path, "n_ctx = 256\n"), base=serve_defaults).isolation == "process"
    chosen = RuntimeConfig.from_toml(_toml(tmp_path, 'isolation = "none"\n', "none.toml"), base=serve_defaults)
    assert chosen.isolation == "none" and chosen.n_ctx == 2048
    assert RuntimeConfig.from_env(chosen, environ={"CORERT_ISOLATION": "process"}).isolation == "process"


@pytest.mark.parametrize("text, message", [
    ("n_ctx = 512\nmodle = 'x'\n", "unknown config keys: modle; known: "),
    ("n_ctx = \n", "cannot read config"),
    ("n_ctx = 8\n", "n_ctx must be an integer ≥ 16, got 8"),
    ("n_ctx = 'big'\n", "n_ctx must be an integer"),
    ("n_seqs = 0\n", r"n_seqs must be an integer in \[1, 256\]"),
    ("plugins = {memory = 'x'}\n", "unknown plugin area 'memory'"),
    ("plugins = ['kv_cache']\n", "bad plugin selection 'kv_cache'"),
    ("[kv]\nbugdet = '1M'\n", "unknown kv config keys: bugdet; known: page_tokens, budget, kernel"),
    ("[kv]\npage_tokens = 0\n", r"kv.page_tokens must be an integer in \[1, 4096\], got 0"),
    ("[kv]\npage_tokens = '16'\n", r"kv.page_tokens must be an integer in \[1, 4096\], got '16'"),
    ("[kv]\npage_tokens = true\n", r"kv.page_tokens must be an integer in \[1, 4096\], got True"),
    ("[kv]\nbudget = 'lots'\n", "kv.budget: not a byte size: 'lots'"),
    ("[kv]\nbudget = 0\n", "kv.budget must be an integer ≥ 1, got 0"),
    ("[kv]\nkernel = 'fast'\n", "kv.kernel must be one of wide, scalar, got 'fast'"),
    ("kv = 5\n", r"kv must be a table of settings \(\[corert.kv\]\), got 5"),
    ("[scheduler]\npin_threads = 'no'\n", "scheduler.pin_threads must be true or false, got 'no'"),
    ("[scheduler]\ncpus = ['a']\n", "scheduler.cpus must be a list of cpu ids"),
    ("[native]\nprefill_rows = -1\n", r"native.prefill_rows must be an integer in \[1, 1048576\], got -1"),
    ("[native]\nn_seqs = 2\n", "unknown native config keys: n_seqs; known: prefill_rows"),
    ("[llama]\nflash_attn = 'auto'\n", "llama.flash_attn must be true or false, got 'auto'"),
])
def test_from_toml_bad_settings_are_config_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        RuntimeConfig.from_toml(_toml(tmp_path, text))


def test_from_toml_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config .*missing.toml"):
        RuntimeConfig.from_toml(tmp_path / "missing.toml")


# -- from_env --------------------------------------------------------------------------------------------
def test_every_documented_variable_applies():
    env = {"CORERT_MODEL": QWEN, "CORERT_ENGINE": "native", "CORERT_PLUGINS": "kv_cache=paged:q8,tokenizer=llama_cpp",
           "CORERT_CTX": "777", "CORERT_THREADS": "1", "CORERT_ALLOW": "x, y", "CORERT_DISABLE": "tokenizer_bpe",
           "CORERT_MODELS_DIR": "/m", "CORERT_DRAFT_MODEL": SMOL, "CORERT_N_SEQS": "3"}
    cfg = RuntimeConfig.from_env(environ=env)
    assert (cfg.model, cfg.engine, cfg.n_ctx, cfg.n_threads, cfg.models_dir, cfg.draft_model, cfg.n_seqs) == \
        (QWEN, "native", 777, 1, "/m", SMOL, 3)
    assert cfg.plugins == {"kv_cache": "paged:q8", "tokenizer": "llama_cpp"}
    assert (cfg.allow, cfg.deny) == (("x", "y"), ("tokenizer_bpe",))
    # the docstring names exactly these variables
    assert all(k in RuntimeConfig.from_env.__doc__ for k in ALL_ENV)
    # empty values are unset values
    assert RuntimeConfig.from_env(environ={k: "" for k in ALL_ENV}) == RuntimeConfig()


@pytest.mark.parametrize("key, value", [("CORERT_CTX", "2k"), ("CORERT_THREADS", "two"), ("CORERT_N_SEQS", "1.5"),
                                        ("CORERT_KV_PAGE_TOKENS", "x"), ("CORERT_NATIVE_PREFILL_ROWS", "1e3")])
def test_bad_variables_are_config_errors_naming_the_variable(key, value):
    with pytest.raises(ConfigError, match=f"{key}='{value}' is not a valid int"):
        RuntimeConfig.from_env(environ={key: value})


def test_bad_variable_values_fail_their_validators():
    with pytest.raises(ConfigError, match="n_seqs must be"):
        RuntimeConfig.from_env(environ={"CORERT_N_SEQS": "0"})
    with pytest.raises(ConfigError, match="unknown plugin area"):
        RuntimeConfig.from_env(environ={"CORERT_PLUGINS": "memory=x"})
    with pytest.raises(ConfigError, match=r"CORERT_SCHEDULER_PIN_THREADS='maybe' is not a valid bool"):
        RuntimeConfig.from_env(environ={"CORERT_SCHEDULER_PIN_THREADS": "maybe"})
    with pytest.raises(ConfigError, match="kv.kernel must be one of wide, scalar, got 'avx'"):
        RuntimeConfig.from_env(environ={"CORERT_KV_KERNEL": "avx"})
    with pytest.raises(ConfigError, match="kv.budget: not a byte size"):
        RuntimeConfig.from_env(environ={"CORERT_KV_BUDGET": "much"})


def test_every_sub_config_variable_applies():
    env = {"CORERT_KV_BUDGET": "64M", "CORERT_KV_PAGE_TOKENS": "8", "CORERT_KV_KERNEL": "wide",
           "CORERT_SCHEDULER_PIN_THREADS": "off", "CORERT_SCHEDULER_CPUS": "0,1", "CORERT_NATIVE_PREFILL_ROWS": "32",
           "CORERT_LLAMA_FLASH_ATTN": "0"}
    cfg = RuntimeConfig.from_env(environ=env)
    assert (cfg.kv.budget, cfg.kv.page_tokens, cfg.kv.kernel) == (64 << 20, 8, "wide")
    assert (cfg.scheduler.pin_threads, cfg.scheduler.cpus, cfg.native.prefill_rows) == (False, (0, 1), 32)
    assert RuntimeConfig().llama.flash_attn is True and cfg.llama.flash_attn is False
    assert all(k in RuntimeConfig.from_env.__doc__ for k in SUB_ENV)
    assert RuntimeConfig.from_env(environ={"CORERT_SCHEDULER_PIN_THREADS": "1"}).scheduler.pin_threads is True


# -- precedence ------------------------------------------------------------------------------------------
TOML = """
    [corert]
    model = "qwen2.5-coder-0.5b-instruct"
    engine = "native"
    n_ctx = 512
    n_threads = 1
    plugins = {tokenizer = "llama_cpp", kv_cache = "paged:f16"}
    deny = ["corert_nothing"]
    """


def test_toml_then_env_then_arguments(tmp_path, clean_env):
    path = _toml(tmp_path, TOML)
    toml = RuntimeConfig.from_toml(path)
    env = RuntimeConfig.from_env(toml, environ={"CORERT_PLUGINS": "kv_cache=paged:f32", "CORERT_CTX": "1024",
                                                "CORERT_MODEL": SMOL})
    # env over TOML, area by area: kv_cache replaced, the TOML's tokenizer kept
    assert env.plugins == {"tokenizer": "llama_cpp", "kv_cache": "paged:f32"}
    assert (env.n_ctx, env.model, env.engine, env.n_threads) == (1024, SMOL, "native", 1)
    rt = Runtime(env, n_ctx=768, plugins={"kv_cache": "contiguous"})
    try:
        # arguments over both; what neither overrides comes through from below
        assert rt.config.plugins == {"tokenizer": "llama_cpp", "kv_cache": "contiguous"}
        assert (rt.config.n_ctx, rt.config.model, rt.config.engine, rt.config.n_threads) == (768, SMOL, "native", 1)
        assert rt.resolve("kv_cache").label == "contiguous:f16" and rt.resolve("tokenizer").impl.name == "llama_cpp"
    finally:
        rt.close()


def test_sub_configs_key_by_key_toml_then_env_then_arguments(tmp_path, clean_env):
    """Each kv key comes from the highest layer that sets it; what the paged plugin is built with (its
    provider's stats, no model loaded) is that merged table."""
    path = _toml(tmp_path, TOML + """
    [corert.kv]
    budget = "64M"
    page_tokens = 32
    kernel = "wide"
    """)
    cfg = RuntimeConfig.from_env(RuntimeConfig.from_toml(path), environ={"CORERT_KV_BUDGET": "32M"})
    assert (cfg.kv.budget, cfg.kv.page_tokens, cfg.kv.kernel) == (32 << 20, 32, "wide")  # env over TOML: budget only
    rt = Runtime(cfg, kv={"kernel": "scalar"})
    try:
        assert rt.kv_cache_info()["config"] == {"dtype": "f16", "page_tokens": 32, "budget_bytes": 32 << 20,
                                                "default_budget_cap_bytes": 512 << 20, "kernel": "scalar"}
    finally:
        rt.close()
    with pytest.raises(ConfigError, match="unknown kv config keys: pages"):
        Runtime(cfg, kv={"pages": 3})
    with pytest.raises(ConfigError, match="unknown Runtime option: kv_budget"):
        Runtime(cfg, kv_budget="1M")  # the old getattr name was never a field


def test_toml_kv_budget_reaches_the_paged_store(tmp_path, smollm2, clean_env):
    """[corert.kv] in a file, through from_toml / from_env / Runtime, sizes the pool of the store the native
    engine really allocates: pages_total = budget // page_bytes."""
    from corert.plugins.kv_cache.paged.config import PagedConfig
    from corert.plugins.kv_cache.paged.store import page_bytes

    per_page = page_bytes(PagedConfig("q8", page_tokens=32), 30, 3, 64)  # SmolLM2-135M: 30 layers, 3 x 64
    path = _toml(tmp_path, f"""
        [corert]
        model = "{smollm2}"
        engine = "native"
        n_ctx = 256
        plugins = {{kv_cache = "paged:q8", tokenizer = "llama_cpp"}}
        [corert.kv]
        budget = {11 * per_page}
        page_tokens = 32
        [corert.native]
        prefill_rows = 48
        """)
    rt = Runtime(RuntimeConfig.from_env(RuntimeConfig.from_toml(path)), n_seqs=2)
    try:
        loaded, _ = rt.load_generation_model()
        stats = loaded.kv.stats()
        assert (stats["page_tokens"], stats["pages_total"], stats["bytes_total"]) == (32, 11, 11 * per_page)
        assert rt.kv_cache_info()["stores"][0]["pages_total"] == 11
        assert loaded.batch_service().runner.prefill_rows == 48  # [corert.native] reached the batcher
    finally:
        rt.close()


def test_toml_pin_threads_reaches_the_scheduler(tmp_path, clean_env):
    """pin_threads = false leaves the work-stealing workers unpinned (their affinity says so); the
    environment turns it back on over the file, and an argument off again."""
    path = _toml(tmp_path, '[corert.scheduler]\npin_threads = false\n')
    cfg = RuntimeConfig.from_toml(path)

    def affinities(config, **args):
        rt = Runtime(config, plugins={"scheduler": "work_stealing"}, **args)
        try:
            return {w["affinity"] for w in rt.scheduler.stats()["per_worker"]}
        finally:
            rt.close()

    assert affinities(cfg) == {"disabled"}
    pinned = affinities(RuntimeConfig.from_env(cfg, environ={"CORERT_SCHEDULER_PIN_THREADS": "1"}))
    assert "disabled" not in pinned and pinned != {"not started"}
    assert affinities(RuntimeConfig.from_env(cfg, environ={"CORERT_SCHEDULER_PIN_THREADS": "1"}),
                      scheduler={"pin_threads": False}) == {"disabled"}


def test_runtime_without_config_reads_the_environment(clean_env):
    clean_env.setenv("CORERT_ENGINE", "native")
    clean_env.setenv("CORERT_PLUGINS", "kv_cache=paged:f16")
    clean_env.setenv("CORERT_N_SEQS", "2")
    rt = Runtime(n_seqs=3)
    try:
        assert rt.config.engine == "native" and rt.config.n_seqs == 3  # the argument wins over CORERT_N_SEQS
        assert rt.resolve("kv_cache").label == "paged:f16"
    finally:
        rt.close()
    with pytest.raises(ConfigError, match="unknown Runtime option"):
        Runtime(n_ctxx=5)


def test_cli_config_file_env_and_flags(tmp_path, clean_env):
    path = _toml(tmp_path, TOML)
    base = {k: None for k in ALL_ENV}
    info = cli_json("plugins", "--json", "--config", str(path), env=base)
    assert info["engine"] == "native"
    chosen = {a: (e["chosen"]["name"], e["chosen"]["variant"]) for a, e in info["areas"].items()}
    assert chosen["kv_cache"] == ("paged", "f16") and chosen["tokenizer"][0] == "llama_cpp"
    # the environment over the file, area by area
    info = cli_json("plugins", "--json", "--config", str(path), env={**base, "CORERT_PLUGINS": "kv_cache=contiguous"})
    chosen = {a: e["chosen"]["name"] for a, e in info["areas"].items()}
    assert chosen["kv_cache"] == "contiguous" and chosen["tokenizer"] == "llama_cpp" and info["engine"] == "native"
    # the file selects a tokenizer the environment disables: a clear error, not a silent fallback
    assert_bad_input(run_cli("plugins", "--config", str(path), env={**base, "CORERT_DISABLE": "tokenizer_llama_cpp"}),
                     "unknown tokenizer plugin 'llama_cpp'; known: bpe")
    # flags over both
    info = cli_json("plugins", "--json", "--config", str(path), "--engine", "llama.cpp", "--plugin",
                    "kv_cache=llama_cpp:q8_0", env={**base, "CORERT_ENGINE": "native"})
    chosen = {a: (e["chosen"]["name"], e["chosen"]["variant"]) for a, e in info["areas"].items()}
    assert info["engine"] == "llama.cpp" and chosen["kv_cache"] == ("llama_cpp", "q8_0")


def test_cli_context_length_from_file_env_and_flag(tmp_path, smollm2):
    # (llama.cpp rounds a context up to a multiple of 256, so the sizes are multiples of 256)
    path = _toml(tmp_path, f'[corert]\nmodel = "{smollm2}"\nn_ctx = 256\n')
    prompt = "one two three four five six seven eight nine ten " * 60  # 601 tokens
    base = {k: None for k in ALL_ENV}
    assert_bad_input(run_cli("generate", "--config", str(path), "-n", "1", prompt, env=base),
                     "the prompt has 601 tokens; the context holds 256")
    assert_bad_input(run_cli("generate", "--config", str(path), "-n", "1", prompt, env={**base, "CORERT_CTX": "512"}),
                     "the context holds 512")
    d = cli_json("generate", "--config", str(path), "--ctx", "1024", "-n", "1", "-t", "0", "--json", prompt,
                 env={**base, "CORERT_CTX": "512"})
    assert d["model"] == smollm2 and d["usage"] == {"prompt_tokens": 601, "completion_tokens": 1, "total_tokens": 602}


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path, clean_env):
    assert_bad_input(run_cli("plugins", "--config", str(tmp_path / "nope.toml")), "cannot read config")
    bad = _toml(tmp_path, "[corert]\nenigne = 'native'\n")
    assert_bad_input(run_cli("plugins", "--config", str(bad)), "unknown config keys: enigne")
    assert_bad_input(run_cli("plugins", env={"CORERT_CTX": "lots"}), "CORERT_CTX='lots' is not a valid int")
    bad_kv = _toml(tmp_path, "[corert.kv]\npage_tokens = 0\n", "kv.toml")
    assert_bad_input(run_cli("plugins", "--config", str(bad_kv)), "kv.page_tokens must be an integer in [1, 4096]")
    assert_bad_input(run_cli("plugins", "--set", "kv.pages=3"), "unknown kv config keys: pages")
    assert_bad_input(run_cli("plugins", "--set", "budget=3M"), "expected TABLE.KEY=VALUE")


def test_cli_kv_table_from_file_env_and_set(tmp_path, clean_env):
    path = _toml(tmp_path, TOML + '\n[corert.kv]\nbudget = "64M"\npage_tokens = 32\n')
    base = {k: None for k in ALL_ENV}

    def kv_config(*args, env=base):
        return cli_json("plugins", "--json", "--config", str(path), *args, env=env)["kv_cache"]["config"]

    assert (kv_config()["budget_bytes"], kv_config()["page_tokens"]) == (64 << 20, 32)
    got = kv_config(env={**base, "CORERT_KV_BUDGET": "16M"})
    assert (got["budget_bytes"], got["page_tokens"]) == (16 << 20, 32)
    got = kv_config("--set", "kv.budget=8M", "--set", "kv.kernel=scalar", env={**base, "CORERT_KV_BUDGET": "16M"})
    assert (got["budget_bytes"], got["page_tokens"], got["kernel"]) == (8 << 20, 32, "scalar")


def test_bench_honours_the_config_file_under_the_environment(tmp_path):
    """`corert bench` takes --config like every command (it used to read only the environment)."""
    path = _toml(tmp_path, f'[corert]\nmodel = "{QWEN}"\n')
    args = ("bench", "kv", "--json", "--config", str(path), "--budget", "16M", "--seq-tokens", "64",
            "--shared-prompt", "32", "--requests", "2", "--compaction-tokens", "32")

    def model(env):
        proc = run_cli(*args, env=env)
        assert proc.returncode in (0, 1), proc.stderr  # 1: a goal not met at these tiny sizes
        return json.loads(proc.stdout)["dims"]["model"]

    assert model({"CORERT_MODEL": None}) == QWEN
    assert model({"CORERT_MODEL": SMOL}) == SMOL
