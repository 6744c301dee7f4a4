"""engine="auto" (the default): per model file, native where it runs the file on this CPU, else llama.cpp,
with the reason; an explicit engine or a plugin selection that needs an engine wins.  No model is loaded
here: the choice reads the file's header only."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cli_support import cli_json
from corert import Runtime
from corert.engines.native import support
from corert.models.gguf_header import read_header
from tiny_gguf import write_tiny_llama

@pytest.fixture(scope="module")
def q2k_file(tmp_path_factory):
    import gguf

    return write_tiny_llama(tmp_path_factory.mktemp("auto") / "tiny-q2k.gguf", gguf.GGMLQuantizationType.Q2_K)


def test_support_check_names_the_unsupported_tensor_and_type(q2k_file, tmp_path):
    verdict = support.check(read_header(q2k_file, want_arrays=False))
    assert not verdict.ok and "blk.0.ffn_down.weight" in verdict.reason and "Q2_K" in verdict.reason
    ok = support.check(read_header(write_tiny_llama(tmp_path / "q8.gguf"), want_arrays=False))
    assert ok.ok and ok.reason.startswith("llama with F32, Q4_0, Q8_0 on the "), ok.reason


def test_support_check_wants_a_vectorized_variant(smollm2):
    from corert.cpu import override

    header = read_header(smollm2, want_arrays=False)
    with override(()) as cpu:  # a CPU with no SIMD feature: only the scalar reference would run
        verdict = support.check(header, cpu)
    assert not verdict.ok and "no vectorized variant" in verdict.reason


def test_auto_runs_a_registry_model_natively_and_an_unsupported_file_on_llama_cpp(smollm2, q2k_file):
    rt = Runtime(model=smollm2)
    try:
        assert rt.config.engine == "auto"
        choice = rt.engine_choice()
        assert (choice.requested, choice.engine) == ("auto", "native")
        assert "llama with" in choice.reason and "Q4_1" in choice.reason
        assert rt.active_plugins()["kv_cache"].startswith("contiguous")  # the native engine's default cache
        fallback = rt.engine_choice(q2k_file)  # the same runtime, another file: chosen per file
        assert fallback.engine == "llama.cpp"
        assert "not native: tensor 'blk.0.ffn_down.weight' has type Q2_K" in fallback.reason
        assert rt.active_plugins(model=q2k_file)["kv_cache"].startswith("llama_cpp")
    finally:
        rt.close()


def test_an_explicit_engine_or_an_engine_bound_plugin_wins(smollm2, monkeypatch):
    rt = Runtime(model=smollm2, engine="llama.cpp")
    assert rt.engine_choice().to_dict() == {"requested": "llama.cpp", "engine": "llama.cpp",
                                            "reason": "selected explicitly"}
    monkeypatch.setenv("CORERT_ENGINE", "llama.cpp")
    assert Runtime(model=smollm2).generation_engine() == "llama.cpp"
    monkeypatch.delenv("CORERT_ENGINE")
    bound = Runtime(model=smollm2, plugins={"kv_cache": "llama_cpp:q8_0"}).engine_choice()
    assert bound.engine == "llama.cpp" and "kv_cache=llama_cpp:q8_0 does not work with it" in bound.reason


def test_plugins_json_says_which_engine_auto_chose_and_why(smollm2):
    info = cli_json("plugins", "--json", "--model", smollm2)
    assert info["engine"] == "auto"
    assert info["engine_choice"]["engine"] == "native" and "Q4_1" in info["engine_choice"]["reason"]
    assert info["areas"]["engine"]["chosen"]["name"] == "native"
    assert info["areas"]["kv_cache"]["chosen"]["name"] == "contiguous"
    assert json.loads(json.dumps(info))  # plain JSON


def test_embeddings_route_to_the_onnx_engine_under_auto(store):
    store.resolve("minilm-l6")
    rt = Runtime()
    try:
        assert rt.embed(["a sentence to embed"]).embeddings.shape == (1, 384)
    finally:
        rt.close()
