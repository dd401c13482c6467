#!/usr/bin/env bash
# Session 4, call D: conv GPU tests (pair kernel now default), then one model's generation cases.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
mkdir -p "$OUT"
timeout 120 python3 -m pytest -q -m gpu tests/ops/test_causal_conv1d.py -p no:cacheprovider > "$OUT/t_conv.log" 2>&1; echo "conv tests rc $?"; tail -3 "$OUT/t_conv.log"
timeout ${GEN_TIMEOUT:-460} python3 -m benchmarks.bench_model --arch ${ARCH:-mamba1} --cases generate --gen ${GEN:-1:fp32 64:fp32 64:bf16} --out "$OUT/bench_model_gen.json" > "$OUT/bench_model_gen.log" 2>&1; echo "gen rc $?"
grep "^|" "$OUT/bench_model_gen.log" | cut -c1-400; grep "done:" "$OUT/bench_model_gen.log" | cut -c1-300
