"""The batching debug log (corert.batch_log) on a real model (SmolLM2, native engine, 2 sequence slots):
its step lines account for every evaluated row and every joining request, its first-token lines show the
request that waited for a slot, and with the logger off nothing is logged."""
from __future__ import annotations

import logging
import re

import pytest

from corert import Runtime

from concurrent_requests import hold_first_step_until_joined, run_concurrently

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
STEP = re.compile(r"step (\d+): (\d+) rows for (\d+) streams \((\d+) joined, (\d+) waiting\), (\d+) tokens, "
                  r"([\d.]+) ms")
FIRST = re.compile(r"request (\d+): first token ([\d.]+) ms after it reached the batch service "
                   r"\(queued ([\d.]+) ms, (\d+) steps\)")


@pytest.fixture(scope="module")
def rt(smollm2):
    rt = Runtime(model=smollm2, engine="native", n_ctx=512, n_seqs=2,
                 plugins={"tokenizer": "llama_cpp", "kv_cache": "paged:q8"})
    yield rt
    rt.close()


def _lines(caplog, pattern):
    return [pattern.fullmatch(r.getMessage()) for r in caplog.records
            if r.name == "corert.batching" and pattern.fullmatch(r.getMessage())]


def test_steps_and_first_tokens_are_accounted_for(rt, monkeypatch, caplog):
    loaded, _ = rt.load_generation_model()
    service = loaded.batch_service()
    service.runner.share_prefixes = False  # every prompt row is evaluated: the rows add up to the prompts
    caplog.set_level(logging.DEBUG, logger="corert.batching")
    rows_before, steps_before = service.runner.rows, service.runner.steps
    hold_first_step_until_joined(monkeypatch, service, len(PROMPTS))
    got, errors = run_concurrently(lambda p: rt.generate(p, max_tokens=4, temperature=0), PROMPTS)
    assert errors == [None] * len(PROMPTS)
    steps = [tuple(float(g) for g in m.groups()) for m in _lines(caplog, STEP)]
    assert len(steps) == service.runner.steps - steps_before
    assert sum(s[1] for s in steps) == service.runner.rows - rows_before
    prompt_rows = sum(c.usage.prompt_tokens for c in got)
    decode_rows = sum(c.usage.completion_tokens - 1 for c in got)  # the last token is never evaluated
    assert sum(s[1] for s in steps) == prompt_rows + decode_rows
    assert sum(s[3] for s in steps) == len(PROMPTS)  # every request joined exactly once
    assert max(s[4] for s in steps) >= 1  # 3 requests, 2 slots: one waited for a slot
    assert all(s[5] <= s[2] for s in steps)  # at most one token per stream per step (no speculation)
    firsts = [tuple(float(g) for g in m.groups()) for m in _lines(caplog, FIRST)]
    assert len(firsts) == len(PROMPTS)
    assert all(f[1] >= f[2] and f[3] >= 1 for f in firsts)  # first token after admission, at least one step
    # the third request waited for a slot through the first two's steps until one of them finished
    assert max(f[2] for f in firsts) >= min(s[6] for s in steps)


def test_nothing_is_logged_when_the_logger_is_off(rt, caplog):
    caplog.set_level(logging.INFO, logger="corert.batching")
    rt.generate(PROMPTS[0], max_tokens=3, temperature=0)
    assert not [r for r in caplog.records if r.name == "corert.batching"]
