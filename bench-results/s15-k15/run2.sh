#!/bin/bash
# k15 A/B 2: where the time goes (chunk-wise conversion, no B sub-panels): whole, without the tile products
# (conversion + dequantization), without the dequantization (conversion + tile products)
cd "$(dirname "$0")"
N='B_SUB_BLOCKS = 8=>B_SUB_BLOCKS = 1 << 30'
exec ../../.venv/bin/python ab_k15.py --variants "nosub:tree:$N" \
  "nodots:tree:$N;;                    _panel(xa, wb=>                    if b0 < 0: _panel(xa, wb" \
  "nodeq:tree:$N;;                        _dequant(kind=>                        if b0 < 0: _dequant(kind" \
  "convonly:tree:$N;;                    _panel(xa, wb=>                    if b0 < 0: _panel(xa, wb;;                        _dequant(kind=>                        if b0 < 0: _dequant(kind" \
  --cases q4:17920:1536:459 q6p:1536:8960:459 q4:1536:8960:459 q8:4096:640:454 "$@"
