#!/usr/bin/env bash
# Session 4, call F: training throughput and memory of both 130M models, then Mamba-2's bf16-state generation.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
mkdir -p "$OUT"
timeout 260 python3 -m benchmarks.bench_model --cases train --regional --out "$OUT/bench_model_train.json" > "$OUT/bench_model_train.log" 2>&1; echo "train rc $?"
grep "^|" "$OUT/bench_model_train.log" | cut -c1-400
timeout 250 python3 -m benchmarks.bench_model --arch mamba2 --cases generate --gen 64:bf16 --out "$OUT/bench_model_gen.json" > "$OUT/bench_model_gen.log" 2>&1; echo "gen rc $?"
grep "^|" "$OUT/bench_model_gen.log" | cut -c1-400
