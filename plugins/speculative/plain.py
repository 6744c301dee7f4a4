"""Reference decoding: one forward per generated token, greedy or sampled."""
from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

from corert import Implementation, hookimpl
from corert.prefill import prefill
from corert.interfaces import SamplingParams, Session

from corert.sampling import Sampler


class PlainDecoder:
    name = "plain"
    runs_in_batcher = True  # the continuous batcher samples exactly like this (one forward per token)
    samples_every_token = True  # so penalties, logit_bias, logprobs and grammars apply
    batch_speculation = None

    def __init__(self):
        self._stats: dict = {}

    def generate(self, session: Session, prompt_ids: Sequence[int], params: SamplingParams,
                 is_eog: Callable[[int], bool]) -> Iterator[int]:
        sample = Sampler(params)
        t0 = time.perf_counter()
        logits = prefill(session, prompt_ids)
        t1 = time.perf_counter()
        self._stats = {"prompt_ms": (t1 - t0) * 1e3, "decode_ms": 0.0, "generated": 0}
        for n in range(params.max_tokens):
            token = sample(logits)
            self._stats["generated"] = n + 1
            yield token
            if is_eog(token) or n + 1 == params.max_tokens:
                break
            t = time.perf_counter()
            logits = session.eval((token,))
            self._stats["decode_ms"] += (time.perf_counter() - t) * 1e3

    def stats(self) -> dict:
        return dict(self._stats)


@hookimpl
def register_decoders(register):
    register(Implementation(area="speculative", name="plain", priority=0,
                            factory=lambda variant, **ctx: PlainDecoder(),
                            description="one forward per token (reference)"))
