"""Adaptive draft depth: each step, choose k (0 = plain decoding) to maximise expected tokens per second.

A step that drafts k tokens yields E(k) = 1 + mean(min(run, k)) tokens (the accepted run of drafts plus the
target's own token, over recently observed runs) and costs T(k) = draft_cost * k + verify(k + 1), where
verify(m) is the measured time of one target forward over m positions.  Plain decoding yields 1 token per verify(1).  Everything is measured on this request as it runs:

- verify(m) per batch size, interpolated between the sizes measured so far.  It is far from linear: on 2
  cores llama.cpp verifies 2 positions in 1.9 steps' time, 8 in 4.9 and 16 in 5.3 (its batched kernels only
  pay off from ~16 rows), so the depth must come from measurements, not from a slope guessed once;
- accepted runs per *match class*: a source tags each offer with how well it is anchored (prompt lookup:
  the length of the matched context or of the edited copy it resumes, and whether it copies from the prompt
  or from the output), and each class keeps its own runs.
  A long match is a copy in progress (~95% accepted); a bare 2-gram is a guess.  One pooled estimate would
  average the two and pick a depth that is wrong for both.  Offers declined are still checked against the
  tokens produced instead (``ShadowOffer``), so a class that is off keeps learning;
- the draft cost per token.

Depths are taken from a ladder of batch sizes, so a handful of sizes gets measured and reused.  k = 0 is
chosen when no k beats plain decoding by a margin, so speculation never makes a request meaningfully slower.
"""
from __future__ import annotations

import collections

import attrs

#: draft depths considered (verify batches of 2, 3, 4, 6, 8, 12, 16, 24, 32 positions)
LADDER = (1, 2, 3, 5, 7, 11, 15, 23, 31)
#: match classes of a copy from the prompt by anchor length: < 4, 4-7, 8-15, 16+ tokens; then a short copy
#: resumed after an edit; then copies from the output so far (< 8, 8+ tokens).  Where the copied tokens sit
#: predicts more than the anchor: on the bench's twelve prompts an offer from the prompt had runs of 5-23
#: tokens on average by class, one from the output 1-3 whatever its anchor (open-ended answers repeat
#: phrases, not passages), so the two never share a class
CLASS_BOUNDS = (4, 8, 16)
RESUMED = len(CLASS_BOUNDS) + 1
FROM_OUTPUT = RESUMED + 1
#: prior accepted-run lengths per class (replaced by measured runs within a few offers).  Only long
#: matches start on: their first try drafts at most 15 (16 positions cost ~5 steps on llama.cpp, 32 cost
#: ~9), the others wait for evidence from declined offers (ShadowOffer)
CLASS_PRIORS = ((0, 4), (0, 8), (0, 8), (16,), (0, 8), (0,), (0,))
#: offers remembered per class
RECENT_RUNS = 6


def match_class(anchor: int, resumed: bool = False, from_output: bool = False) -> int:
    """The class of an offer anchored by ``anchor`` tokens.  A copy from the prompt resumed after an edit and
    anchored by fewer than 8 (a short copy an edit interrupted) has a class of its own; a longer one is the
    copy in progress it resumes."""
    if from_output:
        return FROM_OUTPUT + (anchor >= CLASS_BOUNDS[1])
    return RESUMED if resumed and anchor < CLASS_BOUNDS[1] else sum(anchor >= b for b in CLASS_BOUNDS)


@attrs.define
class Ema:
    value: float
    weight: float = 0.0  # how much evidence is in ``value`` (pseudo-counts)

    def add(self, x: float, alpha: float = 0.25) -> None:
        a = max(alpha, 1.0 / (self.weight + 1.0))  # plain mean until there is enough evidence
        self.value += a * (x - self.value)
        self.weight += 1.0


@attrs.define
class VerifyCost:
    """Seconds of one target forward per batch size: measured sizes, linear in between, a prior line
    beyond them."""

    times: dict[int, Ema] = attrs.field(factory=dict)
    prior_slope: float = 0.3  # extra cost per position, in single steps, before anything but m=1 is known

    def record(self, m: int, seconds: float) -> None:
        self.times.setdefault(m, Ema(seconds)).add(seconds)

    def __call__(self, m: int) -> float:
        if m in self.times:
            return self.times[m].value
        known = sorted(self.times)
        if not known:
            return 1.0
        lo = [s for s in known if s < m]
        hi = [s for s in known if s > m]
        if not lo:  # smaller than anything measured: proportional
            return self.times[hi[0]].value * m / hi[0]
        t_lo = self.times[lo[-1]].value
        if hi:
            t_hi = self.times[hi[0]].value
            return t_lo + (t_hi - t_lo) * (m - lo[-1]) / (hi[0] - lo[-1])
        # beyond the largest measured size: the cheaper of the prior line from one step and the line through
        # the two largest sizes measured, never below what was measured.  Optimistic on purpose: a size nobody
        # tried would otherwise never be tried (llama.cpp's 2 positions cost 1.9 steps, yet 16 cost only 5.3;
        # the native engine's 8 cost ~2 steps, so the prior alone kept a copy at depth 7), and one
        # measurement corrects it.
        step = self.times[known[0]].value / known[0]
        guess = step * (1.0 + self.prior_slope * (m - 1))
        if len(lo) >= 2:
            slope = (t_lo - self.times[lo[-2]].value) / (lo[-1] - lo[-2])
            guess = min(guess, t_lo + max(slope, 0.0) * (m - lo[-1]))
        return max(t_lo, guess)


@attrs.define
class RunLengths:
    """How many drafted tokens in a row were accepted, over the recent offers of one class (a run that
    reached the end of its offer counts as the offer's length).  Kept as samples, not as one rate: a copy
    either holds for dozens of tokens or breaks at once, and a geometric rate fitted to that bimodal mix
    undervalues deep drafts and overvalues shallow ones.  A few prior runs start the sample; they weigh
    less as evidence arrives and the oldest evidence drops out (a change of regime shows within a few
    offers)."""

    prior: tuple[int, ...]
    runs: collections.deque = attrs.field(factory=lambda: collections.deque(maxlen=RECENT_RUNS))

    def record(self, drafted: int, accepted: int) -> None:
        self.runs.append(accepted)

    def expected_tokens(self, k: int) -> float:
        """Tokens a step drafting ``k`` yields: the accepted run, cut at k, plus the target's own token."""
        sample = (*self.prior, *self.runs)
        return 1.0 + sum(min(r, k) for r in sample) / len(sample)

    @property
    def rate(self) -> float:
        """Per-token acceptance (for reports): accepted / (accepted + breaks), prior included."""
        sample = (*self.prior, *self.runs)
        return sum(sample) / (sum(sample) + len(sample))


@attrs.define
class DepthController:
    """Per draft source: its acceptance per match class and draft cost; the verify costs are shared."""

    max_depth: int = 31
    verify: VerifyCost = attrs.field(factory=VerifyCost)
    draft_cost: Ema = attrs.field(factory=lambda: Ema(0.0))
    classes: list[RunLengths] = attrs.field(factory=lambda: [RunLengths(p) for p in CLASS_PRIORS])

    # -- evidence ------------------------------------------------------------------------------------------
    def record_verify(self, batch: int, seconds: float) -> None:
        self.verify.record(batch, seconds)

    def record_draft(self, n_tokens: int, seconds: float) -> None:
        if n_tokens > 0:
            self.draft_cost.add(seconds / n_tokens)

    def record_acceptance(self, drafted: int, accepted: int, cls: int = 0) -> None:
        self.classes[cls].record(drafted, accepted)

    def acceptance(self, cls: int = 0) -> float:
        return self.classes[cls].rate

    # -- decision ------------------------------------------------------------------------------------------
    def expected_tokens(self, k: int, cls: int = 0) -> float:
        return self.classes[cls].expected_tokens(k)

    def depths(self, available: int) -> list[int]:
        top = min(self.max_depth, available)
        ks = [k for k in LADDER if k <= top]
        return ks + [top] if top > 0 and top not in ks else ks

    def best(self, available: int, cls: int = 0) -> tuple[int, float]:
        """The depth with the highest expected tokens per second (0 and the plain rate if none is better)."""
        best_k, best_rate = 0, self.plain_rate()
        for k in self.depths(available):
            rate = self.expected_tokens(k, cls) / (self.draft_cost.value * k + self.verify(k + 1))
            if rate > best_rate:
                best_k, best_rate = k, rate
        return best_k, best_rate

    def plain_rate(self) -> float:
        return 1.0 / self.verify(1)


#: how many tokens of a declined offer are checked against what was produced instead
SHADOW_SPAN = 32


@attrs.define
class ShadowOffer:
    """An offer the controller declined, checked token by token against what the target produced instead.
    For a source whose offers cost nothing (prompt lookup) this is free evidence for the offer's class: a
    class the priors keep switched off still learns that it would have been right (an edited copy), or
    keeps learning that it would not (free text), without a single wasted verify."""

    tokens: list[int]
    ctrl: DepthController
    cls: int
    matched: int = 0
    #: tokens of the offer already accepted by a verify before ``tokens`` (a censored run: see ``tail``)
    base: int = 0

    @classmethod
    def tail(cls, offer: list[int], accepted: int, ctrl: DepthController, match_cls: int) -> "ShadowOffer":
        """The rest of an offer whose first ``accepted`` tokens were all drafted and all accepted.  Such a
        run is censored at the depth drafted: recorded as is, a copy verified 7 at a time looks like runs of
        7 and the controller never learns that 15 or 31 would hold.  Following the rest of the offer for
        free measures the whole run."""
        return cls(offer[accepted:], ctrl, match_cls, base=accepted)

    def cut_short(self) -> None:
        """The request ended while the offer still held: record the run as far as it went."""
        self.ctrl.record_acceptance(self.base + self.matched, self.base + self.matched, self.cls)

    def observe(self, token: int) -> bool:
        """Feed the next produced token; True once the offer is settled (and recorded)."""
        if token == self.tokens[self.matched]:
            self.matched += 1
            if self.matched < min(len(self.tokens), SHADOW_SPAN - self.base):
                return False
            self.cut_short()
        else:
            self.ctrl.record_acceptance(self.base + self.matched + 1, self.base + self.matched, self.cls)
        return True


class FollowedOffers(dict):
    """Fully accepted offers being followed to the end of their runs (``ShadowOffer.tail``), by key; as a
    context around a request's decoding loop it records the runs still holding when the request ends
    (also when its consumer stops early)."""

    def feed(self, tokens) -> None:
        """The tokens produced next; the offers they settle are recorded and dropped."""
        for t in tokens:
            for key in [key for key, sh in self.items() if sh.observe(t)]:
                del self[key]

    def __enter__(self) -> "FollowedOffers":
        return self

    def __exit__(self, *exc) -> None:
        for sh in self.values():
            sh.cut_short()
        self.clear()


@attrs.define
class Chooser:
    """Picks a draft source and depth per step among several controllers (one per draft source, sharing
    the verify timings), or k = 0."""

    margin: float = 0.05

    def choose(self, options: list[tuple[int, DepthController, int, int]]) -> tuple[int, int]:
        """``options``: (source index, its controller, tokens it can offer, match class of the offer).
        Returns (source index, k)."""
        best = (0, 0, 0.0)
        plain = None
        for idx, ctrl, available, cls in options:
            plain = ctrl.plain_rate() if plain is None else plain
            if available <= 0:
                continue
            k, rate = ctrl.best(available, cls)
            if k and rate > best[2]:
                best = (idx, k, rate)
        if plain is not None and best[1] and best[2] >= plain * (1.0 + self.margin):
            return best[0], best[1]
        return 0, 0
