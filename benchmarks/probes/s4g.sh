#!/usr/bin/env bash
# Session 4, call G: the scan backward variants (probe, then their GPU tests), then the training A/B.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
mkdir -p "$OUT"
timeout 130 python3 -m benchmarks.probes.scan_bwd_probe --out "$OUT/scan_bwd_probe.json" > "$OUT/scan_bwd_probe.log" 2>&1; echo "probe rc $?"
grep "^|" "$OUT/scan_bwd_probe.log" | cut -c1-330
timeout 170 python3 -m pytest -q -m gpu tests/ops/test_selective_scan.py -k "v1" -p no:cacheprovider > "$OUT/t_scan_v1.log" 2>&1; echo "scan v1 tests rc $?"; tail -4 "$OUT/t_scan_v1.log"
timeout 250 python3 -m benchmarks.probes.train_ab --out "$OUT/train_ab.json" > "$OUT/train_ab.log" 2>&1; echo "train_ab rc $?"
grep "^|" "$OUT/train_ab.log"
