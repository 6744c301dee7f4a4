"""Explicit SIMD for numba kernels: 512-bit vector values and the AVX-512 VNNI dot product.

numba vectorizes plain loops well, but a loop-carried accumulator that is an array stays in memory (a
load and a store per multiply-add), and it has no way to ask for ``vpdpbusd`` (64 int8 multiply-adds in
one instruction).  Here a vector is a numba *value* (an LLVM ``<16 x i32>``, ``<64 x i8>`` or
``<16 x float>``), so a kernel's accumulators are SSA registers, and each operation below is one or two
LLVM instructions.  Only kernels of the ``vnni`` variant use these; numba compiles a function at its first
call, so a CPU without AVX-512 VNNI never compiles them (the variant is not offered there, nor when numba
compiles for a CPU without it, e.g. ``NUMBA_CPU_NAME=generic``: see cpu.py; tests/test_cpu_profiles.py).

Memory operations take a C-contiguous array and a flat element index (any dimension count): the kernel
does its own index arithmetic, as it would in C.  Nothing is bounds-checked.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

_I8, _I32, _F32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
_LL = {"i8": (_I8, 64), "i32": (_I32, 16), "f32": (_F32, 16)}


class Vec(types.Type):
    """A 512-bit vector value."""

    def __init__(self, kind: str):
        self.kind = kind
        super().__init__(name=f"Vec512({kind})")

    def llvm(self) -> ir.VectorType:
        return ir.VectorType(*_LL[self.kind])


I8x64, I32x16, F32x16 = Vec("i8"), Vec("i32"), Vec("f32")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, fe_type.llvm())


def _array(arr, bits: int) -> bool:
    return isinstance(arr, types.Array) and arr.layout == "C" and arr.dtype.bitwidth == bits


def _address(context, builder, aty, arr, idx, pointee):
    data = context.make_array(aty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [idx]), pointee.as_pointer())


def _splat(builder, value, vty: ir.VectorType):
    one = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(_I32, vty.count), [0] * vty.count))


# -- memory ------------------------------------------------------------------------------------------------
@intrinsic
def load_bytes(typingctx, arr, idx):
    """64 bytes of a 1-byte array from ``arr[idx]``."""
    if not (_array(arr, 8) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_address(context, builder, sig.args[0], args[0], args[1], I8x64.llvm()), align=1)
    return I8x64(arr, idx), codegen


@intrinsic
def broadcast_word(typingctx, arr, idx):
    """The 4 bytes at ``arr[idx]`` (a 1-byte array) repeated 16 times (one ``{1to16}`` memory operand)."""
    if not (_array(arr, 8) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        word = builder.load(_address(context, builder, sig.args[0], args[0], args[1], _I32), align=1)
        return builder.bitcast(_splat(builder, word, I32x16.llvm()), I8x64.llvm())
    return I8x64(arr, idx), codegen


#: a half's bits widened by integer operations (corert.kernels.half.f16_value_int, and load_f32 of halves
#: without F16C): 0x8FFFFFFF as an int32, the sign bit and the 28 low bits (exponent bits 30..28 cleared) of
#: the half sign-extended and shifted 13 bits up ...
HALF_SIGN_AND_LOW = -1879048193
#: ... which is an f32 of the half's value times 2^-112: f32's exponent bias minus f16's (127 - 15)
HALF_REBIAS = 2.0 ** 112


@intrinsic
def load_f32(typingctx, arr, idx):
    """16 floats from ``arr[idx]``: a float32 array as it is, a uint16 array as f16 bit patterns (widened
    exactly, ``vcvtph2ps``): weights whose scales are f16 in the file keep them in half the bytes."""
    if not (isinstance(arr, types.Array) and arr.layout == "C" and isinstance(idx, types.Integer)
            and arr.dtype in (types.float32, types.uint16)):
        return None
    half = arr.dtype == types.uint16
    f16c = half and compiles_with("f16c")

    def codegen(context, builder, sig, args):
        if not half:
            return builder.load(_address(context, builder, sig.args[0], args[0], args[1], F32x16.llvm()), align=4)
        if f16c:
            vh = ir.VectorType(ir.HalfType(), 16)
            return builder.fpext(builder.load(_address(context, builder, sig.args[0], args[0], args[1], vh),
                                              align=2), F32x16.llvm())
        # no F16C (a generic x86-64 target): LLVM would call a library routine per half; corert.kernels.half's
        # f16_value_int on 16 lanes instead (exact for every finite half)
        v16 = ir.VectorType(ir.IntType(16), 16)
        h = builder.load(_address(context, builder, sig.args[0], args[0], args[1], v16), align=2)
        bits = builder.and_(builder.shl(builder.sext(h, I32x16.llvm()), ir.Constant(I32x16.llvm(), [13] * 16)),
                            ir.Constant(I32x16.llvm(), [HALF_SIGN_AND_LOW] * 16))
        return builder.fmul(builder.bitcast(bits, F32x16.llvm()), ir.Constant(F32x16.llvm(), [HALF_REBIAS] * 16))
    return F32x16(arr, idx), codegen


@intrinsic
def load_i8_i32(typingctx, arr, idx):
    """16 signed bytes of an int8 array from ``arr[idx]``, widened to int32 lanes (``vpmovsxbd``)."""
    if not (_array(arr, 8) and arr.dtype == types.int8 and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        v = builder.load(_address(context, builder, sig.args[0], args[0], args[1], ir.VectorType(_I8, 16)), align=1)
        return builder.sext(v, I32x16.llvm())
    return I32x16(arr, idx), codegen


@intrinsic
def load_i32(typingctx, arr, idx):
    """16 int32 lanes from the 64 bytes at ``arr[idx]`` (any C-contiguous array; ``idx`` in its elements):
    words packed beside other data in one array (matmul_i8's Q4_K scale words beside their f16 scales)."""
    if not (isinstance(arr, types.Array) and arr.layout == "C" and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_address(context, builder, sig.args[0], args[0], args[1], I32x16.llvm()), align=2)
    return I32x16(arr, idx), codegen


def _store(vec: Vec, bits: int, align: int, doc: str):
    """``arr[idx:idx + lanes] = v`` for a ``vec`` value and an array of ``bits``-bit elements."""
    @intrinsic
    def store(typingctx, arr, idx, v):
        if not (_array(arr, bits) and isinstance(idx, types.Integer) and v == vec):
            return None

        def codegen(context, builder, sig, args):
            builder.store(args[2], _address(context, builder, sig.args[0], args[0], args[1], vec.llvm()),
                          align=align)
            return context.get_dummy_value()
        return types.void(arr, idx, v), codegen
    store.__doc__ = doc
    return store


store_f32 = _store(F32x16, 32, 4, "``arr[idx:idx + 16] = v`` for a float32 array.")
store_bytes = _store(I8x64, 8, 1, "``arr[idx:idx + 64] = v`` for a 1-byte array (an operand unpacked for "
                                  "matmul_amx's weight tiles).")


# -- values ------------------------------------------------------------------------------------------------
@intrinsic
def zeros_i32(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(I32x16.llvm(), None)
    return I32x16(), codegen


@intrinsic
def splat_f32(typingctx, x):
    """A float repeated 16 times."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        value = context.cast(builder, args[0], sig.args[0], types.float32)
        return _splat(builder, value, F32x16.llvm())
    return F32x16(x), codegen


@intrinsic
def splat_i32(typingctx, x):
    """An integer (truncated to 32 bits) repeated 16 times."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        value = builder.trunc(args[0], _I32) if sig.args[0].bitwidth > 32 else \
            builder.sext(args[0], _I32) if sig.args[0].bitwidth < 32 else args[0]
        return _splat(builder, value, I32x16.llvm())
    return I32x16(x), codegen


def _byte_op(op: str, operand: int, doc: str):
    @intrinsic
    def byte_op(typingctx, v):
        if v != I8x64:
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], ir.Constant(I8x64.llvm(), [operand] * 64))
        return I8x64(v), codegen
    byte_op.__doc__ = doc
    return byte_op


low_nibbles = _byte_op("and_", 0x0F, "Each byte & 0x0F.")
high_nibbles = _byte_op("lshr", 4, "Each byte >> 4 (unsigned).")
#: each byte minus 16, 32 or 128, wrapping: q + bias bytes back to signed q (matmul_amx's weight tiles)
minus_16, minus_32, minus_128 = (_byte_op("sub", b - 256 * (b > 127), f"Each byte - {b} (wrapping).")
                                 for b in (16, 32, 128))


def _bit_pair(k: int):
    @intrinsic
    def bit_pair(typingctx, v):
        if v != I8x64:
            return None

        def codegen(context, builder, sig, args):
            def splat(c):
                return ir.Constant(I8x64.llvm(), [c] * 64)
            pair = builder.and_(builder.lshr(args[0], splat(2 * k)), splat(3))
            return builder.shl(pair, splat(4))
        return I8x64(v), codegen
    bit_pair.__doc__ = f"Bits {2 * k}-{2 * k + 1} of each byte moved to bits 4-5, the rest 0."
    return bit_pair


#: ((v >> 2k) & 3) << 4 per byte, k = 0..3: the top two bits of a 6-bit value packed four to a byte
bit_pair0, bit_pair1, bit_pair2, bit_pair3 = (_bit_pair(k) for k in range(4))


def _bit_four(k: int):
    @intrinsic
    def bit_four(typingctx, v):
        if v != I8x64:
            return None

        def codegen(context, builder, sig, args):
            def splat(c):
                return ir.Constant(I8x64.llvm(), [c] * 64)
            # one shift and one mask: bit k lands on bit 4 directly (the bits shifted in are masked off)
            moved = builder.shl(args[0], splat(4 - k)) if k <= 4 else builder.lshr(args[0], splat(k - 4))
            return builder.and_(moved, splat(0x10))
        return I8x64(v), codegen
    bit_four.__doc__ = f"Bit {k} of each byte moved to bit 4, the rest 0."
    return bit_four


#: ((v >> k) & 1) << 4 per byte, k = 0..7: the top bit of a 5-bit value packed eight to a byte
bit_four0, bit_four1, bit_four2, bit_four3, bit_four4, bit_four5, bit_four6, bit_four7 = (
    _bit_four(k) for k in range(8))


@intrinsic
def dot_u8s8(typingctx, acc, a, b):
    """``acc`` + per int32 lane: the sum of 4 products of unsigned bytes of ``a`` and signed bytes of
    ``b`` (``vpdpbusd``: 64 multiply-adds, exact)."""
    if not (acc == I32x16 and a == I8x64 and b == I8x64):
        return None

    # Declared with the <16 x i32> operands of LLVM <= 20 (the byte vectors bitcast): the form numba's older
    # llvmlite builds accept, and the one newer LLVM (byte-vector operands) still upgrades on parsing.
    def codegen(context, builder, sig, args):
        v32 = I32x16.llvm()
        fnty = ir.FunctionType(v32, [v32, v32, v32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(fn, [args[0], builder.bitcast(args[1], v32), builder.bitcast(args[2], v32)])
    return I32x16(acc, a, b), codegen


def _int_binary(op: str, vec: Vec = I32x16):
    @intrinsic
    def binary(typingctx, a, b):
        if not (a == vec and b == vec):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])
        return vec(a, b), codegen
    return binary


#: lane-wise int32 a + b, a - b, a * b (low 32 bits)
add_i32, sub_i32, mul_i32 = _int_binary("add"), _int_binary("sub"), _int_binary("mul")
#: bytewise a | b
or_bytes = _int_binary("or_", I8x64)
#: lane-wise int32 a & b, a | b
and_i32, or_i32 = _int_binary("and_"), _int_binary("or_")


def _shift(name: str, doc: str):
    @intrinsic
    def shift(typingctx, v, n):
        if not (v == I32x16 and isinstance(n, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            count = builder.trunc(args[1], _I32) if sig.args[1].bitwidth > 32 else \
                builder.zext(args[1], _I32) if sig.args[1].bitwidth < 32 else args[1]
            amount = _splat(builder, count, I32x16.llvm())
            if name == "lshr":
                return builder.lshr(args[0], amount)
            fnty = ir.FunctionType(I32x16.llvm(), [I32x16.llvm()] * 3)
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fshr.v16i32")
            return builder.call(fn, [args[0], args[0], amount])  # a funnel shift of v with itself: a rotation
        return I32x16(v, n), codegen
    shift.__doc__ = doc
    return shift


#: each int32 lane shifted right by n (logical), n < 32; rotated right by n (``vprord``)
shift_right_i32 = _shift("lshr", "Each int32 lane >> n (unsigned), n < 32.")
rotate_right_i32 = _shift("fshr", "Each int32 lane rotated right by n bits (mod 32).")


def _convert(op: str, src: Vec, dst: Vec, doc: str):
    """A lane-wise conversion ``builder.<op>`` of a ``src`` vector to a ``dst`` one."""
    @intrinsic
    def convert(typingctx, v):
        if v != src:
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], dst.llvm())
        return dst(v), codegen
    convert.__doc__ = doc
    return convert


to_f32 = _convert("sitofp", I32x16, F32x16, "int32 lanes -> float32 lanes (exact below 2**24).")
to_i32 = _convert("fptosi", F32x16, I32x16, "float32 lanes (integral values) -> int32 lanes.")


@intrinsic
def mul_f32(typingctx, a, b):
    if not (a == F32x16 and b == F32x16):
        return None

    def codegen(context, builder, sig, args):
        return builder.fmul(args[0], args[1])
    return F32x16(a, b), codegen


@intrinsic
def fma_f32(typingctx, a, b, c):
    """a * b + c, one rounding."""
    if not (a == F32x16 and b == F32x16 and c == F32x16):
        return None

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(F32x16.llvm(), [F32x16.llvm()] * 3)
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.v16f32")
        return builder.call(fn, list(args))
    return F32x16(a, b, c), codegen


@intrinsic
def prefetch(typingctx, arr, idx):
    """Ask for the cache line of ``arr[idx]`` to be loaded (a hint: no fault, no result)."""
    if not (isinstance(arr, types.Array) and arr.layout == "C" and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        addr = _address(context, builder, sig.args[0], args[0], args[1], _I8)
        fnty = ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [addr, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()
    return types.void(arr, idx), codegen


@intrinsic
def f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of an integer (plain LLVM: any CPU, vectorizes)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.trunc(args[0], _I32) if sig.args[0].bitwidth > 32 else args[0], _F32)
    return types.float32(bits), codegen


def compiles_with(feature: str) -> bool:
    """Whether numba's code for this process may use an x86 ``feature`` (LLVM spelling, e.g. ``f16c``): the
    features numba hands LLVM (the host's, or ``NUMBA_CPU_FEATURES``; none for ``NUMBA_CPU_NAME=generic``)."""
    from numba.core.registry import cpu_target
    return f"+{feature}" in cpu_target.target_context.codegen()._tm_features.split(",")


@intrinsic
def f32_from_half(typingctx, h):
    """The float32 value of the half whose bit pattern is ``h`` (uint16): LLVM's ``fpext half``, one
    ``vcvtph2ps`` per 16 lanes in a vectorized loop.  Needs F16C (every AVX2 CPU has it; see
    compiles_with): without it LLVM calls a library routine."""
    if h != types.uint16:
        return None

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), _F32)
    return types.float32(h), codegen


# -- float lanes for the activation quantizer (matmul_i8.quantize_rows) -------------------------------------
def _f32_call(builder, name: str, args):
    fnty = ir.FunctionType(F32x16.llvm(), [F32x16.llvm()] * len(args))
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, f"llvm.{name}.v16f32"), list(args))


def _f32_unary(name: str, doc: str):
    """A lane-wise LLVM float intrinsic ``llvm.<name>.v16f32`` of one operand."""
    @intrinsic
    def unary(typingctx, a):
        if a != F32x16:
            return None
        return F32x16(a), lambda context, builder, sig, args: _f32_call(builder, name, args)
    unary.__doc__ = doc
    return unary


def _f32_binary(name: str, doc: str):
    """The same, of two operands."""
    @intrinsic
    def binary(typingctx, a, b):
        if not (a == F32x16 and b == F32x16):
            return None
        return F32x16(a, b), lambda context, builder, sig, args: _f32_call(builder, name, args)
    binary.__doc__ = doc
    return binary


abs_f32 = _f32_unary("fabs", "|a| per lane.")
floor_f32 = _f32_unary("floor", "a rounded down to an integer per lane.")
rint_f32 = _f32_unary("rint", "a rounded to the nearest integer per lane, ties to even (numpy's rint).")
max_f32 = _f32_binary("maxnum", "max(a, b) per lane.")
min_f32 = _f32_binary("minnum", "min(a, b) per lane.")


def _reduce(name: str, vec: Vec, scalar, doc: str):
    """One lane-wide LLVM reduction ``llvm.vector.reduce.<name>`` of a ``vec`` to a ``scalar``."""
    ll_scalar = {types.float32: _F32, types.int32: _I32}[scalar]

    @intrinsic
    def reduce(typingctx, v):
        if v != vec:
            return None

        def codegen(context, builder, sig, args):
            fnty = ir.FunctionType(ll_scalar, [vec.llvm()])
            suffix = "v16f32" if vec == F32x16 else "v16i32"
            return builder.call(cgutils.get_or_insert_function(builder.module, fnty,
                                                               f"llvm.vector.reduce.{name}.{suffix}"), [args[0]])
        return scalar(v), codegen
    reduce.__doc__ = doc
    return reduce


hmax_f32 = _reduce("fmax", F32x16, types.float32, "The largest of the 16 lanes, as a float32.")
hsum_i32 = _reduce("add", I32x16, types.int32, "The sum of the 16 int32 lanes (wrapping), as an int32.")


@intrinsic
def store_low_bytes(typingctx, arr, idx, v):
    """``arr[idx:idx + 16]`` = the low byte of each int32 lane (``vpmovdb``), for a 1-byte array."""
    if not (_array(arr, 8) and isinstance(idx, types.Integer) and v == I32x16):
        return None

    def codegen(context, builder, sig, args):
        v8 = ir.VectorType(_I8, 16)
        builder.store(builder.trunc(args[2], v8), _address(context, builder, sig.args[0], args[0], args[1], v8),
                      align=1)
        return context.get_dummy_value()
    return types.void(arr, idx, v), codegen


# -- float lanes for attention (plugins/kv_cache/contiguous_attention) --------------------------------------
@intrinsic
def muladd_f32(typingctx, a, b, c):
    """a * b + c per lane (``llvm.fmuladd``): one FMA where the CPU has it, else a multiply and an add.  The
    choice is the target's, the same in every kernel compiled for it, so one lane's chain of these gives the
    same bits wherever it is computed."""
    if not (a == F32x16 and b == F32x16 and c == F32x16):
        return None
    return F32x16(a, b, c), lambda context, builder, sig, args: _f32_call(builder, "fmuladd", args)


def _shuffle(builder, a, b, lanes):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, 16), lanes))


@intrinsic
def sums4_f32(typingctx, a, b, c, d):
    """The lane sums of a, b, c, d in lanes 0, 4, 8 and 12, each by the same tree: lane i plus lane i + 8,
    then + 4, + 2, + 1 (so ``sums4_f32(a, a, a, a)`` sums ``a`` exactly as any other call sums it)."""
    if not all(x == F32x16 for x in (a, b, c, d)):
        return None

    def codegen(context, builder, sig, args):
        a, b, c, d = args
        lo, hi = list(range(8)) + list(range(16, 24)), list(range(8, 16)) + list(range(24, 32))
        ab = builder.fadd(_shuffle(builder, a, b, lo), _shuffle(builder, a, b, hi))  # a's 8 sums | b's
        cd = builder.fadd(_shuffle(builder, c, d, lo), _shuffle(builder, c, d, hi))
        lo = [g + i for g in (0, 8, 16, 24) for i in range(4)]
        x = builder.fadd(_shuffle(builder, ab, cd, lo), _shuffle(builder, ab, cd, [i + 4 for i in lo]))
        x = builder.fadd(x, _shuffle(builder, x, x, [i ^ 2 for i in range(16)]))  # a's 4 | b's | c's | d's
        return builder.fadd(x, _shuffle(builder, x, x, [i ^ 1 for i in range(16)]))
    return F32x16(a, b, c, d), codegen


@intrinsic
def lane_f32(typingctx, v, i):
    """Lane ``i`` of a float vector, as a float32."""
    if not (v == F32x16 and isinstance(i, types.Integer)):
        return None
    return types.float32(v, i), lambda context, builder, sig, args: builder.extract_element(args[0], args[1])


def _f32_op(op: str, doc: str):
    """A lane-wise IEEE operation ``builder.<op>`` of two float vectors (no fast-math flags: each lane is
    exactly the scalar operation)."""
    @intrinsic
    def binary(typingctx, a, b):
        if not (a == F32x16 and b == F32x16):
            return None
        return F32x16(a, b), lambda context, builder, sig, args: getattr(builder, op)(args[0], args[1])
    binary.__doc__ = doc
    return binary


add_f32 = _f32_op("fadd", "a + b per lane.")
sub_f32 = _f32_op("fsub", "a - b per lane.")
div_f32 = _f32_op("fdiv", "a / b per lane.")
bits_f32 = _convert("bitcast", I32x16, F32x16, "int32 lanes -> the float32 lanes of the same bits.")
