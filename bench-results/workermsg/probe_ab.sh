#!/bin/bash
# alternate base (A) and new (B) isolation code under thread_cpu_probe.py; $1 pairs, $2 rounds per run,
# $3 output file (JSON lines); SHIMS as in bench_ab.sh; AB_TOKENS tokens per stream (default 64)
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
for i in $(seq 1 $1); do
  if [ $((i % 2)) = 1 ]; then order="A B"; else order="B A"; fi
  for s in $order; do
    AB_TOKENS=${AB_TOKENS:-64} AB_TAG=$s PYTHONPATH=$SHIMS/shim$s nice -n 19 .venv/bin/python "$here/thread_cpu_probe.py" $2 | tail -1 >> $3
  done
done
