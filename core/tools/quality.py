"""Quality measures shared by perplexity, A/B gates and tests: next-token log-probabilities over a text, KL
divergence and top-1 agreement between two sides."""
from __future__ import annotations

from typing import Sequence

import attrs
import numpy as np

from corert.errors import InputError


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def text_logits(loaded, lock, ids: Sequence[int], ctx: int) -> np.ndarray:
    """Logits predicting ids[1:], in independent windows of ``ctx`` tokens (the first token of each window
    gives no prediction of its own).  Shape (n_predicted, n_vocab), float32."""
    if len(ids) < 2:
        raise InputError("need at least 2 tokens to score")
    rows = []
    with lock:
        session = loaded.session()
        for start in range(0, len(ids) - 1, ctx - 1):
            window = list(ids[start:start + ctx])
            if len(window) < 2:
                break
            session.truncate(0)
            rows.append(session.eval(window, all_logits=True)[:-1].astype(np.float32, copy=True))
        session.truncate(0)
    return np.concatenate(rows)


@attrs.frozen
class Agreement:
    tokens: int
    ppl: float
    ref_ppl: float
    kld_mean: float
    kld_p99: float
    top1_agree: float

    def to_dict(self) -> dict:
        return attrs.asdict(self)


def compare_logits(ref: np.ndarray, test: np.ndarray, targets: Sequence[int], chunk: int = 256) -> Agreement:
    """KL(ref ‖ test) per position, top-1 agreement, and both perplexities over ``targets``."""
    if ref.shape != test.shape:
        raise InputError(f"logit shapes differ: {ref.shape} vs {test.shape}")
    tg = np.asarray(targets[: ref.shape[0]])
    klds, agree, nll_t, nll_r = [], 0, 0.0, 0.0
    for s in range(0, ref.shape[0], chunk):
        lr, lt = log_softmax(ref[s:s + chunk]), log_softmax(test[s:s + chunk])
        klds.append((np.exp(lr) * (lr - lt)).sum(axis=1))
        agree += int((lr.argmax(axis=1) == lt.argmax(axis=1)).sum())
        idx = np.arange(lr.shape[0])
        nll_r -= lr[idx, tg[s:s + chunk]].sum()
        nll_t -= lt[idx, tg[s:s + chunk]].sum()
    kld = np.concatenate(klds)
    n = ref.shape[0]
    return Agreement(tokens=n, ppl=float(np.exp(nll_t / n)), ref_ppl=float(np.exp(nll_r / n)),
                     kld_mean=float(kld.mean()), kld_p99=float(np.percentile(kld, 99)),
                     top1_agree=agree / n)
