#!/bin/bash
# k15 A/B 3: the row counts the prompt's products see (Qwen 1.5B: blocks of 256 and 203, the FFN in 256-row
# chunks, the bulk rows 256 and 202): main vs chunk-wise conversion (nosub), and the pieces of nosub
cd "$(dirname "$0")"
N='B_SUB_BLOCKS = 8=>B_SUB_BLOCKS = 1 << 30'
exec ../../.venv/bin/python ab_k15.py --variants main "nosub:tree:$N" \
  "nodots:tree:$N;;                    _panel(xa, wb=>                    if b0 < 0: _panel(xa, wb" \
  "nodeq:tree:$N;;                        _dequant(kind=>                        if b0 < 0: _dequant(kind" \
  "convonly:tree:$N;;                    _panel(xa, wb=>                    if b0 < 0: _panel(xa, wb;;                        _dequant(kind=>                        if b0 < 0: _dequant(kind" \
  --cases q4:17920:1536:256 q4:17920:1536:202 q6p:1536:8960:256 q4:1536:8960:256 q6p:1536:8960:202 q8:4096:640:256 "$@"
