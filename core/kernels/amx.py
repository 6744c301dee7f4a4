"""AMX-INT8 tile instructions for numba kernels (Intel Sapphire Rapids and later): the ``amx`` variant's.

One ``tdpbsud`` multiplies a tile of up to 16 rows x 64 signed bytes (A) by one of up to 16 rows x 64
unsigned bytes (B, K/4 rows of 16 columns x 4 consecutive K bytes: matmul_i8's weight operands exactly) into
16 x 16 int32 (C), exactly: 16 ``vpdpbusd`` of work in one instruction.  The eight tile registers
(``tmm0``-``tmm7``) get their shapes from a 64-byte configuration (:func:`tile_config`) that each thread loads
itself (``ldtilecfg``: the tile state is per thread) and releases when done (``tilerelease``).  Tile numbers
are compile-time constants (the instructions encode them), so the functions below take literal integers.

Linux hands the tile state (8 KB of registers) to a process only when asked: without the
``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`` of cpu.request_amx_permission the first tile
instruction is SIGILL.  cpu.py asks at detection, and offers the variant only when the kernel said yes; this
module asks again at import (below), because a tile kernel can run with no detection before it.

Memory operands take a C-contiguous array and a flat element index, as simd.py's do; strides are in bytes.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .. import cpu

# Every module whose kernels use tiles imports this one, so the tile state is asked for before any of them
# runs, detection or not: a script calling matmul_amx's kernels, or Transformer.load(header, "amx"), never runs
# cpu.py's detection, and then the first tile instruction was SIGILL (tests/test_native_amx.py).  At import,
# not at compile time: a kernel numba loads from its cache compiles nothing.  Idempotent (cached).
cpu.request_amx_permission()

_I8, _I64 = ir.IntType(8), ir.IntType(64)
_PTR = _I8.as_pointer()

#: the tile configuration's size and layout: palette at byte 0, colsb[16] uint16 at 16, rows[16] uint8 at 48
CONFIG_BYTES = 64


def tile_config(shapes) -> np.ndarray:
    """The 64-byte configuration (palette 1) giving tile k ``shapes[k]`` = (rows, bytes a row); the tiles
    not listed are unused (0 x 0)."""
    cfg = np.zeros(CONFIG_BYTES, np.uint8)
    cfg[0] = 1
    for k, (rows, colsb) in enumerate(shapes):
        if not (0 < rows <= 16 and 0 < colsb <= 64):
            raise ValueError(f"tile {k}: {rows} rows of {colsb} bytes; a tile holds at most 16 rows of 64")
        cfg[16 + 2 * k:18 + 2 * k] = np.frombuffer(np.uint16(colsb).tobytes(), np.uint8)
        cfg[48 + k] = rows
    return cfg


def _call(builder, name: str, ret, args) -> ir.Value:
    fnty = ir.FunctionType(ret, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, f"llvm.x86.{name}"), args)


def _tile(t) -> bool:
    return isinstance(t, types.IntegerLiteral) and 0 <= t.literal_value < 8


def _address(context, builder, aty, arr, idx):
    data = context.make_array(aty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [idx]), _PTR)


def _stride(builder, value, ty):
    return builder.sext(value, _I64) if ty.bitwidth < 64 else value


@intrinsic
def load_config(typingctx, cfg):
    """``ldtilecfg``: the tile shapes of a :func:`tile_config` array (zeroes every tile)."""
    if not (isinstance(cfg, types.Array) and cfg.dtype == types.uint8):
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "ldtilecfg", ir.VoidType(), [_address(context, builder, sig.args[0], args[0],
                                                             ir.Constant(_I64, 0))])
        return context.get_dummy_value()
    return types.void(cfg), codegen


@intrinsic
def release_tiles(typingctx):
    """``tilerelease``: this thread's tile state back to its initial (unused) state."""
    def codegen(context, builder, sig, args):
        _call(builder, "tilerelease", ir.VoidType(), [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def tile_zero(typingctx, t):
    """Tile ``t`` = 0."""
    if not _tile(t):
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "tilezero", ir.VoidType(), [ir.Constant(_I8, sig.args[0].literal_value)])
        return context.get_dummy_value()
    return types.void(t), codegen


def _tile_memory(name: str, doc: str):
    """``llvm.x86.<name>(tile, address, stride)``: a tile's rows from or to memory."""
    @intrinsic
    def memory(typingctx, t, arr, idx, stride):
        if not (_tile(t) and isinstance(arr, types.Array) and arr.layout == "C"
                and isinstance(idx, types.Integer) and isinstance(stride, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            ptr = _address(context, builder, sig.args[1], args[1], args[2])
            _call(builder, name, ir.VoidType(),
                  [ir.Constant(_I8, sig.args[0].literal_value), ptr, _stride(builder, args[3], sig.args[3])])
            return context.get_dummy_value()
        return types.void(t, arr, idx, stride), codegen
    memory.__doc__ = doc
    return memory


tile_load = _tile_memory("tileloadd64", "Tile ``t`` (its configured rows x bytes) from ``arr[idx]``, rows ``stride`` "
                                        "bytes apart.")
tile_store = _tile_memory("tilestored64", "Tile ``t`` into ``arr[idx]``, rows ``stride`` bytes apart.")


def _dot(name: str, doc: str):
    @intrinsic
    def dot(typingctx, c, a, b):
        if not (_tile(c) and _tile(a) and _tile(b)):
            return None

        def codegen(context, builder, sig, args):
            _call(builder, name, ir.VoidType(), [ir.Constant(_I8, s.literal_value) for s in sig.args])
            return context.get_dummy_value()
        return types.void(c, a, b), codegen
    dot.__doc__ = doc
    return dot


dot_s8u8 = _dot("tdpbsud", """``tdpbsud``: tile ``c`` += tile ``a`` (signed bytes) . tile ``b`` (unsigned bytes, 4 K values a
    column): c[m][n] += sum over k of a[m][k] * b[k / 4][4 n + k % 4], exact in int32.""")
dot_s8s8 = _dot("tdpbssd", "``tdpbssd``: dot_s8u8 with signed bytes in ``b`` too.")
dot_bf16 = _dot("tdpbf16ps", """``tdpbf16ps``: tile ``c`` (f32) += tile ``a`` (bf16, 32 K values a row) . tile ``b`` (bf16, 2 K values a
    column): c[m][n] += sum over k of a[m][k] * b[k / 2][2 n + k % 2], accumulated in f32 across calls.""")

_I32x16 = ir.VectorType(ir.IntType(32), 16)
_F32x16 = ir.VectorType(ir.FloatType(), 16)


def _bf16_bits(builder, v):
    """f32 lanes rounded to bf16 (nearest, ties to even) in the top 16 bits of int32 lanes: integer
    operations, on any AVX-512 (finite values; the weights are)."""
    c = lambda k: ir.Constant(_I32x16, [k] * 16)  # noqa: E731
    bits = builder.bitcast(v, _I32x16)
    odd = builder.and_(builder.lshr(bits, c(16)), c(1))
    return builder.add(bits, builder.add(odd, c(0x7FFF)))


@intrinsic
def store_bf16_operand(typingctx, buf, idx, v, scale, offset, lo):
    """Rows ``idx`` and ``idx + 64`` (bytes) of a bf16 B tile in ``buf`` (uint8) from one of matmul_i8's
    weight operands ``v`` (64 unsigned bytes: int32 lane r = columns 4 s..4 s + 3 of output row r): the
    weights byte * scale + offset (per lane) rounded to bf16, lane r of the first row = columns 4 s, 4 s + 1
    of row r (low half first), of the second 4 s + 2, 4 s + 3: the B operand of ``tdpbf16ps`` as it lies.
    With ``lo`` > 0 the remainders w - bf16(w) rounded to bf16 too, ``lo`` bytes after: w ~ hi + lo to ~16
    significant bits."""
    from .simd import F32x16, I8x64
    if not (isinstance(buf, types.Array) and buf.dtype == types.uint8 and buf.layout == "C"
            and isinstance(idx, types.Integer) and v == I8x64 and scale == F32x16 and offset == F32x16
            and isinstance(lo, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        words = builder.bitcast(args[2], _I32x16)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F32x16, [_F32x16] * 3),
                                             "llvm.fma.v16f32")
        high = ir.Constant(_I32x16, [-65536] * 16)
        base = _address(context, builder, sig.args[0], args[0], args[1])

        def store_rows(parts, at):
            ptr = builder.bitcast(builder.gep(base, [at]), _I32x16.as_pointer())
            for j in range(2):
                row = builder.or_(builder.lshr(parts[2 * j], ir.Constant(_I32x16, [16] * 16)),
                                  builder.and_(parts[2 * j + 1], high))
                builder.store(row, builder.gep(ptr, [ir.Constant(_I64, j)]), align=4)

        ws, hi = [], []
        for i in range(4):
            byte = builder.and_(builder.lshr(words, ir.Constant(_I32x16, [8 * i] * 16)),
                                ir.Constant(_I32x16, [255] * 16))
            ws.append(builder.call(fma, [builder.uitofp(byte, _F32x16), args[3], args[4]]))
            hi.append(_bf16_bits(builder, ws[-1]))
        store_rows(hi, ir.Constant(_I64, 0))
        lo = _stride(builder, args[5], sig.args[5])
        with builder.if_then(builder.icmp_signed(">", lo, ir.Constant(_I64, 0))):
            # w - bf16(w) is exact in f32 (at most 16 significant bits), then rounded itself
            store_rows([_bf16_bits(builder, builder.fsub(w, builder.bitcast(builder.and_(h, high), _F32x16)))
                        for w, h in zip(ws, hi)], lo)
        return context.get_dummy_value()
    return types.void(buf, idx, v, scale, offset, lo), codegen


@intrinsic
def store_bf16_split(typingctx, dst, idx, src, at, lo):
    """``dst[idx:idx + 16]`` (uint16) = the bf16 bits of the 16 floats ``src[at:at + 16]`` (rounded to nearest,
    ties to even); with ``lo`` > 0 also ``dst[idx + lo:idx + lo + 16]`` = the remainders x - bf16(x) (exact in
    f32) rounded to bf16: x ~ hi + lo to ~16 significant bits, the A operand of a split product."""
    if not (isinstance(dst, types.Array) and dst.dtype == types.uint16 and dst.layout == "C"
            and isinstance(src, types.Array) and src.dtype == types.float32 and src.layout == "C"
            and isinstance(idx, types.Integer) and isinstance(at, types.Integer) and isinstance(lo, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        i16x16 = ir.VectorType(ir.IntType(16), 16)
        x = builder.load(builder.bitcast(_address(context, builder, sig.args[2], args[2], args[3]),
                                         _F32x16.as_pointer()), align=4)
        out = builder.bitcast(_address(context, builder, sig.args[0], args[0], args[1]), i16x16.as_pointer())
        sixteen = ir.Constant(_I32x16, [16] * 16)

        def store(bits, ptr):
            builder.store(builder.trunc(builder.lshr(bits, sixteen), i16x16), ptr, align=2)

        hi = _bf16_bits(builder, x)
        store(hi, out)
        lo = _stride(builder, args[4], sig.args[4])
        with builder.if_then(builder.icmp_signed(">", lo, ir.Constant(_I64, 0))):
            top = builder.bitcast(builder.and_(hi, ir.Constant(_I32x16, [-65536] * 16)), _F32x16)
            store(_bf16_bits(builder, builder.fsub(x, top)), builder.gep(out, [builder.sdiv(lo, ir.Constant(_I64, 16))]))
        return context.get_dummy_value()
    return types.void(dst, idx, src, at, lo), codegen
