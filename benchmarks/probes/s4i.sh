#!/usr/bin/env bash
# Session 4, last call: the scan after the old backward's removal (GPU tests, probe, bench), Mamba-1 model GPU tests.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
mkdir -p "$OUT"
timeout 120 python3 -m benchmarks.probes.scan_bwd_probe --out "$OUT/scan_bwd_probe.json" > "$OUT/scan_bwd_probe.log" 2>&1; echo "probe rc $?"
grep "^|" "$OUT/scan_bwd_probe.log" | head -7 | cut -c1-200
timeout 150 python3 -m pytest -q -m gpu tests/ops/test_selective_scan.py -p no:cacheprovider > "$OUT/t_scan.log" 2>&1; echo "scan tests rc $?"; tail -3 "$OUT/t_scan.log"
timeout 40 python3 -m benchmarks.bench_selective_scan --out "$OUT/bench_selective_scan.json" 2>&1 | grep "^|" | tail -6
