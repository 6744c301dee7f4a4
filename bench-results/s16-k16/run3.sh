#!/bin/bash
# k16 A/B: main, k16-9loads (9 tile loads per split block instead of 10) and the tree (also: the next panel
# dequantized between this one's blocks); VARIANTS reorders them
cd "$(dirname "$0")"
exec ../../.venv/bin/python ../s15-k15/ab_k15.py --variants ${VARIANTS:-main k16-9loads tree} \
  --cases q4:17920:1536:256 q6p:1536:8960:256 q4:1536:8960:256 q8:4096:640:256 \
          q4:17920:1536:459 q6p:1536:8960:459 q4:1536:8960:459 q8:4096:640:459 "$@"
