"""The llama.cpp engine on whatever CPU it lands on: a portable build whose CPU backend ggml picks at load time,
and extra weight buffers (AMX and repacked layouts) only where a child process saw them run.

The faulting CPU (an Intel Xeon advertising AMX in a VM that cannot run it) is not always the one the tests run
on, so the fault is stood in for by a child that dies the same way (SIGSEGV after the plain step); everything
else runs the real build, the real probe and the real model.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corert import llama_probe

CHILD_TIMEOUT = 300


def _child(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=CHILD_TIMEOUT,
                          env={**os.environ, **env}, stdin=subprocess.DEVNULL)


def _lib_dir() -> Path:
    return llama_probe.llama_package_dir() / "lib"


def _cpu_backends() -> list[str]:
    return sorted(p.name[len("libggml-cpu-"):-len(".so")] for p in _lib_dir().glob("libggml-cpu-*.so"))


@pytest.fixture
def probe_cache(tmp_path, monkeypatch):
    """An empty verdict cache, for this process and the children it starts."""
    monkeypatch.setenv("CORERT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(llama_probe.ENV_SETTING, raising=False)
    return tmp_path


def test_build_is_portable_with_load_time_cpu_backends():
    """setup.sh's build: no CPU backend linked in, one module per CPU level, the baseline among them."""
    backends = _cpu_backends()
    assert "x64" in backends or "armv8.0_1" in backends, backends
    assert len(backends) >= 5, backends
    assert not (_lib_dir() / "libggml-cpu.so").exists(), "a build-machine-tuned CPU backend is linked in"


def test_real_probe_decides_and_caches(probe_cache, smollm2):
    verdict = llama_probe.decide(smollm2)
    assert verdict.source == "probe", verdict.reason
    assert len(verdict.tokens_plain) == llama_probe.PROBE_TOKENS
    if verdict.extra_buffers:  # a CPU whose extra buffers run: they must give the same greedy tokens
        assert verdict.tokens_extra == verdict.tokens_plain
    assert verdict.model == Path(smollm2).name  # a name, never a path of this machine
    cached = llama_probe.cached_verdict()
    assert cached == verdict
    assert list(probe_cache.glob("llama-probe/*.json"))


def _faulting_child(plain_tokens: list[int]) -> list[str]:
    """A child that passes the plain step, then dies by SIGSEGV as the AMX buffer does on ldtilecfg."""
    code = ("import json, os, signal, sys; "
            f"print(json.dumps({{'step': 'plain', 'tokens': {plain_tokens!r}}}), flush=True); "
            "os.kill(os.getpid(), signal.SIGSEGV)")
    return [sys.executable, "-c", code]


def test_fault_with_extra_buffers_turns_them_off_and_is_cached(probe_cache, smollm2):
    verdict = llama_probe.decide(smollm2, command=_faulting_child([1, 2, 3, 4]))
    assert (verdict.extra_buffers, verdict.source) == (False, "probe")
    assert "SIGSEGV" in verdict.reason
    assert llama_probe.cached_verdict() == verdict
    # Every later process on this build and CPU loads without extra buffers, raw llama-cpp-python included,
    # and still generates.
    code = ("from corert.llama_lib import llama_cpp, prepare; import json; "
            f"lib = llama_cpp(); v = prepare({smollm2!r}); "
            "p = lib.llama_cpp.llama_model_default_params(); "
            f"llm = lib.Llama(model_path={smollm2!r}, n_ctx=64, n_threads=2, verbose=False); "
            "toks = [int(t) for _, t in zip(range(3), llm.generate(llm.tokenize(b'The sea is'), temp=0.0))]; "
            "print(json.dumps({'extra': p.use_extra_bufts, 'source': v.source, 'tokens': toks}))")
    out = _child(code, {})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["extra"] is False and result["source"] == "probe" and len(result["tokens"]) == 3


def test_inconclusive_probe_is_not_cached(probe_cache, smollm2):
    """A model that fails even without extra buffers says nothing about the CPU: off for now, probe again later."""
    failing = [sys.executable, "-c", "import sys; print('llama.cpp could not load the model', file=sys.stderr); "
                                     "sys.exit(1)"]
    verdict = llama_probe.decide(smollm2, command=failing)
    assert (verdict.extra_buffers, verdict.source) == (False, "default")
    assert "could not load the model" in verdict.reason
    assert llama_probe.cached_verdict() is None


def test_probe_that_hangs_is_bounded(probe_cache, smollm2):
    hanging = [sys.executable, "-c", "import time; time.sleep(60)"]
    verdict = llama_probe.decide(smollm2, command=hanging, timeout=1.0)
    assert (verdict.extra_buffers, verdict.source) == (False, "default")
    assert "timed out" in verdict.reason


@pytest.mark.parametrize("value,expected", [("off", False), ("on", True)])
def test_env_setting_skips_the_probe(probe_cache, smollm2, monkeypatch, value, expected):
    monkeypatch.setenv(llama_probe.ENV_SETTING, value)
    verdict = llama_probe.decide(smollm2, command=_faulting_child([1]))  # would say "off" if it ran
    assert (verdict.extra_buffers, verdict.source) == (expected, "env")
    assert llama_probe.cached_verdict() is None


def test_plugins_shows_the_verdict(probe_cache, smollm2):
    env = {"CORERT_CACHE_DIR": str(probe_cache)}
    first = subprocess.run([sys.executable, "-m", "corert.cli", "plugins", "--json"], capture_output=True,
                           text=True, timeout=CHILD_TIMEOUT, env={**os.environ, **env}, stdin=subprocess.DEVNULL)
    assert first.returncode == 0, first.stderr[-2000:]
    info = json.loads(first.stdout)["llama_cpp"]
    assert info["available"] and info["extra_buffers_source"] == "probe", info
    assert info["cpu_backend"].startswith("libggml-cpu-") and info["cpu_backend_choice"].startswith("ggml's best")
    text = subprocess.run([sys.executable, "-m", "corert.cli", "plugins"], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT, env={**os.environ, **env}, stdin=subprocess.DEVNULL)
    assert text.returncode == 0
    assert "extra weight buffers" in text.stdout and "[probe]" in text.stdout


def _greedy_with_backend(smollm2: str, backend: str) -> subprocess.CompletedProcess:
    code = ("from corert.llama_lib import llama_cpp, describe; import json; lib = llama_cpp(); "
            f"llm = lib.Llama(model_path={smollm2!r}, n_ctx=128, n_threads=2, verbose=False); "
            "toks = [int(t) for _, t in zip(range(8), llm.generate(llm.tokenize(b'The capital of France is'), "
            "temp=0.0))]; "
            "print(json.dumps({'tokens': toks, 'backend': describe()['cpu_backend']}))")
    return _child(code, {"CORERT_GGML_CPU_BACKEND": backend, llama_probe.ENV_SETTING: "off"})


@pytest.mark.slow
def test_every_cpu_backend_this_cpu_runs_generates_the_same_text(smollm2):
    """Forced CPU levels, from the x86-64 baseline up: each one this CPU can execute loads and greedily
    generates the same tokens as ggml's own choice; the ones it can't are refused with a typed error."""
    chosen = _greedy_with_backend(smollm2, "")
    assert chosen.returncode == 0, chosen.stderr[-2000:]
    reference = json.loads(chosen.stdout.strip().splitlines()[-1])["tokens"]
    ran = []
    for backend in _cpu_backends():
        out = _greedy_with_backend(smollm2, backend)
        if out.returncode != 0:
            assert "needs features this CPU lacks" in out.stderr, out.stderr[-2000:]
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["backend"] == f"libggml-cpu-{backend}.so"
        assert result["tokens"] == reference, backend
        ran.append(backend)
    assert "x64" in ran or "armv8.0_1" in ran, ran  # the baseline every CPU of the architecture runs


def test_unknown_cpu_backend_is_a_clear_error(smollm2):
    out = _greedy_with_backend(smollm2, "pentium4")
    assert out.returncode != 0
    assert "PluginError" in out.stderr and "no such ggml CPU backend" in out.stderr


def test_model_that_kills_llama_cpp_even_without_extra_buffers_is_refused(probe_cache, smollm2):
    from corert.errors import ModelError

    dies = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    with pytest.raises(ModelError, match="died .*SIGSEGV"):
        llama_probe.decide(smollm2, command=dies)
    assert llama_probe.cached_verdict() is None
