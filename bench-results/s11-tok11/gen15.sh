#!/usr/bin/env bash
# tok11: three `corert bench generate --engine auto` runs on Qwen 1.5B with tok11's tree, one quiet slot.
cd "$(dirname "$0")"
C=${TREE:?this worktree}/.venv/bin/corert
for i in 1 2 3; do
  $C bench generate --engine auto -m qwen2.5-coder-1.5b-instruct --ctx 2048 --rounds 3 --json > gen_auto_qwen15_$i.json
done
