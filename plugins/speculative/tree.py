"""Token trees of drafts: candidates from prompt and output lookup, merged into a prefix tree, and the
controller that chooses how many candidates and how deep by expected accepted tokens per second.

A step verifies ``[pending] + tree`` in one forward (corert.interfaces.TreeSession).  What a tree of m
candidates, each cut at depth k, yields: E = 1 + sum over j <= k of P(some candidate's first j tokens are
all accepted), with each candidate's P(run >= j) sampled from the accepted runs of its match class (as the
chain controller does) and the candidates taken as independent.  It costs verify(nodes + 1), measured per
batch size on this loaded model.  The plan with the best E / cost wins when it beats plain decoding by a
margin; else the step is plain.
"""
from __future__ import annotations

from typing import Sequence

import attrs

from .controller import CLASS_PRIORS, LADDER, RunLengths, VerifyCost, match_class
from .sources import LookupSource

#: candidates a tree merges at most (each costs rows; beyond a few they rarely add an accepted token)
MAX_BRANCHES = 4
#: rows a verify takes at most (the pending token included): past ~48 rows a forward costs about as much per
#: row as plain steps (verify of 32 rows ~ 6.6 steps natively), so bigger trees cannot pay
MAX_NODES = 48


@attrs.frozen
class Candidate:
    tokens: tuple[int, ...]
    cls: int  # controller.match_class of its anchor
    origin: str  # "prompt" or "output": where the copied tokens sit


class TreeLookupSource(LookupSource):
    """Prompt lookup with several matches: the chain source's best offer (with its resumed-copy class),
    then the continuations of the other recent occurrences of the context's suffix n-grams, in the prompt
    and in the output so far."""

    name = "tree_lookup"

    def candidates(self, k_max: int, n_max: int = 2 * MAX_BRANCHES) -> list[Candidate]:
        toks = self._lookup.tokens
        out: list[Candidate] = []
        if self.available(k_max):
            out.append(Candidate(tuple(self._proposal), self._class, self._origin(self._copy_at)))
        for pos, match in self._lookup.matches():
            if len(out) >= n_max:
                break
            cont = tuple(toks[pos:pos + k_max])
            if cont and not any(c.tokens[:len(cont)] == cont for c in out):  # nothing a kept one covers
                out.append(Candidate(cont, match_class(match, from_output=pos >= self._n_prompt), self._origin(pos)))
        return out

    def _origin(self, pos: int | None) -> str:
        return "prompt" if pos is not None and pos < self._n_prompt else "output"


def merge(paths: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """The prefix tree of ``paths`` under a root: (tokens, parents) of its nodes, node 0 the root (token
    -1 here), every node after its parent, equal prefixes shared."""
    tokens, parents = [-1], [-1]
    kids: list[dict[int, int]] = [{}]
    for path in paths:
        node = 0
        for t in path:
            nxt = kids[node].get(t)
            if nxt is None:
                nxt = len(tokens)
                tokens.append(int(t))
                parents.append(node)
                kids.append({})
                kids[node][t] = nxt
            node = nxt
    return tokens, parents


@attrs.define
class TreeController:
    """Acceptance per match class (runs sampled like the chain controller's) and the verify costs of the
    loaded model; both outlive a request (the Runtime keeps one decoder per loaded model)."""

    verify: VerifyCost = attrs.field(factory=VerifyCost)
    classes: list[RunLengths] = attrs.field(factory=lambda: [RunLengths(p) for p in CLASS_PRIORS])
    max_branches: int = MAX_BRANCHES
    margin: float = 0.05

    def record_verify(self, rows: int, seconds: float) -> None:
        self.verify.record(rows, seconds)

    def record_acceptance(self, drafted: int, accepted: int, cls: int = 0) -> None:
        self.classes[cls].record(drafted, accepted)

    def survival(self, cls: int, j: int) -> float:
        """P(an offer of class ``cls`` has its first j tokens accepted)."""
        c = self.classes[cls]
        sample = (*c.prior, *c.runs)
        return sum(r >= j for r in sample) / len(sample)

    def expected_tokens(self, cands: Sequence[Candidate], depth: int) -> float:
        total = 1.0
        for j in range(1, depth + 1):
            miss = 1.0
            for c in cands:
                if len(c.tokens) >= j:
                    miss *= 1.0 - self.survival(c.cls, j)
            total += 1.0 - miss
        return total

    def plan(self, cands: Sequence[Candidate], room: int, max_branches: int | None = None,
             max_nodes: int = MAX_NODES) -> list[tuple[Candidate, tuple[int, ...]]]:
        """The candidates to verify, each with its first tokens to draft (at most ``room`` deep, at most
        ``max_nodes`` rows with the pending token), or [] for a plain step."""
        if room <= 0 or not cands:
            return []
        order = sorted(cands, key=lambda c: -self.expected_tokens([c], room))
        plain = 1.0 / self.verify(1)
        best, best_rate = [], plain * (1.0 + self.margin)
        depths = sorted({k for k in LADDER if k <= room} | {room})
        for m in range(1, min(max_branches or self.max_branches, len(order)) + 1):
            for k in depths:
                drafts = [c.tokens[:k] for c in order[:m]]
                nodes = len(merge(drafts)[0])  # the root (pending token) included
                if nodes > max_nodes:
                    break
                rate = self.expected_tokens(order[:m], k) / self.verify(nodes)
                if rate > best_rate:
                    best, best_rate = list(zip(order[:m], drafts)), rate
        return best
