"""Timeouts and cancellation reach the generate loop (through the scheduler's cancel token), free the
model, and harm no later request."""
from __future__ import annotations

import time

import pytest

from corert import Runtime, TaskTimeoutError

COUNT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"  # the model keeps counting: a long generation


@pytest.mark.parametrize("scheduler", ["fifo", "work_stealing"])
def test_timeout_stops_a_long_generation_and_frees_the_model(smollm2, scheduler):
    rt = Runtime(model=smollm2, n_ctx=2048, plugins={"scheduler": scheduler, "tokenizer": "llama_cpp"})
    expected = rt.generate("Count from one to ten:", max_tokens=12, temperature=0).token_ids
    t = time.perf_counter()
    with pytest.raises(TaskTimeoutError):
        rt.generate(COUNT, max_tokens=1900, temperature=0, timeout=0.5)
    # the generation stopped at its next token instead of running to max_tokens: the model is free again
    assert rt.generate("Count from one to ten:", max_tokens=12, temperature=0).token_ids == expected
    assert time.perf_counter() - t < 30
    rt.close()


def test_a_stream_abandoned_by_its_caller_stops(smollm2):
    rt = Runtime(model=smollm2, plugins={"tokenizer": "llama_cpp"})
    stream = rt.stream(COUNT, max_tokens=1500, temperature=0)
    first = next(stream)
    stream.close()  # the caller walks away after one chunk
    t = time.perf_counter()
    out = rt.generate("Hello", max_tokens=4, temperature=0)  # waits for the abandoned task to stop
    assert time.perf_counter() - t < 20 and first.text is not None and len(out.token_ids) == 4
    rt.close()
