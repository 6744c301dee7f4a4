"""Acceptance rules for a verified token tree, as pure functions.

The tree: node 0 is the pending token (the target's last choice, not yet evaluated), every other node a
drafted token with ``parents[i] < i``; ``rows[i]`` are the target's logits after node i's path.  Both rules
walk down from the root and return the accepted path (node indices from 0) and the target's next token.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from corert.interfaces import SamplingParams

from .acceptance import _draw, sparse_probs


def children(parents: Sequence[int]) -> list[list[int]]:
    """Each node's children, in node order."""
    kids: list[list[int]] = [[] for _ in parents]
    for i, p in enumerate(parents):
        if p >= 0:
            kids[p].append(i)
    return kids


def accept_tree_greedy(tokens: Sequence[int], parents: Sequence[int], rows: np.ndarray) -> tuple[list[int], int]:
    """Longest path whose every token is the target's argmax after its parent's path.  The output equals
    greedy decoding whenever each row equals the target's sequential logits of its path."""
    kids = children(parents)
    path, node = [0], 0
    while True:
        best = int(np.argmax(rows[node]))
        nxt = next((c for c in kids[node] if tokens[c] == best), None)
        if nxt is None:
            return path, best
        path.append(nxt)
        node = nxt


def accept_tree_sampled(tokens: Sequence[int], parents: Sequence[int], draft_probs: Sequence[dict[int, float]],
                        rows: np.ndarray, params: SamplingParams, rng: np.random.Generator,
                        copies: Sequence[int] | None = None) -> tuple[list[int], int]:
    """Multi-candidate recursive rejection sampling (SpecInfer, Miao et al. 2024): at a node with target
    distribution p, try its children in order; child x, drawn from q (``draft_probs[child]``; a point mass
    for a lookup draft), is accepted with probability min(1, p(x)/q(x)) and the walk goes on below it; a
    rejection replaces p by norm(max(0, p - q)) for the next child.  When every child is rejected the next
    token is drawn from what is left of p.  Each emitted token is distributed exactly as sampling the target
    alone.  Children drawn from a distribution must be independent draws; the tree merges equal siblings,
    so ``copies[c]`` says how many draws gave child c, and each is tried in turn (deterministic lookup
    candidates are distinct: one copy each)."""
    kids = children(parents)
    path, node = [0], 0
    while True:
        p = sparse_probs(rows[node], params)
        accepted = None
        for c in kids[node]:
            x, q = tokens[c], draft_probs[c]
            for _ in range(1 if copies is None else copies[c]):
                px, qx = p.get(x, 0.0), q.get(x, 0.0)
                if qx > 0 and rng.random() * qx < px:
                    accepted = c
                    break
                residual = {t: pt - q.get(t, 0.0) for t, pt in p.items() if pt > q.get(t, 0.0)}
                total = sum(residual.values())
                if total > 0.0:  # else p <= q everywhere, so p == q: p stays right
                    p = {t: w / total for t, w in residual.items()}
            if accepted is not None:
                break
        if accepted is None:
            return path, _draw(p, sum(p.values()), rng)
        path.append(accepted)
        node = accepted
