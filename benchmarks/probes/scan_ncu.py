"""Runs the Mamba-1 selective-scan forward (and optionally backward) a few times at b8 d1536 l2048 n16 bf16, for a
profiler to attach to (ncu -k regex:_selective_scan_fwd ...). Times nothing itself.

    python3 -m benchmarks.probes.scan_ncu [--bwd] [--no-lanes]
"""
import argparse

import torch

from benchmarks.bench_selective_scan import make_inputs
from mamba_compile.ops import selective_scan
from mamba_compile.ops import selective_scan_triton as kern

ap = argparse.ArgumentParser()
ap.add_argument("--bwd", action="store_true")
ap.add_argument("--no-lanes", action="store_true", help="the forward's generic blocks and column sums")
a = ap.parse_args()
kern._FWD_LANES = not a.no_lanes
t = make_inputs(8, 1536, 2048, 16)
if a.bwd:
    for k in ("u", "delta", "z", "B", "C"):
        t[k].requires_grad_()
for _ in range(3):
    out = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], delta_softplus=True)
    if a.bwd:
        out.backward(torch.ones_like(out))
torch.cuda.synchronize()
