"""Draft sources: prompt lookup (no model) and a smaller draft model sharing the target's vocabulary."""
from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import numpy as np

from corert.prefill import prefill
from corert.errors import PluginError
from corert.interfaces import SamplingParams

from .acceptance import sparse_probs
from .controller import match_class
from .lookup import RESUME, PromptLookup


class LookupSource:
    """Prompt lookup that also follows the copy it proposes: ``copy_at`` walks along the source while the
    produced tokens equal it, and where they differ (the model edited the text) it stays as the place the
    copy broke off.  A later match just after that place resumes the copy (the classic case: fixing a typo,
    renaming a variable, adding a hint) and gets its own match class, however short the n-gram."""

    name = "lookup"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2):
        # a single repeated token predicts little: matching at least two keeps junk drafts out
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.start(())

    def start(self, prompt_ids: Sequence[int]) -> None:
        self._lookup = PromptLookup(self.max_ngram, self.min_ngram)
        self._lookup.extend(prompt_ids)
        self._n_prompt = len(prompt_ids)
        self._proposal: list[int] = []
        self._class = 0
        self._copy_at: int | None = None  # source position the output is copying now
        self._copied = 0  # tokens the copy in progress has run (an edited copy counts its part before the edit)
        self._broke_at: int | None = None  # where the last copy broke off
        self._copied_before = 0  # tokens the copy had run when it broke off

    def extend(self, ids: Sequence[int]) -> None:
        toks = self._lookup.tokens
        for t in ids:
            if self._copy_at is not None:
                if self._copy_at < len(toks) and toks[self._copy_at] == int(t):
                    self._copy_at += 1
                    self._copied += 1
                else:
                    self._broke_at, self._copy_at = self._copy_at, None
                    self._copied_before, self._copied = self._copied, 0
            self._lookup.extend((t,))

    def available(self, k_max: int) -> int:
        self._proposal, match, pos = self._lookup.propose_with_match(k_max, near=self._broke_at)
        resumed = self._broke_at is not None and self._broke_at <= pos <= self._broke_at + RESUME
        if pos != self._copy_at:  # a new copy: it has run as far as its match, plus before the edit it resumes
            self._copied = match + (self._copied_before if resumed else 0)
        # a copy resumed after an edit is anchored by the whole copy, not by the few tokens since the edit
        # (on the spelling fix, edits ~20 tokens apart left 2-token matches that held for 20 more)
        self._class = match_class(max(match, self._copied), resumed, from_output=pos >= self._n_prompt)
        if self._proposal:
            self._copy_at = pos
        return len(self._proposal)

    def offer_class(self) -> int:
        return self._class

    def free_offer(self) -> list[int]:
        return self._proposal

    def propose(self, k: int, params: SamplingParams, rng: np.random.Generator):
        ids = self._proposal[:k] if self._proposal else self._lookup.propose(k)
        return ids, [{t: 1.0} for t in ids]  # deterministic draft: q is a point mass


class DraftModelSource:
    """Drafts with a smaller model through its own engine session, kept in step with the target's context."""

    name = "draft"

    def __init__(self, load: Callable[[], tuple[Any, threading.Lock]], max_depth: int = 8):
        self._load = load  # () -> (draft model, its lock); called once, by the first request
        self.loaded = None
        self.lock: threading.Lock | None = None
        self.max_depth = max_depth
        self.ctx: list[int] = []

    def start(self, prompt_ids: Sequence[int]) -> None:
        if self.loaded is None:
            self.loaded, self.lock = self._load()
        self.ctx = list(prompt_ids)

    def extend(self, ids: Sequence[int]) -> None:
        self.ctx.extend(int(t) for t in ids)

    def available(self, k_max: int) -> int:
        return min(k_max, self.max_depth, self.loaded.n_ctx - len(self.ctx) - 1)

    def offer_class(self) -> int:
        return 0  # a model's draft has no anchor: one acceptance estimate for all its offers

    def free_offer(self) -> list[int]:
        return []  # every draft token costs a forward of the draft model

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
