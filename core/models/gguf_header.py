"""A fast reader of a GGUF file's header: metadata and tensor table, without touching tensor data.

gguf's GGUFReader builds numpy views for every string of a vocabulary (~10 s for 262k tokens); this reader
walks the header once with struct over an mmap and decodes string arrays only when asked.  It is what
corert uses to validate a model file before llama.cpp (which aborts on some damage) opens it, and what the
tokenizer and native engine read metadata with.  Whatever is wrong with a file -- a count, a length, a
type, a shape, an offset -- is a ModelError saying what, never an exception from deeper down or a crash in
llama.cpp; tests/test_fuzz_models.py holds it to that over hundreds of mutated files.
"""
from __future__ import annotations

import functools
import math
import mmap
import struct
from pathlib import Path
from typing import Any, Callable, Iterable

import attrs
import numpy as np

from ..errors import ModelError

GGUF_MAGIC = b"GGUF"

# GGUF value types
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
            7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9
U32, I32, F32, BOOL = 4, 5, 6, 7
TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
              8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}
_INTEGERS = (0, 1, 2, 3, 4, 5, 10, 11)
_FLOATS = (6, 12)

# Limits llama.cpp's GGUF reader enforces too (GGML_MAX_DIMS, GGML_MAX_NAME - 1)
MAX_DIMS = 4
MAX_NAME_BYTES = 63
DEFAULT_ALIGNMENT = 32
# llama.cpp maps tensor data in place and asserts (aborting the process) that every tensor starts on a
# multiple of ggml's TENSOR_ALIGNMENT in the file, whatever general.alignment says
TENSOR_ALIGNMENT = 32
# ggml's element-wise ops (a norm's scale, a bias) take f32 operands only and abort on any other type; every
# converter stores 1-D tensors as f32
F32_TYPE = 0
# The fewest bytes a metadata entry (empty key, one-byte value) and a tensor info (empty name, no
# dimensions) can take: a count that needs more than the file holds is damage, found before any loop.
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8

# Keys whose type readers rely on without checking it: llama.cpp asserts general.alignment is a uint32
# (a process abort otherwise) and reads the token type and score arrays as raw int32 / float32 for every
# token; the tokenizer plugins and chat templates read the strings.  (type, array item type or None)
_KNOWN_TYPES = {
    "general.architecture": (_STRING, None), "general.alignment": (U32, None),
    "tokenizer.ggml.model": (_STRING, None), "tokenizer.ggml.pre": (_STRING, None),
    "tokenizer.chat_template": (_STRING, None),
    "tokenizer.ggml.tokens": (_ARRAY, _STRING), "tokenizer.ggml.merges": (_ARRAY, _STRING),
    "tokenizer.ggml.token_type": (_ARRAY, I32), "tokenizer.ggml.scores": (_ARRAY, F32),
}
# Per-token arrays: exactly one entry per token (llama.cpp indexes them up to the token count)
_PER_TOKEN = ("tokenizer.ggml.token_type", "tokenizer.ggml.scores")
_TOKENS = "tokenizer.ggml.tokens"
_TEMPLATE = "tokenizer.chat_template"

# Hyperparameters llama.cpp checks with GGML_ASSERT (a process abort) rather than an error; a damaged file
# is refused here, before it is handed over.  Keys are "{general.architecture}.<name>".
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 512
_EPSILONS = ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon")

# Files whose vocabulary passed the uniqueness check in this process, by (path, size, mtime): a model load
# reads the header several times, the check costs ~0.1 s for a 262k vocabulary, once is enough.
_VOCAB_CHECKED: dict[tuple[str, int, int], None] = {}


@attrs.frozen
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: shape[0] is the innermost (contiguous) dimension
    ggml_type: int
    offset: int  # from the start of the data section
    n_bytes: int


@attrs.frozen
class GGUFHeader:
    path: str
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    file_size: int
    #: key -> (GGUF value type, array item type or None, array length or None), for every key
    value_types: dict[str, tuple[int, int | None, int | None]] = attrs.field(factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise ModelError(f"{self.path}: no tensor {_show(name)}")

    def int_value(self, key: str, default: int | None = None, lo: int = 0, hi: int = 2**31 - 1) -> int:
        """Key ``key`` as an integer in [lo, hi]: a clear error when it is missing (and no default), of
        another type, or out of range."""
        if not self._present(key, default):
            return default
        if self._gguf_type(key) not in _INTEGERS:
            raise ModelError(f"{self.path}: metadata {key} must be an integer, not {self._type_name(key)}")
        v = self.metadata[key]
        if not lo <= v <= hi:
            raise ModelError(f"{self.path}: metadata {key} = {v} is out of range [{lo}, {hi}]")
        return int(v)

    def float_value(self, key: str, default: float | None = None, positive: bool = True) -> float:
        """Key ``key`` as a finite float (``positive``: > 0); integers are accepted."""
        if not self._present(key, default):
            return default
        if self._gguf_type(key) not in _FLOATS + _INTEGERS:
            raise ModelError(f"{self.path}: metadata {key} must be a number, not {self._type_name(key)}")
        f = float(self.metadata[key])
        if not math.isfinite(f) or (positive and f <= 0):
            raise ModelError(f"{self.path}: metadata {key} = {f} must be a finite"
                             f"{' positive' if positive else ''} number")
        return f

    def bool_value(self, key: str, default: bool) -> bool:
        """A boolean key (an integer is read as one); ``default`` when absent."""
        if key not in self.metadata:
            return default
        if self._gguf_type(key) not in (BOOL,) + _INTEGERS:
            raise ModelError(f"{self.path}: metadata {key} must be a bool, not {self._type_name(key)}")
        return bool(self.metadata[key])

    def _present(self, key: str, default) -> bool:
        if key in self.metadata:
            return True
        if default is None:
            raise ModelError(f"{self.path}: metadata {key} is missing")
        return False

    def _gguf_type(self, key: str) -> int | None:
        """The key's GGUF value type; for a header built by hand (no types), guessed from the value."""
        if key in self.value_types:
            return self.value_types[key][0]
        v = self.metadata[key]
        if isinstance(v, bool):
            return BOOL
        return 11 if isinstance(v, (int, np.integer)) else F32 if isinstance(v, (float, np.floating)) else None

    def _type_name(self, key: str) -> str:
        vtype, itype, _ = self.value_types.get(key, (self._gguf_type(key), None, None))
        if vtype == _ARRAY:
            return f"an array of {TYPE_NAMES.get(itype, itype)}"
        return f"a {TYPE_NAMES.get(vtype, vtype)}"


_U64 = struct.Struct("<Q").unpack_from


def _show(name: str, limit: int = 60) -> str:
    """A name read from a file, fit for a one-line message: escaped, and cut when long (damage can make a
    key swallow megabytes of the header)."""
    r = repr(name)
    return r if len(r) <= limit else r[:limit - 4] + "...'"


class _Cursor:
    __slots__ = ("buf", "pos", "size", "path")

    def __init__(self, buf, path: str):
        self.buf, self.pos, self.size, self.path = buf, 0, len(buf), path

    def take(self, n: int) -> int:
        start = self.pos
        if start + n > self.size:
            raise ModelError(f"{self.path} is truncated or corrupt: its header needs byte {start + n}, the "
                             f"file has {self.size}")
        self.pos = start + n
        return start

    def unpack(self, fmt: str, n: int):
        return struct.unpack_from(fmt, self.buf, self.take(n))[0]

    def raw_string(self) -> bytes:
        n = self.unpack("<Q", 8)
        start = self.take(n)
        return bytes(self.buf[start:start + n])

    def string(self) -> str:
        return self.raw_string().decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.take(self.unpack("<Q", 8))

    def strings(self, count: int, keep: bool) -> list[bytes] | None:
        """``count`` strings' raw bytes (``keep``) or None, walked in one tight loop: vocabularies hold
        ~50k-250k of them."""
        self.room_for(count, 8, "a string array")
        buf, pos, size, u64 = self.buf, self.pos, self.size, _U64
        out: list[bytes] | None = [] if keep else None
        for _ in range(count):
            if pos + 8 > size:
                break
            end = pos + 8 + u64(buf, pos)[0]
            if end > size:
                break
            if keep:
                out.append(bytes(buf[pos + 8:end]))
            pos = end
        else:
            self.pos = pos
            return out
        self.pos = pos
        self.take(8 + size)  # raises the truncation error
        return None

    def room_for(self, count: int, item_bytes: int, what: str) -> None:
        """``count`` items of at least ``item_bytes`` each must fit in what is left of the file."""
        if count * item_bytes > self.size - self.pos:
            raise ModelError(f"{self.path}: {what} claims {count} entries, more than the remaining "
                             f"{self.size - self.pos} bytes of the file can hold")


def _type_size(ggml_type: int) -> tuple[int, int]:
    """(values per block, bytes per block) of a GGML tensor type."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise ModelError(f"unknown GGML tensor type {ggml_type}") from None


def read_header(path: str | Path, want_arrays: Callable[[str], bool] | Iterable[str] | bool = True
                ) -> GGUFHeader:
    """Parse and validate ``path``'s header.  ``want_arrays`` selects which array-valued keys are decoded
    (others are skipped and stored as None): True for all, False for none, a set of keys, or a predicate.

    Everything a reader could trip on is checked here, with a :class:`ModelError` saying what is wrong:
    counts and lengths bounded by the file, known keys of the right type, tensor names unique and short,
    shapes whose element count is representable and whose rows fill whole blocks of their type, offsets
    aligned, inside the file and not overlapping."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model file not found: {p}")
    if not callable(want_arrays):
        if want_arrays is True:
            want = lambda key: True  # noqa: E731
        elif want_arrays is False:
            want = lambda key: False  # noqa: E731
        else:
            keys = set(want_arrays)
            want = keys.__contains__
    else:
        want = want_arrays
    st = p.stat()
    size = st.st_size
    if size < 24:
        raise ModelError(f"{p} is not a GGUF file (only {size} bytes)")
    identity = (str(p.resolve()), size, st.st_mtime_ns)
    with open(p, "rb") as fh:
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm[:4] != GGUF_MAGIC:
                raise ModelError(f"{p} is not a GGUF file (bad magic {bytes(mm[:4])!r})")
            view = memoryview(mm)
            try:
                header = _parse(view, str(p), size, want, check_vocab=identity not in _VOCAB_CHECKED)
            finally:
                view.release()
    if len(_VOCAB_CHECKED) > 64:
        _VOCAB_CHECKED.clear()
    _VOCAB_CHECKED[identity] = None
    return header


def _parse(buf: memoryview, path: str, size: int, want: Callable[[str], bool], check_vocab: bool = True
           ) -> GGUFHeader:
    cur = _Cursor(buf, path)
    cur.take(4)
    version = cur.unpack("<I", 4)
    if version not in (2, 3):
        raise ModelError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = cur.unpack("<Q", 8)
    n_kv = cur.unpack("<Q", 8)
    cur.room_for(n_kv, _MIN_KV_BYTES, "the metadata count")
    cur.room_for(n_tensors, _MIN_TENSOR_BYTES, "the tensor count")
    metadata: dict[str, Any] = {}
    types: dict[str, tuple[int, int | None, int | None]] = {}
    for _ in range(n_kv):
        key = cur.string()
        if key in metadata:
            raise ModelError(f"{path}: metadata key {_show(key)} appears twice")
        vtype = cur.unpack("<I", 4)
        if key == _TOKENS and check_vocab and vtype == _ARRAY:
            metadata[key], types[key] = _tokens(cur, want(key))
        else:
            metadata[key], types[key] = _value(cur, vtype, want(key), key)
    _check_known_keys(path, types)
    for key, value in metadata.items():
        if key == _TEMPLATE or key.startswith(_TEMPLATE + "."):
            if types[key][0] != _STRING:
                raise ModelError(f"{path}: metadata {_show(key)} must be a string, not a "
                                 f"{TYPE_NAMES.get(types[key][0])}")
            _check_template(path, key, value)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if alignment == 0 or alignment & (alignment - 1):
        raise ModelError(f"{path}: general.alignment {alignment} is not a power of 2")
    tensors = []
    names: set[str] = set()
    for _ in range(n_tensors):
        tensors.append(_tensor_info(cur, path, alignment, names))
    data_offset = (cur.pos + alignment - 1) // alignment * alignment
    _check_data_section(path, tensors, data_offset, size)
    header = GGUFHeader(path, version, metadata, tuple(tensors), data_offset, size, types)
    _check_hparams(header)
    return header


def _tensor_info(cur: _Cursor, path: str, alignment: int, names: set[str]) -> TensorInfo:
    raw = cur.raw_string()
    name = raw.decode("utf-8", errors="replace")
    if len(raw) > MAX_NAME_BYTES:
        raise ModelError(f"{path}: tensor name {_show(name)} is {len(raw)} bytes long (at most {MAX_NAME_BYTES})")
    if name in names:
        raise ModelError(f"{path}: tensor {_show(name)} appears twice")
    names.add(name)
    n_dims = cur.unpack("<I", 4)
    if n_dims > MAX_DIMS:
        raise ModelError(f"{path}: tensor {_show(name)} has {n_dims} dimensions (at most {MAX_DIMS})")
    shape = tuple(cur.unpack("<Q", 8) for _ in range(n_dims))
    n_elems = math.prod(shape)  # exact: a product that wraps around 2**64 must not pass for a small one
    if n_elems >= 2**63:
        raise ModelError(f"{path}: tensor {_show(name)} has shape {shape}: {n_elems} elements is not representable")
    ggml_type = cur.unpack("<I", 4)
    try:
        block, type_size = _type_size(ggml_type)
    except ModelError:
        raise ModelError(f"{path}: tensor {_show(name)} has unknown GGML type {ggml_type}") from None
    row = shape[0] if shape else 1  # missing dimensions are 1s
    if row % block:
        raise ModelError(f"{path}: tensor {_show(name)} has rows of {row} values, not a whole number of its "
                         f"type's blocks of {block}")
    offset = cur.unpack("<Q", 8)
    if offset % alignment:
        raise ModelError(f"{path}: tensor {_show(name)} has offset {offset}, not a multiple of the alignment "
                         f"{alignment}")
    return TensorInfo(name, shape, ggml_type, offset, n_elems // block * type_size)


def _check_data_section(path: str, tensors: list[TensorInfo], data_offset: int, size: int) -> None:
    """Every tensor inside the file, aligned, and no two sharing bytes; 1-D tensors f32."""
    for t in tensors:
        end = data_offset + t.offset + t.n_bytes
        if end > size:
            raise ModelError(f"{path} is truncated or corrupt: tensor {_show(t.name)} needs bytes up to {end}, "
                             f"the file has {size}")
        if (data_offset + t.offset) % TENSOR_ALIGNMENT:
            raise ModelError(f"{path}: tensor {_show(t.name)} starts at byte {data_offset + t.offset}, not a "
                             f"multiple of {TENSOR_ALIGNMENT} (general.alignment is too small)")
        if len(t.shape) == 1 and t.ggml_type != F32_TYPE:
            raise ModelError(f"{path}: 1-D tensor {_show(t.name)} has GGML type {t.ggml_type}; norm weights and "
                             f"biases must be F32")
    by_offset = sorted((t for t in tensors if t.n_bytes), key=lambda t: t.offset)
    for a, b in zip(by_offset, by_offset[1:]):
        if a.offset + a.n_bytes > b.offset:
            raise ModelError(f"{path}: tensors {_show(a.name)} and {_show(b.name)} overlap (offsets {a.offset} and "
                             f"{b.offset}, {a.n_bytes} bytes)")


def _check_known_keys(path: str, types: dict[str, tuple[int, int | None, int | None]]) -> None:
    for key, (vtype, itype) in _KNOWN_TYPES.items():
        got = types.get(key)
        if got is not None and (got[0], got[1]) != (vtype, itype):
            want = f"an array of {TYPE_NAMES[itype]}" if vtype == _ARRAY else f"a {TYPE_NAMES[vtype]}"
            have = (f"an array of {TYPE_NAMES.get(got[1], got[1])}" if got[0] == _ARRAY
                    else f"a {TYPE_NAMES.get(got[0], got[0])}")
            raise ModelError(f"{path}: metadata {key} must be {want}, not {have}")
    n_tokens = types.get("tokenizer.ggml.tokens", (None, None, None))[2]
    for key in _PER_TOKEN:
        if key in types and types[key][2] != n_tokens:
            raise ModelError(f"{path}: metadata {key} has {types[key][2]} entries for {n_tokens} tokens")


def _check_hparams(header: GGUFHeader) -> None:
    arch = header.architecture
    if not arch:
        return
    m = header.metadata
    if f"{arch}.block_count" in m:
        header.int_value(f"{arch}.block_count", lo=1, hi=LLAMA_MAX_LAYERS)
    for name in _EPSILONS:
        if f"{arch}.{name}" in m and header.float_value(f"{arch}.{name}", positive=False) < 0:
            raise ModelError(f"{header.path}: metadata {arch}.{name} is negative")
    n_expert = header.int_value(f"{arch}.expert_count", 0, hi=LLAMA_MAX_EXPERTS) if f"{arch}.expert_count" in m else 0
    if f"{arch}.expert_used_count" in m or n_expert:
        used = header.int_value(f"{arch}.expert_used_count", 0, hi=n_expert) if f"{arch}.expert_used_count" in m else 0
        if n_expert and not used:
            raise ModelError(f"{header.path}: {n_expert} experts but {arch}.expert_used_count is 0 or missing")


def _tokens(cur: _Cursor, decode: bool):
    """The vocabulary array, its tokens checked unique (llama.cpp asserts they are: a process abort)."""
    start = cur.pos
    itype = cur.unpack("<I", 4)
    count = cur.unpack("<Q", 8)
    if itype != _STRING:  # read it as any array; _check_known_keys then says what is wrong
        cur.pos = start
        return _value(cur, _ARRAY, decode, _TOKENS)
    raw = cur.strings(count, True)
    if len(set(raw)) != count:
        first: dict[bytes, int] = {}
        for i, t in enumerate(raw):
            if t in first:
                raise ModelError(f"{cur.path}: token {i} ({_show(t.decode('utf-8', 'replace'))}) duplicates "
                                 f"token {first[t]}; a vocabulary's tokens must be unique")
            first[t] = i
    return ([t.decode("utf-8", errors="replace") for t in raw] if decode else None), (_ARRAY, itype, count)


def _check_template(path: str, key: str, template: str) -> None:
    """llama-cpp-python compiles every chat template when it loads a model, and its syntax errors escape
    as jinja2 exceptions; our chat renders it.  A template that does not compile is damage."""
    error = _template_error(template)
    if error:
        raise ModelError(f"{path}: metadata {key} is not a valid Jinja template ({error})")


@functools.lru_cache(maxsize=16)
def _template_error(template: str) -> str | None:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)
    except TemplateError as exc:
        return " ".join(str(exc).split())[:120]
    return None


def _value(cur: _Cursor, vtype: int, decode_arrays: bool, key: str):
    """(value, (type, item type, length)) of the value at the cursor."""
    if vtype in _SCALARS:
        fmt, n = _SCALARS[vtype]
        return cur.unpack(fmt, n), (vtype, None, None)
    if vtype == _STRING:
        return cur.string(), (vtype, None, None)
    if vtype == _ARRAY:
        itype = cur.unpack("<I", 4)
        count = cur.unpack("<Q", 8)
        info = (vtype, itype, count)
        if itype in _SCALARS:
            cur.room_for(count, _SCALARS[itype][1], f"array {_show(key)}")
            n = _SCALARS[itype][1] * count
            start = cur.take(n)
            if not decode_arrays:
                return None, info
            return np.frombuffer(cur.buf[start:start + n], dtype=_NUMPY[itype]).copy(), info
        if itype == _STRING:
            cur.room_for(count, 8, f"array {_show(key)}")
            raw = cur.strings(count, decode_arrays)
            return (None if raw is None else [b.decode("utf-8", errors="replace") for b in raw]), info
        # arrays of arrays: the format allows them, no model uses them, llama.cpp rejects them
        raise ModelError(f"{cur.path}: metadata {_show(key)} is an array of unsupported item type {itype}")
    raise ModelError(f"{cur.path}: metadata {_show(key)} has unknown GGUF value type {vtype}")


def string_array_bytes(path: str | Path, key: str) -> list[bytes]:
    """The raw bytes of each string of an array-valued key (vocabularies hold invalid UTF-8 pieces)."""
    p = Path(path)
    with open(p, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        with memoryview(mm) as buf:
            return _string_array(buf, p, key)


def _string_array(buf: memoryview, p: Path, key: str) -> list[bytes]:
    cur = _Cursor(buf, str(p))
    cur.take(4 + 4 + 8)
    n_kv = cur.unpack("<Q", 8)
    for _ in range(n_kv):
        k = cur.string()
        vtype = cur.unpack("<I", 4)
        if k == key and vtype == _ARRAY:
            itype = cur.unpack("<I", 4)
            count = cur.unpack("<Q", 8)
            if itype != _STRING:
                break
            cur.room_for(count, 8, f"array {_show(key)}")
            return cur.strings(count, True)
        _value(cur, vtype, False, k)
    raise ModelError(f"{p}: no string array {_show(key)}")
