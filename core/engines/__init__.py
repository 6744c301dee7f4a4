"""Engines: llama.cpp (reference), native (numpy/numba), onnx (embeddings, classification)."""
