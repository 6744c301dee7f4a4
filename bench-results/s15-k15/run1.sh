#!/bin/bash
# k15 A/B 1: main vs chunk-wise activation conversion (nosub) vs + B sub-panels of 8 / 4 blocks
cd "$(dirname "$0")"
exec ../../.venv/bin/python ab_k15.py --variants main 'nosub:tree:B_SUB_BLOCKS = 8=>B_SUB_BLOCKS = 1 << 30' tree 'sub4:tree:B_SUB_BLOCKS = 8=>B_SUB_BLOCKS = 4' \
  --cases q4:17920:1536:459 q6p:1536:8960:459 q4:1536:8960:459 q8:4096:640:454 "$@"
