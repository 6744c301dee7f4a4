"""Structured output on SmolLM2: Hypothesis-generated JSON schemas whose every output validates; a grammar
that admits any text leaves greedy output unchanged; the same constrained request gives the same tokens on
the plain llama.cpp path, the plain native path and the native batcher, and llama.cpp's batcher keeps each
stream to its own schema; the grammar mask reaches the tokens (a GBNF choice) and ends generation when
complete."""
from __future__ import annotations

import json
import warnings

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from corert import Runtime

from concurrent_requests import hold_first_step_until_joined, run_concurrently

ASK = ("<|im_start|>user\nDescribe a pet as a JSON object.<|im_end|>\n<|im_start|>assistant\n")
ANY_TEXT = 'root ::= [^\\x00]*'
PET = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                        "age": {"type": "integer", "minimum": 0, "maximum": 30},
                                        "kind": {"enum": ["cat", "dog", "fish"]}},
       "required": ["name", "age", "kind"], "additionalProperties": False}


def _fmt(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}


# -- bounded schemas: objects of a few typed properties, enums, arrays, one level of nesting ---------------
_NAMES = st.sampled_from(["id", "name", "size", "tags", "ok", "color", "items", "info"])
_LEAVES = st.one_of(
    st.just({"type": "integer", "minimum": -50, "maximum": 50}),
    st.just({"type": "boolean"}),
    st.just({"type": "string", "maxLength": 10}),
    st.lists(st.sampled_from(["red", "green", "blue", "big", "small"]), min_size=1, max_size=3,
             unique=True).map(lambda e: {"enum": e}),
    st.just({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3}),
)


def _objects(values) -> st.SearchStrategy:
    return st.dictionaries(_NAMES, values, min_size=1, max_size=3).flatmap(
        lambda props: st.sets(st.sampled_from(sorted(props))).map(
            lambda req: {"type": "object", "properties": props, "required": sorted(req),
                         "additionalProperties": False}))


SCHEMAS = _objects(st.one_of(_LEAVES, _objects(_LEAVES)))


@pytest.mark.slow
@settings(max_examples=5, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(schema=SCHEMAS)
def test_every_output_validates_against_its_schema(runtime, schema):
    out = runtime.generate(ASK, max_tokens=160, temperature=0.7, seed=1, response_format=_fmt(schema))
    assert out.finish_reason == "stop", out.text  # the grammar ended generation, not max_tokens
    jsonschema.validate(json.loads(out.text), schema)


#: a prompt whose greedy object closes: with ASK, SmolLM2's greedy answer repeats keys past any budget once the
#: llama.cpp engine runs flash attention (its default), and the test would measure the model, not the mask
ASK_TWO_KEYS = ("<|im_start|>user\nDescribe a pet as a JSON object with two keys, name and age.<|im_end|>\n"
                "<|im_start|>assistant\n")


def test_json_object_gives_an_object(runtime):
    out = runtime.generate(ASK_TWO_KEYS, max_tokens=160, temperature=0, response_format={"type": "json_object"})
    assert out.finish_reason == "stop" and isinstance(json.loads(out.text), dict)


def test_a_grammar_admitting_any_text_leaves_greedy_output_unchanged(runtime):
    free = runtime.generate(ASK, max_tokens=24, temperature=0)
    assert runtime.generate(ASK, max_tokens=24, temperature=0, grammar=ANY_TEXT).token_ids == free.token_ids


def test_a_choice_grammar_picks_one_alternative_and_ends(runtime):
    out = runtime.generate("Is the sky green? Answer:", max_tokens=20, temperature=0,
                           grammar='root ::= " yes" | " no" | " maybe not"')
    assert out.text in (" yes", " no", " maybe not") and out.finish_reason == "stop"


@pytest.fixture(scope="module")
def native_runtimes(smollm2):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = Runtime(engine="native", model=smollm2, n_seqs=1, plugins={"kv_cache": "contiguous"})
        batched = Runtime(engine="native", model=smollm2, n_seqs=2, plugins={"kv_cache": "paged:f32"})
    yield one, batched
    one.close()
    batched.close()


@pytest.mark.slow
def test_every_path_gives_the_same_constrained_output(runtime, native_runtimes, monkeypatch):
    """Plain llama.cpp, plain native and the native batcher (two concurrent streams sharing forwards, each
    with its own grammar state) choose the same tokens under the same schema."""
    one, batched = native_runtimes
    options = dict(max_tokens=80, temperature=0, response_format=_fmt(PET))
    want = runtime.generate(ASK, **options)
    jsonschema.validate(json.loads(want.text), PET)
    assert one.generate(ASK, **options).token_ids == want.token_ids
    loaded, _ = batched.load_generation_model()
    hold_first_step_until_joined(monkeypatch, loaded.batch_service(), 2)
    flag = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
            "additionalProperties": False}
    other = dict(options, response_format=_fmt(flag))
    results, errors = run_concurrently(lambda o: batched.generate(ASK, **o), [options, other])
    assert errors == [None, None]
    assert results[0].decoder_stats.get("continuous_batching") and results[0].token_ids == want.token_ids
    jsonschema.validate(json.loads(results[1].text), flag)


@pytest.mark.slow
def test_the_llama_cpp_batcher_holds_each_stream_to_its_schema(smollm2, monkeypatch):
    """llama.cpp's continuous batching (n_seqs > 1): two concurrent streams, each with its own grammar, both
    valid.  Its batched logits are not bit-exact with one-by-one steps, so validity is what is compared."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = Runtime(engine="llama.cpp", model=smollm2, n_seqs=2)
    flag = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
            "additionalProperties": False}
    with rt:
        loaded, _ = rt.load_generation_model()
        hold_first_step_until_joined(monkeypatch, loaded.batch_service(), 2)
        results, errors = run_concurrently(
            lambda schema: rt.generate(ASK, max_tokens=80, temperature=0, response_format=_fmt(schema)),
            [PET, flag])
    assert errors == [None, None]
    for out, schema in zip(results, (PET, flag)):
        assert out.decoder_stats["peak_streams"] == 2 and out.finish_reason == "stop"
        jsonschema.validate(json.loads(out.text), schema)
