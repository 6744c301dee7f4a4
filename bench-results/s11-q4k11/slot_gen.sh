#!/usr/bin/env bash
# one quiet slot: `corert bench generate --engine auto` on the 1.5B (JSON name suffix $1), then, when the slot has
# time left for it (the slot is cut at 420 s), the same on model $2 (optional)
cd "$(dirname "$0")/../.."  # the worktree
OUT=bench-results/s11-q4k11
t0=$(date +%s)
.venv/bin/corert bench generate --engine auto -m qwen2.5-coder-1.5b-instruct --ctx 2048 --rounds 3 --json > $OUT/gen_auto_qwen15_$1.json
echo "qwen15 rc=$? $(( $(date +%s) - t0 )) s"
if [ -n "${2:-}" ] && [ $(( $(date +%s) - t0 )) -lt ${3:-200} ]; then
  .venv/bin/corert bench generate --engine auto -m $2 --ctx 2048 --rounds 3 --json > $OUT/gen_auto_$2.json
  echo "$2 rc=$? $(( $(date +%s) - t0 )) s"
fi
