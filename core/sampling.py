"""Choosing the next token from logits: greedy, or temperature + top-k + top-p sampling, after the request's
logit processors (logit bias, presence/frequency penalties, a grammar mask) and with logprobs.

The one sampler of the process: decoders (plain, speculative) and the engines' batchers all draw through
it, one Sampler per stream, so a seed gives the same tokens on every path and the processors apply on every
path without code of their own.  A request without processors takes exactly the old path (no copy).
"""
from __future__ import annotations

from typing import Sequence

import attrs
import numpy as np

from .interfaces import SamplingParams


@attrs.frozen
class SampledToken:
    """A chosen token with its logprob and the ``logprobs`` most likely tokens (log_softmax of the processed
    logits: after bias, penalties and the grammar mask, before temperature, top-k and top-p; the tokens a
    grammar forbids are left out)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def probabilities(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The candidate ids and their probabilities after top-k, temperature and top-p (nucleus); the ids in
    descending logit order when top-k or top-p cut them (else all, in id order)."""
    from .kernels.top_k import candidates  # numba: imported by the first sampled request only

    return candidates(np.ascontiguousarray(logits, np.float32), params.top_k, params.temperature, params.top_p)


def choose_rows(samplers: Sequence["Sampler"], logits: np.ndarray, rows: Sequence[int]) -> list[int]:
    """``samplers[i]``'s token from ``logits[rows[i]]`` ((rows, n_vocab) f32), all at once: the tokens each
    sampler would choose from its row alone, draw for draw.  A batch step calls it once: the greedy rows
    take one argmax over the block, the sampled ones one kernel call (corert.kernels.top_k)."""
    if not samplers:
        return []
    out = [0] * len(samplers)
    idx = np.asarray(rows, np.int64)
    greedy = [i for i, s in enumerate(samplers) if s.plain and s.greedy]
    if len(greedy) == len(samplers) == logits.shape[0] and np.array_equal(idx, np.arange(len(idx))):
        return np.argmax(logits, axis=1).tolist()  # the usual block: every row greedy, in order, no copy
    for i in greedy:
        out[i] = int(np.argmax(logits[idx[i]]))
    drawn = [i for i, s in enumerate(samplers) if s.plain and not s.greedy]
    if drawn:
        from .kernels.top_k import draw_rows

        ps = [samplers[i].params for i in drawn]
        tokens = np.empty(len(drawn), np.int64)
        draw_rows(np.ascontiguousarray(logits, np.float32), idx[drawn], np.array([p.top_k for p in ps], np.int64),
                  np.array([p.temperature for p in ps], np.float64), np.array([p.top_p for p in ps], np.float64),
                  np.array([samplers[i].rng.random() for i in drawn]), tokens)
        for i, t in zip(drawn, tokens.tolist()):
            out[i] = t
    for i, s in enumerate(samplers):
        if not s.plain:  # logit processors: the sampler's own path, in its own buffer
            out[i] = s(logits[idx[i]])
    return out


class Penalties:
    """OpenAI's presence and frequency penalties over the tokens generated so far:
    ``logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty``."""

    def __init__(self, presence: float, frequency: float):
        self.presence, self.frequency = presence, frequency
        self.counts: dict[int, int] = {}

    def apply(self, logits: np.ndarray) -> None:
        if self.counts:  # arrays the size of the distinct generated tokens, not of the vocabulary
            ids = np.fromiter(self.counts.keys(), np.int64, len(self.counts))
            n = np.fromiter(self.counts.values(), np.float32, len(self.counts))
            logits[ids] -= n * np.float32(self.frequency) + np.float32(self.presence)

    def add(self, token: int) -> None:
        self.counts[token] = self.counts.get(token, 0) + 1


class Sampler:
    """Greedy when temperature <= 0, else seeded sampling.  One per stream (it keeps the stream's penalty
    counts and grammar position, advanced by every token it chooses)."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.greedy = params.temperature <= 0.0
        self.rng = np.random.default_rng(params.seed)
        self.plain = not params.processes_logits
        self.penalties = (Penalties(params.presence_penalty, params.frequency_penalty)
                          if params.presence_penalty or params.frequency_penalty else None)
        self.bias_ids = np.array([t for t, _ in params.logit_bias], np.int64)
        self.bias = np.array([b for _, b in params.logit_bias], np.float32)
        self.guide = params.constraint.start() if params.constraint is not None else None
        self._x: np.ndarray | None = None  # (n_vocab,) f32: the processed logits, reused every step
        self._tmp: np.ndarray | None = None  # (n_vocab,) f32: scratch of log_softmax

    def __call__(self, logits: np.ndarray) -> int:
        if self.plain:
            return self._choose(logits)
        x = self.process(logits)
        token = self._choose(x)
        if self.params.logprobs is not None and self.params.report is not None:
            self.params.report(self.logprobs(x, token))
        if self.penalties is not None:
            self.penalties.add(token)
        if self.guide is not None:
            self.guide.advance(token)
        return token

    def _choose(self, logits: np.ndarray) -> int:
        if self.greedy:
            return int(np.argmax(logits))
        from .kernels.top_k import draw

        ids, p = probabilities(logits, self.params)
        return int(draw(ids, p, self.rng.random()))  # one uniform, as Generator.choice(p=p) would take

    def process(self, logits: np.ndarray) -> np.ndarray:
        """The logits after bias, penalties and the grammar mask, in the Sampler's own buffer (an engine's
        logits may be a view it reuses)."""
        if self._x is None or self._x.shape != logits.shape:
            self._x = np.empty(logits.shape, np.float32)
            self._tmp = np.empty(logits.shape, np.float32)
        x = self._x
        np.copyto(x, logits)
        if self.bias_ids.size:
            x[self.bias_ids] += self.bias
        if self.penalties is not None:
            self.penalties.apply(x)
        if self.guide is not None:
            self.guide.mask(x)
        return x

    def logprobs(self, x: np.ndarray, token: int) -> SampledToken:
        """log_softmax of the processed logits at ``token`` and its top ``params.logprobs``."""
        tmp = self._tmp
        m = x.max()
        np.subtract(x, m, out=tmp)
        np.exp(tmp, out=tmp)
        lse = float(m) + float(np.log(tmp.sum(dtype=np.float64)))
        n = self.params.logprobs
        top: tuple[tuple[int, float], ...] = ()
        if n:
            ids = np.argpartition(x, -n)[-n:]
            ids = ids[np.argsort(-x[ids], kind="stable")]
            top = tuple((int(i), float(x[i]) - lse) for i in ids if np.isfinite(x[i]))
        return SampledToken(token, float(x[token]) - lse, top)
