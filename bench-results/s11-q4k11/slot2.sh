#!/usr/bin/env bash
# quiet slot 2: the Q4_K products alone, main's layout vs the packed one (probe_q4k.py.txt), on the 1.5B
cd "$(dirname "$0")/../.."  # the worktree
.venv/bin/python bench-results/s11-q4k11/probe_q4k.py.txt qwen2.5-coder-1.5b-instruct --steps 100 --reps 7 --rows 454 --json bench-results/s11-q4k11/probe_q4k_qwen15.json
