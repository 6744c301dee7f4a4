"""Benchmark sides that run in their own process, so each side's peak memory is its own.

The parent (a bench module) starts one worker per side and sends it JSON commands on stdin, one per line;
the worker answers one JSON line each.  Rounds are interleaved by the parent (A B A B …) and a worker is
idle while the other runs, so they never compete for the cores.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from .spawn import popen


class SideProcess:
    """The parent's handle on one worker."""

    def __init__(self, name: str, init: dict[str, Any]):
        self.name = name
        self.proc = popen([sys.executable, "-m", "corert.tools.bench.sides"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, bufsize=1)
        self.info = self.call({"cmd": "init", **init})

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench side {self.name!r} died (exit code {self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            from corert.errors import CorertError

            raise CorertError(f"bench side {self.name!r}: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call({"cmd": "quit"})
            except Exception:  # noqa: BLE001
                pass
            self.proc.wait(timeout=30)


# -- worker side ------------------------------------------------------------------------------------------
class _RawLlama:
    """llama-cpp-python used directly, the way its own docs show: Llama(...).generate(tokens)."""

    def __init__(self, model_path: str, threads: int, n_ctx: int, flash_attn: bool, **_):
        from .raw_llama import eog_test, raw_llama

        self.llm = raw_llama(model_path, n_ctx, threads, flash_attn)
        self.is_eog = eog_test(self.llm)
        self.threads = threads

    def run(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        ids = self.llm.tokenize(prompt.encode("utf-8"), special=True)
        out: list[int] = []
        t0 = time.perf_counter()
        t1 = None
        for tok in self.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            if t1 is None:
                t1 = time.perf_counter()
            n_yielded = len(out) + 1
            if self.is_eog(tok):
                break
            out.append(int(tok))
            if len(out) >= max_tokens:
                break
        t2 = time.perf_counter()
        return {"ids": out, "prompt_tokens": len(ids), "prompt_s": t1 - t0, "decode_s": t2 - t1,
                "decode_tokens": n_yielded - 1}


class _Corert:
    def __init__(self, model_path: str, engine: str, plugins: list[str], threads: int | None, n_ctx: int,
                 **_):
        from corert import Runtime

        from .layout_warmup import Snapshot

        self.rt = Runtime(model=model_path, engine=engine, plugins=plugins or {}, n_threads=threads, n_ctx=n_ctx)
        snap = Snapshot(model_path, self.rt.config.native.layout_cache)
        loaded, _ = self.rt.load_generation_model()
        #: native layout files this side's own load wrote (0 when the bench warmed the cache: layout_warmup.py)
        self.layouts_written = snap.written()
        budget = self.rt.scheduler.thread_budget()
        self.engine = self.rt.generation_engine()  # auto's choice, or the one asked for
        self.threads = budget.llama_threads if self.engine == "llama.cpp" else budget.numba_threads
        self.plugins = self.rt.active_plugins()
        #: the llama.cpp contexts' flash attention (the native engine: what a llama.cpp side would get)
        self.flash_attn = bool(loaded.kv.context_params()["flash_attn"] if self.engine == "llama.cpp"
                               else self.rt.config.llama.flash_attn)

    def run(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        c = self.rt.generate(prompt, max_tokens=max_tokens, temperature=0.0)
        return {"ids": list(c.token_ids), "prompt_tokens": c.usage.prompt_tokens,
                "prompt_s": c.timings.prompt_ms / 1e3, "decode_s": c.timings.decode_ms / 1e3,
                "decode_tokens": c.timings.decode_tokens}


def spin_load() -> dict[str, Any] | None:
    from corert import spin

    return spin.LAST.to_dict() if spin.LAST is not None else None


def _worker() -> None:
    import warnings

    warnings.simplefilter("ignore")
    side = None
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "init":
                side = (_RawLlama if msg["side"] == "raw" else _Corert)(**msg)
                reply: dict[str, Any] = {"threads": side.threads, "plugins": getattr(side, "plugins", None),
                                         "engine": getattr(side, "engine", None),
                                         "flash_attn": getattr(side, "flash_attn", None),
                                         "layouts_written": getattr(side, "layouts_written", None),
                                         # OpenMP's spin, as corert.numba_setup chose it (None: not loaded),
                                         # and what the CPUs did while it chose (spin.py)
                                         "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
                                         "spin_load": spin_load()}
            elif msg["cmd"] == "run":
                reply = side.run(msg["prompt"], msg["max_tokens"])
            elif msg["cmd"] == "rss":
                reply = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
            else:
                return
        except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _worker()
