"""What a row of a forward reads, for the attention kernels (numba, inlined): its context run and, in a
token tree, its ancestors' slots (corert.tree.TreeMask.visible; an empty mask means plain causal rows).

A row reads ``n`` visible positions in order: visible index j < ctx is position j, and j >= ctx is the
slot ``tree[i, 1 + j - ctx]``.  The order and count equal a sequential forward of the row's path, so a tree
row's scores and sums run the same arithmetic as that forward's row."""
from __future__ import annotations

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
