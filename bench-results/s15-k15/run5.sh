#!/bin/bash
# k15 A/B 5: the activations' K chunk (A_CHUNK_BYTES 1 MB, 1.5 MB, 2 MB) with the chunk-wise conversion
cd "$(dirname "$0")"
N='B_SUB_BLOCKS = 8=>B_SUB_BLOCKS = 1 << 30'
exec ../../.venv/bin/python ab_k15.py --variants main "nosub:tree:$N" \
  "a15:tree:$N;;A_CHUNK_BYTES = 1 << 20=>A_CHUNK_BYTES = 3 << 19" "a2:tree:$N;;A_CHUNK_BYTES = 1 << 20=>A_CHUNK_BYTES = 2 << 20" \
  --cases q4:17920:1536:256 q4:17920:1536:202 q4:1536:8960:256 q6p:1536:8960:256 q8:4096:640:256 q4:17920:1536:256 "$@"
