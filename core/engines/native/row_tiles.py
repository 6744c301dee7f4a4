"""How a prompt's product is cut into row tiles and group slices so its working set stays in L2.

Why.  The vnni products (matmul_i8.py) unpack a 16-row weight group block by block and run every row of x
through it.  With all rows of a long prompt behind each group, each group re-reads every row's activations
(two int8 levels: ~2.6 bytes a value); once they outgrow the L2 they come from L3 for every group.  On
Qwen 1.5B (Zen 4/5, 1 MB L2 a core) the 17920x1536 gate|up product went from 4.4 ms a row at 55 rows to
6.8 at 717, the 1536x8960 down product (17.5 KB of activations a row) from 1.5 to 3.0.

The tiled loop: a thread takes a slice of groups; for each tile of ``tile`` rows, each group of the slice
runs over the tile.  The tile's activations stay in L2 across the slice's groups, the slice's weights stay
in L2 across the tiles.  Each (row, group) accumulates its blocks in the same order whatever the tile, so
the results are bit-identical to the untiled loop (batch invariance).
"""
from __future__ import annotations

from numba import njit

QK = 32
#: bytes of activations a prompt row holds per value and per 32-value block (matmul_i8._levels: two int8
#: levels; two f32 steps, two int32 sums and one f32 sum a block)
ROW_BYTES_PER_VALUE, ROW_BYTES_PER_BLOCK = 2, 20
#: slices per thread at least, so a thread that finishes early finds little left on another
SLICES_PER_THREAD = 4


@njit(cache=True)
def row_tiles(n, cols, group_bytes, groups, l2, threads):
    """(rows per tile, slices of the groups) for ``n`` rows of ``cols`` values against ``groups`` weight
    groups of ``group_bytes`` each, with ``l2`` bytes of L2 a core.  Half of it is for the working set:
    the whole prompt's activations if they fit (then the loop is the untiled one: one tile, a slice a
    group), else a tile of a quarter and the slice's weights in the rest; the other half is left to what
    streams through.  The slices are a multiple of ``threads`` (numba's count: a jitted get_num_threads
    would keep the kernels out of numba's cache), so each thread gets the same number of groups, +-1 a
    slice (slice_bounds)."""
    budget = l2 // 2
    row_bytes = ROW_BYTES_PER_VALUE * cols + ROW_BYTES_PER_BLOCK * (cols // QK)
    if n * row_bytes <= budget:
        return n, groups
    tile = max(1, budget // 2 // row_bytes)
    span = max(1, (budget - tile * row_bytes) // max(1, group_bytes))
    threads = max(1, threads)
    slices = max(-(-groups // span), SLICES_PER_THREAD * threads)
    slices = min(groups, -(-slices // threads) * threads)
    return tile, slices


@njit(cache=True, inline="always")
def slice_bounds(s, slices, groups):
    """Groups [g0, g1) of slice ``s``: sizes differ by at most one."""
    return s * groups // slices, (s + 1) * groups // slices
