#!/bin/bash
# bench isolation (native only), base (A) and new (B) isolation code, alternating; $1 pairs.
# SHIMS: a folder holding shimA/ and shimB/, each a PYTHONPATH tree `corert/` of symlinks to this checkout's
# core/ entries and plugins/, with `isolation/` the side's own copy (see README.md).
cd "$(dirname "$0")/../.."
out=bench-results/workermsg
for i in $(seq 1 $1); do
  if [ $((i % 2)) = 1 ]; then order="A B"; else order="B A"; fi
  for s in $order; do
    echo "$s start $(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $out/ab_bench.log
    PYTHONPATH=$SHIMS/shim$s nice -n 19 .venv/bin/python -m corert.cli bench isolation --engines native --embed-runs 50 --rounds 5 --json > $out/isolation_$s$i.json 2> $out/isolation_$s$i.err
    echo "$s end $(date +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >> $out/ab_bench.log
  done
done
