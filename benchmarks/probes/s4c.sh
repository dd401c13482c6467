#!/usr/bin/env bash
# Session 4, call C: conv variants (timing first), then the model GPU tests with the fused decode on.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
mkdir -p "$OUT"
timeout 200 python3 -m benchmarks.probes.conv_probe --out "$OUT/conv_probe.json" > "$OUT/conv_probe.log" 2>&1; echo "conv rc $?"
grep "^|" "$OUT/conv_probe.log"
timeout 330 python3 -m pytest -q -m gpu tests/models -p no:cacheprovider > "$OUT/t_models.log" 2>&1; echo "models rc $?"
tail -15 "$OUT/t_models.log"
