#!/usr/bin/env bash
# Session 4, call A: the two prototypes' GPU tests (concurrently; compile-bound), then the fused SSD probe and the scan bench.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
(timeout 280 python3 -m pytest -q -m gpu tests/ops/test_ssd.py -p no:cacheprovider > "$OUT/t_ssd.log" 2>&1; echo "rc $?" >> "$OUT/t_ssd.log") &
(timeout 280 python3 -m pytest -q -m gpu tests/ops/test_mamba1_decode.py tests/ops/test_mamba2_decode.py -p no:cacheprovider > "$OUT/t_decode.log" 2>&1; echo "rc $?" >> "$OUT/t_decode.log") &
wait
tail -5 "$OUT/t_ssd.log" "$OUT/t_decode.log"
timeout 200 python3 -m benchmarks.probes.ssd_bisect fused > "$OUT/ssd_fused.log" 2>&1; echo "bisect rc $?"
tail -25 "$OUT/ssd_fused.log"
timeout 90 python3 -m benchmarks.bench_selective_scan --out "$OUT/bench_selective_scan.json" > "$OUT/bench_scan.log" 2>&1; echo "scan rc $?"
tail -15 "$OUT/bench_scan.log"
