#!/usr/bin/env bash
# after2: + attention by head group; three runs of the (new) default corpus prompt, one of the old 42-token prompt, profile
cd "$(dirname "$0")/../.."
O=${OUT:?}; mkdir -p $O
C=.venv/bin/corert
S="Write a detailed, friendly explanation of how a bicycle works, covering the frame, the wheels, the chain and gears, the brakes, and how a rider keeps balance. Use several paragraphs."
for i in 1 2 3; do
  echo "$(date +%T) default $i" >&2
  $C bench generate --engine auto -m gemma3-270m --ctx 2048 --rounds 3 --json > $O/default_$i.json 2> $O/default_$i.err
  if [ $i = 1 ]; then
    echo "$(date +%T) short" >&2
    $C bench generate --engine auto -m gemma3-270m --ctx 2048 --rounds 3 --prompt "$S" --json > $O/short_1.json 2> $O/short_1.err
  fi
done
echo "$(date +%T) profile" >&2
.venv/bin/python scripts/profile_native.py gemma3-270m --prompt-words 330 --decode 16 > $O/profile.txt 2>&1
echo "$(date +%T) done" >&2
