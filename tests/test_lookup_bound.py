"""The lookup bound of a batch (plugins/speculative/lookup_bound.py) on real text: SmolLM2's tokens of the
packaged Apache licence as the prompt, answers that copy a passage of it or copy nothing."""
from __future__ import annotations

import pytest

from corert.plugins.speculative.lookup_bound import batch_bound, stream_steps
from corert.plugins.tokenizer.llama_cpp import LlamaCppTokenizer
from corert.tools.bench.step_curve import interpolate
from corert.tools.corpus import corpus_file

TEXT = corpus_file("license-apache2.txt").read_text(encoding="utf-8")
FIXED, ROW = 0.010, 0.001  # seconds: a step's weight reads, a row's compute


@pytest.fixture(scope="module")
def texts(smollm2):
    tok = LlamaCppTokenizer(smollm2)
    prompt = tok.encode(TEXT[:3000])
    pairs = {tuple(prompt[j:j + 2]) for j in range(len(prompt) - 1)}
    # a 40-token passage whose first two tokens occur once in the prompt (so its lookup is that passage) and
    # whose first token does not follow the prompt's last one anywhere (so the first step finds no offer)
    start = next(i for i in range(200, len(prompt) - 40)
                 if sum(tuple(prompt[j:j + 2]) == tuple(prompt[i:i + 2]) for j in range(len(prompt) - 1)) == 1
                 and (prompt[-1], prompt[i]) not in pairs)
    copy = prompt[start:start + 40]
    # 40 distinct tokens that never occur in the prompt: no n-gram of it can be looked up
    new = [t for t in range(1000, 49000) if t not in set(prompt)][:40]
    return prompt, copy, new


def test_a_copy_is_drafted_as_far_as_it_holds_a_new_text_not_at_all(texts):
    prompt, copy, new = texts
    # no offer at the first step; then the passage, 31 deep (the depth cap), then its last 5 (the room)
    assert stream_steps(prompt, copy, max_depth=31) == [1, 32, 6]
    assert stream_steps(prompt, copy, max_depth=7) == [1] + [8] * 4 + [6]
    assert stream_steps(prompt, new, max_depth=31) == [1] * 39


def test_the_stream_with_nothing_to_copy_holds_the_batch_to_plain_steps(texts):
    prompt, copy, new = texts
    line = lambda rows: FIXED + ROW * rows  # noqa: E731
    alone = batch_bound([prompt], [copy], line)
    assert (alone.steps, alone.plain_steps, alone.rows) == (3, 39, 39)
    assert alone.vs_plain == pytest.approx((39 * FIXED + 39 * ROW) / (3 * FIXED + 39 * ROW))
    # beside a stream that copies nothing, the batch steps 39 times whatever the copy saves, and with a step
    # cost linear in its rows it costs what the plain batch does
    both = batch_bound([prompt, prompt], [copy, new], line)
    assert (both.steps, both.plain_steps, both.rows, both.stream_steps) == (39, 39, 78, (3, 39))
    assert both.vs_plain == pytest.approx(1.0)
    # rows that ride on the weight reads up to a knee and cost more past it: the copy's big step is dear
    knee = lambda rows: FIXED + ROW * rows + 2 * ROW * max(0, rows - 4)  # noqa: E731
    assert batch_bound([prompt, prompt], [copy, new], knee).vs_plain < 1.0


def test_the_timed_step_curve_is_linear_between_sizes_and_beyond_the_largest():
    # the 0.5B's forwards measured in session 10 (8 streams x 1, 2, 4 rows; 1, 2, 4 streams x 1 row)
    seconds = interpolate([(8, 0.0259), (1, 0.0116), (32, 0.0957), (2, 0.0124), (16, 0.0468), (4, 0.0150)])
    assert seconds(8) == pytest.approx(0.0259) and seconds(12) == pytest.approx((0.0259 + 0.0468) / 2)
    assert seconds(48) == pytest.approx(0.0957 + 16 * (0.0957 - 0.0468) / 16)
    assert seconds(3) == pytest.approx((0.0124 + 0.0150) / 2)
