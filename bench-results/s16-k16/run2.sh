#!/bin/bash
# k16 A/B: main vs the tree (9 tile loads per block of 12 bf16 tile products instead of 10)
V1=${V1:-main}; V2=${V2:-tree}
cd "$(dirname "$0")"
exec ../../.venv/bin/python ../s15-k15/ab_k15.py --variants "$V1" "$V2" \
  --cases q4:17920:1536:256 q6p:1536:8960:256 q4:1536:8960:256 q8:4096:640:256 \
          q4:17920:1536:459 q6p:1536:8960:459 q4:1536:8960:459 q8:4096:640:459 "$@"
