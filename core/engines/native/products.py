"""The matrix-product kernels of each engine variant: the weight layout made at load, and the product run
on every forward.  A variant is chosen once per model (cpu.py); its layout only fits its own kernels.

  avx2 / neon / scalar   f32 activations (matmul.py): 64-row groups, numba-vectorized loops
  vnni                   activations as two int8 levels (~16 bits), AVX-512 VNNI (matmul_i8.py): 16-row groups;
                         q8 values that fit 5 bits (Q5_0's) and q6 values that fit 6 (Q6_K's) are packed;
                         Q4_K keeps its factored 6-bit scales (layout_q4k: 4.5 bits/weight, the file's)
  vnni-q8                vnni's layout and kernels with ONE int8 level per 32-value block (llama.cpp's Q8
                         activations, ~8 bits): half the integer work of a row, at ~8-bit accuracy
  vnni-q8ffn             one level for the FFN's gate|up products only, two for the others
  amx                    vnni's layout, levels and results (bit for bit), the products of AMX_MIN_ROWS rows or
                         more (prompts, batches, verified drafts) on AMX-INT8 tiles (matmul_amx.py); decode's
                         single rows stay on the vnni kernels
  amx-bf16               amx, and the "bulk" rows of a forward (a prompt's rows whose logits nobody reads)
                         on AMX-BF16 tiles (matmul_bf16.py, split: x and w as bf16 hi + lo, f32 sums over the
                         whole K: no per-block epilogue); NOT vnni's bits for those rows, so which rows go
                         there is the forward's caller's rule, never the row count of a call (model.py)
"""
from __future__ import annotations

from typing import Callable

import attrs
import numba
import numpy as np

from . import dequant, matmul, matmul_amx, matmul_bf16, matmul_i8
from ... import cpu
from ...kernels.f16 import F16_TO_F32

QK = matmul.QK


@attrs.frozen
class F32Products:
    """x stays f32; ``wide`` picks the vectorized group kernels over the scalar reference."""

    wide: bool
    #: no other kernels for a forward's bulk rows (I8Products.bulk_path)
    bulk_path = False

    def layout_q8(self, q: np.ndarray, scale_bits: np.ndarray) -> tuple[np.ndarray, ...]:
        return matmul.group_q8(q, scale_bits)

    def layout_q4(self, q: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, ...]:
        return matmul.group_q4(q, scale, offset)

    def layout_q6(self, q: np.ndarray, sub: np.ndarray, sup: np.ndarray) -> tuple[np.ndarray, ...]:
        return matmul.group_q6(q, sub, sup)

    def layout_q4k(self, q: np.ndarray, *scales: np.ndarray) -> tuple[np.ndarray, ...]:
        """Q4_K's factored scales (dequant.to_q4k) multiplied out: the f32 kernels read a scale per 32."""
        return matmul.group_q4(q, *dequant.q4k_scales(*scales, F16_TO_F32))

    def for_matrix(self, role: str) -> "F32Products":
        return self

    def bind(self, kind: str, parts: tuple[np.ndarray, ...], cols: int, role: str, bulk: bool = False):
        """``run(x, out)``: the product of the matrix (``kind``, ``parts``, ``cols``) with x, what ``q8`` /
        ``q6`` / ``q4`` would run (here simply that method; ``bulk`` changes nothing)."""
        method = getattr(self, kind)
        return lambda x, out: method(parts, x, out)

    def q8(self, parts: tuple[np.ndarray, ...], x: np.ndarray, out: np.ndarray) -> None:
        matmul.int8_matmul(*parts, x, out, F16_TO_F32, QK, self.wide)

    def q6(self, parts: tuple[np.ndarray, ...], x: np.ndarray, out: np.ndarray) -> None:
        q, sub, sup = parts
        matmul.int8_matmul(q, sub, x, out, sup, matmul.Q6_BLOCK, self.wide)

    def q4(self, parts: tuple[np.ndarray, ...], x: np.ndarray, out: np.ndarray) -> None:
        xsum = np.empty((x.shape[0], x.shape[1] // QK), np.float32)
        matmul.block_sums(x, xsum)
        matmul.q4_matmul(*parts, x, xsum, out, self.wide)


#: the roles of a layer's matrices and the output's, as Transformer.forward names them
ROLES = frozenset({"qkv", "o", "gate_up", "down", "output"})


@attrs.frozen
class LayoutKernels:
    """The product entry points of one int8 layout (matmul_i8's), one per variant family: ``vnni`` and ``amx``
    take (*parts before x, x, out, *parts after, l2, threads, levels), ``bf16`` (..., out, *parts after,
    threads, split)."""

    vnni: Callable
    amx: Callable
    bf16: Callable
    #: the parts after out (q6's super-block scales); the others come before x
    after: int = 0
    #: q8's vnni and amx kernels are q6's (int8_product): None in the place of its super-block scales
    none_after: bool = False

    def arguments(self, parts: tuple[np.ndarray, ...]) -> tuple[tuple, tuple, tuple]:
        """A matrix's ``parts`` as the kernels take them: (before x, after out for vnni / amx, for bf16)."""
        cut = len(parts) - self.after
        return parts[:cut], (None,) if self.none_after else parts[cut:], parts[cut:]


#: layout (layout_of) -> its kernels
LAYOUT_KERNELS = {
    "q8": LayoutKernels(matmul_i8.int8_product, matmul_amx.q8_product, matmul_bf16.q8_product, none_after=True),
    "q5": LayoutKernels(matmul_i8.q5_packed_product, matmul_amx.q5_packed_product, matmul_bf16.q5_packed_product),
    "q6": LayoutKernels(matmul_i8.int8_product, matmul_amx.q6_product, matmul_bf16.q6_product, after=1),
    "q6p": LayoutKernels(matmul_i8.q6_packed_product, matmul_amx.q6_packed_product, matmul_bf16.q6_packed_product,
                         after=1),
    "q4": LayoutKernels(matmul_i8.q4_product, matmul_amx.q4_product, matmul_bf16.q4_product),
    "q4k": LayoutKernels(matmul_i8.q4k_product, matmul_amx.q4k_product, matmul_bf16.q4k_product)}


def layout_of(kind: str, parts: tuple[np.ndarray, ...], cols: int) -> str:
    """The int8 layout of a matrix of ``kind`` (q8 / q6 / q4) made by I8Products.layout_*: q8's values packed
    in 5 bits (Q5_0's: "q5") or not, q6's in 6 bits ("q6p") or bytes, q4's factored Q4_K scales ("q4k":
    values, scales) or a scale and offset per 32 ("q4")."""
    if kind == "q8":
        return "q5" if matmul_i8.is_packed_q5(parts[0], cols) else "q8"
    if kind == "q6":
        return "q6p" if matmul_i8.is_packed_q6(parts[0], cols) else "q6"
    if kind == "q4":
        return "q4k" if len(parts) == 2 else "q4"
    raise ValueError(f"no product for weights of kind {kind!r}")


@attrs.frozen
class I8Products:
    """x split into ``levels`` int8 levels per 32-value block before each product (see matmul_i8.py); the
    matrices whose role is in ``one_level`` get one level whatever ``levels`` says; ``l2``: the L2 bytes a
    core has, which cut a prompt's products into tiles (row_tiles.py); ``amx``: products of
    matmul_amx.AMX_MIN_ROWS rows or more on AMX tiles (the same results)."""

    l2: int = attrs.field(factory=cpu.l2_bytes)
    levels: int = attrs.field(default=2, validator=attrs.validators.in_((1, 2)))
    one_level: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset,
                                            validator=attrs.validators.deep_iterable(attrs.validators.in_(ROLES)))
    amx: bool = False
    #: the bulk rows' products on bf16 tiles (bind(..., bulk=True))
    bf16: bool = False
    _single: "I8Products | None" = attrs.field(default=None, init=False, eq=False, repr=False)

    def for_matrix(self, role: str) -> "I8Products":
        """The products of a matrix of ``role`` (one of ROLES)."""
        if role not in self.one_level:
            return self
        if self._single is None:  # made once: this runs on every product of a forward
            object.__setattr__(self, "_single", I8Products(l2=self.l2, levels=1, amx=self.amx,
                                                                bf16=self.bf16))
        return self._single

    @property
    def bulk_path(self) -> bool:
        """Whether bind(..., bulk=True) runs other kernels than the exact ones."""
        return self.bf16

    def bind(self, kind: str, parts: tuple[np.ndarray, ...], cols: int, role: str, bulk: bool = False):
        """``run(x, out)``: exactly the kernel call ``for_matrix(role).<kind>(parts, x, out)`` makes (with
        ``bulk`` and bulk_path: the bf16 tiles' product of every row, whatever their count), chosen
        once per matrix.  A decode step runs ~120 products; the choice (role, kind, packed layout, levels)
        took five Python calls of each, ~1-2 us a product (profile: bench-results/s11-tok11)."""
        p = self.for_matrix(role)
        l2, levels, many = p.l2, p.levels, matmul_i8.PARALLEL_ROWS
        k = LAYOUT_KERNELS[layout_of(kind, parts, cols)]
        fn, tiles, bf16 = k.vnni, k.amx, k.bf16
        pre, post, sup = k.arguments(parts)
        get_threads = numba.get_num_threads

        def run(x: np.ndarray, out: np.ndarray) -> None:
            # a batch of a few rows is never tiled (row_tiles), so numba's thread count (~0.5 us to ask) is
            # asked for prompts only
            fn(*pre, x, out, *post, l2, get_threads() if x.shape[0] >= many else 1, levels)

        def run_amx(x: np.ndarray, out: np.ndarray) -> None:
            rows = x.shape[0]
            (tiles if rows >= tiled else fn)(*pre, x, out, *post, l2, get_threads() if rows >= many else 1, levels)

        def run_bf16(x: np.ndarray, out: np.ndarray) -> None:
            bf16(*pre, x, out, *sup, get_threads(), True)
        tiled = matmul_amx.AMX_MIN_ROWS
        if bulk and p.bf16:
            return run_bf16
        return run_amx if p.amx else run

    def layout_q8(self, q: np.ndarray, scale_bits: np.ndarray) -> tuple[np.ndarray, ...]:
        return matmul_i8.layout_q8(q, scale_bits)

    def layout_q4(self, q: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, ...]:
        return matmul_i8.layout_q4(q, scale, offset)

    def layout_q6(self, q: np.ndarray, sub: np.ndarray, sup: np.ndarray) -> tuple[np.ndarray, ...]:
        return matmul_i8.layout_q6(q, sub, sup)

    def layout_q4k(self, q: np.ndarray, *scales: np.ndarray) -> tuple[np.ndarray, ...]:
        return matmul_i8.layout_q4k(q, *scales)

    def q8(self, parts: tuple[np.ndarray, ...], x: np.ndarray, out: np.ndarray) -> None:
        self.bind("q8", parts, x.shape[1], "")(x, out)

    def q6(self, parts: tuple[np.ndarray, ...], x: np.ndarray, out: np.ndarray) -> None:
        self.bind("q6", parts, x.shape[1], "")(x, out)

    def q4(self, parts: tuple[np.ndarray, ...], x: np.ndarray, out: np.ndarray) -> None:
        self.bind("q4", parts, x.shape[1], "")(x, out)


#: variant name -> its products
PRODUCTS = {"avx2": F32Products(wide=True), "neon": F32Products(wide=True), "scalar": F32Products(wide=False),
            "vnni": I8Products(), "vnni-q8": I8Products(levels=1),
            "vnni-q8ffn": I8Products(one_level={"gate_up"}), "amx": I8Products(amx=True),
            "amx-bf16": I8Products(amx=True, bf16=True)}
