"""Importing llama-cpp-python once, with llama.cpp's log routed to Python logging.

llama.cpp prints warnings straight to stderr (e.g. for the vocabulary-only load the tokenizer uses), which
would break the CLI's one-line error contract; here they go to the ``corert.llama_cpp`` logger instead.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os

log = logging.getLogger("corert.llama_cpp")


@functools.lru_cache(maxsize=1)
def llama_cpp():
    import llama_cpp as lib
    import llama_cpp._logger  # noqa: F401  (installs its own callback on import; we replace it below)

    @lib.llama_log_callback
    def _to_logging(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        # ggml's level numbering changed across versions, so everything goes out at DEBUG: failures reach
        # the user as exceptions, and CORERT_LOG=debug (or a handler on this logger) shows the details.
        if log.isEnabledFor(logging.DEBUG):
            log.debug(text.decode("utf-8", errors="replace").rstrip())

    lib.llama_log_set(_to_logging, ctypes.c_void_p(0))
    if os.environ.get("CORERT_LOG", "").lower() == "debug":
        logging.basicConfig()
        log.setLevel(logging.DEBUG)
    llama_cpp._callback = _to_logging  # keep a reference: ctypes callbacks must outlive their use
    return lib
