"""Speculative decoding: draft k tokens cheaply, verify them with one batched forward of the target, keep
the accepted prefix, roll the rest back out of the KV cache.

One step: the target's last token ``pending`` (sampled, not yet evaluated) and the drafts d1..dk are
evaluated together, [pending, d1, …, dk], with logits at every position; the acceptance rule keeps a prefix
d1..dj and picks the target's own next token; the cache is truncated to drop d(j+1)..dk.  With k = 0 a step
is exactly a plain decoding step.  Greedy output is identical to plain decoding whenever the engine's
batched logits equal its one-by-one logits (the native engine guarantees that; llama.cpp does not quite).
"""
from __future__ import annotations

import time
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from corert.prefill import prefill
from corert.interfaces import SamplingParams, Session

from .acceptance import accept_greedy, accept_sampled
from .batched import BatchedLookup
from .controller import SHADOW_SPAN, Chooser, DepthController, ShadowOffer, VerifyCost, FollowedOffers
from .sources import LookupSource
from corert.sampling import Sampler


def until_stop(tokens: Sequence[int], produced: int, max_tokens: int, is_eog: Callable[[int], bool]
               ) -> tuple[list[int], bool]:
    """The accepted tokens a request still takes (through the first end-of-generation id or max_tokens), and
    whether it ends there."""
    for n, tok in enumerate(tokens, 1):
        if is_eog(tok) or produced + n >= max_tokens:
            return list(tokens[:n]), True
    return list(tokens), False


class DraftSource(Protocol):
    name: str

    def start(self, prompt_ids: Sequence[int]) -> None: ...
    def extend(self, ids: Sequence[int]) -> None: ...
    def available(self, k_max: int) -> int: ...
    def offer_class(self) -> int: ...  # controller.match_class of the last offer (0: no anchor)
    def free_offer(self) -> list[int]: ...  # the last offer if it cost nothing to make, else []
    def propose(self, k: int, params: SamplingParams, rng: np.random.Generator
                ) -> tuple[list[int], list[dict[int, float]]]: ...


class SpeculativeDecoder:
    """Drafts from one or more sources; ``adaptive`` chooses the source and depth each step (0 = off),
    otherwise the depth is fixed at ``max_depth`` whenever the source has drafts.

    The Runtime keeps one decoder per loaded model, so what the controllers learn outlives a request: the
    verify cost per batch size (the engine's), and per source its draft cost and accepted runs per match
    class.  What belongs to one request (sampler, shadows, counts) lives in ``generate``'s frame; requests
    on a model take its lock, so one runs at a time."""

    name = "speculative"
    runs_in_batcher = False  # it joins a batch only through batch_speculation, where the engine verifies drafts
    #: accepted drafts bypass the Sampler, so the Runtime refuses logit processors (penalties, logit_bias,
    #: logprobs, grammars) here rather than apply them to some tokens only; use speculative=plain for them
    samples_every_token = False

    def __init__(self, sources: list[DraftSource], adaptive: bool = True, max_depth: int = 8):
        self.sources = sources
        self.adaptive = adaptive
        self.max_depth = max_depth
        self._stats: dict = {}
        self.verify = VerifyCost()
        self.controllers = [DepthController(max_depth=max_depth, verify=self.verify) for _ in sources]
        #: continuous batching verifies a lone lookup source's drafts in the batch (a draft model would need
        #: a session per stream); it learns into the controllers above
        self.batch_speculation = (BatchedLookup(self) if len(sources) == 1 and isinstance(sources[0], LookupSource)
                                  else None)

    def generate(self, session: Session, prompt_ids: Sequence[int], params: SamplingParams,
                 is_eog: Callable[[int], bool]) -> Iterator[int]:
        greedy = params.temperature <= 0.0
        sampler = Sampler(params)
        rng = sampler.rng
        ctrls = self.controllers
        chooser = Chooser()
        st = {"drafted": 0, "accepted": 0, "steps": 0, "spec_steps": 0, "draft_ms": 0.0, "verify_ms": 0.0,
              "per_source": {s.name: {"drafted": 0, "accepted": 0, "steps": 0} for s in self.sources}}
        self._stats = st

        t0 = time.perf_counter()
        logits = prefill(session, prompt_ids)
        st["prompt_ms"] = (time.perf_counter() - t0) * 1e3
        for s in self.sources:
            s.start(prompt_ids)
        pending = sampler(logits)
        produced = 0
        shadows: dict[tuple[int, int], ShadowOffer] = {}  # (source, class) -> declined offer being checked
        # (source, class) -> a fully accepted offer's rest
        with FollowedOffers() as tails:
            while True:
                yield pending
                produced += 1
                if is_eog(pending) or produced >= params.max_tokens:
                    break
                for s in self.sources:
                    s.extend((pending,))
                shadows = {key: sh for key, sh in shadows.items() if not sh.observe(pending)}
                tails.feed((pending,))
                # room for the drafts: never past max_tokens (accepted + the target's own token) or the context
                room = min(params.max_tokens - produced - 1, session.n_ctx - len(session.tokens) - 1, self.max_depth)
                idx, k, cls = self._choose(ctrls, chooser, room)
                if k > 0:
                    shadows.clear()  # a real verify is about to give better evidence
                elif self.adaptive:
                    self._shadow(ctrls, shadows)
                drafts: list[int] = []
                qs: list[dict[int, float]] = []
                if k > 0:
                    td = time.perf_counter()
                    drafts, qs = self.sources[idx].propose(k, params, rng)
                    ctrls[idx].record_draft(len(drafts), time.perf_counter() - td)
                    st["draft_ms"] += (time.perf_counter() - td) * 1e3
                st["steps"] += 1
                tv = time.perf_counter()
                if not drafts:
                    logits = session.eval((pending,))
                    dt = time.perf_counter() - tv
                    ctrls[0].record_verify(1, dt)  # the verify table is shared by every controller
                    st["verify_ms"] += dt * 1e3
                    pending = sampler(logits)
                    continue
                rows = session.eval([pending] + drafts, all_logits=True)
                dt = time.perf_counter() - tv
                ctrls[idx].record_verify(len(drafts) + 1, dt)
                st["verify_ms"] += dt * 1e3
                if greedy:
                    n_ok, nxt = accept_greedy(drafts, rows)
                else:
                    n_ok, nxt = accept_sampled(drafts, qs, rows, params, rng)
                session.truncate(len(session.tokens) - (len(drafts) - n_ok))  # drop the rejected drafts' K/V
                tails.feed(drafts[:n_ok])
                offer = self.sources[idx].free_offer()
                if n_ok == len(drafts) and len(offer) > n_ok and offer[:n_ok] == drafts:
                    # censored run: follow the rest of the offer (a tail already following it counts this step)
                    tails.setdefault((idx, cls), ShadowOffer.tail(offer, n_ok, ctrls[idx], cls))
                else:
                    ctrls[idx].record_acceptance(len(drafts), n_ok, cls)
                st["spec_steps"] += 1
                st["drafted"] += len(drafts)
                st["accepted"] += n_ok
                ps = st["per_source"][self.sources[idx].name]
                ps["drafted"] += len(drafts)
                ps["accepted"] += n_ok
                ps["steps"] += 1
                emit, stop = until_stop(drafts[:n_ok], produced, params.max_tokens, is_eog)
                yield from emit
                produced += len(emit)
                if stop:
                    break
                for s in self.sources:
                    s.extend(drafts[:n_ok])
                pending = nxt

    def _shadow(self, ctrls: list[DepthController], shadows: dict) -> None:
        """Check the free offers just declined, one at a time per source and class."""
        for i, (s, c) in enumerate(zip(self.sources, ctrls)):
            offer = s.free_offer()
            key = (i, s.offer_class())
            if offer and key not in shadows:
                shadows[key] = ShadowOffer(offer, c, key[1])

    def _choose(self, ctrls: list[DepthController], chooser: Chooser, room: int) -> tuple[int, int, int]:
        """(source index, depth, match class of its offer); depth 0 = a plain step."""
        if room <= 0:
            return 0, 0, 0
        options = []
        for i, (s, c) in enumerate(zip(self.sources, ctrls)):
            # a free offer is looked up whole, past the room, so a declined or fully accepted offer can be
            # followed that far (ShadowOffer); the depth drafted stays within the room
            avail = min(s.available(max(room, SHADOW_SPAN)), room)
            options.append((i, c, avail, s.offer_class() if avail else 0))
        if not self.adaptive:
            for i, _, avail, cls in options:
                if avail > 0:
                    return i, min(avail, room), cls
            return 0, 0, 0
        idx, k = chooser.choose(options)
        return idx, k, options[idx][3]

    def stats(self) -> dict:
        return summarize(self._stats, "mean_depth", "drafted")


def summarize(counts: dict, per_step_name: str, per_step_of: str) -> dict:
    """A decoder's counters plus its acceptance rate and ``per_step_name`` = ``per_step_of`` per speculative
    step (the chain decoder's mean depth, the tree decoder's mean nodes)."""
    st = dict(counts)
    if st:
        st["acceptance_rate"] = st["accepted"] / st["drafted"] if st["drafted"] else 0.0
        st[per_step_name] = st[per_step_of] / st["spec_steps"] if st["spec_steps"] else 0.0
    return st
