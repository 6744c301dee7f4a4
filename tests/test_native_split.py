"""Tensors fused into one product whose types share no exact layout (Q4_K beside Q6_K, as the Qwen 1.5B's
q/k/v projections) are kept as a split matrix: each run of one type in its own exact layout."""
from __future__ import annotations

import gguf
import gguf.quants
import numpy as np
import pytest

from corert.engines.native import products
from corert.engines.native.model import product
from corert.engines.native.weights import QMatrix, SplitMatrix, TensorSource
from corert.models.gguf_header import read_header

#: Qwen 0.5B tensors of 4864 columns: two Q4_K ffn_down and a Q6_K one; two of 896: a Q5_0 and a Q8_0
Q4K, Q4K_2, Q6K = "blk.11.ffn_down.weight", "blk.12.ffn_down.weight", "blk.0.ffn_down.weight"
Q5_0, Q8_0 = "blk.0.attn_q.weight", "blk.0.attn_v.weight"


def _f64(src: TensorSource, name: str) -> np.ndarray:
    t = src.info(name)
    return gguf.quants.dequantize(np.asarray(src.raw_rows(t)), gguf.GGMLQuantizationType(t.ggml_type)
                                  ).astype(np.float64)


@pytest.mark.parametrize("variant", ["vnni", "scalar"])
def test_mixed_types_keep_their_exact_layouts(qwen05, variant, need_variant):
    need_variant(variant)
    src = TensorSource(read_header(qwen05, want_arrays=False), products.PRODUCTS[variant])
    try:
        names = [Q4K, Q4K_2, Q6K]
        w = src.fused(names)
        assert isinstance(w, SplitMatrix) and w.kind == "q4+q6" and [p.rows for p in w.pieces] == [1792, 896]
        assert (w.rows, w.cols) == (2688, 4864)
        x = np.random.default_rng(7).standard_normal((3, w.cols)).astype(np.float32)
        ref = x.astype(np.float64) @ np.concatenate([_f64(src, n) for n in names]).T
        got = product(products.PRODUCTS[variant], w, x)
        # exact weights: the products' own accuracy (test_native_kernels); requantized to 8 bits (the fused
        # q8 layout) they were off by ~1e-3 of the largest output
        assert np.abs(got - ref).max() <= 3e-5 * np.abs(ref).max()
        # one row (a decode step) has its pieces write into the row's columns instead of concatenating
        np.testing.assert_array_equal(product(products.PRODUCTS[variant], w, x[1:2]), got[1:2])
        fused = src.matrix(names)
        assert fused.kind == "q8"
        assert np.abs(product(products.PRODUCTS[variant], fused, x) - ref).max() > 1e-4 * np.abs(ref).max()
        exact = src.fused([Q5_0, Q8_0])  # both exact in q8: one matrix, as before
        assert isinstance(exact, QMatrix) and exact.kind == "q8"
    finally:
        src.close()
