"""Sampling with speculation inside continuous batching is lossless: on real SmolLM2, streams sampled in a
BatchRunner with lookup drafts (verified beside 31 other streams, accepted or rejected by the sampled rule,
the bonus token drawn from the next row) produce their first three tokens with the target's own joint
distribution, computed exactly from plain forwards of every prefix (chi-square, p = 0.001, fixed seeds)."""
from __future__ import annotations

import itertools

import attrs
import numpy as np
import pytest

from corert import RuntimeConfig
from corert.engines.native.batching import BatchRunner
from corert.engines.native.plugin import NativeEngine
from corert.interfaces import SamplingParams, ThreadBudget
from corert.plugins.kv_cache.paged.config import PagedConfig
from corert.plugins.kv_cache.paged.plugin import PagedKV
from corert.plugins.speculative.acceptance import sparse_probs
from corert.plugins.speculative.speculative import make
from corert.plugins.tokenizer.llama_cpp import LlamaCppTokenizer

from native_support import fastest_exact_variant
from test_speculative import chi2_critical, chi2_stat

BUDGET = ThreadBudget(cores=2, llama_threads=2, llama_batch_threads=2, ort_intra_op=1, ort_inter_op=1,
                      ort_spinning=False, numba_threads=2)
# the first sampled token is mostly " red"; its 2-gram with the prompt's last "," occurs in the prompt, so
# lookup drafts the next token (",") and the batch verifies it: the second token comes from the acceptance
# rule (the draft, or the residual on a rejection), the third from the draft's row when accepted.  26 tokens:
# with 8-token pages every stream after the first runner's finds 24 of them cached
PROMPT = "Colors: red, green, blue, red, green, blue, red, green, blue, red, green, blue,"
PAGE_TOKENS = 8
STREAMS = 32  # per runner: a step verifies 32 streams' drafts together
RUNS = 50  # 1,600 samples, every stream with its own seed
TOKENS = 3
# temperature above 1 and top-k 3 spread the mass over few tokens: 27 outcomes, rejections common enough
PARAMS = SamplingParams(max_tokens=TOKENS, temperature=1.5, top_k=3, top_p=1.0)


#: batch invariance is the exactness the plain-forward joint leans on (test_batched_logits_identical_to_one_by_one,
#: test_native_amx); the sampling rule is the same code on any variant.  avx2: 42.8 s here, amx 10.2 s (measured)
VARIANT = fastest_exact_variant()


@pytest.fixture(scope="module")
def model(smollm2):
    m = NativeEngine(VARIANT).load(smollm2, tokenizer=LlamaCppTokenizer(smollm2), kv_cache=PagedKV(PagedConfig(dtype="q8", page_tokens=PAGE_TOKENS)),
                                  n_ctx=128, threads=BUDGET, config=RuntimeConfig(n_seqs=STREAMS))
    yield m
    m.close()


def _joint(model, ids: list[int]) -> dict[tuple[int, ...], float]:
    """P(t1, t2, t3) of plain sampling with PARAMS: each prefix's next-token distribution, from a plain forward."""
    s = model.new_session()

    def probs(prefix: tuple[int, ...]) -> dict[int, float]:
        s.truncate(0)
        return sparse_probs(np.asarray(s.eval(ids + list(prefix))), PARAMS)

    joint: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(TOKENS):
        joint = {pre + (t,): w * p for pre, w in joint.items() for t, p in probs(pre).items()}
    s.close()
    return joint


@pytest.mark.slow  # ~1,600 short streams
def test_batched_speculative_sampling_has_the_targets_distribution(model):
    ids = model.tokenizer.encode(PROMPT)
    assert (len(ids) - 1) // PAGE_TOKENS * PAGE_TOKENS == len(ids) - 2  # cached pages leave 2 rows per stream
    want = _joint(model, ids)
    counts: dict[tuple[int, ...], int] = {}
    drafted = accepted = 0
    seeds = itertools.count(1)
    spec = make("lookup").batch_speculation  # fixed depth: every offer is verified
    for _ in range(RUNS):
        r = BatchRunner(model)  # paged store: the streams share the prompt's cached pages
        sids = [r.add(ids, attrs.evolve(PARAMS, seed=next(seeds)), is_eog=lambda t: False, speculation=spec)
                for _ in range(STREAMS)]
        while r.active:
            r.step()
        for sid in sids:
            out = tuple(r.result(sid).generated)
            counts[out] = counts.get(out, 0) + 1
        drafted, accepted = drafted + r.drafted, accepted + r.accepted
    assert 0 < accepted < drafted and drafted >= RUNS * STREAMS // 2, (drafted, accepted)  # both paths taken
    assert set(counts) <= set(want)  # never a sequence plain sampling could not produce
    keys = sorted(want)
    stat, df = chi2_stat(np.array([counts.get(k, 0) for k in keys]), np.array([want[k] for k in keys]))
    assert df >= 3 and stat < chi2_critical(df), (stat, df, counts)

