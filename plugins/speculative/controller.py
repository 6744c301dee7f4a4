"""Adaptive draft depth: each step, choose k (0 = plain decoding) to maximise expected tokens per second.

Model (Leviathan et al.): with per-token acceptance rate a, a step that drafts k tokens yields
E(k) = (1 - a^(k+1)) / (1 - a) tokens (accepted drafts plus the target's own token) and costs
T(k) = draft_cost * k + verify(k + 1), where verify(m) is the measured time of one target forward over m
positions.  Plain decoding yields 1 token per verify(1).  Everything is measured on this request, as it
runs: acceptance per draft source, draft cost per token, and verify time per batch size.  k = 0 is chosen
when no k beats plain decoding by a margin, so speculation never makes a request meaningfully slower; a
cheap probe every few plain steps keeps the acceptance estimate fresh.
"""
from __future__ import annotations

import attrs


@attrs.define
class Ema:
    value: float
    weight: float = 0.0  # how much evidence is in ``value`` (pseudo-counts)

    def add(self, x: float, alpha: float = 0.25) -> None:
        a = max(alpha, 1.0 / (self.weight + 1.0))  # plain mean until there is enough evidence
        self.value += a * (x - self.value)
        self.weight += 1.0


@attrs.define
class DepthController:
    max_depth: int = 8
    accept_prior: float = 0.5
    verify: dict[int, Ema] = attrs.field(factory=dict)   # batch size -> seconds
    draft_cost: Ema = attrs.field(factory=lambda: Ema(0.0))
    accepted: float = 0.0
    rejected: float = 0.0

    # -- evidence ------------------------------------------------------------------------------------------
    def record_verify(self, batch: int, seconds: float) -> None:
        self.verify.setdefault(batch, Ema(seconds)).add(seconds)

    def record_draft(self, n_tokens: int, seconds: float) -> None:
        if n_tokens > 0:
            self.draft_cost.add(seconds / n_tokens)

    def record_acceptance(self, drafted: int, accepted: int) -> None:
        # geometric model: each accepted token is a success, the first rejection (if any) a failure;
        # decay old evidence so a change of regime (copying -> free text) is noticed within a few steps
        self.accepted = 0.8 * self.accepted + accepted
        self.rejected = 0.8 * self.rejected + (1 if accepted < drafted else 0)

    @property
    def acceptance(self) -> float:
        prior = 2.0
        return (self.accepted + prior * self.accept_prior) / (self.accepted + self.rejected + prior)

    # -- decision ------------------------------------------------------------------------------------------
    def verify_time(self, m: int) -> float:
        if m in self.verify:
            return self.verify[m].value
        known = sorted(self.verify)
        if not known:
            return 1.0
        t1 = self.verify[known[0]].value
        if len(known) == 1:
            return t1 * (1.0 + 0.1 * (m - known[0]))  # prior: each extra position costs 10% of a step
        # linear fit through the smallest and largest measured batch sizes
        lo, hi = known[0], known[-1]
        slope = max(0.0, (self.verify[hi].value - self.verify[lo].value) / (hi - lo))
        return self.verify[lo].value + slope * (m - lo)

    def expected_tokens(self, k: int) -> float:
        a = min(self.acceptance, 0.999)
        return (1.0 - a ** (k + 1)) / (1.0 - a)

    def best(self, available: int) -> tuple[int, float]:
        """The depth with the highest expected tokens per second (0 and the plain rate if none is better)."""
        best_k, best_rate = 0, self.plain_rate()
        for k in range(1, min(self.max_depth, available) + 1):
            rate = self.expected_tokens(k) / (self.draft_cost.value * k + self.verify_time(k + 1))
            if rate > best_rate:
                best_k, best_rate = k, rate
        return best_k, best_rate

    def plain_rate(self) -> float:
        return 1.0 / self.verify_time(1)


@attrs.define
class Chooser:
    """Picks a draft source and depth per step among several controllers (one per draft source, sharing
    the verify timings), or k = 0; probes now and then while off."""

    margin: float = 0.05
    probe_every: int = 8
    _off_steps: int = 0

    def choose(self, options: list[tuple[int, DepthController, int]]) -> tuple[int, int]:
        """``options``: (source index, its controller, tokens it can offer).  Returns (source index, k)."""
        best = (0, 0, 0.0)
        plain = None
        for idx, ctrl, available in options:
            plain = ctrl.plain_rate() if plain is None else plain
            if available <= 0:
                continue
            k, rate = ctrl.best(available)
            if k and rate > best[2]:
                best = (idx, k, rate)
        if plain is not None and best[1] and best[2] >= plain * (1.0 + self.margin):
            self._off_steps = 0
            return best[0], best[1]
        self._off_steps += 1
        offered = [(idx, avail) for idx, _, avail in options if avail > 0]
        if offered and self._off_steps >= self.probe_every:  # look again: the text may have become copyable
            self._off_steps = 0
            idx, avail = offered[0]
            return idx, min(2, avail)
        return 0, 0
