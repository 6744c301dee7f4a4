"""Settings of the paged KV cache: page dtype, tokens per page, the pool's byte budget, kernel variant."""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import attrs

from corert.cpu import info as cpu_info
from corert.errors import ConfigError

DTYPES = ("q8", "f16", "f32")
KERNELS = ("wide", "scalar")
DEFAULT_PAGE_TOKENS = 16
#: When no budget is set: room for every sequence slot at full length, but never more than this.
DEFAULT_BUDGET_CAP = 512 << 20

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.I)


def parse_bytes(text: str | int) -> int:
    """``"256M"``, ``"1.5GiB"``, ``"1048576"`` -> bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"not a byte size: {text!r} (e.g. 256M, 1G, 1048576)")
    unit = (m.group(2) or "b").lower()[:1]
    return int(float(m.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit])


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
        """``CORERT_KV_BUDGET`` (bytes, ``256M``...), ``CORERT_KV_PAGE_TOKENS``, ``CORERT_KV_KERNEL``
        (wide|scalar); a runtime config's ``kv_budget`` / ``kv_page_tokens`` / ``kv_kernel`` attributes
        win over the environment when set."""
        env = os.environ if environ is None else environ
        budget = getattr(config, "kv_budget", None) or env.get("CORERT_KV_BUDGET")
        page = getattr(config, "kv_page_tokens", None) or env.get("CORERT_KV_PAGE_TOKENS")
        kernel = getattr(config, "kv_kernel", None) or env.get("CORERT_KV_KERNEL")
        try:
            page_tokens = int(page) if page else DEFAULT_PAGE_TOKENS
        except ValueError:
            raise ConfigError(f"CORERT_KV_PAGE_TOKENS={page!r} is not an integer") from None
        if kernel is None:  # the scalar loop only where there is no SIMD unit to vectorize for
            kernel = "scalar" if cpu_info().isa == "scalar" else "wide"
        if kernel not in KERNELS:
            raise ConfigError(f"KV kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        return cls(dtype=dtype, page_tokens=page_tokens,
                   budget_bytes=parse_bytes(budget) if budget else None, kernel=kernel)
