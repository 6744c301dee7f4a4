"""Speculation inside continuous batching (corert.interfaces.BatchSpeculation): every stream drafts from its
own prompt/output lookup, and each step the depths are chosen for the whole batch.

A step of R rows yielding T tokens costs step(R) (``StepCost``: a line with a knee, fitted to the batch's
recent step times).  Giving a stream k draft rows adds E(k) - 1 expected tokens and makes the step cost
step(R + k), so it pays when what it adds comes faster than what the step already yields (by a margin):

    (E(k) - 1) / (step(R + k) - step(R))  >  (1 + margin) * T / step(R)

and of the k that pay, the one with the highest (T + E(k) - 1) / step(R + k) is taken.  Streams are served
best-anchored first (a long match is a copy in progress); each stream's rows then count as already in the
step for the next one.  A row is cheap beside a small batch (the weights are read once for all rows) and
costs a full row's compute beside a full one, so the same stream drafts deeper alone than beside seven
others.  What is learned (verify costs, accepted runs per match class) is the decoder's, kept per loaded
model across requests; a stream's lookup index, offer and shadows are its own.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import attrs
import numpy as np

from corert.interfaces import SamplingParams

from .acceptance import accept_greedy, accept_sampled
from .controller import DepthController, ShadowOffer
from .lookup_bound import LookupBound, batch_bound
from .sources import LookupSource
from .step_cost import StepCost

if TYPE_CHECKING:
    from .decoder import SpeculativeDecoder


@attrs.define
class StreamDrafts:
    """One stream's lookup source and what it offered last (corert.interfaces.StreamDrafter)."""

    source: LookupSource
    ctrl: DepthController  # the decoder's: acceptance is learned across streams and requests
    params: SamplingParams
    rng: np.random.Generator
    seen: int  # tokens of the stream the source has indexed
    available: int = 0  # tokens the source can offer this step
    cls: int = 0  # match class of the offer
    drafts: list[int] = attrs.Factory(list)
    qs: list[dict[int, float]] = attrs.Factory(list)
    shadows: dict[int, ShadowOffer] = attrs.Factory(dict)  # declined offers being checked, per class
    tails: dict[int, ShadowOffer] = attrs.Factory(dict)  # per class: a fully accepted offer's rest, followed
    tails_upto: int = 0  # tokens of the stream the tails have seen (settle feeds them the accepted drafts)

    def sync(self, tokens: Sequence[int], room: int) -> None:
        """Index the tokens produced since the last step (feeding the shadows and tails), then look up an offer."""
        start, new = self.seen, [int(t) for t in tokens[self.seen:]]
        self.seen = len(tokens)
        self.source.extend(new)
        for i, t in enumerate(new):
            self.shadows = _follow(self.shadows, t)
            if start + i >= self.tails_upto:
                self.tails = _follow(self.tails, t)
        self.available = self.source.available(room) if room > 0 else 0
        self.cls = self.source.offer_class() if self.available else 0

    def take(self, k: int) -> list[int]:
        self.drafts, self.qs = self.source.propose(k, self.params, self.rng) if k > 0 else ([], [])
        return self.drafts

    def settle(self, rows: np.ndarray) -> tuple[int, int]:
        if self.params.temperature <= 0.0:
            n_ok, nxt = accept_greedy(self.drafts, rows)
        else:
            n_ok, nxt = accept_sampled(self.drafts, self.qs, rows, self.params, self.rng)
        for t in self.drafts[:n_ok]:  # a tail already following this copy counts this step's accepted drafts
            self.tails = _follow(self.tails, t)
        self.tails_upto = self.seen + n_ok
        offer = self.source.free_offer()
        if n_ok == len(self.drafts) and len(offer) > n_ok and offer[:n_ok] == self.drafts:
            # censored run (as in the solo decoder): follow the rest of the offer for free, or a copy verified
            # k at a time teaches the controller runs of k
            self.tails.setdefault(self.cls, ShadowOffer.tail(offer, n_ok, self.ctrl, self.cls))
        else:
            self.ctrl.record_acceptance(len(self.drafts), n_ok, self.cls)
        return n_ok, nxt

    def finish(self) -> None:
        for sh in self.tails.values():  # the stream ended inside a copy: its run held at least this long
            sh.ctrl.record_acceptance(sh.base + sh.matched, sh.base + sh.matched, sh.cls)
        self.tails.clear()


def _follow(followed: dict[int, ShadowOffer], token: int) -> dict[int, ShadowOffer]:
    """Feed a produced token to the offers being followed; keep those not settled yet."""
    return {c: sh for c, sh in followed.items() if not sh.observe(token)}


class BatchedLookup:
    """The batch side of a SpeculativeDecoder whose one source is prompt lookup (adaptive or fixed depth)."""

    def __init__(self, decoder: "SpeculativeDecoder", margin: float = 0.05):
        self.decoder = decoder
        self.margin = margin  # like Chooser's: a draft's tokens per second must beat the step's by this much
        self.cost = StepCost()  # per loaded model, like the decoder's controller

    @property
    def ctrl(self) -> DepthController:
        return self.decoder.controllers[0]

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams, rng: np.random.Generator) -> StreamDrafts:
        src = self.decoder.sources[0]
        source = LookupSource(src.max_ngram, src.min_ngram)
        source.start(prompt_ids)
        return StreamDrafts(source, self.ctrl, params, rng, seen=len(prompt_ids))

    def record_step(self, rows: int, seconds: float) -> None:
        self.cost.record(rows, seconds)

    def lookup_bound(self, prompts: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]],
                     step_seconds: Callable[[int], float] | None = None) -> LookupBound:
        """The most this lookup could give these streams in one batch (lookup_bound.py): their recorded
        outputs, every offer drafted exactly as far as it holds, the steps priced by ``step_seconds`` (default:
        the step costs fitted so far)."""
        src = self.decoder.sources[0]
        return batch_bound(prompts, outputs, step_seconds or self.cost, self.decoder.max_depth, src.max_ngram,
                           src.min_ngram)

    def draft(self, streams: Sequence[tuple[StreamDrafts, Sequence[int], int]], base_rows: int,
              base_tokens: int) -> list[list[int]]:
        depth_cap = self.decoder.max_depth
        for d, tokens, room in streams:
            d.sync(tokens, min(room, depth_cap))
        if not self.decoder.adaptive:  # fixed depth: every offer as far as it goes
            return [d.take(d.available) for d, _, _ in streams]
        ctrl, cost = self.ctrl, self.cost
        rows, tokens = base_rows, float(base_tokens)
        # rows of prompt chunks are work for later tokens: the step's rate is that of its decode rows, or a
        # step beside a long chunk (a slow step yielding a few tokens) would take any draft at all
        prompt_rows = max(0, base_rows - base_tokens)
        depths = [0] * len(streams)
        # below 1 not even every draft accepted would beat the plain step: decline all (their offers still
        # learn through shadows), so a full batch on compute-bound kernels runs as plain decoding
        drafting = cost.fit().ceiling(max(1, base_rows - prompt_rows)) >= 1.0
        order = sorted(range(len(streams)), key=lambda i: -ctrl.acceptance(streams[i][0].cls))
        for i in order:
            d = streams[i][0]
            if not d.available:
                continue
            best_k = self._depth(d, rows, prompt_rows, tokens) if drafting else 0
            depths[i] = best_k
            if best_k:
                rows += best_k
                tokens += ctrl.expected_tokens(best_k, d.cls) - 1.0
                d.shadows.clear()  # a real verify gives better evidence
            elif d.cls not in d.shadows:  # declined: still learn whether it would have been right
                d.shadows[d.cls] = ShadowOffer(d.source.free_offer(), ctrl, d.cls)
        return [d.take(k) for (d, _, _), k in zip(streams, depths)]

    def _depth(self, d: StreamDrafts, rows: int, prompt_rows: int, tokens: float) -> int:
        """The stream's depth beside ``rows`` already in the step (0: its drafts do not pay)."""
        ctrl, cost = self.ctrl, self.cost
        base, own = cost(rows), cost(rows - prompt_rows)
        rate = tokens / own
        best_k, best_rate = 0, rate
        for k in ctrl.depths(d.available):
            gain = ctrl.expected_tokens(k, d.cls) - 1.0
            extra = ctrl.draft_cost.value * k + cost(rows + k) - base
            # the margin is on what the draft adds: on the whole step's rate it would ask one stream of
            # eight to lift everyone's, and turn down drafts that pay
            if gain <= (1.0 + self.margin) * rate * extra:
                continue
            r = (tokens + gain) / (own + extra)
            if r > best_rate:
                best_k, best_rate = k, r
        return best_k
