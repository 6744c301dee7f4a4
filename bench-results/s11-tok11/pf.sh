#!/usr/bin/env bash
# tok11: attn_prefetch.py.txt at two prefetch distances, quiet.
cd "$(dirname "$0")"
P=${TREE:?this worktree}/.venv/bin/python
NUMBA_NUM_THREADS=2 $P attn_prefetch.py.txt attn_prefetch_4096.json 4096
NUMBA_NUM_THREADS=2 $P attn_prefetch.py.txt attn_prefetch_1024.json 1024
$P prof_step.py.txt qwen2.5-coder-1.5b-instruct smollm2-135m-instruct --tokens 64 --json prof_step_tok11_quiet.json
