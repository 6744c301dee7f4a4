"""Seeded mutations of a real GGUF file, for the malformed-model fuzz test (tests/test_fuzz_models.py).

The file's header is parsed once into fields with their byte positions (header counts, each metadata
key/value, each tensor info); every mutation then damages one kind of field on purpose, so the set covers
what a byte-level fuzzer would rarely reach (a tensor offset that overlaps another, an alignment of 3, a
key of the wrong type encoded consistently).  This walker is independent of corert's reader on purpose:
the harness must not share the code it judges.

A mutant is the (damaged) header region and a file size; it is written sparsely (header bytes, then a
hole up to the size), so a 98 MB model costs ~2 MB of disk per copy.  The tensor data therefore reads as
zeros: loading does not depend on weight values, and zero weights still run a forward pass.
"""
from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Callable, Iterator

import attrs

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALAR_SIZE = {U8: 1, I8: 1, U16: 2, I16: 2, U32: 4, I32: 4, F32: 4, BOOL: 1, U64: 8, I64: 8, F64: 8}
_SCALAR_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
               U64: "<Q", I64: "<q", F64: "<d"}
U64_MAX = 2**64 - 1


@attrs.frozen
class KV:
    key: str
    vtype: int
    start: int          # the key's length field
    type_at: int        # the value type field
    value_at: int       # the value (string: its length field; array: its item type field)
    end: int
    itype: int | None = None
    count: int | None = None
    scalar: object = None  # the value of a scalar or string key


@attrs.frozen
class TensorEntry:
    name: str
    start: int
    ndims_at: int
    shape: tuple[int, ...]
    type_at: int
    ggml_type: int
    offset_at: int
    offset: int
    end: int


@attrs.frozen
class Layout:
    """The parsed header region of a GGUF file (``head`` = its bytes up to the data section)."""

    head: bytes
    kvs: tuple[KV, ...]
    tensors: tuple[TensorEntry, ...]
    infos_end: int
    data_offset: int
    file_size: int
    alignment: int

    @property
    def data_size(self) -> int:
        return self.file_size - self.data_offset

    def kv(self, key: str) -> KV:
        return next(k for k in self.kvs if k.key == key)

    def raw(self, start: int, end: int) -> bytes:
        return self.head[start:end]


@attrs.frozen
class Mutant:
    kind: str     # the family counted in the report: flip_header, truncate, huge_count...
    label: str    # what exactly was done
    head: bytes
    size: int     # the file's size; bytes past ``head`` are a hole

    def write(self, path: Path) -> None:
        with open(path, "wb") as fh:
            fh.write(self.head[:self.size])
            fh.truncate(self.size)


def parse(path: str | Path) -> Layout:
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as fh:
        buf = fh.read(64 << 20)  # the header region of any model we test is far below this
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)

    def u(fmt: str) -> int:
        nonlocal pos
        v = struct.unpack_from(fmt, buf, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def string() -> str:
        nonlocal pos
        n = u("<Q")
        pos += n
        return buf[pos - n:pos].decode("utf-8", errors="replace")

    kvs = []
    for _ in range(n_kv):
        start = pos
        key = string()
        type_at = pos
        vtype = u("<I")
        value_at = pos
        itype = count = scalar = None
        if vtype == STRING:
            scalar = string()
        elif vtype == ARRAY:
            itype, count = u("<I"), u("<Q")
            if itype == STRING:
                for _ in range(count):
                    string()
            else:
                pos += _SCALAR_SIZE[itype] * count
        else:
            scalar = u(_SCALAR_FMT[vtype])
        kvs.append(KV(key, vtype, start, type_at, value_at, pos, itype, count, scalar))
    tensors = []
    for _ in range(n_tensors):
        start = pos
        name = string()
        ndims_at = pos
        shape = tuple(u("<Q") for _ in range(u("<I")))
        type_at = pos
        ggml_type = u("<I")
        offset_at = pos
        offset = u("<Q")
        tensors.append(TensorEntry(name, start, ndims_at, shape, type_at, ggml_type, offset_at, offset, pos))
    alignment = next((k.scalar for k in kvs if k.key == "general.alignment"), 32)
    data_offset = -(-pos // alignment) * alignment
    return Layout(buf[:data_offset], tuple(kvs), tuple(tensors), pos, data_offset, size, alignment)


# -- encoding ------------------------------------------------------------------------------------------------
def enc_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def enc_value(vtype: int, value) -> bytes:
    """A value of GGUF type ``vtype`` (arrays: ``value`` = (item type, items))."""
    if vtype == STRING:
        return enc_str(value)
    if vtype == ARRAY:
        itype, items = value
        return struct.pack("<IQ", itype, len(items)) + b"".join(
            enc_str(x) if itype == STRING else struct.pack(_SCALAR_FMT[itype], x) for x in items)
    return struct.pack(_SCALAR_FMT[vtype], value)


def enc_kv(key: str, vtype: int, value) -> bytes:
    return enc_str(key) + struct.pack("<I", vtype) + enc_value(vtype, value)


def enc_tensor(name: str, shape: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return (enc_str(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
            + struct.pack("<IQ", ggml_type, offset))


def rebuild(lay: Layout, kvs: list[bytes] | None = None, tensors: list[bytes] | None = None,
            pad_to: int | None = None, n_kv: int | None = None, n_tensors: int | None = None) -> tuple[bytes, int]:
    """A re-encoded header region (entries given as bytes; None: the original ones) and the file size that
    keeps the original data section size after it.  ``pad_to``: the data section's alignment (default: the
    file's)."""
    if kvs is None:
        kvs = [lay.raw(k.start, k.end) for k in lay.kvs]
    if tensors is None:
        tensors = [lay.raw(t.start, t.end) for t in lay.tensors]
    body = (lay.head[:8] + struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors,
                                       len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(tensors))
    align = pad_to or lay.alignment
    head = body + bytes(-len(body) % align)
    return head, len(head) + lay.data_size


def _patch(head: bytes, at: int, data: bytes) -> bytes:
    return head[:at] + data + head[at + len(data):]


def _flip(rng: random.Random, head: bytes, positions: list[int]) -> tuple[bytes, str]:
    b = bytearray(head)
    done = []
    for at in rng.sample(positions, min(len(positions), rng.choice((1, 1, 2, 3)))):
        x = rng.choice((1 << rng.randrange(8), rng.randrange(1, 256)))
        b[at] ^= x
        done.append(f"{at}^{x:#x}")
    return bytes(b), ",".join(done)


# -- mutation families ---------------------------------------------------------------------------------------
def flip_header(rng: random.Random, lay: Layout) -> Mutant:
    head, what = _flip(rng, lay.head, list(range(24)))
    return Mutant("flip_header", f"flip {what}", head, lay.file_size)


def flip_metadata(rng: random.Random, lay: Layout) -> Mutant:
    kv = rng.choice(lay.kvs)
    # mostly the structural bytes (key length, type, value length or array type/count, a scalar), where
    # damage changes how the rest is read; sometimes anywhere in the entry
    structural = list(range(kv.start, kv.start + 8)) + list(range(kv.type_at, kv.value_at + 12))
    positions = structural if rng.random() < 0.7 else list(range(kv.start, kv.end))
    head, what = _flip(rng, lay.head, [p for p in positions if p < kv.end])
    return Mutant("flip_metadata", f"{kv.key}: flip {what}", head, lay.file_size)


def flip_tensor_info(rng: random.Random, lay: Layout) -> Mutant:
    t = rng.choice(lay.tensors)
    fields = {"name_len": range(t.start, t.start + 8), "name": range(t.start + 8, t.ndims_at),
              "n_dims": range(t.ndims_at, t.ndims_at + 4), "dims": range(t.ndims_at + 4, t.type_at),
              "type": range(t.type_at, t.type_at + 4), "offset": range(t.offset_at, t.end)}
    field = rng.choice(list(fields))
    head, what = _flip(rng, lay.head, list(fields[field]))
    return Mutant("flip_tensor_info", f"{t.name} {field}: flip {what}", head, lay.file_size)


def truncate(rng: random.Random, lay: Layout) -> Mutant:
    where = rng.choice(("header", "metadata", "metadata", "tensor_infos", "padding", "data", "data", "data",
                        "last_byte"))
    lo, hi = {"header": (1, 24), "metadata": (24, lay.kvs[-1].end), "tensor_infos": (lay.kvs[-1].end,
              lay.infos_end), "padding": (lay.infos_end, lay.data_offset + 1),
              "data": (lay.data_offset + 1, lay.file_size - 1), "last_byte": (lay.file_size - 1, lay.file_size)}[where]
    cut = rng.randrange(lo, hi)
    return Mutant("truncate", f"{where}: cut at {cut}", lay.head, cut)


def huge_count(rng: random.Random, lay: Layout) -> Mutant:
    big = rng.choice((2**32, 2**40, 2**62, 2**63 - 1, 2**63, U64_MAX, lay.file_size))
    target = rng.choice(("n_tensors", "n_kv", "key_len", "string_len", "array_count", "n_dims", "dim",
                         "dims_overflow"))
    if target in ("n_tensors", "n_kv"):
        n = rng.choice((big, len(lay.tensors if target == "n_tensors" else lay.kvs) + rng.choice((1, 1000))))
        at = 8 if target == "n_tensors" else 16
        return Mutant("huge_count", f"{target}={n}", _patch(lay.head, at, struct.pack("<Q", n)), lay.file_size)
    if target == "key_len":
        kv = rng.choice(lay.kvs)
        return Mutant("huge_count", f"{kv.key}: key length {big}",
                      _patch(lay.head, kv.start, struct.pack("<Q", big)), lay.file_size)
    if target == "string_len":
        kv = rng.choice([k for k in lay.kvs if k.vtype == STRING])
        return Mutant("huge_count", f"{kv.key}: string length {big}",
                      _patch(lay.head, kv.value_at, struct.pack("<Q", big)), lay.file_size)
    if target == "array_count":
        kv = rng.choice([k for k in lay.kvs if k.vtype == ARRAY])
        n = rng.choice((big, kv.count + 1, kv.count * 2, 0))
        return Mutant("huge_count", f"{kv.key}: array count {n}",
                      _patch(lay.head, kv.value_at + 4, struct.pack("<Q", n)), lay.file_size)
    t = rng.choice(lay.tensors)
    if target == "n_dims":
        n = rng.choice((0, 3, 5, 9, 2**31, 2**32 - 1))
        return Mutant("huge_count", f"{t.name}: n_dims {n}", _patch(lay.head, t.ndims_at, struct.pack("<I", n)),
                      lay.file_size)
    if target == "dim":
        i = rng.randrange(len(t.shape))
        n = rng.choice((0, big, t.shape[i] + 1, t.shape[i] * 2))
        return Mutant("huge_count", f"{t.name}: dim {i} = {n}",
                      _patch(lay.head, t.ndims_at + 4 + 8 * i, struct.pack("<Q", n)), lay.file_size)
    t = rng.choice([x for x in lay.tensors if len(x.shape) == 2])
    a = rng.choice((2**32, 2**33, 2**62))
    # the element count's product wraps around 2**64 to a small number
    return Mutant("huge_count", f"{t.name}: dims ({a}, {2**64 // a}) overflow",
                  _patch(lay.head, t.ndims_at + 4, struct.pack("<QQ", a, 2**64 // a)), lay.file_size)


# Keys and the wrong-typed values a careless writer could give them (each encoded consistently).
_WRONG_VALUES: tuple[tuple[str, int, object], ...] = (
    ("general.architecture", U32, 7), ("general.architecture", STRING, "llama4000"),
    ("general.architecture", STRING, ""),
    ("general.alignment", STRING, "32"), ("general.alignment", U64, 32), ("general.alignment", I32, -32),
    ("general.alignment", F32, 32.0), ("general.alignment", ARRAY, (U32, [32])),
    ("llama.block_count", STRING, "30"), ("llama.block_count", F32, 30.0), ("llama.block_count", I32, -1),
    ("llama.block_count", BOOL, True), ("llama.block_count", ARRAY, (U32, [30, 30])),
    ("llama.embedding_length", F64, 576.0), ("llama.embedding_length", I64, -576),
    ("llama.attention.head_count", STRING, "9"), ("llama.attention.head_count", ARRAY, (I32, [9] * 30)),
    ("llama.attention.head_count_kv", F32, 3.5), ("llama.context_length", STRING, "8192"),
    ("llama.attention.layer_norm_rms_epsilon", STRING, "1e-5"), ("llama.rope.freq_base", U8, 7),
    ("llama.rope.dimension_count", F32, 64.0),
    ("tokenizer.ggml.model", U32, 2), ("tokenizer.ggml.pre", ARRAY, (STRING, ["smollm"])),
    ("tokenizer.ggml.bos_token_id", STRING, "1"), ("tokenizer.ggml.eos_token_id", F32, 2.0),
    ("tokenizer.ggml.eos_token_id", I32, -2), ("tokenizer.ggml.add_bos_token", STRING, "no"),
    ("tokenizer.ggml.tokens", STRING, "hello"), ("tokenizer.ggml.tokens", ARRAY, (I32, list(range(100)))),
    ("tokenizer.ggml.token_type", ARRAY, (F32, [1.0] * 100)), ("tokenizer.ggml.token_type", STRING, "normal"),
    ("tokenizer.ggml.token_type", ARRAY, (STRING, ["1"] * 10)), ("tokenizer.ggml.token_type", ARRAY, (U8, [1] * 10)),
    ("tokenizer.ggml.merges", ARRAY, (U8, [1, 2, 3])), ("tokenizer.ggml.merges", U32, 5),
    ("tokenizer.ggml.scores", ARRAY, (I8, [1] * 10)), ("tokenizer.ggml.scores", ARRAY, (F32, [0.0] * 10)),
    ("tokenizer.chat_template", U64, 0),
)


def wrong_type(rng: random.Random, lay: Layout) -> Mutant:
    if rng.random() < 0.3:  # in place: the type field says something else, the bytes stay
        kv = rng.choice(lay.kvs)
        t = rng.choice([x for x in range(13) if x != kv.vtype] + [13, 255, 2**31])
        return Mutant("wrong_type", f"{kv.key}: type field {kv.vtype} -> {t}",
                      _patch(lay.head, kv.type_at, struct.pack("<I", t)), lay.file_size)
    if rng.random() < 0.2:  # an array's item type
        kv = rng.choice([k for k in lay.kvs if k.vtype == ARRAY])
        t = rng.choice([x for x in range(13) if x != kv.itype])
        return Mutant("wrong_type", f"{kv.key}: item type {kv.itype} -> {t}",
                      _patch(lay.head, kv.value_at, struct.pack("<I", t)), lay.file_size)
    key, vtype, value = rng.choice(_WRONG_VALUES)
    kvs = [enc_kv(key, vtype, value) if k.key == key else lay.raw(k.start, k.end) for k in lay.kvs]
    if key not in {k.key for k in lay.kvs}:
        kvs.append(enc_kv(key, vtype, value))
    head, size = rebuild(lay, kvs)
    return Mutant("wrong_type", f"{key} = {_short(value)} as type {vtype}", head, size)


def _short(value) -> str:
    s = repr(value)
    return s if len(s) < 40 else s[:37] + "..."


def _set_kv(lay: Layout, key: str, vtype: int, value) -> list[bytes]:
    out = [enc_kv(key, vtype, value) if k.key == key else lay.raw(k.start, k.end) for k in lay.kvs]
    if key not in {k.key for k in lay.kvs}:
        out.append(enc_kv(key, vtype, value))
    return out


def _tensors(lay: Layout, change: Callable[[TensorEntry], bytes | None]) -> list[bytes]:
    """Re-encoded tensor infos: ``change(t)`` gives the new entry (b"" drops it), None keeps it."""
    out = []
    for t in lay.tensors:
        new = change(t)
        out.append(lay.raw(t.start, t.end) if new is None else new)
    return [x for x in out if x]


def inconsistent(rng: random.Random, lay: Layout) -> Mutant:
    """Each piece well-formed, together wrong: alignment, offsets, shapes vs types, hyperparameters vs
    tensors, duplicates and missing entries."""
    what = rng.choice(("alignment", "alignment", "offset", "offset", "offset", "shape", "shape", "shape",
                       "type", "type", "hparam", "hparam", "hparam", "hparam", "tokenizer", "tokenizer",
                       "duplicate", "missing"))
    if what == "alignment":
        a = rng.choice((0, 1, 3, 7, 48, 100, 2**20, 2**31, 2**32 - 1))
        pad = a if 0 < a <= 2**20 else None
        head, size = rebuild(lay, _set_kv(lay, "general.alignment", U32, a), pad_to=pad)
        return Mutant("inconsistent", f"general.alignment = {a}" + ("" if pad else " (data padded to 32)"),
                      head, size)
    if what == "offset":
        t = rng.choice(lay.tensors[1:])
        other = rng.choice([x for x in lay.tensors if x is not t])
        off, why = rng.choice(((lay.data_size + rng.choice((0, 32, 2**20)), "past the end"),
                               (2**63, "huge"), (U64_MAX - 31, "wraps around"), (other.offset, f"= {other.name}'s"),
                               (t.offset + rng.choice((1, 2, 16)), "misaligned"),
                               (t.offset - 32, "overlaps the previous tensor"),
                               (lay.data_size - 32, "runs past the end")))
        return Mutant("inconsistent", f"{t.name}: offset {off} ({why})",
                      _patch(lay.head, t.offset_at, struct.pack("<Q", off)), lay.file_size)
    if what == "shape":
        t = rng.choice(lay.tensors)
        shape = rng.choice((
            (t.shape[0] - 1,) + t.shape[1:], (t.shape[0] + 32,) + t.shape[1:], tuple(reversed(t.shape)),
            t.shape + (1,), t.shape + (1, 1), (t.shape[0] * (t.shape[1] if len(t.shape) > 1 else 1),),
            (t.shape[0] // 2,) + t.shape[1:], (t.shape[0] * 2,) + t.shape[1:], (0,) + t.shape[1:],
            t.shape[:1] + tuple(d + 1 for d in t.shape[1:]), (t.shape[0], 1, 1, 1, 1)))
        tensors = _tensors(lay, lambda x: enc_tensor(x.name, shape, x.ggml_type, x.offset) if x is t else None)
        head, size = rebuild(lay, tensors=tensors)
        return Mutant("inconsistent", f"{t.name}: shape {t.shape} -> {shape}", head, size)
    if what == "type":
        t = rng.choice(lay.tensors)
        new = rng.choice([x for x in (0, 1, 2, 3, 6, 8, 10, 12, 14, 15, 4, 5, 31, 39, 40, 41, 42, 1000, 2**31,
                                      2**32 - 1) if x != t.ggml_type])
        return Mutant("inconsistent", f"{t.name}: ggml type {t.ggml_type} -> {new}",
                      _patch(lay.head, t.type_at, struct.pack("<I", new)), lay.file_size)
    if what == "hparam":
        arch = lay.kv("general.architecture").scalar
        key, vtype, value = rng.choice((
            ("attention.head_count", U32, 0), ("attention.head_count", U32, 7), ("attention.head_count", U32, 18),
            ("attention.head_count", U32, 2**31), ("attention.head_count_kv", U32, 0),
            ("attention.head_count_kv", U32, 2), ("attention.head_count_kv", U32, 9),
            ("attention.head_count_kv", U32, 2**32 - 1), ("block_count", U32, 0), ("block_count", U32, 31),
            ("block_count", U32, 2**31), ("block_count", U32, 1), ("embedding_length", U32, 0),
            ("embedding_length", U32, 575), ("embedding_length", U32, 1152), ("embedding_length", U32, 2**32 - 1),
            ("feed_forward_length", U32, 0), ("feed_forward_length", U32, 1535), ("feed_forward_length", U32, 2**31),
            ("context_length", U32, 0), ("context_length", U32, 1), ("context_length", U32, 2**32 - 1),
            ("rope.dimension_count", U32, 0), ("rope.dimension_count", U32, 63), ("rope.dimension_count", U32, 128),
            ("rope.dimension_count", U32, 2**31), ("attention.key_length", U32, 0),
            ("attention.key_length", U32, 32), ("attention.key_length", U32, 2**31),
            ("attention.value_length", U32, 32), ("attention.layer_norm_rms_epsilon", F32, -1.0),
            ("attention.layer_norm_rms_epsilon", F32, float("nan")), ("attention.layer_norm_rms_epsilon", F32, 0.0),
            ("rope.freq_base", F32, 0.0), ("rope.freq_base", F32, float("inf")), ("rope.freq_base", F32, -1.0),
            ("vocab_size", U32, 0), ("vocab_size", U32, 2**32 - 1)))
        head, size = rebuild(lay, _set_kv(lay, f"{arch}.{key}", vtype, value))
        return Mutant("inconsistent", f"{arch}.{key} = {value}", head, size)
    if what == "tokenizer":
        tokens = lay.kv("tokenizer.ggml.tokens")
        n = tokens.count
        key, vtype, value = rng.choice((
            ("tokenizer.ggml.bos_token_id", U32, n), ("tokenizer.ggml.bos_token_id", U32, 2**32 - 1),
            ("tokenizer.ggml.eos_token_id", U32, n + 5), ("tokenizer.ggml.eos_token_id", U32, 2**31),
            ("tokenizer.ggml.padding_token_id", U32, 2**32 - 1), ("tokenizer.ggml.unknown_token_id", U32, n),
            ("tokenizer.ggml.eot_token_id", U32, n * 4), ("tokenizer.ggml.model", STRING, "llama"),
            ("tokenizer.ggml.model", STRING, "bert"), ("tokenizer.ggml.model", STRING, "none"),
            ("tokenizer.ggml.model", STRING, ""), ("tokenizer.ggml.pre", STRING, "no-such-pre"),
            ("tokenizer.ggml.token_type", ARRAY, (I32, [1] * (n - 1))),
            ("tokenizer.ggml.token_type", ARRAY, (I32, [1] * (n + 7))),
            ("tokenizer.ggml.token_type", ARRAY, (I32, [rng.choice((-1, 0, 7, 99, 2**31 - 1)) for _ in range(n)])),
            ("tokenizer.ggml.token_type", ARRAY, (I32, [6] * n)),  # every token a byte token
            ("tokenizer.ggml.token_type", ARRAY, (I32, [3] * n)),  # every token a control token
            ("tokenizer.ggml.scores", ARRAY, (F32, [0.0] * (n // 2))),
            ("tokenizer.ggml.scores", ARRAY, (F32, [float("nan")] * n)),
            ("tokenizer.ggml.tokens", ARRAY, (STRING, ["a"] * 10)), ("tokenizer.ggml.tokens", ARRAY, (STRING, [])),
            ("tokenizer.ggml.tokens", ARRAY, (STRING, [""] * n)), ("tokenizer.ggml.tokens", ARRAY, (STRING, ["x"] * n)),
            ("tokenizer.ggml.merges", ARRAY, (STRING, ["a b", "", " ", "ab", "\u0120 \u0120", "a  b c"] * 1000)),
            ("tokenizer.ggml.merges", ARRAY, (STRING, []))))
        head, size = rebuild(lay, _set_kv(lay, key, vtype, value))
        return Mutant("inconsistent", f"{key} = {_short(value)}", head, size)
    if what == "duplicate":
        if rng.random() < 0.5:
            kv = rng.choice(lay.kvs)
            kvs = [lay.raw(k.start, k.end) for k in lay.kvs] + [lay.raw(kv.start, kv.end)]
            head, size = rebuild(lay, kvs)
            return Mutant("inconsistent", f"duplicate key {kv.key}", head, size)
        t, other = rng.sample(lay.tensors, 2)
        tensors = _tensors(lay, lambda x: enc_tensor(t.name, x.shape, x.ggml_type, x.offset) if x is other else None)
        head, size = rebuild(lay, tensors=tensors)
        return Mutant("inconsistent", f"tensor {other.name} renamed to {t.name} (duplicate)", head, size)
    if rng.random() < 0.5:
        kv = rng.choice(lay.kvs)
        head, size = rebuild(lay, [lay.raw(k.start, k.end) for k in lay.kvs if k is not kv])
        return Mutant("inconsistent", f"missing key {kv.key}", head, size)
    t = rng.choice(lay.tensors)
    head, size = rebuild(lay, tensors=_tensors(lay, lambda x: b"" if x is t else None))
    return Mutant("inconsistent", f"missing tensor {t.name}", head, size)


#: (family, how many of the default 320) -- flips and inconsistencies get the most
FAMILIES: tuple[tuple[Callable[[random.Random, Layout], Mutant], int], ...] = (
    (flip_header, 20), (flip_metadata, 50), (flip_tensor_info, 50), (truncate, 40), (huge_count, 45),
    (wrong_type, 45), (inconsistent, 70))


def mutants(path: str | Path, seed: int = 0, scale: float = 1.0) -> Iterator[Mutant]:
    """The mutants of ``path``, in a fixed order for a given ``seed`` (320 when ``scale`` is 1)."""
    lay = parse(path)
    for family, n in FAMILIES:
        rng = random.Random(f"{seed}:{family.__name__}")  # a family's mutants do not depend on the others'
        for _ in range(max(1, round(n * scale))):
            yield family(rng, lay)


def representative(path: str | Path) -> dict[str, Mutant]:
    """A few fixed mutants, one per kind of damage, for tests that run the whole CLI on each."""
    lay = parse(path)
    arch = lay.kv("general.architecture").scalar
    t2 = next(t for t in lay.tensors if len(t.shape) == 2 and t.name.startswith("blk.0."))
    last = lay.tensors[-1]

    def hparam(key: str, vtype: int, value) -> Mutant:
        head, size = rebuild(lay, _set_kv(lay, key, vtype, value))
        return Mutant("inconsistent", f"{key} = {value!r}", head, size)

    return {
        "bad-magic": Mutant("flip_header", "magic GGUF -> GGUE", _patch(lay.head, 3, b"E"), lay.file_size),
        "cut-in-data": Mutant("truncate", "cut inside the tensor data",
                              lay.head, lay.data_offset + lay.data_size // 2),
        "n-kv-huge": Mutant("huge_count", "n_kv = 2**63", _patch(lay.head, 16, struct.pack("<Q", 2**63)),
                            lay.file_size),
        "dims-overflow": Mutant("huge_count", f"{t2.name}: dims (2**32, 2**32)",
                                _patch(lay.head, t2.ndims_at + 4, struct.pack("<QQ", 2**32, 2**32)), lay.file_size),
        "alignment-string": Mutant("wrong_type", "general.alignment = '32'",
                                   *rebuild(lay, _set_kv(lay, "general.alignment", STRING, "32"))),
        "alignment-3": hparam("general.alignment", U32, 3),
        "offset-past-end": Mutant("inconsistent", f"{last.name}: offset past the end",
                                  _patch(lay.head, last.offset_at, struct.pack("<Q", lay.data_size)), lay.file_size),
        "head-count-0": hparam(f"{arch}.attention.head_count", U32, 0),
        "rope-dim-too-big": hparam(f"{arch}.rope.dimension_count", U32, 128),
        "token-type-short": hparam("tokenizer.ggml.token_type", ARRAY,
                                   (I32, [1] * (lay.kv("tokenizer.ggml.tokens").count - 1))),
    }
