#!/usr/bin/env bash
# quiet slot 1: paired decode/prompt A/B, main's tree vs q4k11's, on the 1.5B then gemma3
cd "$(dirname "$0")/../.."  # the worktree
OUT=bench-results/s11-q4k11
MAIN=${MAIN:?the main checkout}
git -C $MAIN rev-parse HEAD > $OUT/ab_main_commit.txt
git rev-parse HEAD >> $OUT/ab_main_commit.txt
.venv/bin/python bench-results/s10-pro10/gen_ab.py qwen2.5-coder-1.5b-instruct main=$MAIN/.venv/bin/python q4k11=.venv/bin/python --pairs 3 --json $OUT/ab_qwen15_main_vs_q4k11.json 2>&1 | tee $OUT/ab_qwen15_main_vs_q4k11.txt
.venv/bin/python bench-results/s10-pro10/gen_ab.py gemma3-270m main=$MAIN/.venv/bin/python q4k11=.venv/bin/python --pairs 3 --json $OUT/ab_gemma3_main_vs_q4k11.json 2>&1 | tee $OUT/ab_gemma3_main_vs_q4k11.txt
