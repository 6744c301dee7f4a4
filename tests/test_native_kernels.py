"""The native engine's numba kernels against independent references: gguf-py's dequantizers, numpy, and
each kernel variant against the scalar one."""
from __future__ import annotations

import numpy as np
import pytest

import gguf
import gguf.quants
from corert.engines.native import dequant, matmul, matmul_i8, ops, products, row_tiles
from corert.kernels.f16 import F16_TO_F32
from corert.kernels.tree_rows import sequence_tiles
from corert.tree import NO_TREE
from corert.plugins.kv_cache import contiguous_attention as attention
from corert.models.gguf_header import read_header

QTYPES = gguf.GGMLQuantizationType


def _tensor_rows(path: str, ggml_type: int, n_rows: int = 48):
    """Raw rows of the first tensor of ``ggml_type`` in a real model, and gguf-py's f32 decoding of them."""
    h = read_header(path, want_arrays=False)
    t = next(t for t in h.tensors if t.ggml_type == ggml_type and len(t.shape) == 2)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    rows = int(t.shape[1])
    raw = np.asarray(mm[h.data_offset + t.offset:h.data_offset + t.offset + t.n_bytes]).reshape(rows, -1)
    raw = np.ascontiguousarray(raw[:n_rows])
    return raw, gguf.quants.dequantize(raw, QTYPES(ggml_type)), t.shape[0]


def _synthetic_rows(ggml_type: int, cols: int = 256, rows: int = 16):
    rng = np.random.default_rng(ggml_type)
    x = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 3, (rows, 1))).astype(np.float32)
    raw = gguf.quants.quantize(x, QTYPES(ggml_type))
    return raw, gguf.quants.dequantize(raw, QTYPES(ggml_type)), cols


@pytest.fixture(scope="module")
def real_rows(smollm2, qwen05):
    """Every GGML type the two models use: Q8_0, Q4_1 (smollm2), Q5_0, Q4_K, Q6_K (qwen2.5)."""
    out = {t: _tensor_rows(smollm2, t) for t in (dequant.Q8_0, dequant.Q4_1)}
    out.update({t: _tensor_rows(qwen05, t) for t in (dequant.Q5_0, dequant.Q4_K, dequant.Q6_K)})
    for t in (dequant.Q4_0, dequant.Q5_1, dequant.BF16):
        out[t] = _synthetic_rows(t)
    return out


@pytest.mark.parametrize("ggml_type", [dequant.Q8_0, dequant.Q4_0, dequant.Q4_1, dequant.Q5_0, dequant.Q5_1,
                                       dequant.Q4_K, dequant.Q6_K, dequant.BF16])
def test_dequant_matches_gguf_py(real_rows, ggml_type):
    raw, ref, cols = real_rows[ggml_type]
    out = np.empty((raw.shape[0], cols), np.float32)
    dequant.dequantize(raw, ggml_type, out, F16_TO_F32)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("ggml_type", [dequant.Q4_0, dequant.Q4_1, dequant.Q4_K])
def test_q4_layout_is_exact(real_rows, ggml_type):
    raw, ref, cols = real_rows[ggml_type]
    n, nb = raw.shape[0], cols // 32
    packed = np.empty((n, cols // 2), np.uint8)
    d, m = np.empty((n, nb), np.float32), np.empty((n, nb), np.float32)
    dequant.to_q4(raw, ggml_type, packed, d, m, F16_TO_F32)
    q = np.empty((n, nb, 32), np.float32)
    p = packed.reshape(n, nb, 16)
    q[..., :16], q[..., 16:] = p & 15, p >> 4
    np.testing.assert_allclose((q * d[..., None] + m[..., None]).reshape(n, cols), ref, rtol=0, atol=1e-6)


def test_q4k_layout_is_exact(real_rows):
    """Q4_K with its scales factored (to_q4k) decodes to gguf-py's values, and multiplied out
    (q4k_scales) gives to_q4's scale and offset bit for bit."""
    raw, ref, cols = real_rows[dequant.Q4_K]
    n, nb = raw.shape[0], cols // 32
    packed = np.empty((n, cols // 2), np.uint8)
    sc, mn = np.empty((n, nb), np.uint8), np.empty((n, nb), np.uint8)
    dd, dmin = np.empty((n, cols // 256), np.uint16), np.empty((n, cols // 256), np.uint16)
    dequant.to_q4k(raw, packed, sc, mn, dd, dmin)
    assert sc.max() <= 63 and mn.max() <= 63
    p = packed.reshape(n, nb, 16)
    q = np.concatenate([p & 15, p >> 4], axis=-1).astype(np.float64)
    ddf, dminf = (np.repeat(F16_TO_F32[a].astype(np.float64), 8, axis=1)[..., None] for a in (dd, dmin))
    np.testing.assert_allclose((q * sc[..., None] * ddf - mn[..., None] * dminf).reshape(n, cols), ref,
                               rtol=0, atol=1e-6)
    packed4, d, m = np.empty_like(packed), np.empty((n, nb), np.float32), np.empty((n, nb), np.float32)
    dequant.to_q4(raw, dequant.Q4_K, packed4, d, m, F16_TO_F32)
    scale, offset = dequant.q4k_scales(sc, mn, dd, dmin, F16_TO_F32)
    assert np.array_equal(packed4, packed) and np.array_equal(scale, d) and np.array_equal(offset, m)


@pytest.mark.parametrize("ggml_type", [dequant.Q8_0, dequant.Q5_0, dequant.Q6_K, dequant.Q5_1])
def test_q8_layout(real_rows, ggml_type):
    """Q8_0 and Q5_0 are copied exactly; other types are requantized within half a step of 8 bits."""
    raw, ref, cols = real_rows[ggml_type]
    n = raw.shape[0]
    qs, sc = np.empty((n, cols), np.int8), np.empty((n, cols // 32), np.uint16)
    dequant.to_q8(raw, ggml_type, qs, sc, F16_TO_F32)
    got = (qs.reshape(n, -1, 32) * F16_TO_F32[sc][..., None]).reshape(n, cols)
    if ggml_type in (dequant.Q8_0, dequant.Q5_0):
        np.testing.assert_array_equal(got, ref)
    else:
        step = np.repeat(F16_TO_F32[sc], 32, axis=1)
        assert np.all(np.abs(got - ref) <= 0.5 * step * 1.01 + 1e-12)
        assert np.abs(qs).max() <= 127


# a 32-block type is laid out with a scale per 32 only; Q6_K alone takes either form
@pytest.mark.parametrize("per, ggml_type", [(256, dequant.Q6_K)] + [(32, t) for t in (dequant.Q6_K, dequant.Q8_0,
                                                                                      dequant.Q5_0, dequant.Q4_0)])
def test_q6_layout_is_exact(real_rows, ggml_type, per):
    """Q6_K (and the symmetric 32-blocks that may join it in one matrix) as int8 values, an int8 scale per 16
    and an f32 scale per 256 (or per 32, the form a matrix with a 32-block type takes), against gguf-py's
    decoding in float64."""
    raw, ref, cols = real_rows[ggml_type]
    n = raw.shape[0]
    qs, sub, sup = (np.empty((n, cols), np.int8), np.empty((n, cols // 16), np.int8),
                    np.empty((n, cols // per), np.float32))
    dequant.to_q6(raw, ggml_type, qs, sub, sup, F16_TO_F32)
    assert qs.min() >= -127 and (ggml_type != dequant.Q6_K or (qs.min() >= -32 and qs.max() <= 31))
    got = _q6_weights_f64(qs, sub, sup)
    np.testing.assert_allclose(got, ref.astype(np.float64), rtol=2 ** -23, atol=0)


def _q6_weights_f64(qs, sub, sup):
    n, cols = qs.shape
    scale = np.repeat(sub.astype(np.float64), 16, axis=1) * np.repeat(sup.astype(np.float64), cols // sup.shape[1],
                                                                      axis=1)
    return qs * scale


def test_f16_bits_matches_numpy():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0, 1, 2000) * 10.0 ** rng.integers(-9, 4, 2000), [0.0, 6e-8, 6.1e-5, 65504.0]])
    got = np.array([dequant.f16_bits(v) for v in x.astype(np.float32)], dtype=np.uint16)
    np.testing.assert_array_equal(got, x.astype(np.float32).astype(np.float16).view(np.uint16))


# -- matrix products ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def q8_matrix():
    rng = np.random.default_rng(2)
    rows, cols = 200, 576
    qs = rng.integers(-127, 128, (rows, cols)).astype(np.int8)
    sc = (rng.uniform(1e-3, 5e-2, (rows, cols // 32))).astype(np.float16).view(np.uint16)
    x = rng.standard_normal((7, cols)).astype(np.float32)
    ref = x.astype(np.float64) @ (qs.reshape(rows, -1, 32) * F16_TO_F32[sc][..., None]).reshape(rows, cols).T
    return qs, sc, x, ref


@pytest.fixture(scope="module")
def q5_matrix():
    """q8 with Q5_0's values (all in [-16, 15]): the vnni layout packs them in 5 bits."""
    rng = np.random.default_rng(6)
    rows, cols = 200, 896
    qs = rng.integers(-16, 16, (rows, cols)).astype(np.int8)
    qs[:8], qs[8:16] = -16, 15  # the extremes, on whole row groups' worth of rows
    sc = (rng.uniform(1e-3, 5e-2, (rows, cols // 32))).astype(np.float16).view(np.uint16)
    x = rng.standard_normal((7, cols)).astype(np.float32)
    ref = x.astype(np.float64) @ (qs.reshape(rows, -1, 32) * F16_TO_F32[sc][..., None]).reshape(rows, cols).T
    return qs, sc, x, ref


def _q6_case(seed, cols, per, q_max, extremes):
    """A row-major q6 matrix (200 rows), 7 activation rows and the float64 product: values in [-q_max - 1,
    q_max], int8 scales per 16 (half of them 1 in the per-32 form, as a 32-block type's are), f16-exact f32
    scales per ``per`` values."""
    rng = np.random.default_rng(seed)
    rows = 200
    qs = rng.integers(-q_max - 1, q_max + 1, (rows, cols)).astype(np.int8)
    sub = rng.integers(-128, 128, (rows, cols // 16)).astype(np.int8)
    if per == 32:
        sub[rng.random(sub.shape) < 0.5] = 1
    sup = rng.uniform(1e-5, 5e-4, (rows, cols // per)).astype(np.float16).astype(np.float32)
    x = rng.standard_normal((7, cols)).astype(np.float32)
    if extremes:  # the largest integer block sums the kernels can meet, on 8 rows
        qs[:8], sub[:8], x[0] = -q_max - 1, -128, -1.0  # x[0]: every activation at its level-1 extreme (-127)
        sup[:8] = 2.0 ** -18  # their outputs near the others' size (the tolerances scale with the largest)
    return qs, sub, sup, x, x.astype(np.float64) @ _q6_weights_f64(qs, sub, sup).T


@pytest.fixture(scope="module")
def q6_matrix():
    """Q6_K-like: 6-bit values, a signed int8 scale per 16, an f32 scale per 256."""
    return _q6_case(4, 768, 256, 31, extremes=True)


@pytest.fixture(scope="module")
def q6_mixed_matrix():
    """The per-32 form (Q8_0 blocks beside Q6_K ones): int8 values up to 127, an f32 scale per 32."""
    return _q6_case(5, 576, 32, 126, extremes=False)


@pytest.fixture(scope="module")
def q4_matrix():
    rng = np.random.default_rng(3)
    rows, cols = 200, 576
    packed = rng.integers(0, 256, (rows, cols // 2)).astype(np.uint8)
    d = rng.uniform(1e-3, 5e-2, (rows, cols // 32)).astype(np.float32)
    m = rng.uniform(-0.2, 0.2, (rows, cols // 32)).astype(np.float32)
    p = packed.reshape(rows, -1, 16)
    q = np.concatenate([p & 15, p >> 4], axis=-1).astype(np.float64)
    w = (q * d[..., None] + m[..., None]).reshape(rows, cols)
    x = rng.standard_normal((7, cols)).astype(np.float32)
    return packed, d, m, x, x.astype(np.float64) @ w.T


@pytest.fixture(scope="module")
def q4k_matrix():
    """Q4_K's factored form (dequant.to_q4k): 6-bit scales and mins per 32, f16 super-block scales per 256;
    the largest factors on the first rows, and one super block's scales subnormal in f16."""
    rng = np.random.default_rng(6)
    rows, cols = 200, 768
    packed = rng.integers(0, 256, (rows, cols // 2)).astype(np.uint8)
    sc, mn = (rng.integers(0, 64, (rows, cols // 32)).astype(np.uint8) for _ in range(2))
    sc[:8], mn[:8] = 63, 63
    dd = rng.uniform(1e-4, 1e-3, (rows, cols // 256)).astype(np.float16)
    dmin = rng.uniform(1e-4, 3e-3, (rows, cols // 256)).astype(np.float16)
    dd[9, 1], dmin[9, 1] = np.float16(3e-6), np.float16(5e-7)
    dd, dmin = dd.view(np.uint16), dmin.view(np.uint16)
    p = packed.reshape(rows, -1, 16)
    q = np.concatenate([p & 15, p >> 4], axis=-1).astype(np.float64)
    ddf, dminf = (np.repeat(F16_TO_F32[a].astype(np.float64), 8, axis=1)[..., None] for a in (dd, dmin))
    w = (q * sc[..., None] * ddf - mn[..., None] * dminf).reshape(rows, cols)
    x = rng.standard_normal((7, cols)).astype(np.float32)
    return packed, sc, mn, dd, dmin, x, x.astype(np.float64) @ w.T


def _run(variant, kind, mat, x, products_=None):
    """Row-major test matrices go through the variant's load-time layout, as a model's do (200 rows: the
    last group is padded); ``products_`` instead of the variant's own (another tuning of it)."""
    p = products_ or products.PRODUCTS[variant]
    out = np.empty((x.shape[0], mat[0].shape[0]), np.float32)
    if kind in ("q8", "q5"):  # q5: q8 with 5-bit values (Q5_0's), the same products
        p.q8(p.layout_q8(*mat), x, out)
    elif kind == "q6":
        p.q6(p.layout_q6(*mat), x, out)
    elif kind == "q4k":  # Q4_K's factored scales: the q4 products over the variant's layout of them
        p.q4(p.layout_q4k(*mat), x, out)
    else:
        p.q4(p.layout_q4(*mat), x, out)
    return out


def _layout_kind(kind: str) -> str:
    """The layout a test kind goes through: "q4k" is its own; the others' variants (q6-mixed, q4-f16-scales...)
    are forms of the first two letters'."""
    return kind if kind == "q4k" else kind[:2]


def _engine_variants() -> list[str]:
    """The native engine's variants as it registers them, so a new variant is tested without editing this file."""
    from corert.engines.native.plugin import register_engines

    impls = []
    register_engines(impls.append)
    return [v.name for v in impls[0].variants]


ENGINE_VARIANTS = _engine_variants()
#: max |variant - f64 reference| / max |reference| of the f32 products: sums in another order
F32_ACCURACY = 1e-5
#: the same for the int8 products by activation levels: two keep x to ~16 bits, one (llama.cpp's Q8
#: activations) to ~8 (see test_vnni_matches_integer_reference)
I8_ACCURACY = {2: 3e-5, 1: 1.5e-2}


def _accuracy(p) -> float:
    return F32_ACCURACY if isinstance(p, products.F32Products) else I8_ACCURACY[p.levels]


def test_every_engine_variant_has_its_products():
    assert set(ENGINE_VARIANTS) == set(products.PRODUCTS)
    assert all(isinstance(p, (products.F32Products, products.I8Products)) for p in products.PRODUCTS.values())


def test_one_level_variants_pick_their_matrices():
    """vnni-q8 runs every product with one level; vnni-q8ffn only the gate|up products; vnni none."""
    for name, one in (("vnni", set()), ("vnni-q8", products.ROLES), ("vnni-q8ffn", {"gate_up"})):
        p = products.PRODUCTS[name]
        assert {r for r in products.ROLES if p.for_matrix(r).levels == 1} == one
    with pytest.raises(ValueError):
        products.I8Products(one_level={"gate"})


def _matrix(kind, q8_matrix, q4_matrix, q6_matrix=None, q4k_matrix=None):
    if kind == "q4k":
        return q4k_matrix[:5], q4k_matrix[5], q4k_matrix[6]
    if kind in ("q8", "q5"):  # q8_matrix: the fixture of the kind's values
        return q8_matrix[:2], q8_matrix[2], q8_matrix[3]
    if kind.startswith("q6"):  # q6_matrix: the fixture of the kind's form
        return q6_matrix[:3], q6_matrix[3], q6_matrix[4]
    if kind == "q4":
        return q4_matrix[:3], q4_matrix[3], q4_matrix[4]
    packed, d, m, x, _ = q4_matrix
    if kind == "q4-f16-scales":  # exact in f16, as Q4_0 / Q4_1 scales are
        d, m = (a.astype(np.float16).astype(np.float32) for a in (d, m))
    else:  # "q4-tiny-scales": below f16's normal range, so the vnni layout keeps them f32
        d, m = d * np.float32(1e-3), m * np.float32(1e-3)
    p = packed.reshape(packed.shape[0], -1, 16)
    q = np.concatenate([p & 15, p >> 4], axis=-1).astype(np.float64)
    w = (q * d[..., None] + m[..., None]).reshape(packed.shape[0], -1)
    return (packed, d, m), x, x.astype(np.float64) @ w.T


@pytest.mark.parametrize("variant", ENGINE_VARIANTS)
@pytest.mark.parametrize("kind", ["q8", "q5", "q6", "q6-mixed", "q4", "q4-f16-scales", "q4k"])
def test_matmul_variants_match_scalar_and_f64(variant, kind, q8_matrix, q5_matrix, q4_matrix, q6_matrix,
                                              q6_mixed_matrix, q4k_matrix, need_variant):
    """Every variant of the engine this CPU can execute against the scalar reference and float64."""
    need_variant(variant)
    p = products.PRODUCTS[variant]
    if kind == "q4" and isinstance(p, products.I8Products):
        pytest.skip("vnni stores f32 block scales as f16: see test_vnni_matches_integer_reference")
    mat, x, ref = _matrix(kind, q5_matrix if kind == "q5" else q8_matrix, q4_matrix,
                          q6_mixed_matrix if kind == "q6-mixed" else q6_matrix, q4k_matrix)
    got = _run(variant, _layout_kind(kind), mat, x)
    scalar = _run("scalar", _layout_kind(kind), mat, x)
    scale = np.abs(ref).max()
    # f32 kernels: float sums in another order, within a few f32 ulps of the largest output
    accuracy = _accuracy(p)
    assert np.abs(got - ref).max() <= accuracy * scale
    assert np.abs(got - scalar).max() <= (accuracy + F32_ACCURACY) * scale


def _weights_f64(kind, mat):
    if kind == "q4k":  # exact: its scales and offsets are kept as the file's factors
        packed, sc, mn, dd, dmin = mat
        return _weights_f64("q4", (packed, *dequant.q4k_scales(sc, mn, dd, dmin, F16_TO_F32)))
    if kind == "q6":
        return _q6_weights_f64(*mat), None
    if kind in ("q8", "q5"):
        qs, sc = mat
        return (qs.reshape(qs.shape[0], -1, 32) * F16_TO_F32[sc][..., None]).reshape(qs.shape[0], -1), None
    packed, d, m = mat
    p = packed.reshape(packed.shape[0], -1, 16)
    q = np.concatenate([p & 15, p >> 4], axis=-1).astype(np.float64)
    return (q * d[..., None]).reshape(packed.shape[0], -1), m


@pytest.mark.parametrize("variant", ["vnni", "vnni-q8"])
@pytest.mark.parametrize("kind", ["q8", "q5", "q6", "q6-mixed", "q4", "q4-f16-scales", "q4-tiny-scales", "q4k"])
def test_vnni_matches_integer_reference(variant, kind, q8_matrix, q5_matrix, q4_matrix, q6_matrix,
                                        q6_mixed_matrix, q4k_matrix, need_variant):
    """The vnni kernels compute exactly what they promise: x split per 32-value block into two int8 levels
    (checked against numpy; vnni-q8: level 1 alone), integer block products, f32 scales; and they are
    accurate to ~16 bits (one level: ~8)."""
    need_variant(variant)
    levels = products.PRODUCTS[variant].levels
    mat, x, ref = _matrix(kind, q5_matrix if kind == "q5" else q8_matrix, q4_matrix,
                          q6_mixed_matrix if kind == "q6-mixed" else q6_matrix, q4k_matrix)
    got = _run(variant, _layout_kind(kind), mat, x)
    w, m = _weights_f64(_layout_kind(kind), mat)
    if kind.startswith("q4") and kind != "q4k":
        stored = [a.dtype for a in products.PRODUCTS["vnni"].layout_q4(*mat)[1:]]
        assert stored[0] == (np.float32 if kind == "q4-tiny-scales" else np.uint16)
        if kind == "q4":  # f32 scales rounded to f16 where every value stays normal (as Q4_K's are)
            ref_w = w
            w, m = _weights_f64("q4", (mat[0], *(a.astype(np.float16).astype(np.float32) if t == np.uint16
                                                  else a for a, t in zip(mat[1:], stored))))
            assert np.abs(w - ref_w).max() <= 15 * np.abs(mat[1]).max() * 2.0 ** -11
            ref = x.astype(np.float64) @ (w + np.repeat(m, 32, axis=1)).T  # the weights as stored
    n, cols = x.shape
    blocks = x.reshape(n, -1, 32).astype(np.float32)
    d1 = np.abs(blocks).max(axis=2, keepdims=True) / np.float32(127)
    q1 = np.rint(blocks * (np.float32(127) / np.abs(blocks).max(axis=2, keepdims=True)))
    d2 = d1 / np.float32(matmul_i8.LEVEL2)
    q2 = np.rint((blocks - q1 * d1) * (np.float32(matmul_i8.LEVEL2) * np.float32(127)
                                       / np.abs(blocks).max(axis=2, keepdims=True)))
    assert np.abs(q1).max() <= 127 and np.abs(q2).max() <= 127
    x_hat = q1.astype(np.float64) * d1 + (q2.astype(np.float64) * d2 if levels == 2 else 0)
    exact = x_hat.reshape(n, cols) @ w.T
    if m is not None:  # the offset term uses the sums of the rounded blocks
        exact += x_hat.sum(axis=2) @ m.T.astype(np.float64)
    scale = np.abs(ref).max()
    assert np.abs(got - exact).max() <= 1e-5 * scale
    assert np.abs(got - ref).max() <= I8_ACCURACY[levels] * scale  # two levels: close to the f32 kernels
    if levels == 1:  # and the rounding is really 8-bit: far from the two-level products
        assert np.abs(got - _run("vnni", _layout_kind(kind), mat, x)).max() > 1e-4 * scale


@pytest.mark.parametrize("variant", ENGINE_VARIANTS)
@pytest.mark.parametrize("kind", ["q8", "q5", "q6", "q6-mixed", "q4", "q4k"])
def test_matmul_rows_independent_of_batch(variant, kind, q8_matrix, q5_matrix, q4_matrix, q6_matrix,
                                          q6_mixed_matrix, q4k_matrix, need_variant):
    need_variant(variant)
    mat, x, _ = _matrix(kind, q5_matrix if kind == "q5" else q8_matrix, q4_matrix,
                        q6_mixed_matrix if kind == "q6-mixed" else q6_matrix, q4k_matrix)
    x = np.concatenate([x] * 6)  # 42 rows: crosses a token tile
    batched = _run(variant, _layout_kind(kind), mat, x)
    one_by_one = np.concatenate([_run(variant, _layout_kind(kind), mat, x[i:i + 1]) for i in range(x.shape[0])])
    assert np.array_equal(batched, one_by_one)


@pytest.mark.parametrize("kind", ["q8", "q5", "q6", "q6-mixed", "q4", "q4k"])
def test_vnni_row_tiles_give_the_untiled_results(kind, q8_matrix, q5_matrix, q4_matrix, q6_matrix,
                                                 q6_mixed_matrix, q4k_matrix, need_variant):
    """An L2 so small that a 45-row prompt is cut into tiles of a few rows (the last one short) and slices
    of one or two groups (200 rows: 13 groups): every output bit-identical to the untiled loop (an L2 the
    whole prompt fits in) and to one row at a time."""
    need_variant("vnni")
    import numba

    mat, x, _ = _matrix(kind, q5_matrix if kind == "q5" else q8_matrix, q4_matrix,
                        q6_mixed_matrix if kind == "q6-mixed" else q6_matrix, q4k_matrix)
    x = np.concatenate([x] * 7)[:45]
    untiled = _run("vnni", _layout_kind(kind), mat, x, products.I8Products(l2=1 << 30))
    row_bytes = 2 * x.shape[1] + 20 * x.shape[1] // 32
    threads = numba.get_num_threads()
    try:  # one thread: slices of two groups (row_tiles keeps 4 slices a thread at least)
        for l2, n_threads, slices in ((8 * row_bytes, threads, 13), (40 * row_bytes + 64 * x.shape[1], 1, 7)):
            numba.set_num_threads(n_threads)  # what the products ask numba for
            tile, got_slices = row_tiles.row_tiles(x.shape[0], x.shape[1], 16 * x.shape[1], 13, l2, n_threads)
            assert 1 < tile < x.shape[0] and x.shape[0] % tile != 0 and got_slices == slices
            tiled = _run("vnni", _layout_kind(kind), mat, x, products.I8Products(l2=l2))
            assert np.array_equal(tiled, untiled), (tile, slices)
    finally:
        numba.set_num_threads(threads)
    one_by_one = np.concatenate([_run("vnni", _layout_kind(kind), mat, x[i:i + 1]) for i in range(x.shape[0])])
    assert np.array_equal(untiled, one_by_one)


def test_row_tiles_keep_the_tile_and_slice_in_half_the_l2():
    """A long prompt's tile (its rows' two activation levels) and a slice's weights fit half the L2, in a
    multiple of the threads' count of slices; a prompt or batch whose activations fit half the L2 runs
    untiled, one group a slice (the loop as it was: decode unchanged)."""
    l2 = 1 << 20
    for cols, group_bytes in ((1536, 12_672), (8960, 107_520)):  # Qwen 1.5B's gate|up (q4) and down (q6)
        row_bytes = 2 * cols + 20 * (cols // 32)
        tile, slices = row_tiles.row_tiles(454, cols, group_bytes, 1120, l2, 2)
        span = -(-1120 // slices)
        assert tile < 454 and tile * row_bytes <= l2 // 4 and tile * row_bytes + span * group_bytes <= l2 // 2
        assert slices % 2 == 0
        assert row_tiles.row_tiles(8, cols, group_bytes, 1120, l2, 2) == (8, 1120)
    assert row_tiles.row_tiles(256, 576, 4_864, 36, l2, 2) == (256, 36)  # SmolLM2: 256 rows fit
    assert row_tiles.row_tiles(1, 1536, 12_672, 16, l2, 2) == (1, 16)
    tile, slices = row_tiles.row_tiles(454, 1536, 12_672, 36, l2, 2)  # few groups: 4 slices a thread at least
    assert slices >= 8 and slices % 2 == 0
    bounds = [row_tiles.slice_bounds(s, slices, 36) for s in range(slices)]
    assert bounds[0][0] == 0 and bounds[-1][1] == 36 and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert sum(g1 - g0 for g0, g1 in bounds[:slices // 2]) == 18  # each of 2 threads: half the groups


def test_l2_size_read_from_the_cache_description(tmp_path):
    """The L2 size comes from Linux's cache description; a tree without one gives the default."""
    from corert import cpu

    for index, (level, kind, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction", "32K"),
                                                 ("2", "Unified", "2048K"), ("3", "Unified", "32M")]):
        d = tmp_path / f"index{index}"
        d.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(value + "\n")
    assert cpu.l2_bytes(str(tmp_path)) == 2 << 20
    assert cpu.l2_bytes(str(tmp_path / "none")) == cpu.DEFAULT_L2_BYTES
    assert products.PRODUCTS["vnni"].l2 == cpu.l2_bytes()


def _fresh(dispatcher):
    """numba hides the assembly of cached code: compile an uncached copy with the same options."""
    import numba

    opts = {k: v for k, v in dispatcher.targetoptions.items() if k in ("fastmath", "boundscheck")}
    return numba.njit(**opts)(dispatcher.py_func)


def _asm(dispatcher) -> str:
    return "\n".join(dispatcher.inspect_asm().values())


def test_simd_variants_are_vectorized():
    """The SIMD variants' group kernels compile to packed FMAs on 256/512-bit registers (x86 with AVX2);
    the scalar reference has no FMA at all (no contraction without fastmath)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("ymm/zmm check is for x86")
    from corert.cpu import info

    if "avx2" not in info().features:
        pytest.skip("no AVX2 here")
    import re

    g = matmul.GROUP
    q8, s8, x = np.ones(32 * g, np.int8), np.zeros(g, np.uint16), np.ones(32, np.float32)
    q4, d, xs = np.ones(16 * g, np.uint8), np.ones(g, np.float32), np.ones(1, np.float32)
    acc, tmp = np.empty(g, np.float32), np.empty(g, np.float32)
    q6s, q6sup = np.ones(2 * g, np.int8), np.ones(g, np.float32)  # q6: an int8 scale per 16, an f32 one per 256
    wide = {name: _fresh(matmul.int8_group_wide) for name in ("q8", "q6")} | {"q4": _fresh(matmul.q4_group_wide)}
    scalar = {name: _fresh(matmul.int8_group_scalar) for name in ("q8", "q6")} | {"q4": _fresh(matmul.q4_group_scalar)}
    for kernels in (wide, scalar):
        kernels["q8"](q8, s8, F16_TO_F32, matmul.QK, x, acc, tmp, g)
        kernels["q6"](q8, q6s, q6sup, matmul.Q6_BLOCK, x, acc, tmp, g)
        kernels["q4"](q4, d, d, x, xs, acc, tmp, g)
    fma = re.compile(r"vfmadd\d+ps\s[^\n]*%[yz]mm")
    for name, fn in wide.items():
        assert fma.search(_asm(fn)), f"{name} {fn.py_func.__name__} is not vectorized"
    for name, fn in scalar.items():
        assert not re.search(r"vfmadd", _asm(fn)), f"{name} {fn.py_func.__name__} contracts to FMA"


def test_vnni_q6_layout_packs_six_bit_values(q6_matrix, q6_mixed_matrix):
    """Q6_K's values (all in [-32, 31]) are stored in 6 bits, and unpack to themselves; a matrix with wider
    values (a Q8_0 block joined with Q6_K ones) keeps the int8 form.  (The products of both forms are checked
    against the scalar kernel and float64 above.)"""
    qs, sub, sup = q6_matrix[:3]
    q = matmul_i8.layout_q6(qs, sub, sup)[0]
    rows, cols = qs.shape
    groups = -(-rows // matmul_i8.ROWS)
    assert matmul_i8.is_packed_q6(q, cols) and q.nbytes == groups * matmul_i8.ROWS * cols * 6 // 8
    blocks = q.reshape(groups, cols // 32, matmul_i8.Q6_PACKED)
    nib = blocks[:, :, :256].reshape(groups, -1, 4, matmul_i8.ROWS, 4)  # (g, b, step, r, i)
    top = blocks[:, :, 256:].reshape(groups, -1, 2, matmul_i8.ROWS, 4)  # (g, b, half, r, i)
    u = np.empty((groups, cols // 32, 2, 4, matmul_i8.ROWS, 4), np.int16)  # (g, b, half, step, r, i)
    for k in range(4):
        u[:, :, 0, k] = (nib[:, :, k] & 15) | (((top[:, :, 0] >> (2 * k)) & 3) << 4)
        u[:, :, 1, k] = (nib[:, :, k] >> 4) | (((top[:, :, 1] >> (2 * k)) & 3) << 4)
    back = (u.transpose(0, 4, 1, 2, 3, 5).reshape(groups * matmul_i8.ROWS, cols) - 32)[:rows]
    np.testing.assert_array_equal(back, qs)
    mixed = q6_mixed_matrix[0]
    assert not matmul_i8.is_packed_q6(matmul_i8.layout_q6(*q6_mixed_matrix[:3])[0], mixed.shape[1])


def test_vnni_q8_layout_packs_five_bit_values(q5_matrix, q8_matrix, need_variant):
    """Q5_0's values (all in [-16, 15]) are stored in 5 bits and unpack to themselves, and the packed
    products equal the 8-bit layout's bit for bit (the same integer block products); wider values (Q8_0's)
    keep the 8-bit form."""
    qs, sc = q5_matrix[:2]
    q, d = matmul_i8.layout_q8(qs, sc)
    rows, cols = qs.shape
    groups = -(-rows // matmul_i8.ROWS)
    assert matmul_i8.is_packed_q5(q, cols) and q.nbytes == groups * matmul_i8.ROWS * cols * 5 // 8
    blocks = q.reshape(groups, cols // 32, matmul_i8.Q5_PACKED)
    nib = blocks[:, :, :256].reshape(groups, -1, 4, matmul_i8.ROWS, 4)  # (g, b, step, r, i)
    top = blocks[:, :, 256:].reshape(groups, -1, matmul_i8.ROWS, 4)  # (g, b, r, i): bit 4 half + step
    u = np.empty((groups, cols // 32, 2, 4, matmul_i8.ROWS, 4), np.int16)  # (g, b, half, step, r, i)
    for k in range(4):
        u[:, :, 0, k] = (nib[:, :, k] & 15) | (((top >> k) & 1) << 4)
        u[:, :, 1, k] = (nib[:, :, k] >> 4) | (((top >> (4 + k)) & 1) << 4)
    back = (u.transpose(0, 4, 1, 2, 3, 5).reshape(groups * matmul_i8.ROWS, cols) - 16)[:rows]
    np.testing.assert_array_equal(back, qs)
    assert not matmul_i8.is_packed_q5(matmul_i8.layout_q8(*q8_matrix[:2])[0], q8_matrix[0].shape[1])
    need_variant("vnni")
    vnni = products.PRODUCTS["vnni"]
    plain = matmul_i8.layout_q8(qs, sc, pack=False)
    for x in (q5_matrix[2][:1], q5_matrix[2]):  # one row (decode) and several
        got, want = (np.empty((x.shape[0], rows), np.float32) for _ in range(2))
        vnni.q8((q, d), x, got)
        vnni.q8(plain, x, want)
        assert np.array_equal(got, want)


def test_vnni_q4k_layout_reads_fewer_bytes(q4k_matrix):
    """Q4_K's factored scales take 4.5 bits per weight in the vnni layout, the file's own (the q4 layout of
    the same weights, a scale and an offset per 32: 5 in f16, 6 here where the subnormal super-block scales
    keep them f32)."""
    mat = q4k_matrix[:5]
    rows, cols = mat[0].shape[0], mat[0].shape[1] * 2
    padded = -(-rows // matmul_i8.ROWS) * matmul_i8.ROWS
    factored = sum(p.nbytes for p in matmul_i8.layout_q4k(*mat))
    multiplied = sum(p.nbytes for p in matmul_i8.layout_q4(mat[0], *dequant.q4k_scales(*mat[1:], F16_TO_F32)))
    assert factored * 8 == padded * cols * 4.5 and multiplied * 8 >= padded * cols * 5


def test_vnni_q4k_scales_unpack_to_the_files(q4k_matrix):
    """The 6-bit scale words of layout_q4k, read as the module doc says (the kernel's shifts and rotation,
    in numpy), give back every row's scales and mins, and the super blocks' dd and negated dmin beside them;
    the padding rows are zero."""
    packed, sc, mn, dd, dmin = q4k_matrix[:5]
    rows, ns = sc.shape[0], dd.shape[1]
    _, ks = matmul_i8.layout_q4k(packed, sc, mn, dd, dmin)
    ng = ks.shape[0]
    blocks = ks.reshape(ng, ns, matmul_i8.Q4K_SCALES)
    words = np.ascontiguousarray(blocks[..., :96]).view(np.uint32).reshape(ng, ns, 3, matmul_i8.ROWS)
    got_sc, got_mn = (np.empty((ng, matmul_i8.ROWS, ns, 8), np.uint32) for _ in range(2))
    for k in range(8):
        low = words[:, :, k // 4] >> np.uint32(4 * (k % 4))
        top = (words[:, :, 2] >> np.uint32(2 * k)) | (words[:, :, 2] << np.uint32((32 - 2 * k) % 32))  # rotate
        v = (low & np.uint32(0x000F000F)) | (top & np.uint32(0x00300030))
        got_sc[..., k], got_mn[..., k] = (a.transpose(0, 2, 1) for a in (v & np.uint32(0xFFFF), v >> np.uint32(16)))
    got_sc, got_mn = got_sc.reshape(-1, ns * 8), got_mn.reshape(-1, ns * 8)
    assert np.array_equal(got_sc[:rows], sc) and np.array_equal(got_mn[:rows], mn)
    assert not got_sc[rows:].any() and not got_mn[rows:].any()
    halves = blocks[..., 96:].reshape(ng, ns, 2, matmul_i8.ROWS).transpose(0, 3, 1, 2).reshape(-1, ns, 2)
    assert np.array_equal(halves[:rows, :, 0], dd) and np.array_equal(halves[:rows, :, 1], dmin ^ np.uint16(0x8000))


def test_vnni_kernels_use_vpdpbusd(need_variant):
    """The vnni variant's products are ``vpdpbusd`` on zmm registers, with two activation levels (vnni) and
    one (vnni-q8).  (How many appear depends on LLVM's unrolling of the row loop, so they are not counted.)"""
    need_variant("vnni")
    import re

    x = np.ones((1, 32), np.float32)
    d, out = np.zeros((1, 16), np.float32), np.zeros((1, 16), np.float32)
    tuning = (1 << 20, 1)  # l2, threads
    for fn, args in ((matmul_i8.q4_matmul, (np.zeros((1, 4 * 64), np.uint8), d, d, x, out, *tuning)),
                     (matmul_i8.int8_matmul, (np.zeros((1, 8 * 64), np.uint8), np.zeros((1, 16), np.uint16),
                                            x, out, None, *tuning)),
                     (matmul_i8.int8_matmul, (np.zeros((1, 8 * 64), np.uint8), np.zeros((1, 32), np.int8),
                                            x, out, np.zeros((1, 16), np.float32), *tuning)),
                     (matmul_i8.q6_packed_matmul, (np.zeros((1, matmul_i8.Q6_PACKED), np.uint8),
                                                 np.zeros((1, 32), np.int8), x, out, np.zeros((1, 16), np.float32),
                                                 *tuning)),
                     (matmul_i8.q5_packed_matmul, (np.zeros((1, matmul_i8.Q5_PACKED), np.uint8),
                                                 np.zeros((1, 16), np.uint16), x, out, *tuning)),
                     (matmul_i8.q4k_matmul, (np.zeros((1, 8 * 4 * 64), np.uint8),
                                           np.zeros((1, matmul_i8.Q4K_SCALES), np.uint16),
                                           np.ones((1, 256), np.float32), out, *tuning))):
        for levels in (1, 2):
            f = _fresh(fn)  # compiled serially: the loop body is in this function's own assembly
            f(*args, levels)
            assert re.search(r"vpdpbusd\s+[^\n]*%zmm", _asm(f)), f"{fn.py_func.__name__} ({levels}): no vpdpbusd"


# -- row-wise ops ------------------------------------------------------------------------------------------
def test_rmsnorm_matches_numpy():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((5, 96)).astype(np.float32), rng.standard_normal(96).astype(np.float32)
    out = np.empty_like(x)
    ops.rmsnorm(x, w, 1e-5, out)
    ref = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=1e-6)


def test_rmsnorm_partial_sums_cover_every_value():
    """The sum of squares runs in eight partial sums plus a tail: a row whose length is no multiple of
    eight, with one large value in the tail, still has its own norm."""
    x = np.ones((2, 13), np.float32)
    x[1, 12] = 100.0
    out = np.empty_like(x)
    ops.rmsnorm(x, np.ones(13, np.float32), 0.0, out)
    np.testing.assert_allclose(out, x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True)), rtol=1e-6)


def test_row_ops_parallel_twins_match_serial():
    """A prompt's row-wise ops run on every thread (ops.PARALLEL from ops.PARALLEL_ROWS rows): each gives
    the serial form's bits, so a row's result does not depend on the size of its forward."""
    rng = np.random.default_rng(11)
    n, H, KV, hd, d, f = ops.PARALLEL_ROWS + 5, 4, 2, 16, 40, 24
    assert ops.for_rows(n) is ops.PARALLEL and ops.for_rows(ops.PARALLEL_ROWS - 1) is ops.SERIAL
    qkv = rng.standard_normal((n, (H + 2 * KV) * hd)).astype(np.float32)
    cos, sin = ops.rope_tables(np.arange(n) + 3, hd, 10000.0)
    w_q, w_k, w_d = (rng.uniform(0.5, 1.5, m).astype(np.float32) for m in (hd, hd, d))
    bias = rng.standard_normal(qkv.shape[1]).astype(np.float32)
    x0, y0 = rng.standard_normal((2, n, d)).astype(np.float32) * 3
    gu = rng.standard_normal((n, 2 * f)).astype(np.float32) * 4

    def run(o: ops.RowOps):
        got = []
        for normed in (False, True):
            q, k, v = np.empty((n, H, hd), np.float32), np.empty((n, KV, hd), np.float32), np.empty((n, KV, hd), np.float32)
            if normed:
                o.split_qkv_normed(qkv, w_q, w_k, 1e-6, cos, sin, q, k, v)
            else:
                o.split_qkv(qkv, bias, cos, sin, True, q, k, v)
            got += [q, k, v]
        for fn, args in ((o.add_rmsnorm, (w_d,)), (o.add_normed, (w_d[::-1].copy(), w_d))):
            x, y, out = x0.copy(), y0.copy(), np.empty_like(x0)
            fn(x, y, *args, 1e-6, out)
            got += [x, y, out]
        out = np.empty_like(x0)
        o.rmsnorm(x0, w_d, 1e-6, out)
        got.append(out)
        for gelu in (False, True):
            act = np.empty((n, f), np.float32)
            o.gated(gu, act, gelu)
            got.append(act)
        return got

    serial, parallel = run(ops.SERIAL), run(ops.PARALLEL)
    assert len(serial) == 15
    for a, b in zip(serial, parallel):
        assert np.array_equal(a, b)
    # and row by row: each row alone gives the rows of the whole
    one = np.empty((1, d), np.float32)
    for t in range(n):
        ops.rmsnorm(x0[t:t + 1], w_d, 1e-6, one)
        assert np.array_equal(one[0], serial[-3][t])


def test_rope_table_gives_rope_tables_values_and_grows_with_the_positions():
    """The model's kept tables (ops.RopeTable) give each position the values rope_tables computes for it,
    and grow only as far as the positions asked for (a step at a time), not to the context size."""
    table = ops.RopeTable(64, 1e6)
    for pos in (np.arange(5), np.array([3, 700, 2]), np.arange(450, 460)):
        cos, sin = table.at(pos)
        want_cos, want_sin = ops.rope_tables(pos, 64, 1e6)
        np.testing.assert_array_equal(cos, want_cos)
        np.testing.assert_array_equal(sin, want_sin)
        assert cos.shape == (len(pos), 32)
    assert table.cos.shape[0] == 3 * ops.RopeTable.STEP  # position 700 is in the third step


def test_balanced_row_pairs_first_and_last_rows():
    """The attention kernels' row order (tree_rows.balanced_row): a permutation of the rows, and each half of
    the jobs (what each of two threads gets from prange) holds about half of a causal block's work."""
    from corert.kernels.tree_rows import balanced_row

    for n in (1, 2, 7, 256, 454):
        order = [balanced_row(r, n) for r in range(n)]
        assert sorted(order) == list(range(n))
        first = sum(i + 1 for i in order[:n // 2])
        assert abs(first / (n * (n + 1) / 2) - 0.5) <= 1.0 / max(n, 2) + 1e-9
    assert [balanced_row(r, 5) for r in range(5)] == [0, 4, 1, 3, 2]


@pytest.mark.parametrize("neox", [False, True])
def test_rope_matches_complex_rotation(neox):
    rng = np.random.default_rng(5)
    n, h, hd = 4, 3, 16
    x = rng.standard_normal((n, h, hd)).astype(np.float32)
    pos = np.array([0, 1, 7, 300])
    cos, sin = ops.rope_tables(pos, hd, 10000.0)
    y = x.copy()
    ops.rope(y, cos, sin, neox)
    a, b = (x[..., :hd // 2], x[..., hd // 2:]) if neox else (x[..., 0::2], x[..., 1::2])
    ang = pos[:, None] * 10000.0 ** (-np.arange(0, hd, 2) / hd)
    z = (a + 1j * b) * np.exp(1j * ang)[:, None, :]
    ya, yb = (y[..., :hd // 2], y[..., hd // 2:]) if neox else (y[..., 0::2], y[..., 1::2])
    np.testing.assert_allclose(ya, z.real, atol=1e-5)
    np.testing.assert_allclose(yb, z.imag, atol=1e-5)
    assert np.array_equal(y[0], x[0])  # position 0 is the identity


def test_swiglu():
    rng = np.random.default_rng(6)
    gu = rng.standard_normal((3, 20)).astype(np.float32)
    out = np.empty((3, 10), np.float32)
    ops.swiglu(gu, out)
    g, u = gu[:, :10].astype(np.float64), gu[:, 10:]
    np.testing.assert_allclose(out, g / (1 + np.exp(-g)) * u, rtol=1e-6, atol=1e-7)


def test_swiglu_exp_over_the_whole_range():
    """The vectorizable e^x inside SwiGLU holds f32 accuracy from underflow to overflow of silu."""
    g = np.concatenate([np.linspace(-120, 120, 200001), [-1e30, 1e30, 0.0]]).astype(np.float32)
    out = np.empty((1, g.size), np.float32)
    ops.swiglu(np.concatenate([g, np.ones_like(g)])[None], out)
    g64 = g.astype(np.float64)
    with np.errstate(over="ignore"):
        ref = g64 / (1 + np.exp(-g64))
    assert np.all(np.abs(out[0] - ref) <= 4e-6 * np.abs(ref) + 1e-36)  # silu below -88: 0 instead of ~1e-37


def test_attention_matches_numpy_and_is_row_independent():
    rng = np.random.default_rng(7)
    n_heads, n_kv, hd, T = 6, 2, 16, 9
    k = rng.standard_normal((1, n_kv, 32, hd)).astype(np.float32)
    v = rng.standard_normal((1, n_kv, 32, hd)).astype(np.float32)
    q = rng.standard_normal((T, n_heads, hd)).astype(np.float32)
    pos = np.arange(T, dtype=np.int32)
    seqs = np.zeros(T, np.int32)
    out = np.empty_like(q)
    attention.attend_contiguous(q, k, v, seqs, pos, np.float32(0.25), out)
    for i in range(T):
        for h in range(n_heads):
            kv = h // (n_heads // n_kv)
            s = k[0, kv, :i + 1].astype(np.float64) @ q[i, h] * 0.25
            p = np.exp(s - s.max())
            np.testing.assert_allclose(out[i, h], (p / p.sum()) @ v[0, kv, :i + 1], rtol=1e-5, atol=1e-6)
        single = np.empty_like(q[i:i + 1])
        attention.attend_contiguous(q[i:i + 1], k, v, seqs[:1], pos[i:i + 1], np.float32(0.25), single)
        assert np.array_equal(single[0], out[i])




@pytest.mark.parametrize("n_heads, n_kv", [(4, 1), (14, 2)])
def test_attention_head_groups_match_numpy_and_never_depend_on_the_split(n_heads, n_kv):
    """gemma3's shape (4 query heads on one KV head) and Qwen 0.5B's (7 on each of 2: an odd head out of
    the pairs), a sliding window: a prompt's rows over the threads in whole head groups, a decode row alone
    (serial, or its heads split over jobs) give the same bits, and numpy's softmax attention."""
    rng = np.random.default_rng(8)
    hd, T, window = 64, 300, 256
    k = rng.standard_normal((1, n_kv, T + 1, hd)).astype(np.float32)
    v = rng.standard_normal((1, n_kv, T + 1, hd)).astype(np.float32)
    q = rng.standard_normal((T, n_heads, hd)).astype(np.float32)
    pos, seqs, scale = np.arange(T, dtype=np.int32), np.zeros(T, np.int32), np.float32(0.125)
    whole = np.empty_like(q)
    attention.attend_contiguous(q, k, v, seqs, pos, scale, whole, window=window)  # parallel: the work is large
    for i in (0, 5, 130, T - 1):
        lo = max(0, i + 1 - window)
        for h in range(n_heads):
            kv = h // (n_heads // n_kv)
            s = k[0, kv, lo:i + 1].astype(np.float64) @ q[i, h] * float(scale)
            p = np.exp(s - s.max())
            np.testing.assert_allclose(whole[i, h], (p / p.sum()) @ v[0, kv, lo:i + 1], rtol=1e-5, atol=1e-6)
    one_row = np.array([0, 1], np.int64)
    for i in (3, T - 1):
        row = (q[i:i + 1], k, v, seqs[:1], pos[i:i + 1], scale)
        for parts in (1, 2, 3, 4):
            alone = np.empty_like(q[:1])
            attention._attend_tiles_parallel(*row, window, NO_TREE, alone, one_row, parts)
            assert np.array_equal(alone[0], whole[i]), parts
        alone = np.empty_like(q[:1])
        attention._attend_tiles_serial(*row, window, NO_TREE, alone, one_row)
        assert np.array_equal(alone[0], whole[i])
    for tile_rows in (1, 3, 7):  # other tiles of the rows: the same bits
        tiled = np.empty_like(q)
        attention._attend_tiles_serial(q, k, v, seqs, pos, scale, window, NO_TREE, tiled,
                                       sequence_tiles(seqs, tile_rows))
        assert np.array_equal(tiled, whole), tile_rows


def test_attention_tiles_break_at_sequences():
    """A batch of two sequences' rows in runs of different lengths (continuous batching): each tile holds
    one sequence's rows (sequence_tiles), and every row equals the row attended alone, for a head dimension of
    the tiles (64) and one that takes the per-group kernel (24)."""
    rng = np.random.default_rng(11)
    seqs = np.array([0, 0, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0], np.int32)
    pos = np.zeros_like(seqs)
    for s in (0, 1):
        pos[seqs == s] = np.arange((seqs == s).sum()) + 30 * s
    assert sequence_tiles(seqs, 4).tolist() == [0, 2, 4, 7, 8, 9, 11, 14]  # runs of 5 as 2 + 3
    for hd in (64, 24):
        k = rng.standard_normal((2, 2, 64, hd)).astype(np.float16).view(np.uint16)
        v = rng.standard_normal((2, 2, 64, hd)).astype(np.float16).view(np.uint16)
        q = rng.standard_normal((seqs.size, 6, hd)).astype(np.float32)
        out = np.empty_like(q)
        attention.attend_contiguous(q, k, v, seqs, pos, np.float32(0.3), out, window=8)
        for i in range(seqs.size):
            alone = np.empty_like(q[:1])
            attention.attend_contiguous(q[i:i + 1], k, v, seqs[i:i + 1], pos[i:i + 1], np.float32(0.3), alone,
                                        window=8)
            assert np.array_equal(alone[0], out[i]), (hd, i)
            strided = np.empty((1, 6, 2 * hd), np.float32)[:, :, ::2]  # views that are not C-contiguous
            attention.attend_contiguous(np.asfortranarray(q[i:i + 1]), k, v, seqs[i:i + 1], pos[i:i + 1],
                                        np.float32(0.3), strided, window=8)
            assert np.array_equal(strided[0], out[i]), (hd, i)
            kk = k[seqs[i]].view(np.float16).astype(np.float64)
            vv = v[seqs[i]].view(np.float16).astype(np.float64)
            lo = max(0, pos[i] - 7)
            for h in range(6):
                sc = kk[h // 3, lo:pos[i] + 1] @ q[i, h] * 0.3
                p = np.exp(sc - sc.max())
                np.testing.assert_allclose(out[i, h], (p / p.sum()) @ vv[h // 3, lo:pos[i] + 1], rtol=1e-5,
                                           atol=1e-6)


def test_a_decode_steps_attention_gives_every_thread_work():
    """head_parts: one row's KV heads that do not divide among the threads are sliced (the split never
    changes a result, test above); whole groups otherwise."""
    assert attention.head_parts(1, 3, 3, 2) == 2  # SmolLM2's decode on 2 threads: 6 jobs, not 3
    assert attention.head_parts(1, 2, 6, 2) == 1  # Qwen: one KV head a thread
    assert attention.head_parts(1, 1, 4, 2) == 2  # gemma3: its one group halved
    assert attention.head_parts(1, 1, 1, 4) == 1  # nothing to slice
    assert attention.head_parts(454, 3, 3, 2) == 1  # a prompt's rows keep the threads busy


@pytest.mark.parametrize("way", ["int", "f16c"])
def test_f16_value_widens_every_finite_half_exactly(way):
    """corert.kernels.half's two widenings (integer shifts and one multiply; F16C's ``vcvtph2ps``) against
    numpy's float16 -> float32 on all 63,488 finite bit patterns: zeros, subnormals, normals, both signs.
    f16_value is the F16C one wherever numba compiles with F16C."""
    from numba import njit

    from corert.kernels import half
    from corert.kernels.simd import compiles_with

    if way == "f16c":
        if not compiles_with("f16c"):
            pytest.skip("numba does not compile with F16C here")
        assert half.f16_value is half._f16_value_f16c
    fn = half.f16_value_int if way == "int" else half._f16_value_f16c

    @njit
    def widen(bits, out):
        for i in range(bits.shape[0]):
            out[i] = fn(bits[i])

    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    ref = bits.view(np.float16).astype(np.float32)
    out = np.empty(65536, np.float32)
    widen(bits, out)
    finite = np.isfinite(ref)
    assert finite.sum() == 63488 and np.array_equal(out[finite], ref[finite])


@pytest.mark.parametrize("n_heads, n_kv, window", [(9, 3, 0), (4, 1, 40), (14, 2, 0)])
def test_f16_store_attention_equals_f32_over_the_rounded_values(n_heads, n_kv, window):
    """The contiguous f16 store (SmolLM2's, gemma3's with a window, Qwen 0.5B's head groups): its write rounds
    like numpy's astype(float16), and its attention, prompt rows (parallel) and decode rows (serial), gives the
    f32 store's results over the same rounded values bit for bit: the widening in the kernel is exact, and
    the arithmetic after it is explicit vector code (contiguous_attention._attend_tile), the same chains for
    either store type however LLVM compiles them (the fastmath kernels before it differed in the last place
    between the two, freshly compiled).  Head dimensions that are no multiple of 16 take _attend_group.
    """
    from corert.plugins.kv_cache.contiguous import ContiguousKVStore

    rng = np.random.default_rng(9)
    hd, T = 64, 200
    k = (rng.standard_normal((T, n_kv, hd)) * rng.uniform(1e-5, 30, (1, 1, hd))).astype(np.float32)
    v = rng.standard_normal((T, n_kv, hd)).astype(np.float32)
    q = rng.standard_normal((T, n_heads, hd)).astype(np.float32)
    seqs, pos = np.ones(T, np.int32), np.arange(T, dtype=np.int32)
    half = ContiguousKVStore(2, n_kv, hd, 256, 2, "f16")
    ref = ContiguousKVStore(2, n_kv, hd, 256, 2, "f32")
    rounded = [a.astype(np.float16).astype(np.float32) for a in (k, v)]
    for st, kk, vv in ((half, k, v), (ref, *rounded)):
        for _ in range(2):
            st.new_sequence()
        st.reserve(seqs, pos)
        st.write(1, seqs, pos, kk, vv)
    assert half.k.dtype == np.uint16 and half.nbytes() * 2 == ref.nbytes()
    assert np.array_equal(half.k[1, 1, :, :T], k.astype(np.float16).view(np.uint16).transpose(1, 0, 2))
    assert np.array_equal(half.v[1, 1, :, :T], v.astype(np.float16).view(np.uint16).transpose(1, 0, 2))
    for rows in (slice(0, T), slice(T - 1, T), slice(7, 8)):
        got, want = np.empty_like(q[rows]), np.empty_like(q[rows])
        half.attend(1, seqs[rows], pos[rows], q[rows], 0.125, got, window=window)
        ref.attend(1, seqs[rows], pos[rows], q[rows], 0.125, want, window=window)
        assert np.array_equal(got, want), rows

def test_vnni_parallel_quantization_matches_serial(need_variant):
    """A prompt's activations are quantized on every thread (quantize_rows_parallel, _half_sums from
    PARALLEL_ROWS rows on): the same bytes, steps and sums as the serial loop a decode row takes."""
    need_variant("vnni")
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((matmul_i8.PARALLEL_ROWS + 3, 256)) * rng.uniform(0.01, 10, (1, 256))).astype(np.float32)
    x[2, :32] = 0.0  # an all-zero block
    n, cols = x.shape
    got = []
    for fn in (matmul_i8.quantize_rows, matmul_i8.quantize_rows_parallel):
        bufs = (np.empty((n, 2, cols), np.uint8), np.empty((n, 2, cols // 32), np.float32),
                np.empty((n, 2, cols // 32), np.int32), np.empty((n, cols // 32), np.float32))
        fn(x, *bufs)
        got.append(bufs)
    for a, b in zip(*got):
        assert np.array_equal(a, b)
    xq = got[0][0]
    serial = np.concatenate([matmul_i8._half_sums(xq[t:t + 1]) for t in range(n)])
    assert np.array_equal(matmul_i8._half_sums(xq), serial)
    assert np.array_equal(serial, xq.view(np.int8).reshape(n, 2, -1, 16).sum(axis=3, dtype=np.int32))


def test_vnni_quantizer_rounds_as_numpy(need_variant):
    """quantize_rows (16-float vectors) against numpy at its own steps: q1 = rint(x * 127 / amax), q2 the
    exact residual x - d1 q1 in steps of d2, clipped to int8; the integer sums and xs = d1 sum1 + d2 sum2 (rounded once);
    an all-zero block gives zeros; one level writes level 1 alone, the same bytes."""
    need_variant("vnni")
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((5, 320)) * np.exp(rng.standard_normal(320))).astype(np.float32)
    x[1, 64:96] = 0.0
    n, cols = x.shape
    two = (np.empty((n, 2, cols), np.uint8), np.empty((n, 2, cols // 32), np.float32),
           np.empty((n, 2, cols // 32), np.int32), np.empty((n, cols // 32), np.float32))
    matmul_i8.quantize_rows(x, *two)
    q, d, sums, xs = two
    blocks = x.reshape(n, -1, 32)
    amax = np.abs(blocks).max(axis=2)
    with np.errstate(divide="ignore"):
        inv1 = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)[..., None]
    q1 = np.rint(blocks * inv1)
    d1 = d[:, 0, :, None].astype(np.float64)
    assert np.allclose(d[:, 0], amax / np.float32(127), rtol=2 ** -23, atol=0)
    residual = (blocks - q1 * d1).astype(np.float32)  # exact in f64, then rounded once: the kernel's fma
    q2 = np.clip(np.rint(residual * (np.float32(matmul_i8.LEVEL2) * inv1)), -127, 127)
    got1, got2 = (q[:, lv].view(np.int8).reshape(n, -1, 32) for lv in (0, 1))
    assert np.array_equal(got1, q1) and np.array_equal(got2, q2)
    assert np.array_equal(sums, np.stack([got1.sum(axis=2), got2.sum(axis=2)], axis=1))
    exact = d[:, 0].astype(np.float64) * sums[:, 0] + d[:, 1].astype(np.float64) * sums[:, 1]
    assert np.array_equal(xs, exact.astype(np.float32))  # the rounded sum of the exact products
    assert not got1[1, 2:3].any() and not got2[1, 2:3].any() and d[1, :, 2].max() == 0
    one = (np.empty((n, 1, cols), np.uint8), np.empty((n, 1, cols // 32), np.float32),
           np.empty((n, 1, cols // 32), np.int32), np.empty((n, cols // 32), np.float32))
    matmul_i8.quantize_rows(x, *one)
    assert np.array_equal(one[0][:, 0], q[:, 0]) and np.array_equal(one[1][:, 0], d[:, 0])
    assert np.array_equal(one[3], (d[:, 0].astype(np.float64) * sums[:, 0]).astype(np.float32))
