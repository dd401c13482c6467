#!/usr/bin/env bash
# Session 4, call B: the fused decode probe, then where a training step's GPU time goes.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
mkdir -p "$OUT"
timeout 330 python3 -m benchmarks.probes.decode_fused --out "$OUT/decode_fused.json" > "$OUT/decode_fused.log" 2>&1; echo "decode rc $?"
tail -40 "$OUT/decode_fused.log"
timeout 200 python3 -m benchmarks.probes.profile_model --out "$OUT" --cases train > "$OUT/profile.log" 2>&1; echo "profile rc $?"
tail -5 "$OUT/profile.log"
