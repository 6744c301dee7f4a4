#!/bin/bash
# quiet slot 2 of pp18 (at f908df7): the roofline with the port-sharing loop, then the q4 prefill kernel variants at 2
# threads (q4_variants.py: experiment code, kept on branch pp18-variants, not landed: it copies kernel code)
cd "$(dirname "$0")/../.."
.venv/bin/python scripts/prefill_roofline.py qwen2.5-coder-1.5b-instruct --json bench-results/s8-pp18/roofline_mix.json > bench-results/s8-pp18/roofline_mix.txt 2>&1
.venv/bin/python bench-results/s8-pp18/q4_variants.py 41 2 > bench-results/s8-pp18/q4_variants.txt 2>&1
