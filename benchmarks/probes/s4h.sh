#!/usr/bin/env bash
# Session 4, call H: Mamba-1 model GPU tests with scan backward variant 1 as the default, then the training A/B.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
mkdir -p "$OUT"
timeout 150 python3 -m pytest -q -m gpu tests/models -k "mamba1 and not generation" -p no:cacheprovider > "$OUT/t_models_m1.log" 2>&1; echo "m1 tests rc $?"; tail -3 "$OUT/t_models_m1.log"
timeout 300 python3 -m benchmarks.probes.train_ab --out "$OUT/train_ab.json" > "$OUT/train_ab.log" 2>&1; echo "train_ab rc $?"
grep "^|" "$OUT/train_ab.log"
