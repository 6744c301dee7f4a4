"""The native engine: our own llama/qwen2 transformer over GGUF weights, in numpy and numba.

Modules: numba_setup (threading layer, f16 table) · dequant (GGML blocks -> int8 blocks) · weights (GGUF
tensors, requantized at load) · products (each variant's weight layout and kernels) · matmul (f32
products: avx2 / neon / scalar) · matmul_i8 (the vnni variant: int8 dot products) · simd (vector values and
VNNI for numba) · ops (RMSNorm, RoPE, SwiGLU, embedding) · attention (causal GQA over the contiguous KV store) · sampling · model (the forward pass) ·
plugin (engine registration, loaded model, sessions).
"""
