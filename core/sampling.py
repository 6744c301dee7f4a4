"""Choosing the next token from logits: greedy, or temperature + top-k + top-p sampling, after the request's
logit processors (logit bias, presence/frequency penalties, a grammar mask) and with logprobs.

The one sampler of the process: decoders (plain, speculative) and the engines' batchers all draw through
it, one Sampler per stream, so a seed gives the same tokens on every path and the processors apply on every
path without code of their own.  A request without processors takes exactly the old path (no copy).
"""
from __future__ import annotations

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
    """The candidate ids and their probabilities after top-k, temperature and top-p (nucleus)."""
    k = params.top_k if 0 < params.top_k < logits.shape[0] else logits.shape[0]
    ids = np.argpartition(logits, -k)[-k:] if k < logits.shape[0] else np.arange(logits.shape[0])
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    z = logits[ids].astype(np.float64) / max(params.temperature, 1e-6)
    p = np.exp(z - z[0])
    p /= p.sum()
    if 0.0 < params.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), params.top_p) + 1)
        ids, p = ids[:keep], p[:keep] / p[:keep].sum()
    return ids, p


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
        ids, p = probabilities(logits, self.params)
        return int(ids[self.rng.choice(p.shape[0], p=p)])

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
