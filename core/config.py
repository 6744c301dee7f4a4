"""``RuntimeConfig``: everything a Runtime is configured with, and its typed sub-configs.

Precedence, key by key: explicit arguments > environment > TOML file > the defaults below.

    [corert]                    # or the top level of the file
    engine = "native"           # default "auto": native where it runs the model here, else llama.cpp
    n_seqs = 4
    [corert.kv]                 # KVConfig: the native engine's paged KV cache
    budget = "256M"
    [corert.scheduler]          # SchedulerConfig
    pin_threads = false
    [corert.native]             # NativeConfig: what the native engine itself reads
    prefill_rows = 128
    [corert.llama]              # LlamaConfig: the llama.cpp engine's contexts
    flash_attn = false

Each sub-config key has the environment variable ``CORERT_<TABLE>_<KEY>`` (``CORERT_KV_BUDGET``,
``CORERT_KV_PAGE_TOKENS``, ``CORERT_KV_KERNEL``, ``CORERT_SCHEDULER_PIN_THREADS``, ``CORERT_SCHEDULER_CPUS``,
``CORERT_NATIVE_PREFILL_ROWS``, ``CORERT_NATIVE_LAYOUT_CACHE``, ``CORERT_LLAMA_FLASH_ATTN``) and the argument form
``Runtime(kv={"budget": "256M"})`` (the CLI: ``--set kv.budget=256M``).  A sub-config given as a mapping changes only the keys it names.  Unknown keys,
wrong types and out-of-range values are :class:`~corert.errors.ConfigError` naming the key.
"""
from __future__ import annotations

import os
import re
import tomllib
from typing import Any, Mapping

import attrs

from .errors import ConfigError
from .models.registry import DEFAULT_CLASSIFY_MODEL, DEFAULT_EMBED_MODEL, DEFAULT_GENERATION_MODEL
from .plugin_host import parse_selections

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.I)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bytes(text: str | int) -> int:
    """``"256M"``, ``"1.5GiB"``, ``"1048576"`` -> bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"not a byte size: {text!r} (e.g. 256M, 1G, 1048576)")
    unit = (m.group(2) or "b").lower()[:1]
    return int(float(m.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit])


# -- field checks: each names the key and says what it wants ----------------------------------------------
def _int_in(lo: int, hi: int | None = None, optional: bool = False):
    want = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer ≥ {lo}"

    def check(inst, attribute, value):
        if value is None and optional:
            return
        # bool is an int to Python, never to a config file's author
        if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
            raise ConfigError(f"{_key(inst, attribute)} must be {want}, got {value!r}")
    return check


def _one_of(*choices: str, optional: bool = False):
    def check(inst, attribute, value):
        if (value is None and optional) or value in choices:
            return
        raise ConfigError(f"{_key(inst, attribute)} must be one of {', '.join(choices)}, got {value!r}")
    return check


def _is_bool(inst, attribute, value):
    if not isinstance(value, bool):
        raise ConfigError(f"{_key(inst, attribute)} must be true or false, got {value!r}")


def _key(inst, attribute) -> str:
    table = getattr(type(inst), "TABLE", None)
    return f"{table}.{attribute.name}" if table else attribute.name


def _optional_bytes_of(key: str):
    def convert(value: Any) -> int | None:
        try:
            return None if value is None else parse_bytes(value)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    return convert


_optional_bytes = _optional_bytes_of("kv.budget")


def _cpu_ids(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"scheduler.cpus must be cpu ids like 0,1,2, got {value!r}") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                       for v in value):
        raise ConfigError(f"scheduler.cpus must be a list of cpu ids, got {value!r}")
    return tuple(value)


# -- sub-configs ---------------------------------------------------------------------------------------------
class _Table:
    """What every sub-config shares: built from a mapping (TOML table, argument) or the environment."""

    TABLE = ""

    @classmethod
    def from_mapping(cls, data: Any, base: "_Table | None" = None):
        """``base`` (default: the defaults) with the keys of ``data`` changed."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.TABLE} must be a table of settings ([corert.{cls.TABLE}]), got {data!r}")
        known = [a.name for a in attrs.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown {cls.TABLE} config keys: {', '.join(unknown)}; known: {', '.join(known)}")
        return attrs.evolve(base, **data) if base is not None else cls(**data)

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """``CORERT_<TABLE>_<KEY>`` -> key."""
        return {f"CORERT_{cls.TABLE.upper()}_{a.name.upper()}": a.name for a in attrs.fields(cls)}

    @classmethod
    def env_changes(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """The keys the environment sets (empty values are unset), as the fields' types."""
        changes: dict[str, Any] = {}
        for var, key in cls.env_names().items():
            text = environ.get(var)
            if text:
                changes[key] = _from_text(var, text, attrs.fields_dict(cls)[key].default)
        return changes

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None):
        return cls.from_mapping(cls.env_changes(os.environ if environ is None else environ))

    @classmethod
    def of(cls, config: Any):
        """A runtime config's table; with no RuntimeConfig (a bare engine or plugin in a test or a bench),
        this table as the environment sets it."""
        if isinstance(config, RuntimeConfig):
            return getattr(config, cls.TABLE)
        return cls.from_env()


def _from_text(var: str, text: str, default: Any) -> Any:
    """An environment variable's text as the type of the field whose default is ``default``; the field's own
    converter and validator do the rest (byte sizes, lists of cpu ids, ranges)."""
    text = text.strip()
    if isinstance(default, bool):
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{var}={text!r} is not a valid bool (use 1/0, true/false)")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{var}={text!r} is not a valid int") from None
    return text


@attrs.frozen
class KVConfig(_Table):
    """``[corert.kv]``: the paged KV cache (kv_cache=paged; its page dtype is the selection's mode)."""

    TABLE = "kv"
    #: tokens per page
    page_tokens: int = attrs.field(default=16, validator=_int_in(1, 4096))
    #: bytes of the page pool ("256M", "1G" or an integer); None: every sequence slot at full length,
    #: capped at 512 MiB
    budget: int | None = attrs.field(default=None, converter=_optional_bytes, validator=_int_in(1, optional=True))
    #: attention kernel: wide (SIMD-shaped) or scalar; None: scalar only on a CPU without SIMD
    kernel: str | None = attrs.field(default=None, validator=_one_of("wide", "scalar", optional=True))


@attrs.frozen
class SchedulerConfig(_Table):
    """``[corert.scheduler]``: the scheduler plugin's settings (``n_threads``, ``queue_size``: top-level)."""

    TABLE = "scheduler"
    #: pin worker lanes to their cores where the OS allows (work_stealing)
    pin_threads: bool = attrs.field(default=True, validator=_is_bool)
    #: cpu ids to lay the lanes out on; None: the process's affinity mask (work_stealing)
    cpus: tuple[int, ...] | None = attrs.field(default=None, converter=_cpu_ids)


@attrs.frozen
class NativeConfig(_Table):
    """``[corert.native]``: what the native engine reads (its batching width is the top-level ``n_seqs``)."""

    TABLE = "native"
    #: prompt tokens one continuous-batching step evaluates, and one forward of a session's long prompt; a
    #: longer prompt is spread over several steps (forwards)
    prefill_rows: int = attrs.field(default=256, validator=_int_in(1, 1 << 20))
    #: where converted weight layouts are cached and mapped from: "auto" (the user cache dir), "off" (convert
    #: into memory at every load) or a directory
    layout_cache: str = attrs.field(default="auto", validator=attrs.validators.instance_of(str))


@attrs.frozen
class LlamaConfig(_Table):
    """``[corert.llama]``: the llama.cpp engine's contexts (the model's own and the batching one alike).

    Read by the ``llama_cpp`` kv_cache plugin, because in llama.cpp flash attention is part of the cache's
    shape: V is stored transposed without it, and a quantized V cache (``llama_cpp:q8_0``) needs it."""

    TABLE = "llama"
    #: fused flash attention, as llama-server's default (``-fa auto`` resolves to on with a CPU backend, where
    #: ggml has it for every head size and cache type); false: softmax and the products apart (greedy tokens
    #: may then differ from a flash-attention context's after a near tie)
    flash_attn: bool = attrs.field(default=True, validator=_is_bool)


@attrs.frozen
class WorkerConfig(_Table):
    """``[corert.worker]``: the supervised worker processes of ``isolation = "process"``."""

    TABLE = "worker"
    #: address space of one worker (RLIMIT_AS: "4G", an integer; None: no limit)
    memory: int | None = attrs.field(default=None, converter=_optional_bytes_of("worker.memory"),
                                   validator=_int_in(1, optional=True))
    #: open files of one worker (RLIMIT_NOFILE)
    open_files: int = attrs.field(default=1024, validator=_int_in(16, 1 << 20))
    #: seconds without a heartbeat after which a serving worker counts as hung and is replaced (a starting one:
    #: four times that, at least 60)
    heartbeat_s: int = attrs.field(default=15, validator=_int_in(1, 3600))
    #: seconds a request may run past its deadline before its worker is replaced (it ignored the cancel)
    grace_s: int = attrs.field(default=2, validator=_int_in(0, 3600))
    #: crashes within ``restart_window_s`` after which the model is marked failed instead of restarted
    max_restarts: int = attrs.field(default=5, validator=_int_in(0, 1 << 20))
    restart_window_s: int = attrs.field(default=60, validator=_int_in(1, 1 << 20))
    #: keep a standby worker per model (interpreter, imports and tokenizer ready, no model): a restart then
    #: costs the model's load only; false saves the standby's memory
    standby: bool = attrs.field(default=True, validator=_is_bool)


SUB_CONFIGS: dict[str, type[_Table]] = {t.TABLE: t for t in (KVConfig, SchedulerConfig, NativeConfig,
                                                             LlamaConfig, WorkerConfig)}


# -- the runtime config ------------------------------------------------------------------------------------
def _plugins_converter(value: Any) -> dict[str, str]:
    sels = parse_selections(value)
    return {area: str(sel).split("=", 1)[1] for area, sel in sels.items()}


def _tuple_of_str(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    return tuple(v.strip() for v in value if v and v.strip())


#: top-level environment variables: name -> (field, type)
_ENV = {"CORERT_MODEL": ("model", str), "CORERT_ENGINE": ("engine", str), "CORERT_CTX": ("n_ctx", int),
        "CORERT_THREADS": ("n_threads", int), "CORERT_MODELS_DIR": ("models_dir", str),
        "CORERT_ALLOW": ("allow", str), "CORERT_DRAFT_MODEL": ("draft_model", str),
        "CORERT_N_SEQS": ("n_seqs", int), "CORERT_DISABLE": ("deny", str), "CORERT_ISOLATION": ("isolation", str)}


@attrs.frozen
class RuntimeConfig:
    """Everything a Runtime is configured with.  Precedence: explicit arguments > environment > TOML file >
    these defaults (see the module docstring for the ``kv``, ``scheduler`` and ``native`` tables)."""

    model: str = DEFAULT_GENERATION_MODEL
    #: "auto": per model file, native where it runs the file on this CPU, else llama.cpp (corert.auto_engine)
    engine: str = "auto"
    #: selection contract, area -> "NAME[:MODE]"
    plugins: dict[str, str] = attrs.field(factory=dict, converter=_plugins_converter)
    n_ctx: int = attrs.field(default=2048)
    n_threads: int | None = None
    queue_size: int = 256
    #: entry-point names to load exclusively (third-party) / never load
    allow: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    deny: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    models_dir: str | None = None
    #: speculative decoding: the draft model (default: the known pairing for the target) and max depth
    #: (0: the plugin's default, 31 for speculative:adaptive, 8 for the fixed-depth modes)
    draft_model: str | None = None
    draft_depth: int = 0
    #: native engine: sequences decoded together by continuous batching (1: requests take turns)
    n_seqs: int = attrs.field(default=1)
    embed_model: str = DEFAULT_EMBED_MODEL
    classify_model: str = DEFAULT_CLASSIFY_MODEL
    kv: KVConfig = attrs.field(factory=KVConfig, converter=KVConfig.from_mapping)
    scheduler: SchedulerConfig = attrs.field(factory=SchedulerConfig, converter=SchedulerConfig.from_mapping)
    native: NativeConfig = attrs.field(factory=NativeConfig, converter=NativeConfig.from_mapping)
    llama: LlamaConfig = attrs.field(factory=LlamaConfig, converter=LlamaConfig.from_mapping)
    #: "none": engines run in this process; "process": each loaded model runs in a supervised worker process
    isolation: str = attrs.field(default="none", validator=_one_of("none", "process"))
    worker: WorkerConfig = attrs.field(factory=WorkerConfig, converter=WorkerConfig.from_mapping)

    @n_seqs.validator
    def _check_seqs(self, attribute, value):
        if not isinstance(value, int) or not 1 <= value <= 256:
            raise ConfigError(f"n_seqs must be an integer in [1, 256], got {value!r}")

    @n_ctx.validator
    def _check_ctx(self, attribute, value):
        if not isinstance(value, int) or value < 16:
            raise ConfigError(f"n_ctx must be an integer ≥ 16, got {value!r}")

    @classmethod
    def from_toml(cls, path: str | os.PathLike, base: "RuntimeConfig | None" = None, **overrides: Any
                  ) -> "RuntimeConfig":
        """Read ``[corert]`` (or the top level) of a TOML file, with its ``kv`` / ``scheduler`` / ``native``
        sub-tables, on top of ``base`` (default: these defaults)."""
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        data = data.get("corert", data)
        known = {a.name for a in attrs.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(known))}")
        return (base or cls()).evolve(**{**data, **overrides})

    @classmethod
    def from_env(cls, base: "RuntimeConfig | None" = None, environ: Mapping[str, str] | None = None
                 ) -> "RuntimeConfig":
        """Apply ``CORERT_MODEL``, ``CORERT_ENGINE``, ``CORERT_PLUGINS``, ``CORERT_CTX``, ``CORERT_THREADS``,
        ``CORERT_ALLOW``, ``CORERT_DISABLE``, ``CORERT_MODELS_DIR``, ``CORERT_DRAFT_MODEL``, ``CORERT_N_SEQS``,
        ``CORERT_ISOLATION``, the ``CORERT_WORKER_*`` variables
        and the sub-config variables ``CORERT_KV_BUDGET``, ``CORERT_KV_PAGE_TOKENS``, ``CORERT_KV_KERNEL``,
        ``CORERT_SCHEDULER_PIN_THREADS``, ``CORERT_SCHEDULER_CPUS``, ``CORERT_NATIVE_PREFILL_ROWS``,
        ``CORERT_LLAMA_FLASH_ATTN`` on top of
        ``base``; the plugins and the sub-configs change only where a variable is set."""
        env = os.environ if environ is None else environ
        base = base or cls()
        changes: dict[str, Any] = {}
        for key, (field, conv) in _ENV.items():
            if env.get(key):
                try:
                    changes[field] = conv(env[key])
                except ValueError:
                    raise ConfigError(f"{key}={env[key]!r} is not a valid {conv.__name__}") from None
        if env.get("CORERT_PLUGINS"):
            changes["plugins"] = env["CORERT_PLUGINS"]
        for table, kind in SUB_CONFIGS.items():
            sub = kind.env_changes(env)
            if sub:
                changes[table] = sub
        return base.evolve(**changes)

    def evolve(self, **changes: Any) -> "RuntimeConfig":
        """This config with ``changes``: plugins change area by area and sub-configs key by key (a mapping);
        a KVConfig (etc.) object replaces the whole table.  An unknown option is a ConfigError."""
        known = {a.name for a in attrs.fields(type(self))}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown Runtime option: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "plugins" in changes:
            changes["plugins"] = {**self.plugins, **_plugins_converter(changes["plugins"])}
        for table, kind in SUB_CONFIGS.items():
            if table in changes:
                changes[table] = kind.from_mapping(changes[table], getattr(self, table))
        return attrs.evolve(self, **changes)

    def set_option(self, assignment: str) -> "RuntimeConfig":
        """``"kv.budget=256M"`` (the CLI's ``--set``): one sub-config key from text, as its variable would."""
        key, sep, text = assignment.partition("=")
        table, dot, name = key.strip().partition(".")
        kind = SUB_CONFIGS.get(table)
        if not sep or not dot or kind is None:
            raise ConfigError(f"bad --set {assignment!r}: expected TABLE.KEY=VALUE with TABLE one of "
                              f"{', '.join(SUB_CONFIGS)}, e.g. kv.budget=256M")
        fields = attrs.fields_dict(kind)
        if name not in fields:
            raise ConfigError(f"unknown {table} config keys: {name}; known: {', '.join(fields)}")
        return self.evolve(**{table: {name: _from_text(f"{table}.{name}", text, fields[name].default)}})
