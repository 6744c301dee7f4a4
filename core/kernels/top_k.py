"""Sampling kernels (corert.sampling): the candidates of top-k / temperature / top-p over a logits row,
and one draw per row of a (rows, n_vocab) block, without sorting the vocabulary.

numpy's ``argpartition`` costs ~0.2 ms per 49k-token row and a top-p without top-k sorts the whole row
(~3 ms); a batch step of 8 sampled streams paid both on its driver thread while the cores idled.  Here the
k largest logits are kept in a small sorted buffer during one pass (a logit below the buffer's last is
skipped at one compare); top-p alone sorts only the tokens likely enough to be in the nucleus.

Ties among equal logits go to the lower id first.  Probabilities are float64, as a draw's cdf is.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import numba_setup  # noqa: F401  (numba's set-up for the process, before any kernel)

#: up to this k the k largest are kept in an insertion buffer during one pass; a larger k finds its
#: threshold with a selection (np.partition) and sorts what reaches it
_BUFFER_K = 64


@njit(cache=True, nogil=True)
def _largest(x, k, ids, vals):
    """ids[:k], vals[:k]: the ``k`` largest entries of ``x`` and their ids, descending."""
    n = 0
    for i in range(x.shape[0]):
        v = x[i]
        if n == k:
            if not v > vals[k - 1]:  # also skips NaN
                continue
            j = k - 1
        else:
            j = n
            n += 1
        while j > 0 and vals[j - 1] < v:
            vals[j] = vals[j - 1]
            ids[j] = ids[j - 1]
            j -= 1
        vals[j] = v
        ids[j] = i


@njit(cache=True, nogil=True)
def _top_ids(x, k):
    """The ids of the ``k`` largest entries of ``x``, descending."""
    if k <= _BUFFER_K:
        ids = np.empty(k, np.int64)
        _largest(x, k, ids, np.empty(k, np.float32))
        return ids
    thr = np.partition(x, x.shape[0] - k)[x.shape[0] - k]
    above = np.nonzero(x > thr)[0]
    ties = np.nonzero(x == thr)[0][:k - above.shape[0]]
    sel = np.concatenate((above, ties))
    return sel[np.argsort(-x[sel], kind="mergesort")]


@njit(cache=True, nogil=True)
def candidates(x, top_k, temperature, top_p):
    """The candidate ids (descending logit) and their probabilities after top-k (0: all), temperature and
    top-p (nucleus: the shortest prefix whose mass reaches ``top_p``; outside (0, 1): all)."""
    n = x.shape[0]
    t = max(np.float64(temperature), 1e-6)
    nucleus = 0.0 < top_p < 1.0
    if 0 < top_k < n:
        ids = _top_ids(x, top_k)
        p = np.exp(x[ids].astype(np.float64) / t - np.float64(x[ids[0]]) / t)
        p /= p.sum()
    else:
        z0 = np.float64(np.max(x)) / t
        p = np.exp(x.astype(np.float64) / t - z0)
        p /= p.sum()
        if not nucleus:  # every token is a candidate: no order needed
            return np.arange(n), p
        # a nucleus token's probability exceeds (1 - top_p) / n: the tokens after the nucleus, each no more
        # likely than its last, carry more than 1 - top_p of the mass.  Only those are sorted.
        sel = np.nonzero(p >= 0.5 * (1.0 - top_p) / n)[0]
        ids = sel[np.argsort(-x[sel], kind="mergesort")]
        p = p[ids]
    if nucleus:
        keep = min(ids.shape[0], np.searchsorted(np.cumsum(p), top_p) + 1)
        ids, p = ids[:keep], p[:keep]
        p = p / p.sum()
    return ids, p


@njit(cache=True, nogil=True)
def draw(ids, p, u):
    """The id a uniform draw ``u`` in [0, 1) picks from candidates ``ids`` with probabilities ``p`` (numpy's
    ``Generator.choice(len(p), p=p)`` given the same uniform: the first cdf entry above ``u``)."""
    c = np.cumsum(p)
    c /= c[-1]
    return ids[min(np.searchsorted(c, u, side="right"), ids.shape[0] - 1)]


@njit(cache=True, nogil=True)
def draw_rows(logits, rows, top_k, temperature, top_p, u, out):
    """out[i]: the token drawn with uniform ``u[i]`` from row ``rows[i]`` of ``logits`` (rows, n_vocab)
    under that row's ``top_k[i]``, ``temperature[i]`` and ``top_p[i]``."""
    for i in range(rows.shape[0]):
        ids, p = candidates(logits[rows[i]], top_k[i], temperature[i], top_p[i])
        out[i] = draw(ids, p, u[i])
