"""An embed answer on the direct lane in a compact binary form: its vectors as raw float32 bytes, the rest
as a few packed fields.  Pickling an EmbedResult (a numpy array inside attrs values) cost ~20-35 us each
way per request; this costs a few.

The body: ``b"E"``, a header (request id, texts, dimension, max_length, the three timings, bytes of the
model name), the model name (UTF-8), per text its token count and truncation, then the vectors, C order.
"""
from __future__ import annotations

import struct

import numpy as np

from ..engines.onnx.results import EmbedResult, InputInfo, Timings

TAG = 0x45  # b"E"
_HEAD = struct.Struct("<QIIIdddH")  # rid, n texts, dim, max_length, tokenize/infer/total ms, model bytes
_INPUT = struct.Struct("<I?")       # tokens, truncated


def embed_body(rid: int, result) -> bytes | None:
    """The frame body for a ``("done", rid, result)`` answer; None when ``result`` is not an EmbedResult
    of float32 rows (it goes as a pickle, as before)."""
    if type(result) is not EmbedResult:
        return None
    vecs = result.embeddings
    if not isinstance(vecs, np.ndarray) or vecs.dtype != np.float32 or vecs.ndim != 2:
        return None
    model = result.model.encode("utf-8", "surrogatepass")
    t = result.timings
    parts = [b"E", _HEAD.pack(rid, vecs.shape[0], vecs.shape[1], result.max_length, t.tokenize_ms, t.infer_ms,
                              t.total_ms, len(model)), model]
    parts += [_INPUT.pack(i.tokens, i.truncated) for i in result.inputs]
    parts.append(np.ascontiguousarray(vecs).tobytes())
    return b"".join(parts)


def read_embed(buf: bytearray, start: int, end: int) -> tuple:
    """``("done", rid, EmbedResult)`` from the body at ``buf[start:end]`` (the vectors copied out: the buffer
    is reused)."""
    rid, n, dim, max_length, tok_ms, infer_ms, total_ms, model_len = _HEAD.unpack_from(buf, start + 1)
    pos = start + 1 + _HEAD.size
    model = buf[pos:pos + model_len].decode("utf-8", "surrogatepass")
    pos += model_len
    inputs = tuple(InputInfo(*_INPUT.unpack_from(buf, pos + k * _INPUT.size)) for k in range(n))
    pos += n * _INPUT.size
    if end - pos != 4 * n * dim:
        raise ValueError(f"an embed frame of {n} x {dim} vectors carries {end - pos} bytes of them")
    vecs = np.frombuffer(buf, dtype=np.float32, count=n * dim, offset=pos).reshape(n, dim).copy()
    return ("done", rid, EmbedResult(vecs, inputs, model, max_length, Timings(tok_ms, infer_ms, total_ms)))
