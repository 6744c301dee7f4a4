#!/usr/bin/env bash
# One quiet slot: a main tree's python (A) against lvl11's (B), paired (../s10-pro10/gen_ab.py), on gemma3, Qwen 0.5B and 1.5B:
#   A=main/.venv/bin/python B=wt-lvl11/.venv/bin/python ./quiet_ab.sh OUTDIR
set -u
cd "$(dirname "$0")"
out=${1:-.}; mkdir -p "$out"
$B warm.py gemma3-270m qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct > "$out/warm_in_slot.log" 2>&1
for m in gemma3-270m qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct; do
  $B ../s10-pro10/gen_ab.py $m main=$A lvl11=$B --pairs 2 --rounds 3 --max-tokens 48 --json "$out/ab_$m.json" > "$out/ab_$m.log" 2>&1
done
