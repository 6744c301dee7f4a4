"""Flash attention on the llama.cpp engine (``llama.flash_attn``, applied by kv_cache=llama_cpp): on by default in
both of a model's llama.cpp contexts (its own and the continuous-batching one), off on request, shown by
``corert plugins``, and refused where the cache needs it.  In either setting corert's greedy tokens equal raw
llama-cpp-python's with the same setting, alone and in a batch; the two settings' tokens differ on the prompt
used, so each comparison shows the setting reached the context."""
from __future__ import annotations

import warnings

import pytest

from corert import Runtime
from corert.llama_lib import llama_cpp, prepare

from cli_support import assert_bad_input, cli_json, run_cli
from concurrent_requests import hold_first_step_until_joined, run_concurrently
from oracle import raw_greedy

PROMPT = "The three primary colours are"  # SmolLM2's greedy tokens part between the two attentions (token 8)
OTHER = "Once upon a time, in a small village at the edge of a great forest,"
N = 24
#: no CORERT_* variable of the calling environment changes the CLI runs' settings
CLEAN = {"CORERT_LLAMA_FLASH_ATTN": None, "CORERT_PLUGINS": None, "CORERT_ENGINE": None}


@pytest.fixture(scope="module")
def raw(smollm2):
    """Raw llama-cpp-python greedy tokens of PROMPT with flash attention on and off (one Llama at a time)."""
    prepare(smollm2)
    out = {}
    for fa in (True, False):
        llm = llama_cpp().Llama(model_path=smollm2, n_ctx=256, n_threads=2, flash_attn=fa, verbose=False)
        try:
            out[fa] = {p: raw_greedy(llm, p, N) for p in (PROMPT, OTHER)}
        finally:
            llm.close()
    return out


def _runtime(smollm2: str, **kw) -> Runtime:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Runtime(engine="llama.cpp", model=smollm2, n_ctx=256, plugins={"speculative": "plain"}, **kw)


def test_the_two_attentions_part_on_the_prompt(raw):
    assert raw[True][PROMPT] != raw[False][PROMPT]  # else the comparisons below could not tell them apart
    assert all(len(ids) == N for by_prompt in raw.values() for ids in by_prompt.values())  # no early end


@pytest.mark.parametrize("flash_attn", [True, False], ids=["default-on", "off"])
def test_both_contexts_use_the_setting_and_match_raw_llama_cpp(smollm2, raw, flash_attn, monkeypatch):
    kw = {} if flash_attn else {"llama": {"flash_attn": False}}
    lib = llama_cpp()
    want = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    with _runtime(smollm2, **kw) as solo:
        assert list(solo.generate(PROMPT, max_tokens=N, temperature=0).token_ids) == raw[flash_attn][PROMPT]
        loaded, _ = solo.load_generation_model()
        assert loaded.llama.context_params.flash_attn_type == want
        assert solo.kv_cache_info()["settings"] == {"cache_type": "f16", "flash_attn": flash_attn}
    with _runtime(smollm2, n_seqs=2, **kw) as batched:
        loaded, _ = batched.load_generation_model()
        service = loaded.batch_service()
        assert service.runner.context.ctx.params.flash_attn_type == want
        hold_first_step_until_joined(monkeypatch, service, 2)  # the two requests share every forward
        got, errors = run_concurrently(lambda p: batched.generate(p, max_tokens=N, temperature=0), [PROMPT, OTHER])
        assert errors == [None, None]
        assert [list(c.token_ids) for c in got] == [raw[flash_attn][PROMPT], raw[flash_attn][OTHER]]
        assert all(c.decoder_stats["continuous_batching"] for c in got)
        assert max(c.decoder_stats["peak_streams"] for c in got) == 2


def test_plugins_shows_the_choice_and_set_turns_it_off():
    base = ("plugins", "--json", "--engine", "llama.cpp")
    assert cli_json(*base, env=CLEAN)["kv_cache"]["settings"] == {"cache_type": "f16", "flash_attn": True}
    off = cli_json(*base, "--set", "llama.flash_attn=false", env=CLEAN)["kv_cache"]["settings"]
    assert off == {"cache_type": "f16", "flash_attn": False}
    assert cli_json(*base, env={**CLEAN, "CORERT_LLAMA_FLASH_ATTN": "0"})["kv_cache"]["settings"]["flash_attn"] is False
    text = run_cli("plugins", "--engine", "llama.cpp", env=CLEAN)
    assert text.returncode == 0 and "cache type f16, flash attention on" in text.stdout


def test_a_quantized_cache_without_flash_attention_is_refused(smollm2):
    proc = run_cli("generate", "--engine", "llama.cpp", "--model", smollm2, "--plugin", "kv_cache=llama_cpp:q8_0",
                   "--set", "llama.flash_attn=false", "--max-tokens", "4", "Hello", env=CLEAN)
    assert_bad_input(proc, "kv_cache=llama_cpp:q8_0 needs flash attention", "llama.flash_attn=false")
