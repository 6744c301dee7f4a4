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
