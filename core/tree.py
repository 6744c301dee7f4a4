"""Token trees in one forward: which K/V each row of a tree may read (the tree attention mask).

A verify forward may hold several candidate continuations that share prefixes.  Each row is a tree node,
stored at its own slot after the sequence's context; it reads the whole context and its ancestors (itself
included), nothing else, and is rotated at its depth in the tree, so its output equals the output of a
sequential forward of its path.  Stores and kernels take the mask as ``TreeMask.visible``; the engine
takes ``depth``.
"""
from __future__ import annotations

from typing import Sequence

import attrs
import numpy as np

from .errors import InputError

#: a chain-only mask (no row is a tree node): what kernels receive when no tree is given
NO_TREE = np.zeros((0, 1), np.int32)


@attrs.frozen(eq=False)
class TreeMask:
    """Per row, what it reads: ``visible[i, 0]`` = c, the context positions 0..c-1 it reads in full, then
    ``visible[i, 1:]`` the slots of its ancestors from the root down to itself, padded with -1
    (int32, (rows, 1 + max depth)).  ``depth[i]`` (int32, (rows,)) is how many slots that is: the row's
    position in its path is ``c + depth[i] - 1``."""

    visible: np.ndarray
    depth: np.ndarray

    @property
    def path_positions(self) -> np.ndarray:
        """Each row's position in its own path (what RoPE rotates it by), int32 (rows,)."""
        return (self.visible[:, 0] + self.depth - 1).astype(np.int32)

    @classmethod
    def from_parents(cls, seq_ids: np.ndarray, slots: np.ndarray, parents: Sequence[int]) -> "TreeMask":
        """``parents[i]``: the row (index in this forward) that row i continues, or -1 for a row that
        continues the context, which is every position of its sequence before the sequence's first row in
        this forward.  A parent must come before its child, in the same sequence."""
        seq_ids = np.asarray(seq_ids)
        slots = np.asarray(slots)
        n = len(parents)
        if seq_ids.shape != (n,) or slots.shape != (n,):
            raise InputError(f"a token tree needs one parent per row: {n} parents for {slots.shape} rows")
        first: dict[int, int] = {}
        depth = np.zeros(n, np.int32)
        chains: list[list[int]] = []
        for i, p in enumerate(int(x) for x in parents):
            s = int(seq_ids[i])
            first.setdefault(s, int(slots[i]))
            if p < 0:
                chain = [int(slots[i])]
            elif p >= i or int(seq_ids[p]) != s:
                raise InputError(f"token tree row {i}: parent {p} must be an earlier row of the same sequence")
            else:
                chain = chains[p] + [int(slots[i])]
            chains.append(chain)
            depth[i] = len(chain)
        visible = np.full((n, 1 + (int(depth.max()) if n else 0)), -1, np.int32)
        for i, chain in enumerate(chains):
            visible[i, 0] = first[int(seq_ids[i])]
            visible[i, 1:1 + len(chain)] = chain
        return cls(visible, depth)
