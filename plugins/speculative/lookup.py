"""Prompt lookup: draft the tokens that followed the latest earlier occurrence of the context's last n-gram.

No model: on input-grounded tasks (rewrite, annotate, fix) the output copies long spans of the prompt, and
each copied span is a free draft.  An index of n-gram -> last end position makes each lookup O(1).
"""
from __future__ import annotations


class PromptLookup:
    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.tokens: list[int] = []
        self._index: list[dict[tuple[int, ...], int]] = [dict() for _ in range(max_ngram + 1)]

    def extend(self, ids) -> None:
        for t in ids:
            self.tokens.append(int(t))
            end = len(self.tokens)
            # index n-grams ending one position earlier: their continuation starts at a known token
            for n in range(self.min_ngram, self.max_ngram + 1):
                if end - 1 >= n:
                    self._index[n][tuple(self.tokens[end - 1 - n:end - 1])] = end - 1

    def propose(self, k: int) -> list[int]:
        """Up to ``k`` tokens continuing the longest matching suffix n-gram (empty when none matches)."""
        if k <= 0:
            return []
        toks = self.tokens
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if len(toks) < n:
                continue
            pos = self._index[n].get(tuple(toks[-n:]))
            if pos is not None:
                return toks[pos:pos + k]
        return []
