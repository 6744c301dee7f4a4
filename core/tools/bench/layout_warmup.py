"""A benchmark that times the native engine converts the model's weight layout first, in a process of its own.

The native layout cache's key follows the conversion code (corert.engines.native.layout_cache), so after a
change to that code the first load converts: seconds to a minute, and a converted copy of every matrix in the
loading process's peak RSS (gemma3: peak RSS / file 1.87 instead of 1.59).  Inside a benchmark that load is
the measured side's, so :func:`warm` runs it before any side starts: a child process loads the
model once through the Runtime, as the measured side does (its matrices through the cache: converting what
is missing, mapping the rest), generates a few tokens (so a numba kernel that its cache lacks compiles there,
not in a side: gemma3's peak RSS / file was 2.06 once from that) and exits.  Nothing else changes:
the measured side still loads the model itself, now from the cache, as a user's second run would.
:func:`Snapshot` lets a side report how many layout files its own load wrote (0 once warmed).
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from corert.engines.native.layout_cache import default_root, source_path
from corert.errors import CorertError, ModelError

from .spawn import popen


def _root(setting: str) -> Path | None:
    if setting == "off":
        return None
    return default_root() if setting == "auto" else Path(setting)


class Snapshot:
    """The layout files of one GGUF under a cache root, to count those a load writes (a conversion writes a
    new file and renames it into place: a new inode)."""

    def __init__(self, model_path: str, setting: str):
        self.src = Path(model_path).resolve()
        self.root = _root(setting)
        self.before = self._files()

    def _files(self) -> set[tuple[str, int]]:
        if self.root is None or not self.root.is_dir():
            return set()
        out = set()
        for d in self.root.glob(f"{glob.escape(self.src.stem)}-*"):
            if source_path(d) in (str(self.src), None):  # None: a directory whose source.json was lost
                out.update((str(f), f.stat().st_ino) for f in d.glob("*.layout") if f.exists())
        return out

    def written(self) -> int:
        """Layout files written since the snapshot."""
        return len(self._files() - self.before)

    def sync_written(self) -> int:
        """Put the layout files written since the snapshot on disk (fsync); returns how many.  The kernel
        writes a fresh layout back on its own within ~30 s, i.e. inside the first side's timing, where the
        write-back of a GB takes CPU and memory bandwidth from a 2-thread side (the Qwen 1.5B run that
        converted measured corert 32.5-38.9 and raw 32.3-33.8 tok/s, the next one 46.2-46.9 and 38.3-38.6;
        quiet slots, 2026-12-04, one run each)."""
        synced = 0
        for path, _ in self._files() - self.before:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
                synced += 1
            except OSError:
                pass
            finally:
                os.close(fd)
        return synced


def warm(model_path: str, engine: str, plugins: Sequence[str] = (), config_path: str | None = None,
         label: str | None = None, timeout_s: float = 900.0) -> dict[str, Any]:
    """Makes sure the native layout of ``model_path`` is in the cache, as a Runtime configured with ``engine``
    and ``plugins`` (plus the environment and ``config_path``) would load it; says so on stderr when it
    converts.  Returns ``{"engine", "layout_cache", "converted", "seconds"}`` (``converted``: files written;
    0 when the engine is not native or the cache is off), and ``synced`` when it loaded the model: the files
    written that are now on disk (Snapshot.sync_written)."""
    from corert.implementation import engine_name

    if engine_name(engine) not in ("native", "auto"):
        return {"engine": engine, "layout_cache": None, "converted": 0, "seconds": 0.0}
    t0 = time.monotonic()
    request = {"model": model_path, "engine": engine, "plugins": list(plugins), "config": config_path}
    proc = popen([sys.executable, "-m", "corert.tools.bench.layout_warmup", json.dumps(request)],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise CorertError(f"bench: converting the native layout of {model_path} took over {timeout_s:.0f} s")
    if proc.returncode != 0:
        # the child's last line is its exception ("module.Error: message"); the traceback above it is noise
        lines = err.strip().splitlines()
        tail = lines[-1] if lines else f"exit status {proc.returncode}"
        raise CorertError(f"bench: loading {model_path} to warm its native layout failed: {tail}")
    result = {**json.loads(out.strip().splitlines()[-1]), "seconds": round(time.monotonic() - t0, 2)}
    if result["converted"]:
        print(f"corert bench: converted the native layout of {label or Path(model_path).name} before timing "
              f"({result['converted']} matrices, {result['seconds']:.1f} s, not measured)", file=sys.stderr)
    return result


def _main(request: dict[str, Any]) -> dict[str, Any]:
    """In the child: the model loaded once, through the Runtime as the measured side loads it (its matrices
    through the layout cache), then a short generation."""
    from corert import Runtime
    from corert.config import RuntimeConfig
    from corert.implementation import engine_name

    base = RuntimeConfig.from_env(RuntimeConfig.from_toml(request["config"]) if request["config"] else None)
    rt = Runtime(base, model=request["model"], engine=request["engine"], plugins=request["plugins"] or {})
    engine = rt.generation_engine(request["model"])
    setting = rt.config.native.layout_cache
    if engine_name(engine) != "native" or setting == "off":
        return {"engine": engine, "layout_cache": setting, "converted": 0}
    variant = rt.resolve("engine", engine).variant.name
    snap = Snapshot(request["model"], setting)
    # A few tokens through the Runtime: its load converts (or maps) the layout, and the numba kernels of the
    # prompt and decode paths compile (or load from numba's cache) here, not in a side.
    try:
        rt.generate("The weather today is", max_tokens=4, temperature=0.0)
    except ModelError:  # a file without a vocabulary (the tests' tiny GGUFs): the Runtime cannot load it
        _load_matrices(request["model"], variant, setting, rt.scheduler.thread_budget().numba_threads)
    finally:
        rt.close()
    return {"engine": f"native:{variant}", "layout_cache": setting, "converted": snap.written(),
            "synced": snap.sync_written()}


def _load_matrices(model_path: str, variant: str, setting: str, threads: int) -> None:
    """The model's matrices alone through the layout cache, as the native engine's load takes them."""
    from corert.engines.native.model import Transformer, header_arrays
    from corert.models.gguf_header import read_header
    from corert.numba_setup import PARALLEL_LOCK, run_parallel

    header = read_header(model_path, want_arrays=header_arrays)
    with PARALLEL_LOCK:
        run_parallel(Transformer.load, header, variant, setting, threads=threads).close()


if __name__ == "__main__":
    print(json.dumps(_main(json.loads(sys.argv[1]))), flush=True)
