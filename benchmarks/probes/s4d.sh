#!/usr/bin/env bash
# Session 4, call D: conv GPU tests (pair kernel now default), the conv bench, then Mamba-1 generation.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
mkdir -p "$OUT"
timeout 150 python3 -m pytest -q -m gpu tests/ops/test_causal_conv1d.py -p no:cacheprovider > "$OUT/t_conv.log" 2>&1; echo "conv tests rc $?"; tail -3 "$OUT/t_conv.log"
timeout 100 python3 -m benchmarks.bench_causal_conv1d --no-sweep --out "$OUT/bench_causal_conv1d.json" > "$OUT/bench_conv.log" 2>&1; echo "conv bench rc $?"; grep "^|" "$OUT/bench_conv.log"
timeout 560 python3 -m benchmarks.bench_model --arch ${ARCH:-mamba1} --cases generate --out "$OUT/bench_model_gen.json" > "$OUT/bench_model_gen.log" 2>&1; echo "gen rc $?"
grep "^|\|done:" "$OUT/bench_model_gen.log" | cut -c1-400
