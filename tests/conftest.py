"""Shared fixtures: real models from the model store (pulled on first use), a quiet plugin host."""
from __future__ import annotations

import os
import warnings

import pytest
from hypothesis import settings

from corert.models.store import ModelStore

# In CI a property test draws the same examples every run, so CI passes or fails on the code, not on the draw;
# elsewhere each run draws new ones (and keeps the failures it found in hypothesis' database).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI", "").lower() in ("1", "true"):
    settings.load_profile("ci")

GEN_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def store() -> ModelStore:
    return ModelStore(progress=False)


@pytest.fixture(scope="session")
def smollm2(store) -> str:
    return str(store.resolve(GEN_MODEL))


@pytest.fixture(scope="session")
def qwen05(store) -> str:
    return str(store.resolve("qwen2.5-coder-0.5b-instruct"))


@pytest.fixture(scope="session")
def gemma(store) -> str:
    return str(store.resolve("gemma3-270m"))


@pytest.fixture(scope="session")
def runtime():
    """One llama.cpp runtime for the session (model loads are the slow part of these tests)."""
    from corert import Runtime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = Runtime(engine="llama.cpp", model=GEN_MODEL)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def raw_llama(smollm2):
    """llama-cpp-python used directly: the oracle, with flash attention as corert's llama.cpp engine has it
    (llama.flash_attn: on unless the environment turns it off; the two attentions' greedy tokens may part)."""
    from corert.config import LlamaConfig
    from corert.llama_lib import llama_cpp, prepare

    prepare(smollm2)
    return llama_cpp().Llama(model_path=smollm2, n_ctx=2048, n_threads=2, flash_attn=LlamaConfig.from_env().flash_attn,
                             verbose=False)


@pytest.fixture(scope="session")
def need_variant():
    """``need_variant(name)`` skips the test when this CPU cannot run the native engine's variant ``name``:
    vnni (and its one-level forms) needs AVX-512 VNNI; the f32 kernel variants are plain numba loops and run
    on any CPU."""
    from corert.cpu import info
    from corert.engines.native.plugin import VARIANTS

    def need(name: str) -> None:
        variant = next(v for v in VARIANTS if v.name == name)
        if not variant.supported(info()):
            pytest.skip(f"this CPU lacks {', '.join(sorted(variant.requires - info().features))}")
    return need


def pytest_collection_modifyitems(items):
    """The emulated aarch64 run's test goes last: its run starts in the background with tests/aarch64 (the
    session's first file) and takes the CPU the other tests leave idle; the test only collects it."""
    last = [item for item in items if item.name == "test_emulated_aarch64_run"]
    items[:] = [item for item in items if item not in last] + last
