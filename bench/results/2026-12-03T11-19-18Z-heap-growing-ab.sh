#!/bin/bash
# Interleaved cpu-per-op A/B: main (V8 default) vs heap-growing branch.
for side in new old old new new old old new; do
  d=/work/wt/heap; [ $side = old ] && d=/work/main
  echo "== $side $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
  (cd $d && timeout 600 npx tsx bench/cpu-per-op.ts --sizes 64KiB,1KiB --phases write,read-miss --ops 2000 --warmup 500 2>&1 | grep "^ours [wr]" | sed -E 's/CPU µs\/op: //; s/client \(SDK, this process\)/sdk/')
done
