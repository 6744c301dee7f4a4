"""Draft sources: prompt lookup (no model) and a smaller draft model sharing the target's vocabulary."""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from corert.engines.common import prefill
from corert.errors import PluginError
from corert.interfaces import SamplingParams

from .acceptance import sparse_probs
from .lookup import PromptLookup


class LookupSource:
    name = "lookup"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2):
        # a single repeated token predicts little: matching at least two keeps junk drafts out
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self._lookup = PromptLookup(max_ngram, min_ngram)
        self._proposal: list[int] = []

    def start(self, prompt_ids: Sequence[int]) -> None:
        self._lookup = PromptLookup(self.max_ngram, self.min_ngram)
        self._lookup.extend(prompt_ids)

    def extend(self, ids: Sequence[int]) -> None:
        self._lookup.extend(ids)

    def available(self, k_max: int) -> int:
        self._proposal = self._lookup.propose(k_max)
        return len(self._proposal)

    def propose(self, k: int, params: SamplingParams, rng: np.random.Generator):
        ids = self._proposal[:k] if self._proposal else self._lookup.propose(k)
        return ids, [{t: 1.0} for t in ids]  # deterministic draft: q is a point mass


class DraftModelSource:
    """Drafts with a smaller model through its own engine session, kept in step with the target's context."""

    name = "draft"

    def __init__(self, loaded, lock: threading.Lock, max_depth: int = 8):
        self.loaded = loaded
        self.lock = lock
        self.max_depth = max_depth
        self.ctx: list[int] = []

    def start(self, prompt_ids: Sequence[int]) -> None:
        self.ctx = list(prompt_ids)

    def extend(self, ids: Sequence[int]) -> None:
        self.ctx.extend(int(t) for t in ids)

    def available(self, k_max: int) -> int:
        return min(k_max, self.max_depth, self.loaded.n_ctx - len(self.ctx) - 1)

    def propose(self, k: int, params: SamplingParams, rng: np.random.Generator):
        greedy = params.temperature <= 0.0
        ids: list[int] = []
        qs: list[dict[int, float]] = []
        with self.lock:
            session = self.loaded.session()
            logits = prefill(session, self.ctx)
            for i in range(k):
                if greedy:
                    x = int(np.argmax(logits))
                    q = {x: 1.0}
                else:
                    q = sparse_probs(logits, params)
                    toks = np.fromiter(q.keys(), dtype=np.int64)
                    w = np.fromiter(q.values(), dtype=np.float64)
                    x = int(toks[rng.choice(len(toks), p=w / w.sum())])
                ids.append(x)
                qs.append(q)
                if i + 1 < k:
                    logits = session.eval((x,))
        return ids, qs


def check_same_vocabulary(target_tok, draft_tok) -> None:
    """A draft model must tokenize exactly like the target, or its drafts mean other words."""
    if target_tok.vocab_size != draft_tok.vocab_size:
        raise PluginError(f"draft model vocabulary ({draft_tok.vocab_size} tokens) differs from the target's "
                          f"({target_tok.vocab_size}); pick a draft model of the same family")
    step = max(1, target_tok.vocab_size // 4096)
    for i in range(0, target_tok.vocab_size, step):
        if target_tok.token_bytes(i) != draft_tok.token_bytes(i):
            raise PluginError(f"draft model vocabulary differs from the target's at token {i} "
                              f"({draft_tok.token_bytes(i)!r} vs {target_tok.token_bytes(i)!r})")
