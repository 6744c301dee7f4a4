"""Settings of the paged KV cache: page dtype, tokens per page, the pool's byte budget, kernel variant."""
from __future__ import annotations

from typing import Any, Mapping

import attrs

from corert.cpu import info as cpu_info
from corert.config import KVConfig, parse_bytes  # noqa: F401  (parse_bytes: re-exported)
from corert.errors import ConfigError

DTYPES = ("q8", "f16", "f32")
KERNELS = ("wide", "scalar")
DEFAULT_PAGE_TOKENS = attrs.fields(KVConfig).page_tokens.default
#: When no budget is set: room for every sequence slot at full length, but never more than this.
DEFAULT_BUDGET_CAP = 512 << 20


@attrs.frozen
class PagedConfig:
    dtype: str = attrs.field(default="q8", validator=attrs.validators.in_(DTYPES))
    page_tokens: int = attrs.field(default=DEFAULT_PAGE_TOKENS)
    budget_bytes: int | None = None  # None: see DEFAULT_BUDGET_CAP
    kernel: str = attrs.field(default="wide", validator=attrs.validators.in_(KERNELS))

    @page_tokens.validator
    def _check_page(self, attribute, value):
        if not isinstance(value, int) or not 1 <= value <= 4096:
            raise ConfigError(f"KV page size must be 1..4096 tokens, got {value!r}")

    @classmethod
    def from_env(cls, dtype: str, config: Any = None, environ: Mapping[str, str] | None = None
                 ) -> "PagedConfig":
        """The page geometry of a runtime config's ``kv`` table (``[corert.kv]``, ``CORERT_KV_*``); with no
        RuntimeConfig, of the ``CORERT_KV_BUDGET`` / ``CORERT_KV_PAGE_TOKENS`` / ``CORERT_KV_KERNEL``
        variables of ``environ`` (default: the process's)."""
        kv = KVConfig.of(config) if environ is None else KVConfig.from_env(environ)
        # the scalar loop only where there is no SIMD unit to vectorize for
        kernel = kv.kernel or ("scalar" if cpu_info().isa == "scalar" else "wide")
        return cls(dtype=dtype, page_tokens=kv.page_tokens, budget_bytes=kv.budget, kernel=kernel)
