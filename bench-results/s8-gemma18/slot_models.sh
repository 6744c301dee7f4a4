#!/usr/bin/env bash
# the other registry models at main (9bad4a2+): the new default corpus prompt and the old 42-token prompt, one run each
cd "$(dirname "$0")/../.."
O=${OUT:?}; mkdir -p $O
C=.venv/bin/corert
S="Write a detailed, friendly explanation of how a bicycle works, covering the frame, the wheels, the chain and gears, the brakes, and how a rider keeps balance. Use several paragraphs."
for m in smollm2-135m-instruct qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct; do
  echo "$(date +%T) $m default" >&2
  $C bench generate --engine auto -m $m --ctx 2048 --rounds 3 --json > $O/${m}_default.json 2> $O/${m}_default.err
  echo "$(date +%T) $m short" >&2
  $C bench generate --engine auto -m $m --ctx 2048 --rounds 3 --prompt "$S" --json > $O/${m}_short.json 2> $O/${m}_short.err
done
echo "$(date +%T) done" >&2
