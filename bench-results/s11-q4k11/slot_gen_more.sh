#!/usr/bin/env bash
# one quiet slot: `corert bench generate --engine auto` on the 1.5B (JSON name suffix $1), then on each further
# model named while the slot has time left (it is cut at 420 s)
cd "$(dirname "$0")/../.."  # the worktree
OUT=bench-results/s11-q4k11
t0=$(date +%s)
.venv/bin/corert bench generate --engine auto -m qwen2.5-coder-1.5b-instruct --ctx 2048 --rounds 3 --json > $OUT/gen_auto_qwen15_$1.json
echo "qwen15 rc=$? $(( $(date +%s) - t0 )) s"
shift
for m in "$@"; do
  [ $(( $(date +%s) - t0 )) -lt 250 ] || break
  .venv/bin/corert bench generate --engine auto -m $m --ctx 2048 --rounds 3 --json > $OUT/gen_auto_$m.json
  echo "$m rc=$? $(( $(date +%s) - t0 )) s"
done
