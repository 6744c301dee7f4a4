#!/usr/bin/env bash
# before: main's code; the default 42-token prompt and the ~450-token corpus prompt, interleaved, then a per-op profile
cd "$(dirname "$0")/../.."
O=${OUT:?}; mkdir -p $O
C=.venv/bin/corert
P="$(cat "$(dirname "$0")/long_prompt.txt")"
for i in 1 2 3; do
  echo "$(date +%T) default $i" >&2
  $C bench generate --engine auto -m gemma3-270m --ctx 2048 --rounds 3 --json > $O/default_$i.json 2> $O/default_$i.err
  echo "$(date +%T) long $i" >&2
  $C bench generate --engine auto -m gemma3-270m --ctx 2048 --rounds 3 --prompt "$P" --json > $O/long_$i.json 2> $O/long_$i.err
done
echo "$(date +%T) profile" >&2
.venv/bin/python scripts/profile_native.py gemma3-270m --prompt-words 330 --decode 16 > $O/profile.txt 2>&1
echo "$(date +%T) done" >&2
