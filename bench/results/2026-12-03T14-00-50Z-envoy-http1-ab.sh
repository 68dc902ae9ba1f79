#!/bin/bash
# Interleaved cpu-per-op A/B of http-get: main (Envoy→gateway HTTP/2) vs envoy-h1 branch (HTTP/1.1).
for side in new old old new new old old new; do
  d=/work/wt/h1; [ $side = old ] && d=/work/main
  echo "== $side $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
  (cd $d && timeout 600 npx tsx bench/cpu-per-op.ts --sizes 1KiB,64KiB --phases http-get --wrk-seconds 10 --warmup 200 2>&1 | grep "^ours http" | sed -E 's/CPU µs\/op: //; s/client \(SDK, this process\)/sdk/')
done
