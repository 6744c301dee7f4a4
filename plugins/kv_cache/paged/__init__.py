"""Paged KV cache for the native engine: pages of one pool, q8/f16/f32, prefix sharing, eviction."""
