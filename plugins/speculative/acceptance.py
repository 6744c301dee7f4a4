"""Acceptance rules of speculative decoding, as pure functions a 20-line test can call.

Rows: ``target_rows[i]`` is the target's logits for the position of ``draft[i]`` (it saw every token before
it), and ``target_rows[len(draft)]`` the logits after the last draft token (the bonus position).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from corert.interfaces import SamplingParams

from corert.sampling import probabilities


def accept_greedy(draft: Sequence[int], target_rows: np.ndarray) -> tuple[int, int]:
    """Longest prefix of ``draft`` equal to the target's argmax, plus the target's own next token.

    Returns (number accepted, next token).  The output equals greedy decoding of the target whenever the
    rows equal the target's one-by-one logits.
    """
    best = np.argmax(target_rows[: len(draft) + 1], axis=1)  # one vectorized pass, no per-position Python
    n = 0
    while n < len(draft) and draft[n] == best[n]:
        n += 1
    return n, int(best[n])


def sparse_probs(logits: np.ndarray, params: SamplingParams) -> dict[int, float]:
    ids, p = probabilities(logits, params)
    return dict(zip(ids.tolist(), p.tolist()))


def accept_sampled(draft: Sequence[int], draft_probs: Sequence[dict[int, float]], target_rows: np.ndarray,
                   params: SamplingParams, rng: np.random.Generator) -> tuple[int, int]:
    """Leviathan et al. / Chen et al.: accept draft token x with probability min(1, p(x)/q(x)); at the first
    rejection draw from norm(max(0, p - q)); when every token is accepted draw a bonus token from p.

    ``draft_probs[i]`` is the draft's distribution q at step i as {token: prob} (a point mass {x: 1.0} for a
    deterministic draft such as prompt lookup).  p is the target's distribution after the same temperature,
    top-k and top-p.  The tokens produced are distributed exactly as sampling the target alone.
    """
    for i, x in enumerate(draft):
        p = sparse_probs(target_rows[i], params)
        q = draft_probs[i]
        px, qx = p.get(x, 0.0), q.get(x, 0.0)
        if qx > 0 and rng.random() < min(1.0, px / qx):
            continue
        residual = {t: pt - q.get(t, 0.0) for t, pt in p.items() if pt > q.get(t, 0.0)}
        total = sum(residual.values())
        if total <= 0.0:  # p <= q everywhere: p == q, so any draw from p is right
            residual, total = p, sum(p.values())
        return i, _draw(residual, total, rng)
    p = sparse_probs(target_rows[len(draft)], params)
    return len(draft), _draw(p, sum(p.values()), rng)


def _draw(weights: dict[int, float], total: float, rng: np.random.Generator) -> int:
    toks = np.fromiter(weights.keys(), dtype=np.int64, count=len(weights))
    w = np.fromiter(weights.values(), dtype=np.float64, count=len(weights))
    return int(toks[rng.choice(len(toks), p=w / total)])
