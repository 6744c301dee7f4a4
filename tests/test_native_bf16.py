"""The AMX-BF16 tile products (matmul_bf16.py) against float64 products of the same dequantized weights, for
every layout and several row counts (tails, pairs of row tiles, K cut into chunks), and each row's output
independent of the other rows of the call (what a prompt-row routing needs: a row's bits never depend on how
a prompt is chunked or batched)."""
from __future__ import annotations

import numpy as np
import pytest

from corert.cpu import info
from corert.engines.native import matmul_bf16, matmul_i8
from corert.engines.native.plugin import AMX

pytestmark = pytest.mark.skipif(not (AMX.supported(info()) and "amx_bf16" in info().features),
                                reason="this CPU lacks AMX-BF16")

ROWS = [1, 17, 64, 300]
#: layout -> its bf16 product, which takes (*pre, x, out, *post, threads, split)
KERNELS = {"q8": matmul_bf16.q8_product, "q5": matmul_bf16.q5_packed_product, "q6": matmul_bf16.q6_product,
           "q6p": matmul_bf16.q6_packed_product, "q4": matmul_bf16.q4_product, "q4k": matmul_bf16.q4k_product}


def _f16(bits):
    return bits.view(np.float16).astype(np.float64)


def _per(a, width):
    """(rows, blocks) -> (rows, blocks * width): each block's value over its columns."""
    return np.repeat(a.astype(np.float64), width, axis=1)


def _nibbles(nib):
    """GGUF Q4 packing (rows, cols / 2) -> values (rows, cols): a block's low nibbles are its columns 0-15, the
    high ones 16-31."""
    blocks = nib.reshape(nib.shape[0], -1, 16)
    return np.concatenate([blocks & 15, blocks >> 4], axis=2).reshape(nib.shape[0], -1).astype(np.float64)


@pytest.fixture(scope="module")
def layouts():
    """Random matrices of 40 rows (the last group padded: an odd panel) x 2048 columns in every layout, with
    their float64 weights."""
    rng = np.random.default_rng(14)
    rows, cols = 40, 2048
    q = rng.integers(-128, 128, (rows, cols)).astype(np.int8)
    bits = rng.uniform(0.01, 0.1, (rows, cols // 32)).astype(np.float16).view(np.uint16)
    sub = rng.integers(-128, 128, (rows, cols // 16)).astype(np.int8)
    sup = rng.uniform(1e-3, 1e-2, (rows, cols // 256)).astype(np.float32)
    nib = rng.integers(0, 256, (rows, cols // 2)).astype(np.uint8)
    scale = rng.uniform(0.01, 0.1, (rows, cols // 32)).astype(np.float32)
    offset = rng.uniform(-0.1, 0.1, (rows, cols // 32)).astype(np.float32)
    sc, mn = rng.integers(0, 64, (2, rows, cols // 32)).astype(np.uint8)
    dd, dmin = rng.uniform(1e-4, 1e-3, (2, rows, cols // 256)).astype(np.float16).view(np.uint16)
    q6 = _per(sub, 16) * _per(sup, 256)
    q4k_scale = (sc * _per(_f16(dd), 8)).astype(np.float32)  # the kernels' f32 products (exact: 6 x 11 bits)
    q4k_offset = -(mn * _per(_f16(dmin), 8)).astype(np.float32)
    mats = {"q8": (matmul_i8.layout_q8(q, bits, pack=False), q * _per(_f16(bits), 32)),
            "q5": (matmul_i8.layout_q8(q // 8, bits), (q // 8) * _per(_f16(bits), 32)),
            "q6": (matmul_i8.layout_q6(q, sub, sup), q * q6),
            "q6p": (matmul_i8.layout_q6(q // 4, sub, sup), (q // 4) * q6),
            "q4": (matmul_i8.layout_q4(nib, scale, offset), _nibbles(nib) * _per(scale, 32) + _per(offset, 32)),
            "q4k": (matmul_i8.layout_q4k(nib, sc, mn, dd, dmin),
                    _nibbles(nib) * _per(q4k_scale, 32) + _per(q4k_offset, 32))}
    assert matmul_i8.is_packed_q5(mats["q5"][0][0], cols) and matmul_i8.is_packed_q6(mats["q6p"][0][0], cols)
    assert not matmul_i8.is_packed_q6(mats["q6"][0][0], cols)
    return mats, rng, cols


def _product(kind, parts, x, rows, split, threads=2):
    pre, post = (parts[:2], parts[2:]) if kind.startswith("q6") else (parts, ())
    out = np.full((x.shape[0], rows), np.nan, np.float32)
    KERNELS[kind](*pre, x, out, *post, threads, split)
    return out


def _bound(x, w, split):
    """The largest error allowed per output: each operand rounded to bf16 is off by at most 2^-9 of itself;
    split in hi + lo, by 2^-9 of the remainder, itself at most 2^-9 of the value, and the dropped lo * lo term
    by as much: 2 * 2^-9 (one term) or 3 * 2^-18 (three) of sum |x| |w|; the f32 sums over K add at most
    K * 2^-24 of it (the bf16 products are exact in f32)."""
    rounding = 3 * 2.0 ** -18 if split else 2 * 2.0 ** -9 + 2.0 ** -18
    return (rounding + x.shape[1] * 2.0 ** -24) * (np.abs(x.astype(np.float64)) @ np.abs(w).T)


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("kind", list(KERNELS))
def test_bf16_against_float64(kind, split, layouts):
    mats, rng, cols = layouts
    parts, w = mats[kind]
    for n in ROWS:
        x = rng.standard_normal((n, cols)).astype(np.float32)
        got = _product(kind, parts, x, w.shape[0], split)
        ref = x.astype(np.float64) @ w.T
        err = np.abs(got - ref)
        bound = _bound(x, w, split)
        assert np.all(err <= bound), f"{kind} {n} rows: error {err.max():.3g}, worst ratio {(err / bound).max():.3g}"
        # and not loose by orders of magnitude: the typical error is within 100x of the bound's scale
        assert err.max() > 1e-4 * bound.max(), f"{kind}: the error is implausibly small (the bound is wrong)"


@pytest.mark.parametrize("kind", ["q4", "q8", "q6p"])
def test_bf16_row_independent_of_the_call(kind, layouts):
    """300 rows (K cut into 3 chunks: the C tiles go through ``out`` between them) give each row the bits it
    gets alone or among 17, on one thread or two."""
    mats, rng, cols = layouts
    parts, w = mats[kind]
    x = rng.standard_normal((300, cols)).astype(np.float32)
    assert -(-cols // 32 * 304 * 128 // matmul_bf16.A_CHUNK_BYTES) > 1  # several K chunks at 300 rows
    whole = _product(kind, parts, x, w.shape[0], True)
    for r0, r1, threads in ((0, 1, 1), (5, 22, 2), (299, 300, 2), (100, 164, 1)):
        part = _product(kind, parts, x[r0:r1], w.shape[0], True, threads)
        np.testing.assert_array_equal(part.view(np.uint32), whole[r0:r1].view(np.uint32),
                                      err_msg=f"rows {r0}..{r1}")
