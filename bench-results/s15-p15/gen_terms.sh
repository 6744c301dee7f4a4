#!/usr/bin/env bash
# gen_terms.sh TERMS OUT: corert bench generate on Qwen 1.5B, amx-bf16 with TERMS bf16 tile products a block
# (terms_site/sitecustomize.py), against raw llama.cpp in the same run.
here=$(cd "$(dirname "$0")" && pwd)
PYTHONPATH=$here/terms_site CORERT_BF16_TERMS=$1 .venv/bin/corert bench generate --engine native:amx-bf16 \
  -m qwen2.5-coder-1.5b-instruct --ctx 2048 --rounds 3 --json > "$2"
