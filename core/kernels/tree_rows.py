"""What a row of a forward reads, for the attention kernels (numba, inlined): its context run and, in a
token tree, its ancestors' slots (corert.tree.TreeMask.visible; an empty mask means plain causal rows).

A row reads ``n`` visible positions in order: visible index j < ctx is position j, and j >= ctx is the
slot ``tree[i, 1 + j - ctx]``.  The order and count equal a sequential forward of the row's path, so a tree
row's scores and sums run the same arithmetic as that forward's row."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def row_span(tree, i, p):
    """(ctx, n): row i reads positions 0..ctx-1, then n - ctx ancestor slots; ``p`` is its slot."""
    if tree.shape[0] == 0:
        return p + 1, p + 1
    a = 0
    while a + 1 < tree.shape[1] and tree[i, a + 1] >= 0:
        a += 1
    return tree[i, 0], tree[i, 0] + a


@njit(cache=True, inline="always")
def slot_of(tree, i, ctx, j):
    """The slot of row i's j-th visible position."""
    return j if j < ctx else tree[i, 1 + j - ctx]


@njit(cache=True, inline="always")
def balanced_row(r, n):
    """The row the ``r``-th of ``n`` row jobs takes: 0, n - 1, 1, n - 2, ...  numba's prange hands each thread
    one contiguous run of the jobs, and a causal prompt row's attention costs in proportion to its position,
    so in row order the thread with the last rows got ~3/4 of a block's work (two threads); paired first
    with last, every run of jobs costs about the same.  Only the order changes, never a row's arithmetic."""
    return r // 2 if r % 2 == 0 else n - 1 - r // 2


@njit(cache=True, boundscheck=False)
def sequence_tiles(seq_ids, cap):
    """Start rows of the attention kernels' tiles (and n at the end): each run of consecutive rows of one
    sequence cut into the fewest tiles of at most ``cap`` rows, of sizes differing by at most one (a lone
    stream's 9 verify rows as 5 + 4, not 8 + 1: the threads take tiles, and one of 8 rows would leave the
    other thread idle).  A tile's rows share each K/V row the kernel loads, so a tile never spans two
    sequences; callers pass ``cap`` 1 where rows of one sequence read different contexts (a token tree, a
    sliding window)."""
    n = seq_ids.shape[0]
    starts = np.empty(n + 1, np.int64)
    k, i = 0, 0
    while i < n:
        e = i + 1
        while e < n and seq_ids[e] == seq_ids[i]:
            e += 1
        parts = (e - i + cap - 1) // cap
        for t in range(parts):
            starts[k] = i + (e - i) * t // parts
            k += 1
        i = e
    starts[k] = n
    return starts[:k + 1]
