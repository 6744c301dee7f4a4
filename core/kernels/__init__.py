"""numba building blocks that engines and plugins share, so neither imports the other's internals.

Modules: f16 (the f16 -> f32 table GGUF scales and f16 KV pages are read through) · simd (512-bit vector
values, AVX-512 VNNI dot products, software prefetch).  Each kernel that uses them stays with its owner
(the native engine's matmuls, the paged cache's attention); numba set-up is corert.numba_setup.
"""
