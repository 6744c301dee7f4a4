"""The Sampler's logit processors on SmolLM2's real logits: logit bias and OpenAI's presence/frequency
penalties against a numpy reference, logprobs against log_softmax of the processed logits (also end to end
through the Runtime, replayed on a session), the Runtime's range checks, and the refusal on a decoder that
accepts drafts without the Sampler."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from corert import Runtime
from corert.errors import InputError
from corert.interfaces import SamplingParams
from corert.prefill import prefill
from corert.sampling import Sampler

PROMPT = "<|im_start|>user\nName three fruits, again and again.<|im_end|>\n<|im_start|>assistant\n"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x[np.isfinite(x)].max()
    return x - (m + np.log(np.exp(x - m).sum()))


def _reference(logits: np.ndarray, bias: dict[int, float], counts: dict[int, int], presence: float,
               frequency: float) -> np.ndarray:
    """OpenAI's definition: mu[j] + bias[j] - c[j] * frequency - (c[j] > 0) * presence."""
    ref = logits.astype(np.float64).copy()
    for t, b in bias.items():
        ref[t] += b
    for t, c in counts.items():
        ref[t] -= c * frequency + presence
    return ref


@pytest.fixture(scope="module")
def model(runtime):
    return runtime.load_generation_model()


def test_bias_and_penalties_match_the_definition_on_real_logits(model, runtime):
    loaded, lock = model
    ids = runtime.tokenize(PROMPT, parse_special=True)
    banana = runtime.tokenize(" banana")[0]
    bias = {banana: 5.0, runtime.tokenize(" apple")[0]: -100.0}
    params = SamplingParams(temperature=0, presence_penalty=0.7, frequency_penalty=1.3, logit_bias=bias,
                            logprobs=4)
    sample, counts = Sampler(params), {}
    with lock:
        session = loaded.session()
        logits = prefill(session, ids).copy()
        for _ in range(12):
            ref = _reference(logits, bias, counts, 0.7, 1.3)
            np.testing.assert_allclose(sample.process(logits), ref, rtol=0, atol=1e-4)
            token = sample(logits)
            assert token == int(np.argmax(ref))
            counts[token] = counts.get(token, 0) + 1
            logits = session.eval((token,)).copy()
    assert max(counts.values()) > 1, "the check needs a repeated token to see the frequency term"
    assert banana in counts  # +5 made it win somewhere; -100 on " apple" kept it out
    assert runtime.tokenize(" apple")[0] not in counts


def test_logprobs_are_log_softmax_of_the_processed_logits(model, runtime):
    loaded, lock = model
    ids = runtime.tokenize(PROMPT, parse_special=True)
    got = []
    params = SamplingParams(temperature=0.9, top_k=20, seed=5, presence_penalty=0.5, logprobs=5,
                            report=got.append)
    sample = Sampler(params)
    with lock:
        session = loaded.session()
        logits = prefill(session, ids)
        for _ in range(6):
            ref = _log_softmax(sample.process(logits).copy())
            token = sample(logits)
            lp = got[-1]
            assert lp.token == token and abs(lp.logprob - ref[token]) < 1e-4
            top = np.argsort(-ref, kind="stable")[:5]
            assert [t for t, _ in lp.top] == top.tolist()
            np.testing.assert_allclose([v for _, v in lp.top], ref[top], atol=1e-4)
            logits = session.eval((token,))


def test_completion_logprobs_replay_on_a_session(model, runtime):
    """End to end: the Completion's and the stream's logprobs equal log_softmax of the session's logits
    after the request's bias and penalties, token by token."""
    loaded, lock = model
    bias = {runtime.tokenize(" banana")[0]: 3.0}
    options = dict(max_tokens=8, temperature=0, logprobs=2, frequency_penalty=1.0, logit_bias=bias)
    done = runtime.generate(PROMPT, **options)
    streamed = [lp for c in runtime.stream(PROMPT, **options) for lp in c.logprobs]
    assert len(done.logprobs) == len(done.token_ids) > 0 and streamed == list(done.logprobs)
    counts: dict[int, int] = {}
    with lock:
        session = loaded.session()
        logits = prefill(session, runtime.tokenize(PROMPT, parse_special=True))
        for lp in done.logprobs:
            ref = _log_softmax(_reference(logits, bias, counts, 0.0, 1.0))
            assert abs(lp.logprob - ref[lp.token]) < 1e-4
            assert lp.piece == runtime.tokenizer().token_bytes(lp.token) and len(lp.top) == 2
            counts[lp.token] = counts.get(lp.token, 0) + 1
            logits = session.eval((lp.token,))
    shaped = done.to_dict()["choices"][0]["logprobs"]
    assert shaped["tokens"] == [lp.text for lp in done.logprobs] and len(shaped["top_logprobs"][0]) == 2


def test_greedy_with_processors_off_is_the_plain_path(runtime):
    plain = runtime.generate(PROMPT, max_tokens=8, temperature=0)
    assert runtime.generate(PROMPT, max_tokens=8, temperature=0, logprobs=0).token_ids == plain.token_ids
    assert runtime.generate(PROMPT, max_tokens=8, temperature=0, logit_bias={plain.token_ids[0]: 0.0}
                            ).token_ids == plain.token_ids


@pytest.mark.parametrize("options, message", [
    ({"presence_penalty": 2.5}, "presence_penalty must be in [-2, 2]"),
    ({"frequency_penalty": -3}, "frequency_penalty must be in [-2, 2]"),
    ({"frequency_penalty": "x"}, "frequency_penalty must be a number"),
    ({"logit_bias": {"5": 101}}, "logit_bias[5] must be in [-100, 100]"),
    ({"logit_bias": {"49152": 1}}, "not in the vocabulary"),
    ({"logit_bias": {"abc": 1}}, "keys must be token ids"),
    ({"logprobs": 21}, "top_logprobs must be an integer in [0, 20]"),
    ({"grammar": "root ::= undefined_rule"}, "grammar"),
    ({"response_format": {"type": "xml"}}, "response_format type"),
    ({"response_format": {"type": "json_object"}, "grammar": 'root ::= "a"'}, "not both"),
    ({"best_of": 2}, "best_of"),
])
def test_out_of_range_options_are_input_errors(runtime, options, message):
    with pytest.raises(InputError, match=None) as err:
        runtime.generate("Hi", max_tokens=2, **options)
    assert message in str(err.value)


def test_a_speculative_decoder_refuses_processors(smollm2):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = Runtime(engine="llama.cpp", model=smollm2, plugins={"speculative": "speculative:lookup"})
    with rt:
        for options in ({"grammar": 'root ::= "yes" | "no"'}, {"logprobs": 1}, {"presence_penalty": 1.0}):
            with pytest.raises(InputError, match="speculative=plain"):
                rt.generate("Hi", max_tokens=2, **options)


def test_ignore_eos_runs_to_max_tokens_where_the_model_would_stop(runtime):
    short = "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n"
    plain = runtime.generate(short, max_tokens=24, temperature=0)
    assert plain.finish_reason == "stop" and plain.usage.completion_tokens < 24  # the model ends it itself
    forced = runtime.generate(short, max_tokens=24, temperature=0, ignore_eos=True)
    assert forced.finish_reason == "length" and forced.usage.completion_tokens == 24
    assert forced.text.startswith(plain.text)  # the same greedy path up to where it would have ended
    with pytest.raises(InputError, match="ignore_eos"):
        runtime.generate(short, max_tokens=4, ignore_eos="yes")
