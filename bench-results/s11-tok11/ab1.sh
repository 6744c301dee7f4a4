#!/usr/bin/env bash
# tok11: paired decode A/B, main's tree vs tok11's, alternating in one quiet slot (gen_ab.py); the decode
# attention microbenchmark on both trees; then one `corert bench generate --engine auto` on Qwen 1.5B (tok11).
cd "$(dirname "$0")"
A=${MAIN:?the main checkout}/.venv/bin/python
B=${TREE:?this worktree}/.venv/bin/python
$B ../s10-pro10/gen_ab.py qwen2.5-coder-1.5b-instruct main=$A tok11=$B --pairs 2 --rounds 3 --json ab_qwen15_$1.json
$B ../s10-pro10/gen_ab.py smollm2-135m-instruct main=$A tok11=$B --pairs 3 --rounds 3 --json ab_smollm2_$1.json
NUMBA_NUM_THREADS=2 $A attn_decode.py.txt attn_decode_main_$1.json
NUMBA_NUM_THREADS=2 $B attn_decode.py.txt attn_decode_tok11_$1.json
$TREE/.venv/bin/corert bench generate --engine auto -m qwen2.5-coder-1.5b-instruct --ctx 2048 --rounds 3 --json > gen_auto_qwen15_1.json
