"""Bad input: a clear, typed error (CLI: one line on stderr, exit code 2), and nothing else lost."""
from __future__ import annotations

import subprocess
import sys

import pytest

from corert import ConfigError, InputError, ModelError, PluginError, Runtime


@pytest.fixture(scope="module")
def rt(smollm2):
    r = Runtime(engine="llama.cpp", model=smollm2, n_ctx=128, plugins={"tokenizer": "llama_cpp"})
    yield r
    r.close()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corert.cli", *args], capture_output=True, text=True,
                          env={**__import__("os").environ, "CORERT_DISABLE": ""})


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("corert: warning:")]
    assert len(errors) == 1 and errors[0].startswith("corert: error:"), proc.stderr
    assert needle in errors[0], errors[0]


def test_unknown_model_lists_known_ones(rt):
    with pytest.raises(ModelError, match="smollm2-135m-instruct"):
        rt.generate("hi", model="no-such-model")
    _one_line_error(_cli("generate", "--model", "no-such-model", "hi"), "known models")


def test_file_that_is_not_gguf(tmp_path, rt):
    bad = tmp_path / "fake.gguf"
    bad.write_bytes(b"this is not a model at all" * 100)
    with pytest.raises(ModelError, match="not a GGUF file"):
        rt.generate("hi", model=str(bad))
    _one_line_error(_cli("generate", "--model", str(bad), "hi"), "not a GGUF file")


def test_truncated_gguf(tmp_path, smollm2, rt):
    cut = tmp_path / "cut.gguf"
    with open(smollm2, "rb") as src:
        cut.write_bytes(src.read(20_000_000))
    with pytest.raises(ModelError, match="truncated"):
        rt.generate("hi", model=str(cut))
    _one_line_error(_cli("generate", "--model", str(cut), "hi"), "truncated")


def test_missing_model_path(rt):
    with pytest.raises(ModelError, match="not found"):
        rt.generate("hi", model="/nonexistent/model.gguf")


def test_empty_prompt(rt):
    with pytest.raises(InputError, match="empty"):
        rt.generate("")
    _one_line_error(_cli("generate", ""), "empty")


@pytest.mark.parametrize("n", [0, -5])
def test_max_tokens_not_positive(rt, n):
    with pytest.raises(InputError, match="max_tokens"):
        rt.generate("hi", max_tokens=n)
    _one_line_error(_cli("generate", "--max-tokens", str(n), "hi"), "max_tokens")


def test_prompt_longer_than_context(rt):
    with pytest.raises(InputError, match="context"):
        rt.generate("word " * 400, max_tokens=4)
    _one_line_error(_cli("generate", "--ctx", "64", "word " * 600), "context")


def _counting(n: int) -> str:
    return ", ".join(str(i) for i in range(1, n + 1)) + ","


def test_generation_stops_at_a_full_context(rt):
    """More tokens asked for than the context has room for: the generation ends where the context does, with
    finish_reason "length", and the next request is served as usual."""
    loaded, _ = rt.load_generation_model()
    # llama.cpp rounds the context up to a multiple of 256 tokens (n_ctx=128 holds 256): the loaded model's is
    # the one that fills up
    assert 128 <= loaded.n_ctx < 1000
    # greedy SmolLM2 keeps counting past the context's end: never an end-of-text token before it.  The prompt
    # fills all but ~24 tokens of the context (one batch), so the decode loop runs into the end in ~24 steps
    # instead of ~240
    n = 10
    while len(rt.tokenize(_counting(n + 1))) < loaded.n_ctx - 24:
        n += 1
    prompt = _counting(n)
    out = rt.generate(prompt, max_tokens=1000, temperature=0)
    assert out.finish_reason == "length"
    assert out.usage.prompt_tokens == len(rt.tokenize(prompt)) and out.usage.completion_tokens >= 20
    assert out.usage.total_tokens == loaded.n_ctx
    assert rt.generate("The sun is", max_tokens=4, temperature=0).usage.completion_tokens == 4


def test_unknown_plugin_and_variant_names():
    with pytest.raises(PluginError, match="known"):
        Runtime(plugins={"kv_cache": "no_such_cache"})
    with pytest.raises(PluginError, match="unknown variant"):
        Runtime(plugins={"kv_cache": "llama_cpp:q2"})
    _one_line_error(_cli("generate", "--plugin", "tokenizer=nope", "hi"), "unknown tokenizer plugin")
    _one_line_error(_cli("generate", "--plugin", "kv_cache=llama_cpp:q2", "hi"), "unknown variant")
    _one_line_error(_cli("generate", "--plugin", "garbage", "hi"), "AREA=NAME")
    _one_line_error(_cli("generate", "--engine", "nope", "hi"), "unknown engine plugin")


def test_bad_sampling_values(rt):
    for kw, needle in ((dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(top_k=-1), "top_k"),
                       (dict(priority="urgent"), "priority")):
        with pytest.raises(InputError, match=needle):
            rt.generate("hi", **kw)


def test_bad_config_values():
    with pytest.raises(ConfigError):
        Runtime(n_ctx=0)
    with pytest.raises(ConfigError, match="unknown Runtime option"):
        Runtime(no_such_option=1)


def test_cli_usage_errors_are_one_line():
    _one_line_error(_cli("generate", "--no-such-flag", "x"), "unrecognized arguments")
    _one_line_error(_cli("frobnicate"), "invalid choice")


def test_bad_requests_harm_nothing_else(rt):
    before = rt.generate("The sun is", max_tokens=16, temperature=0)
    for bad in (dict(prompt=""), dict(prompt="x", max_tokens=0), dict(prompt="word " * 400)):
        with pytest.raises(InputError):
            rt.generate(**{"max_tokens": 4, **bad})
    after = rt.generate("The sun is", max_tokens=16, temperature=0)
    assert after.token_ids == before.token_ids


def test_detokenize_out_of_range(rt):
    with pytest.raises(InputError, match="out of range"):
        rt.detokenize([1, 10**9])
    _one_line_error(_cli("detokenize", "1", "999999999"), "out of range")
    _one_line_error(_cli("detokenize", "one", "two"), "integers")
