#!/bin/bash
# alternate base (A) and new (B) isolation code; $1 pairs, $2 rounds per run, $3 output file
cd /work/wt-workermsg
for i in $(seq 1 $1); do
  if [ $((i % 2)) = 1 ]; then order="A B"; else order="B A"; fi
  for s in $order; do
    AB_TOKENS=${AB_TOKENS:-64} AB_TAG=$s PYTHONPATH=/tmp/wm/shim$s nice -n 19 .venv/bin/python /tmp/wm/ab.py $2 2>>/tmp/wm/ab.err | tail -1 >> $3
  done
done
