"""The native engine: our own llama/qwen2 transformer over GGUF weights, in numpy and numba.

Modules: dequant (GGML blocks -> int8 blocks) · weights (GGUF tensors, requantized at load) · products (each
variant's weight layout and kernels) · matmul (f32 products: avx2 / neon / scalar) · matmul_i8 (the vnni
variant: int8 dot products) · matmul_amx (the amx variant: vnni's on AMX-INT8 tiles for many rows) · ops (RMSNorm, RoPE, SwiGLU, embedding) · model (the forward pass) · engine,
loaded, session (loading, the loaded model, one sequence) · plugin (registration) · batching (continuous
batching's runner, driven by corert.batch_service).

What it shares with plugins comes from the host (corert.numba_setup, corert.kernels, corert.sampling);
attention goes through the KV store the kv_cache plugin provides, so this package imports no plugin.
"""
