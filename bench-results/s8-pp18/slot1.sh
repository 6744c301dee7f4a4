#!/bin/bash
# quiet slot 1 of pp18 (at f908df7): the prefill roofline and bench generate before any change
cd "$(dirname "$0")/../.."
.venv/bin/python scripts/prefill_roofline.py qwen2.5-coder-1.5b-instruct --json bench-results/s8-pp18/roofline_before.json > bench-results/s8-pp18/roofline_before.txt 2>&1
.venv/bin/corert bench generate --engine auto -m qwen2.5-coder-1.5b-instruct --ctx 2048 --rounds 3 --json > bench-results/s8-pp18/gen_before.json 2> bench-results/s8-pp18/gen_before.err
