"""Helpers every engine's Session gets for free."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import InputError
from .interfaces import Session


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefill(session: Session, ids: Sequence[int]) -> np.ndarray:
    """Make the session's sequence equal ``ids`` and return the last position's logits.

    The cached prefix shared with the previous request is kept (its K/V are already right); at least the
    last token is evaluated again so there are logits to sample from.
    """
    if not ids:
        raise InputError("the prompt is empty after tokenization")
    if len(ids) > session.n_ctx:
        raise InputError(f"the prompt has {len(ids)} tokens, more than the context of {session.n_ctx}; "
                         f"shorten it or raise n_ctx")
    keep = min(common_prefix_len(session.tokens, ids), len(ids) - 1)
    session.truncate(keep)
    return session.eval(ids[keep:])
