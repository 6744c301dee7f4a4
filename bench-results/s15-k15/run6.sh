#!/bin/bash
# k15 A/B 6: main vs the tree (the activations converted a K chunk at a time, 16 lanes at once: amx.store_bf16_split),
# and the tree's conversion alone
cd "$(dirname "$0")"
exec ../../.venv/bin/python ab_k15.py --variants main tree \
  "convonly:tree:                _panel(xa, wb=>                if b0 < 0: _panel(xa, wb;;                        _dequant(kind=>                        if b0 < 0: _dequant(kind" \
  --cases q4:17920:1536:256 q4:17920:1536:202 q4:1536:8960:256 q6p:1536:8960:256 q6p:1536:8960:202 q8:4096:640:256 q4:1536:1536:256 "$@"
