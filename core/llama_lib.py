"""Importing llama-cpp-python once: its CPU backend chosen at load time, its extra weight buffers only where
they were seen to run, and llama.cpp's log routed to Python logging.

- **CPU backend.** scripts/setup.sh builds llama.cpp portably: ggml's CPU backend as one shared module per
  x86-64 level (``libggml-cpu-haswell.so``, ``-skylakex``, ``-zen4``, ``-sapphirerapids``...), none tuned to
  the build machine.  ggml scores them against this CPU and loads the best, but only looks beside the
  executable and in the working directory, so we point it at the package's ``lib/`` before the first model
  load.  ``CORERT_GGML_CPU_BACKEND=haswell`` (a module's suffix) loads that one instead, for A/B.
- **Extra buffers.** Every ``Llama(...)`` in this process, ours or a benchmark's raw one, takes its model
  parameters from ``llama_model_default_params``; we wrap it so ``use_extra_bufts`` follows the probe's
  verdict (corert.llama_probe).  Until a verdict exists the default is off: slower on some CPUs,
  never a crash.
- **Log.** llama.cpp prints warnings straight to stderr (e.g. for the vocabulary-only load the tokenizer
  uses), which would break the CLI's one-line error contract; here they go to the ``corert.llama_cpp`` logger.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import threading
from pathlib import Path
from typing import Iterator

from .errors import PluginError
from . import llama_probe

log = logging.getLogger("corert.llama_cpp")

_extra = threading.local()      # a per-thread override (the probe's child sets it around each load)
_process = {"extra_buffers": False, "verdict": None}
_backend: dict[str, str] = {}   # what was loaded: {"module": "libggml-cpu-zen4.so" or "built in"}


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
    _load_cpu_backend(Path(lib.__file__).parent / "lib")
    _wrap_default_params(lib.llama_cpp)
    verdict = llama_probe.current_verdict()
    _process.update(extra_buffers=verdict.extra_buffers, verdict=verdict)
    return lib


def _load_cpu_backend(lib_dir: Path) -> None:
    """Load ggml's CPU backend module for this CPU (a load-time-variant build), before llama.cpp would look
    for it in the wrong folders.  A build with the backend linked in has no such modules: nothing to do."""
    modules = sorted(lib_dir.glob("libggml-cpu-*.so"))
    if not modules:
        _backend.update(module="built in", choice="a build without load-time CPU backends")
        return
    ggml = ctypes.CDLL(_loaded_ggml(lib_dir))
    if ggml.ggml_backend_reg_count() > 0:
        return  # loaded before (another copy of this module, or the host application)
    forced = os.environ.get("CORERT_GGML_CPU_BACKEND", "").strip()
    if forced:
        path = lib_dir / f"libggml-cpu-{forced}.so"
        if not path.is_file():
            known = ", ".join(m.name[len("libggml-cpu-"):-3] for m in modules)
            raise PluginError(f"CORERT_GGML_CPU_BACKEND={forced}: no such ggml CPU backend; known: {known}")
        ggml.ggml_backend_load.restype = ctypes.c_void_p
        ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
        reg = ggml.ggml_backend_load(str(path).encode())  # registers it; NULL when its score here is 0
        if not reg:
            raise PluginError(f"ggml could not load {path.name} on this CPU (it needs features this CPU lacks)")
        _backend["module"] = path.name
        _backend["choice"] = "CORERT_GGML_CPU_BACKEND"
        return
    ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_load_all_from_path(str(lib_dir).encode())
    if ggml.ggml_backend_reg_count() == 0:
        raise PluginError(f"ggml found no CPU backend in {lib_dir} that this CPU can run")
    chosen = _mapped(lib_dir, "libggml-cpu-")
    _backend["module"] = Path(chosen).name if chosen else "?"
    _backend["choice"] = f"ggml's best of {len(modules)} for this CPU"
    return


def _mapped(lib_dir: Path, prefix: str) -> str | None:
    """The file of ``lib_dir`` whose name starts with ``prefix`` that this process has mapped, if any."""
    with contextlib.suppress(OSError):
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if path.startswith(str(lib_dir)) and Path(path).name.startswith(prefix):
                    return path
    return None


def _loaded_ggml(lib_dir: Path) -> str:
    """The libggml file libllama actually loaded.  A wheel stores libggml.so, .so.0 and .so.0.x as separate
    copies (zip has no symlinks), and dlopen of another copy would give a second, empty backend registry."""
    return _mapped(lib_dir, "libggml.so") or "libggml.so.0"  # by soname: the copy already loaded


def _wrap_default_params(module) -> None:
    original = module.llama_model_default_params
    if getattr(original, "_corert", False):
        return

    def llama_model_default_params():
        params = original()
        params.use_extra_bufts = extra_buffers_enabled()
        return params

    llama_model_default_params._corert = True
    module.llama_model_default_params = llama_model_default_params


def extra_buffers_enabled() -> bool:
    forced = getattr(_extra, "value", None)
    return _process["extra_buffers"] if forced is None else forced


@contextlib.contextmanager
def extra_buffers(enabled: bool) -> Iterator[None]:
    """Load models in this block (this thread) with extra buffers ``enabled``, whatever the verdict."""
    before = getattr(_extra, "value", None)
    _extra.value = enabled
    try:
        yield
    finally:
        _extra.value = before


def prepare(model_path: str) -> llama_probe.ProbeVerdict:
    """Call before loading ``model_path``: makes sure the extra-buffer verdict for this (build, CPU) exists,
    probing in a child process the first time, and applies it to every later load in this process."""
    llama_cpp()
    verdict = llama_probe.decide(str(model_path))
    _process.update(extra_buffers=verdict.extra_buffers, verdict=verdict)
    return verdict


def describe() -> dict:
    """What ``corert plugins`` shows about the llama.cpp engine: build, CPU backend, extra-buffer verdict."""
    try:
        lib = llama_cpp()
    except Exception as exc:  # noqa: BLE001 - a diagnostic: report, don't raise
        return {"available": False, "error": f"{type(exc).__name__}: {exc}"}
    verdict = _process["verdict"] or llama_probe.current_verdict()
    features = lib.llama_print_system_info().decode(errors="replace")
    features = features.split(":", 1)[-1]  # "CPU : SSE3 = 1 | AVX = 1 | ..."
    enabled = sorted({part.split("=")[0].strip() for part in features.split("|") if part.strip().endswith("= 1")})
    return {"available": True, "version": getattr(lib, "__version__", "?"), "build": llama_probe.build_id(),
            "cpu_backend": _backend.get("module", "?"), "cpu_backend_choice": _backend.get("choice", "?"),
            "cpu_features": enabled,
            "extra_buffers": verdict.extra_buffers, "extra_buffers_source": verdict.source,
            "extra_buffers_reason": verdict.reason, "probe_model": verdict.model}
