"""Tiny llama GGUF files written with the gguf package: random weights, no tokenizer (tests that read the
header or run the native transformer on ids)."""
from __future__ import annotations

import numpy as np

D, FF, VOCAB, HEADS = 256, 512, 64, 4


def write_tiny_llama(path, ffn_down_type=None, seed: int = 0) -> str:
    """A one-layer llama: every matrix Q8_0 (quantized by gguf-py), norms F32, ffn_down in ``ffn_down_type``
    (a type gguf-py cannot quantize, e.g. Q2_K, gets random bytes: for header checks only)."""
    import gguf
    from gguf.quants import quantize

    Q8 = gguf.GGMLQuantizationType.Q8_0
    ffn_down_type = Q8 if ffn_down_type is None else ffn_down_type
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in (("embedding_length", D), ("block_count", 1), ("feed_forward_length", FF),
                       ("attention.head_count", HEADS), ("context_length", 128)):
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    rng = np.random.default_rng(seed)

    def add(name, *shape, qtype=Q8):  # numpy order: outer dimension first
        x = (rng.standard_normal(shape) * (1.0 if len(shape) == 1 else 0.1)).astype(np.float32)
        if len(shape) == 1:
            w.add_tensor(name, np.abs(x) + 0.5)
        elif qtype in (Q8, gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1):
            w.add_tensor(name, quantize(x, qtype), raw_dtype=qtype)
        else:
            per_block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
            raw = rng.integers(0, 256, (shape[0], shape[1] // per_block * block_bytes), dtype=np.uint8)
            w.add_tensor(name, raw, raw_dtype=qtype)

    add("token_embd.weight", VOCAB, D)
    add("output_norm.weight", D)
    for n in ("attn_norm", "ffn_norm"):
        add(f"blk.0.{n}.weight", D)
    for n in ("attn_q", "attn_k", "attn_v", "attn_output"):
        add(f"blk.0.{n}.weight", D, D)
    add("blk.0.ffn_gate.weight", FF, D, qtype=gguf.GGMLQuantizationType.Q4_0)
    add("blk.0.ffn_up.weight", FF, D, qtype=gguf.GGMLQuantizationType.Q4_0)
    add("blk.0.ffn_down.weight", D, FF, qtype=ffn_down_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)
