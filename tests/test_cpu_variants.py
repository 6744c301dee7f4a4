"""Variant choice under forced CPU features."""
from __future__ import annotations

import pytest

from corert import Implementation, PluginError, cpu, hookimpl
from corert.plugin_host import PluginHost


@pytest.fixture
def host():
    class Kernels:
        @hookimpl
        def register_tokenizers(self, register):
            register(Implementation(area="tokenizer", name="kern", variants=cpu.simd_variants(),
                                    factory=lambda variant, **ctx: variant, priority=99))

    return PluginHost.build(extra=[("kern", Kernels())])


@pytest.mark.parametrize("features,expected", [
    ({"avx2", "avx512"}, "avx2"),
    ({"avx2"}, "avx2"),
    ({"neon"}, "neon"),
    (set(), "scalar"),
])
def test_best_supported_variant_is_chosen(host, features, expected):
    with cpu.override(features):
        res = host.resolve("tokenizer", "kern")
    assert res.variant.name == expected
    assert host.create(res) == expected


def test_explicit_variant_overrides_the_best(host):
    with cpu.override({"avx2"}):
        assert host.resolve("tokenizer", "kern:scalar").variant.name == "scalar"


def test_variant_the_cpu_lacks_is_a_clear_error(host):
    with cpu.override({"neon"}):
        with pytest.raises(PluginError, match="needs CPU features avx2"):
            host.resolve("tokenizer", "kern:avx2")


def test_detection_reports_real_features():
    info = cpu.info()
    assert info.machine
    if info.machine == "x86_64":
        assert info.isa in ("avx512", "avx2", "scalar")


def test_env_override(monkeypatch):
    monkeypatch.setenv("CORERT_CPU_FEATURES", "neon")
    cpu._detect.cache_clear()
    try:
        assert cpu.info().features == {"neon"}
    finally:
        monkeypatch.delenv("CORERT_CPU_FEATURES")
        cpu._detect.cache_clear()


# -- the real kernel plugins under forced features ------------------------------------------------------------
@pytest.mark.parametrize("features,engine,tokenizer,kv_kernel", [
    ({"avx2", "avx512", "avx512f", "avx512bw", "avx512_vnni"}, "vnni", "avx2", "wide"),
    ({"avx2", "avx512", "avx512f", "avx512bw"}, "avx2", "avx2", "wide"),  # AVX-512 without VNNI
    ({"avx2"}, "avx2", "avx2", "wide"),
    ({"neon"}, "neon", "neon", "wide"),
    (set(), "scalar", "scalar", "scalar"),
])
def test_kernel_plugins_fall_back(features, engine, tokenizer, kv_kernel):
    """Each kernel plugin's default on a CPU with ``features`` (the child-process runs are in
    test_cpu_profiles.py)."""
    from corert.plugins.kv_cache.paged.config import PagedConfig

    host = PluginHost.build()
    with cpu.override(features):
        assert host.resolve("engine", "native").variant.name == engine
        assert host.resolve("tokenizer", "bpe", engine="native").variant.name == tokenizer
        assert PagedConfig.from_env("q8", environ={}).kernel == kv_kernel


@pytest.fixture
def redetect(monkeypatch):
    """``redetect(**env)``: this CPU's features as detected with these environment variables."""
    for name in ("CORERT_CPU_FEATURES", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES"):
        monkeypatch.delenv(name, raising=False)

    def detect(**env: str) -> frozenset[str]:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        cpu._detect.cache_clear()
        return cpu._detect().features

    yield detect
    cpu._detect.cache_clear()


def test_features_numba_does_not_compile_for_are_not_offered(redetect):
    """numba compiling for another CPU (NUMBA_CPU_NAME=generic, or a NUMBA_CPU_FEATURES list) must not get
    a variant that needs what that CPU lacks: LLVM aborts the process on vnni's vpdpbusd there."""
    real = redetect()
    if not {"avx2", "avx512_vnni"} <= real:
        pytest.skip("needs a CPU with AVX2 and AVX-512 VNNI")
    assert redetect(NUMBA_CPU_NAME="haswell") == real  # a CPU name alone: numba keeps this CPU's features
    assert redetect(NUMBA_CPU_NAME="generic") == frozenset()
    without_vnni = redetect(NUMBA_CPU_NAME="x86-64",
                            NUMBA_CPU_FEATURES="+avx2,+fma,+avx512f,+avx512bw,-avx512vnni")
    assert {"avx2", "avx512", "avx512bw"} <= without_vnni and "avx512_vnni" not in without_vnni
    assert redetect(NUMBA_CPU_FEATURES="+avx2,+fma,+avx512f,+avx512bw,+avx512vnni") >= {"avx512_vnni"}
    assert redetect(CORERT_CPU_FEATURES="avx2") == {"avx2"}  # the test override still wins
